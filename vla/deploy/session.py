"""Connecting a robot and its cameras for a run, and leaving the arm stopped however the run ends."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vla.deploy.dry_run import DryRunRobot
from vla.deploy.realtime import EStop
from vla.deploy.safety import scale_speed_limits
from vla.robot_io.base import Camera, Robot
from vla.robot_io.config import CameraConfig, RobotConfig

log = logging.getLogger(__name__)


@dataclass
class Session:
    robot: Robot
    cameras: dict[str, Camera]
    on_exit: list[Callable[[], None]] = field(default_factory=list)  # run after the arm is stopped


def make_cameras(configs: list[CameraConfig], robot: Robot) -> dict[str, Camera]:
    """The configured cameras by name, plus the cameras the robot owns (`robot.cameras()`: a simulator's, a
    LeRobot robot's, which the robot connects itself)."""
    cameras = {c.name: c.make() for c in configs}
    owned = robot.cameras() if hasattr(robot, "cameras") else {}
    both = sorted(set(cameras) & set(owned))
    if both:
        raise ValueError(f"camera name(s) {both} are both in --cameras and among the robot's own cameras "
                         f"{sorted(owned)}: give each camera one name")
    return cameras | owned


@contextmanager
def device_session(robot_config: RobotConfig, camera_configs: list[CameraConfig], estop: EStop,
                   dry_run: bool = False, speed_scale: float = 1.0,
                   check: Callable[[Robot], None] | None = None) -> Iterator[Session]:
    """Connect the arm and cameras and arm the e-stop; on every way out stop the arm first, then run
    `session.on_exit` (loop threads, dataset writers), disconnect everything and restore signal handlers.

    dry_run: the arm is read, never commanded (vla.deploy.dry_run). speed_scale < 1: the driver's own speeds and
    the safety layer's speed limits are that fraction of the configured ones. check: called with the robot
    before it connects (connecting may already move something, e.g. a gripper's activation)."""
    if speed_scale != 1.0:
        robot_config = robot_config.with_speed_scale(speed_scale)
    if dry_run:
        robot_config = robot_config.for_dry_run()
    robot = robot_config.make()
    if speed_scale != 1.0:
        robot.spec = scale_speed_limits(robot.spec, speed_scale)
    if dry_run:
        robot = DryRunRobot(robot)
    if check is not None:
        check(robot)
    robot.connect()
    session = Session(robot, {})
    try:
        session.cameras = make_cameras(camera_configs, robot)
        for camera in session.cameras.values():
            camera.connect()
        estop.install_signal_handlers()
        estop.watch_keyboard()
        yield session
    finally:
        # each step on its own: a failing stop (lost connection) must not skip closing the rest
        steps = [robot.stop, *session.on_exit, *(c.disconnect for c in session.cameras.values()), robot.disconnect,
                 estop.restore_signal_handlers]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("cleanup step %s failed", getattr(step, "__qualname__", step))
