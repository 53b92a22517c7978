"""`deploy.py --dry_run`: the whole loop runs (cameras, policy, action schedule, safety layer, step logs),
and no motion command reaches the arm.

`DryRunRobot` wraps the real driver: it connects and reads the robot's state as usual, keeps every action
the safety layer passed (`would_send`; deploy.py writes them to actions_episode_<i>.csv) and holds the arm
instead of sending it, and skips `reset()` where resetting moves the arm (a UR arm with a home pose). `hold`
and `stop`, which keep the arm where it is, still reach the driver: they kick a UR controller's watchdog,
which would otherwise end the control script, and step a simulator's clock. Connecting still does what
the driver does to connect: a UR uploads its RTDE control script and activates an inactive Robotiq gripper
(its fingers open and close once), a LeRobot arm enables torque and holds where it is.
Because the arm does not follow, every action is checked against the unmoved pose: the joint speed limits
then clip the later actions of a chunk harder than in a real run.
"""

from __future__ import annotations

import logging

import numpy as np

from vla.robot_io.base import Robot, RobotState

log = logging.getLogger(__name__)


class DryRunRobot:
    """A `Robot` that is read but never commanded. Other attributes (a simulator's instruction, success,
    cameras) are the wrapped robot's."""

    def __init__(self, robot: Robot):
        self.robot = robot
        self.spec = robot.spec
        self.would_send: list[np.ndarray] = []

    def __getattr__(self, name: str):
        return getattr(self.robot, name)

    def connect(self) -> None:
        self.robot.connect()
        log.warning("dry run: %s is connected and read, but no action is sent to it", self.spec.embodiment)

    def reset(self) -> None:
        if getattr(self.robot, "reset_moves_arm", True):
            log.info("dry run: not resetting %s (its reset moves the arm)", self.spec.embodiment)
            return
        self.robot.reset()

    def get_state(self) -> RobotState:
        return self.robot.get_state()

    def send_action(self, action: np.ndarray) -> None:
        if not self.would_send:
            log.info("dry run: first action not sent: %s", np.round(np.asarray(action), 4).tolist())
        self.would_send.append(np.asarray(action).copy())
        self.robot.hold()

    def hold(self) -> None:
        self.robot.hold()

    def stop(self) -> None:
        self.robot.stop()

    def disconnect(self) -> None:
        self.robot.disconnect()
