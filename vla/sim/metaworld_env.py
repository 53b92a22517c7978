"""Meta-World v3 tasks behind a small, seeded, image-based interface.

The policy sees a camera image, a robot-only state and an instruction. Object positions are
deliberately left out of the state: the policy has to find the puck / button in the image.

Placement: Meta-World's MT1 benchmark samples only 50 placements per task and picks one at
random on each reset, so its seeds would repeat placements across demo and evaluation seeds.
Instead we unfreeze the environment's own reset randomisation (`_random_reset_space`) and
draw it from an RNG seeded with the episode seed: a placement is a pure function of
(task, seed), and distinct seeds give distinct placements.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless off-screen rendering unless the user chose otherwise

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.utils import seeding  # noqa: E402

from vla.sim.envs import SimSpec  # noqa: E402
from vla.sim.render import OffscreenRenderer  # noqa: E402
from vla.sim.tasks import TASKS, TaskSpec, get_task  # noqa: E402, F401  (re-exported)

EMBODIMENT = "metaworld_sawyer"
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening", "goal_x", "goal_y", "goal_z"]
# For diagnostics only: the robot state plus the first object's position, which a real robot does
# not have. Comparing a policy trained with it against one without measures what vision costs.
PRIVILEGED_STATE_NAMES = STATE_NAMES + ["object_x", "object_y", "object_z"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
# Meta-World steps the simulation 5 x 2.5 ms per action: 80 Hz control (its metadata render_fps).
CONTROL_FPS = 80
# The Sawyer's hand moves action * 0.01 m per step, inside this box (Meta-World's hand_low / hand_high).
ACTION_SCALE_M = 0.01
HAND_LOW, HAND_HIGH = (-0.5, 0.4, 0.05), (0.5, 1.0, 0.5)
MUJOCO_CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
# Named variants of Meta-World's cameras: (MuJoCo camera, vertical field of view in degrees).
# "corner_zoom" frames the table workspace (fovy 30 instead of 45): the puck covers ~5 px at 96 px
# instead of ~3, as a real camera would be placed to frame the workspace rather than the whole robot.
CAMERA_VARIANTS = {"corner_zoom": ("corner", 30.0)}
CAMERAS = MUJOCO_CAMERAS + tuple(CAMERA_VARIANTS)


def metaworld_spec(task: str, privileged_state: bool = False) -> SimSpec:
    """What a Meta-World task's frames are (vla.sim.envs.sim_spec)."""
    spec = get_task(task)
    return SimSpec(task=spec.name, instruction=spec.instruction, embodiment=EMBODIMENT, fps=CONTROL_FPS,
                   action_names=tuple(ACTION_NAMES),
                   state_names=tuple(PRIVILEGED_STATE_NAMES if privileged_state else STATE_NAMES),
                   action_kind="ee_delta", cameras=("corner",))


def robot_state(full_obs: np.ndarray, goal_in_state: bool, privileged: bool = False) -> np.ndarray:
    """Robot-only state float32 [7] from Meta-World's 39-D observation.

    Layout: hand xyz (obs[0:3]), gripper opening (obs[3]), goal xyz (obs[36:39]) or zeros;
    with privileged=True, [10]: the object xyz (obs[4:7]) follows (diagnostics only).
    """
    goal = full_obs[36:39] if goal_in_state else np.zeros(3)
    parts = [full_obs[0:4], goal] + ([full_obs[4:7]] if privileged else [])
    return np.concatenate(parts).astype(np.float32)


class FastRenderer:
    """Meta-World's named cameras (and CAMERA_VARIANTS) through the shared `OffscreenRenderer`.

    About 16 ms per frame instead of ~200 ms for Meta-World's default renderer on CPU (EGL).
    Sites (goal markers) are hidden: they are debugging aids, not part of the scene.
    """

    def __init__(self, model: mujoco.MjModel, image_size: int, camera: str) -> None:
        if camera not in CAMERAS:
            raise ValueError(f"unknown Meta-World camera {camera!r}; known cameras: {list(CAMERAS)}")
        mujoco_camera, fovy = CAMERA_VARIANTS.get(camera, (camera, None))
        if fovy is not None:
            model.cam_fovy[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, mujoco_camera)] = fovy
        self._renderer = OffscreenRenderer(model, image_size)
        self._camera = mujoco_camera
        # The "corner" cameras are defined with a downward image y axis in Meta-World's XML,
        # which renders upside down; flipping both axes (a 180 degree turn) makes them upright.
        self._rotate = camera.startswith("corner")

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """uint8 [H, W, 3] picture from the camera."""
        image = self._renderer.render(data, self._camera)
        return np.ascontiguousarray(image[::-1, ::-1]) if self._rotate else image

    def close(self) -> None:
        self._renderer.close()


class MetaWorldEnv:
    """A Meta-World v3 task with seeded placements, camera images and a scripted expert (a vla.sim.envs.SimEnv).

    Observations are dicts: "image" uint8 [H, W, 3], "images" the same as [1, H, W, 3], "state" float32 [7],
    "instruction" str. Actions are float [4]: end-effector delta xyz and gripper effort, each in [-1, 1].
    """

    embodiment = EMBODIMENT

    def __init__(self, task: str, seed: int, image_size: int = 64, camera: str = "corner",
                 max_steps: int = 200, privileged_state: bool = False) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        self.spec = get_task(task)
        if image_size <= 0:
            raise ValueError(f"image_size must be positive; got {image_size}")
        self.seed = seed
        self.image_size = image_size
        self.camera = camera
        self.privileged_state = privileged_state
        self.max_steps = min(max_steps, 500)  # Meta-World refuses to step past 500
        self._env = ALL_V3_ENVIRONMENTS[self.spec.env_name]()
        self._make_goal_observable_and_unfrozen()
        self._expert = ENV_POLICY_MAP[self.spec.env_name]()
        self._renderer = FastRenderer(self._env.model, image_size, camera)
        self._full_obs: np.ndarray | None = None
        self._steps = 0

    def _make_goal_observable_and_unfrozen(self) -> None:
        env = self._env
        env._partially_observable = False  # goal in obs[36:39], which the expert needs
        del env.sawyer_observation_space  # a cached_property that depends on the flag above
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # draw placements from env.np_random, not the global numpy RNG

    @property
    def instruction(self) -> str:
        return self.spec.instruction

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def cameras(self) -> tuple[str, ...]:
        return (self.camera,)

    @property
    def model(self) -> mujoco.MjModel:
        return self._env.model

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Start an episode at the placement of `seed` (default: the current seed).

        Resetting twice with the same seed gives the same placement.
        """
        if seed is not None:
            self.seed = seed
        self._env.np_random, _ = seeding.np_random(self.seed)
        self._full_obs, _ = self._env.reset()
        self._steps = 0
        return self._observation()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool]:
        """Apply one action [4]; returns (observation, success, done).

        done is True on success or when max_steps actions have been taken.
        """
        if self._full_obs is None:
            raise ValueError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 4 finite numbers (dx, dy, dz, gripper); got {action}")
        self._full_obs, _, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = bool(info["success"])
        return self._observation(), success, success or self._steps >= self.max_steps

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted expert action float32 [4] for the current full 39-D state, clipped to the action
        space [-1, 1] as `step` executes it.

        The experts' proportional gains saturate on purpose (raw outputs reach ~+-25), and demos used to record
        the raw values: the 1-99% range a policy normalises by then spanned e.g. [-0.3, 10] for a dimension whose
        executed range is [-1, 1], squeezing every executed action into a fifth of the normalised range and
        training the policy to tell apart values the arm executes identically."""
        if self._full_obs is None:
            raise ValueError("call reset() before expert_action()")
        with warnings.catch_warnings():
            # The experts' gains saturate on purpose; Meta-World warns about it on every step.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = self._expert.get_action(self._full_obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def object_positions(self) -> np.ndarray:
        """Privileged float64 [14] object pose block (obs[4:18]), for tests and debugging only."""
        if self._full_obs is None:
            raise ValueError("call reset() before object_positions()")
        return self._full_obs[4:18].copy()

    def render(self) -> np.ndarray:
        """uint8 [H, W, 3] camera picture of the current scene."""
        return self._renderer.render(self._env.data)

    def _observation(self) -> dict[str, Any]:
        assert self._full_obs is not None
        image = self.render()
        return {
            "image": image,
            "images": image[None],
            "state": robot_state(self._full_obs, self.spec.goal_in_state, self.privileged_state),
            "instruction": self.spec.instruction,
        }

    def close(self) -> None:
        self._renderer.close()
        self._env.close()
