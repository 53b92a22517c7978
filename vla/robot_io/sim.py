"""The Meta-World simulator as a `Robot` + `Camera` pair, so deploy.py can drive it like a real arm.

The camera shows the picture rendered after the latest simulator step. All simulator calls
(stepping and rendering) happen in the thread that calls `send_action` / `hold`: MuJoCo's
off-screen GL context belongs to one thread. MuJoCo and Meta-World are imported only when a
simulated arm is made, so a robot PC without them can still parse deploy configs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from vla.robot_io.base import Frame, Limits, RobotSpec, RobotState

FIRST_EVAL_SEED = 100_000  # = vla.sim.demos.EVAL_SEED_START (kept literal to avoid importing MuJoCo here)


@dataclass
class SimRobotConfig:
    task: str = "reach"
    seed: int = FIRST_EVAL_SEED  # episode i uses seed + i: never a demo seed
    image_size: int = 96
    camera: str = "corner"
    max_steps: int = 200
    control_hz: float = 30.0


def sim_spec(control_hz: float) -> RobotSpec:
    from vla.sim.metaworld_env import (
        ACTION_NAMES,
        ACTION_SCALE_M,
        CONTROL_FPS,
        EMBODIMENT,
        HAND_HIGH,
        HAND_LOW,
        STATE_NAMES,
    )

    return RobotSpec(
        embodiment=EMBODIMENT, action_kind="ee_delta", action_names=list(ACTION_NAMES), state_names=list(STATE_NAMES),
        control_hz=control_hz, ee_delta_scale=ACTION_SCALE_M, action_fps=CONTROL_FPS,
        integrates_ee_deltas=True,
        limits=Limits(action_low=[-1.0] * 4, action_high=[1.0] * 4,
                      workspace_low=list(HAND_LOW), workspace_high=list(HAND_HIGH)),
    )


class SimRobot:
    """A Meta-World Sawyer. `episode_done` / `success` tell the loop when the task ended."""

    reset_moves_arm = False  # a new simulated scene; no real arm moves (a dry run still resets)

    def __init__(self, config: SimRobotConfig):
        self.config = config
        self.spec = sim_spec(config.control_hz)
        self.env = None  # MetaWorldEnv once connected
        self.episode = -1
        self.success = False
        self.episode_done = False
        self.stopped = False
        self._obs: dict | None = None
        self._obs_time = 0.0
        self._gripper = 0.0

    @property
    def instruction(self) -> str:
        return self._env().instruction

    def connect(self) -> None:
        from vla.sim.metaworld_env import MetaWorldEnv

        c = self.config
        self.env = MetaWorldEnv(c.task, seed=c.seed, image_size=c.image_size, camera=c.camera, max_steps=c.max_steps)

    def reset(self) -> None:
        self.episode += 1
        self._set(self._env().reset(seed=self.config.seed + self.episode))
        self.success = self.episode_done = self.stopped = False
        self._gripper = 0.0

    def get_state(self) -> RobotState:
        obs = self._observation()
        return RobotState(state=obs["state"].copy(), timestamp=self._obs_time, tcp_position=obs["state"][:3].copy())

    def send_action(self, action: np.ndarray) -> None:
        if self.stopped:
            raise RuntimeError("the simulated arm is stopped; call reset() to start a new episode")
        obs, success, done = self._env().step(action)
        self._set(obs)
        self._gripper = float(action[3])
        self.success = self.success or success
        self.episode_done = done

    def hold(self) -> None:
        """One step of zero hand motion with the gripper as last commanded: the arm stays put."""
        if not self.stopped:
            self.send_action(np.array([0.0, 0.0, 0.0, self._gripper], dtype=np.float32))

    def stop(self) -> None:
        self.stopped = True

    def disconnect(self) -> None:
        self.stop()
        if self.env is not None:
            self.env.close()
            self.env = None

    def latest_frame(self) -> Frame:
        return Frame(image=self._observation()["image"], timestamp=self._obs_time)

    def cameras(self) -> dict[str, SimCamera]:
        """The simulator's own camera, named after `config.camera`."""
        return {self.config.camera: SimCamera(self, self.config.camera)}

    def _set(self, obs: dict) -> None:
        self._obs, self._obs_time = obs, time.monotonic()

    def _observation(self) -> dict:
        if self._obs is None:
            raise RuntimeError("the simulated arm has no observation yet: call connect() and reset() first")
        return self._obs

    def _env(self):
        if self.env is None:
            raise RuntimeError("the simulated arm is not connected: call connect() first")
        return self.env


class SimCamera:
    """The simulator's camera: the frame rendered at the latest step of `robot`."""

    def __init__(self, robot: SimRobot, name: str = "corner"):
        self.robot = robot
        self.name = name

    def connect(self) -> None:
        pass

    def read(self) -> Frame:
        while self.robot._obs is None:  # like a camera still starting up: no frame before the first reset
            time.sleep(0.01)
        return self.robot.latest_frame()

    def disconnect(self) -> None:
        pass
