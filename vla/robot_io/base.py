"""The `Camera` and `Robot` protocols that the deploy loop drives, and the data they exchange.

Every device — a RealSense, a UR arm, a LeRobot SO-101, the simulator, a test fake — sits behind
these two protocols, so the control loop, the safety layer and the recorder never know which
one they talk to. Nothing here imports torch: this runs on the robot PC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

ActionKind = Literal["joint_position", "ee_delta"]


@dataclass
class Frame:
    """One camera picture.

    image: uint8 [H, W, 3] RGB.
    timestamp: time.monotonic() seconds when the frame was captured (the watchdog ages it).
    depth: optional uint16 [H, W] depth in millimetres, aligned to the colour image.
    """

    image: np.ndarray
    timestamp: float
    depth: np.ndarray | None = None


@dataclass
class RobotState:
    """What the arm reports at one control step.

    state: float32 [S] the proprio vector the policy was trained on, in the robot's own units.
    joint_positions: float [J] or None (arms commanded in Cartesian space may leave it out).
    tcp_position: float [3] tool centre point xyz in metres (the workspace box is checked on it) or None.
    fault: None when healthy, else why the arm cannot move (e.g. "protective stop").
    gripper_object_detected: the gripper's fingers stopped on an object; None without a gripper that tells.
    """

    state: np.ndarray
    timestamp: float
    joint_positions: np.ndarray | None = None
    tcp_position: np.ndarray | None = None
    fault: str | None = None
    gripper_object_detected: bool | None = None


@dataclass
class Limits:
    """Hard limits the safety layer enforces; a None field is not checked.

    action_low / action_high: [D] bounds on the raw action vector.
    joint_*: [J] joint position bounds (rad or the robot's unit), max speed (unit/s) and acceleration (unit/s^2).
    workspace_low / workspace_high: [3] Cartesian box (metres) the tool centre point must stay in.
    """

    action_low: list[float] | None = None
    action_high: list[float] | None = None
    joint_position_low: list[float] | None = None
    joint_position_high: list[float] | None = None
    joint_velocity: list[float] | None = None
    joint_acceleration: list[float] | None = None
    workspace_low: list[float] | None = None
    workspace_high: list[float] | None = None


@dataclass
class RobotSpec:
    """What an arm accepts.

    action_kind: "joint_position" (action[:J] are target joint positions, the rest e.g. a gripper)
    or "ee_delta" (action[:3] is a tool displacement of `ee_delta_scale` metres per unit).
    """

    embodiment: str
    action_kind: ActionKind
    action_names: list[str]
    state_names: list[str]
    control_hz: float
    limits: Limits = field(default_factory=Limits)
    ee_delta_scale: float = 1.0
    # the rate each action is meant for when it is not control_hz: a simulator that advances a fixed simulated
    # time per action (Meta-World: 1/80 s) whatever the wall-clock rate it is stepped at
    action_fps: float | None = None
    # an ee_delta arm that adds each displacement to a target of its own rather than to its measured position (a
    # simulator's mocap target): the safety layer then bounds that target, which runs ahead of the measured tool
    integrates_ee_deltas: bool = False

    @property
    def action_rate(self) -> float:
        """Actions per second of robot time, which must match the training data's fps."""
        return self.action_fps or self.control_hz

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)


@runtime_checkable
class Camera(Protocol):
    """A colour camera. `read` blocks for the next frame and raises on a device error."""

    name: str

    def connect(self) -> None: ...

    def read(self) -> Frame: ...

    def disconnect(self) -> None: ...


@runtime_checkable
class Robot(Protocol):
    """An arm (with its gripper).

    `send_action` commands one action [D] of `spec.action_kind`; `hold` keeps the arm where it
    is (zero velocity) without ending the session; `stop` brings it to rest for good (it is
    called on every exit path and must be safe to call twice). `reset` starts an episode: the
    simulator places new objects, a real arm may move to its home pose.
    """

    spec: RobotSpec

    def connect(self) -> None: ...

    def reset(self) -> None: ...

    def get_state(self) -> RobotState: ...

    def send_action(self, action: np.ndarray) -> None: ...

    def hold(self) -> None: ...

    def stop(self) -> None: ...

    def disconnect(self) -> None: ...


def check_frame(frame: Frame, camera: str) -> None:
    """Raise ValueError naming the camera unless frame.image is a finite uint8 [H, W, 3] picture."""
    image = frame.image
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"camera {camera!r} returned a bad frame: expected uint8 [H, W, 3], got {dtype} {shape}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"camera {camera!r} returned a {image.shape[0]}x{image.shape[1]} frame; too small to use")
