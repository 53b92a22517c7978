"""Fake devices that follow the `Camera` / `Robot` protocols, for tests, benchmarks and dry runs.

They are named as fakes everywhere they are used; no real run relies on them. Each can inject
the faults the deploy loop must survive: a camera that stalls or returns garbage, an arm that
goes into a protective stop.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from vla.robot_io.base import Frame, Limits, RobotSpec, RobotState


class FakeCamera:
    """Synthetic frames at `fps`. fault: None | "stall" (read blocks forever after `fault_after`
    frames) | "garbage" (a float [7, 7] array instead of a picture after `fault_after` frames)."""

    def __init__(self, name: str = "fake", size: int = 64, fps: float = 60.0, fault: str | None = None,
                 fault_after: int = 0, seed: int = 0):
        self.name, self.size, self.fps = name, size, fps
        self.fault, self.fault_after = fault, fault_after
        self.frames = 0
        self.rng = np.random.default_rng(seed)
        self.unblock = threading.Event()

    def connect(self) -> None:
        pass

    def read(self) -> Frame:
        time.sleep(1.0 / self.fps)
        self.frames += 1
        if self.fault and self.frames > self.fault_after:
            if self.fault == "stall":
                self.unblock.wait()  # a hung driver: never returns unless the test releases it
            elif self.fault == "garbage":
                return Frame(image=self.rng.random((7, 7)), timestamp=time.monotonic())
        image = self.rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
        return Frame(image=image, timestamp=time.monotonic())

    def disconnect(self) -> None:
        self.unblock.set()


class FakeArm:
    """A joint-position arm that records what it is told. Joints move to their targets at once.

    `commands` holds every action sent, `holds` counts hold() calls, `stopped` tells whether
    stop() was called. fault_at_step: report a protective stop from that many actions on.
    """

    reset_moves_arm = False

    def __init__(self, joints: int = 6, control_hz: float = 50.0, embodiment: str = "fake_arm",
                 fault_at_step: int | None = None):
        names = [f"joint_{i}" for i in range(joints)]
        self.spec = RobotSpec(
            embodiment=embodiment, action_kind="joint_position", action_names=names + ["gripper"],
            state_names=names + ["gripper"], control_hz=control_hz,
            limits=Limits(action_low=[-3.2] * joints + [0.0], action_high=[3.2] * joints + [1.0],
                          joint_position_low=[-3.0] * joints, joint_position_high=[3.0] * joints,
                          joint_velocity=[2.0] * joints, joint_acceleration=[20.0] * joints),
        )
        self.joints = joints
        self.fault_at_step = fault_at_step
        self.position = np.zeros(joints + 1)
        self.commands: list[np.ndarray] = []
        self.holds = 0
        self.stopped = False
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def reset(self) -> None:
        self.stopped = False

    def get_state(self) -> RobotState:
        fault = None
        if self.fault_at_step is not None and len(self.commands) >= self.fault_at_step:
            fault = "protective stop (fake)"
        return RobotState(state=self.position.astype(np.float32), timestamp=time.monotonic(),
                          joint_positions=self.position[: self.joints].copy(), fault=fault)

    def send_action(self, action: np.ndarray) -> None:
        if self.stopped:
            raise RuntimeError("FakeArm is stopped")
        self.commands.append(np.asarray(action, dtype=np.float64).copy())
        self.position = self.commands[-1].copy()

    def hold(self) -> None:
        self.holds += 1

    def stop(self) -> None:
        self.stopped = True

    def disconnect(self) -> None:
        self.stop()
        self.connected = False
