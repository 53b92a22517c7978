"""`deploy.py --dry_run`: the whole loop runs (cameras, policy, action schedule, safety layer, step logs),
and no motion command reaches the arm.

`DryRunRobot` wraps the real driver: it connects and reads the robot's state as usual, keeps every
action the safety layer passed (`would_send`; deploy.py writes them to actions_episode_<i>.csv) and
holds the arm instead of sending it, and skips the move of `reset()` where resetting moves the arm (a
UR arm with a home pose: only its control script is restarted). `hold` and `stop`, which keep the arm
where it is, still reach the driver: they kick a UR controller's watchdog, which would otherwise end
the control script, and step a simulator's clock.

Connecting still does what the driver does to connect: a UR uploads its RTDE control script, a
LeRobot arm enables torque and holds where it is (and goes limp on disconnect unless its
disable_torque_on_disconnect is false). deploy.py turns a Robotiq gripper's activation off
(`RobotConfig.for_dry_run`): an inactive gripper is refused, not moved. Because the arm does not
follow, every action is checked against the unmoved pose: the joint speed limits then clip the later
actions of a chunk harder than in a real run.
"""

from __future__ import annotations

import logging

import numpy as np

from vla.robot_io.base import Robot, RobotState

log = logging.getLogger(__name__)
FORWARDED = ("instruction", "success", "episode_done", "cameras", "latest_frame", "config", "reset_moves_arm")


class DryRunRobot:
    """A `Robot` that is read but never commanded. Other attributes (a simulator's instruction, success,
    cameras) are the wrapped robot's."""

    def __init__(self, robot: Robot):
        self.robot = robot
        self.spec = robot.spec
        self.would_send: list[np.ndarray] = []

    def __getattr__(self, name: str):
        if name in FORWARDED:  # what the loop and session read; nothing that could command the arm
            return getattr(self.__dict__["robot"], name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def connect(self) -> None:
        self.robot.connect()
        log.warning("dry run: %s is connected and read, but no action is sent to it", self.spec.embodiment)

    def reset(self) -> None:
        if not getattr(self.robot, "reset_moves_arm", True):
            self.robot.reset()
        elif hasattr(self.robot, "restart"):  # the part of a reset that does not move the arm (UR: control script)
            log.info("dry run: %s restarted without moving home", self.spec.embodiment)
            self.robot.restart()
        else:
            log.info("dry run: not resetting %s (its reset moves the arm)", self.spec.embodiment)

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
