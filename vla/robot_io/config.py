"""Typed, registered device configs: `--robot.type sim|ur|lerobot|fake` and a list of cameras
`type: realsense|opencv|fake`. Each config's `make()` builds the device; driver packages
(pyrealsense2, ur_rtde, lerobot's motor buses) are imported only when that device is made.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import draccus

from vla.robot_io.base import Camera, Robot
from vla.robot_io.lerobot_arm import LeRobotArmConfig
from vla.robot_io.opencv import OpenCVConfig
from vla.robot_io.realsense import RealSenseConfig
from vla.robot_io.sim import SimRobotConfig
from vla.robot_io.ur import URConfig


@dataclass
class RobotConfig(draccus.ChoiceRegistry, ABC):
    @classmethod
    def default_choice_name(cls) -> str:
        return "sim"

    @abstractmethod
    def make(self) -> Robot:
        """Build the (unconnected) robot this config describes."""

    def with_speed_scale(self, speed_scale: float) -> RobotConfig:
        """This config with the driver's own motion speeds scaled (deploy.py --speed_scale); the safety layer's
        limits are scaled separately (vla.deploy.safety.scale_speed_limits). Default: the driver has none."""
        return self

    def for_dry_run(self) -> RobotConfig:
        """This config with whatever connecting would move turned off (deploy.py --dry_run). Default: nothing."""
        return self


@dataclass
class CameraConfig(draccus.ChoiceRegistry, ABC):
    name: str = "main"  # the camera name the policy was trained with

    @abstractmethod
    def make(self) -> Camera:
        """Build the (unconnected) camera this config describes."""


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


@RobotConfig.register_subclass("ur")
@dataclass
class URArmConfig(URConfig, RobotConfig):
    """A Universal Robots arm over RTDE (ur_rtde): `--robot.type ur --robot.host 192.168.1.10`."""

    def make(self) -> Robot:
        from vla.robot_io.ur import URRobot

        return URRobot(self)

    def with_speed_scale(self, speed_scale: float) -> RobotConfig:
        """The move home, moveL's tool speed, the acceleration of speedL / moveL and the gripper's speed."""
        gripper_speed = max(1, round(self.robotiq.speed * speed_scale))
        return dataclasses.replace(self, home_speed=self.home_speed * speed_scale,
                                   home_acceleration=self.home_acceleration * speed_scale,
                                   tool_speed=self.tool_speed * speed_scale,
                                   tool_acceleration=self.tool_acceleration * speed_scale,
                                   robotiq=dataclasses.replace(self.robotiq, speed=gripper_speed))

    def for_dry_run(self) -> RobotConfig:
        """Activating a Robotiq gripper opens and closes its fingers: a dry run refuses an inactive one instead."""
        return dataclasses.replace(self, robotiq=dataclasses.replace(self.robotiq, activate=False))


@RobotConfig.register_subclass("lerobot")
@dataclass
class LeRobotRobotConfig(LeRobotArmConfig, RobotConfig):
    """A LeRobot arm: `--robot.type lerobot --robot.robot so101_follower --robot.port /dev/ttyACM0 --robot.id arm`."""

    def make(self) -> Robot:
        from vla.robot_io.lerobot_arm import LeRobotArm

        return LeRobotArm(self)


@CameraConfig.register_subclass("realsense")
@dataclass
class RealSenseCameraConfig(RealSenseConfig, CameraConfig):
    """An Intel RealSense (pyrealsense2): `{type: realsense, name: corner, serial: "123456", depth: true}`."""

    def make(self) -> Camera:
        from vla.robot_io.realsense import RealSenseCamera

        return RealSenseCamera(self)


@CameraConfig.register_subclass("opencv")
@dataclass
class OpenCVCameraConfig(OpenCVConfig, CameraConfig):
    """A camera or video file read by LeRobot's OpenCVCamera: `{type: opencv, name: wrist, index_or_path: "0"}`."""

    def make(self) -> Camera:
        from vla.robot_io.opencv import OpenCVCamera

        return OpenCVCamera(self)
