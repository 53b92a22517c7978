"""Typed, registered device configs: `--robot.type sim|ur|lerobot|fake` and a list of cameras
`type: realsense|opencv|fake`. Each config's `make()` builds the device; driver packages
(pyrealsense2, ur_rtde, lerobot's motor buses) are imported only when that device is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import draccus

from vla.robot_io.base import Camera, Robot
from vla.robot_io.sim import SimRobotConfig


@dataclass
class RobotConfig(draccus.ChoiceRegistry):
    @classmethod
    def default_choice_name(cls) -> str:
        return "sim"

    def make(self) -> Robot:
        raise NotImplementedError(f"{type(self).__name__} must define make()")


@dataclass
class CameraConfig(draccus.ChoiceRegistry):
    name: str = "main"  # the camera name the policy was trained with

    def make(self) -> Camera:
        raise NotImplementedError(f"{type(self).__name__} must define make()")


@RobotConfig.register_subclass("sim")
@dataclass
class SimArmConfig(SimRobotConfig, RobotConfig):
    """The Meta-World simulator; it brings its own camera, named after `camera`."""

    def make(self) -> Robot:
        from vla.robot_io.sim import SimRobot

        return SimRobot(self)


@RobotConfig.register_subclass("fake")
@dataclass
class FakeArmConfig(RobotConfig):
    """A fake joint-position arm (dry runs of a server or the loop without hardware)."""

    joints: int = 6
    control_hz: float = 50.0
    embodiment: str = "fake_arm"

    def make(self) -> Robot:
        from vla.robot_io.fake import FakeArm

        return FakeArm(self.joints, self.control_hz, self.embodiment)


@CameraConfig.register_subclass("fake")
@dataclass
class FakeCameraConfig(CameraConfig):
    size: int = 64
    fps: float = 60.0

    def make(self) -> Camera:
        from vla.robot_io.fake import FakeCamera

        return FakeCamera(self.name, self.size, self.fps)
