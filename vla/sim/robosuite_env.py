"""robosuite tasks behind the same interface as Meta-World's (vla.sim.envs.SimEnv): a second simulator whose arms
have other action spaces, so a dataset mixture is really cross-embodiment.

Task names are `robosuite/<Task>/<Arm>[/<Controller>]`, e.g. `robosuite/Lift/UR5e`. Each arm has a default
controller: the Panda takes robosuite's OSC_POSE, 7-D end-effector steps [dx, dy, dz, drx, dry, drz,
gripper] in [-1, 1] (x 0.05 m and x 0.5 rad, a rotation vector, in the robot base frame); the UR5e takes
JOINT_POSITION with absolute targets, 7-D [6 joint positions in rad, gripper], the same names and kind as
vla.robot_io.ur's servoJ mode, which drives a real UR5e. The gripper value is robosuite's: the sign closes (+) or
opens (-) the fingers a little each step (0.2 of the stroke), 0 keeps them.

The state is robot-only: the arm's joint positions (rad) and the gripper's first joint (m for the Panda's
fingers, rad for the UR5e's Robotiq 2F-85 knuckle). With `privileged_state` the cube position follows
(diagnostics only, as for Meta-World). Cameras: `agentview` (third person) and `robot0_eye_in_hand` (wrist),
rendered with the shared fast renderer (vla.sim.render) instead of robosuite's own (~70 ms a camera at 96 px here),
which also gives upright pictures where robosuite's come out upside down.

Placement: robosuite draws the cube's position and yaw and the arm's start-pose noise from numpy's global RNG. A
reset seeds it with the episode seed (and restores it afterwards), so a placement is a pure function of (task,
seed). The simulator is built once per env (`hard_reset=False`) under seed 0, so the cube's size, drawn at build
time, is the same in every env of a task.

The scripted expert (`LiftExpert`) plans in Cartesian space from the privileged cube pose: above the cube with the
gripper turned to the cube's faces, down, close, lift. An arm adapter turns each Cartesian target into the arm's
action: an OSC step, or joint targets by damped least-squares differential IK on MuJoCo's site Jacobian.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless off-screen rendering unless the user chose otherwise

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from vla.robot_io.ur import JOINTS as UR_JOINTS  # noqa: E402
from vla.sim.envs import ROBOSUITE_PREFIX, SimSpec, resolve_cameras  # noqa: E402
from vla.sim.render import OffscreenRenderer  # noqa: E402

CONTROL_FPS = 20  # robosuite's default control_freq: one action per 50 ms (25 MuJoCo steps of 2 ms)
CAMERAS = ("agentview", "robot0_eye_in_hand")
COLLISION_GEOM_GROUP = 0  # robosuite puts collision meshes in group 0 and visual meshes in group 1
# OSC_POSE scales an action in [-1, 1] to this step (robosuite's default output_max): metres, radians
OSC_POSITION_STEP_M, OSC_ROTATION_STEP_RAD = 0.05, 0.5
OSC_ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz")
# PD gain of our JOINT_POSITION controller (robosuite's default is 50): a target 50 ms ahead is reached in ~1 step
JOINT_KP = 150.0


@dataclass(frozen=True)
class ArmSpec:
    """An arm robosuite builds: its joint names in our state / action (in robosuite's joint order), the unit of its
    gripper's first joint (the state's gripper value) and the controller a task name without one uses."""

    joints: tuple[str, ...]
    gripper_unit: str
    default_controller: str


# Not the Sawyer: robosuite 1.5.1's Sawyer model does not compile on mujoco 3.3.0 ("mesh volume is too small:
# robot0_head_1").
ARMS = {
    "Panda": ArmSpec(tuple(f"joint{i}" for i in range(1, 8)), "m", "OSC_POSE"),
    # PolyScope's joint names, as vla.robot_io.ur names a real UR5e's (robosuite: shoulder_pan_joint, ...)
    "UR5e": ArmSpec(tuple(UR_JOINTS), "rad", "JOINT_POSITION"),
}
CONTROLLERS = {"OSC_POSE": "ee_delta", "JOINT_POSITION": "joint_position"}  # -> action kind
TASK_INSTRUCTIONS = {"Lift": "lift the cube"}


@dataclass(frozen=True)
class RobosuiteTask:
    """A parsed task name: robosuite environment, arm and controller."""

    name: str
    env_name: str
    arm: str
    controller: str

    @property
    def instruction(self) -> str:
        return TASK_INSTRUCTIONS[self.env_name]

    @property
    def embodiment(self) -> str:
        """Registry / dataset robot_type name, e.g. robosuite_ur5e_joint (configs/embodiments/<name>.yaml)."""
        return f"robosuite_{self.arm.lower()}_{'osc' if self.controller == 'OSC_POSE' else 'joint'}"

    @property
    def action_names(self) -> tuple[str, ...]:
        arm = OSC_ACTION_NAMES if self.controller == "OSC_POSE" else ARMS[self.arm].joints
        return (*arm, "gripper")

    def state_names(self, privileged: bool = False) -> tuple[str, ...]:
        return (*ARMS[self.arm].joints, "gripper", *(("cube_x", "cube_y", "cube_z") if privileged else ()))


def parse_task(task: str) -> RobosuiteTask:
    """`robosuite/<Task>/<Arm>[/<Controller>]` -> RobosuiteTask; a ValueError naming the known values otherwise."""
    parts = task.removeprefix(ROBOSUITE_PREFIX).split("/")
    if not task.startswith(ROBOSUITE_PREFIX) or len(parts) not in (2, 3):
        raise ValueError(f"a robosuite task is named robosuite/<Task>/<Arm>[/<Controller>], e.g. robosuite/Lift/UR5e; "
                         f"got {task!r}")
    env_name, arm = parts[:2]
    if env_name not in TASK_INSTRUCTIONS:
        raise ValueError(f"unknown robosuite task {env_name!r} in {task!r}; tasks with a scripted expert: "
                         f"{sorted(TASK_INSTRUCTIONS)}")
    if arm not in ARMS:
        raise ValueError(f"unknown robosuite arm {arm!r} in {task!r}; known arms: {sorted(ARMS)}")
    controller = parts[2] if len(parts) == 3 else ARMS[arm].default_controller
    if controller not in CONTROLLERS:
        raise ValueError(f"unknown robosuite controller {controller!r} in {task!r}; known controllers: "
                         f"{sorted(CONTROLLERS)}")
    return RobosuiteTask(task, env_name, arm, controller)


def robosuite_spec(task: str, privileged_state: bool = False) -> SimSpec:
    """What a robosuite task's frames are (vla.sim.envs.sim_spec)."""
    t = parse_task(task)
    return SimSpec(task=task, instruction=t.instruction, embodiment=t.embodiment, fps=CONTROL_FPS,
                   action_names=t.action_names, state_names=t.state_names(privileged_state),
                   action_kind=CONTROLLERS[t.controller], cameras=CAMERAS)


def _import_robosuite() -> Any:
    """robosuite, without the import-time log lines about optional extras (a private macros file, robosuite_models,
    the GR1's whole-body IK) that concern none of the arms here, and with its per-env INFO lines off."""
    logging.disable(logging.WARNING)
    try:
        import robosuite
    finally:
        logging.disable(logging.NOTSET)
    logging.getLogger("robosuite_logs").setLevel(logging.WARNING)
    return robosuite


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """numpy's global RNG seeded with `seed` inside, restored after (robosuite draws placements from it)."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def controller_config(task: RobosuiteTask) -> dict:
    """robosuite's composite controller config for the task's arm: its default (BASIC with an OSC_POSE arm) or the
    arm part replaced by JOINT_POSITION with absolute targets."""
    from robosuite.controllers import load_composite_controller_config, load_part_controller_config

    config = load_composite_controller_config(robot=task.arm)
    arm = config["body_parts"]["right"]
    if arm["type"] != "OSC_POSE":
        raise ValueError(f"robosuite's default controller for {task.arm} is {arm['type']}, not OSC_POSE: the action "
                         f"names of {task.name!r} would be wrong")
    if task.controller == "JOINT_POSITION":
        joint = load_part_controller_config(default_controller="JOINT_POSITION")
        joint.update(input_type="absolute", kp=JOINT_KP, gripper=arm["gripper"])
        config["body_parts"]["right"] = joint
    return config


class RobosuiteEnv:
    """A robosuite task (see the module docstring) as a vla.sim.envs.SimEnv.

    Observations are dicts: "images" uint8 [C, S, S, 3] in `cameras` order (cameras=() renders none: C = 0, for
    fast expert checks), "image" the first [S, S, 3] (absent when C = 0),
    "state" float32 [J + 1] (joint positions, gripper; + cube xyz with privileged_state), "instruction" str.
    Actions are float [D] as `action_names` says (D = 7 for Panda OSC and UR5e joint control).
    """

    def __init__(self, task: str, seed: int, image_size: int = 64, cameras: Sequence[str] | None = None,
                 max_steps: int = 200, privileged_state: bool = False) -> None:
        self.spec = parse_task(task)
        if image_size <= 0:
            raise ValueError(f"image_size must be positive; got {image_size}")
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive; got {max_steps}")
        self.seed = seed
        self.image_size = image_size
        self.max_steps = max_steps
        self.privileged_state = privileged_state
        self.cameras = resolve_cameras(self.embodiment, cameras if cameras is not None else CAMERAS)
        suite = _import_robosuite()
        with seeded_global_numpy(0):
            self._env = suite.make(
                self.spec.env_name, robots=self.spec.arm, controller_configs=controller_config(self.spec),
                has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, control_freq=CONTROL_FPS,
                horizon=max_steps, ignore_done=True, hard_reset=False, reward_shaping=False)
        self._robot = self._env.robots[0]
        self._renderer = OffscreenRenderer(self.model, image_size, hidden_geom_groups=(COLLISION_GEOM_GROUP,))
        try:
            self._check_arm()
            for camera in self.cameras:
                self._renderer.check_camera(camera, "robosuite")
        except ValueError:
            self.close()
            raise
        self._arm_dofs = np.asarray(self._robot._ref_joint_vel_indexes)
        self._arm_qpos = np.asarray(self._robot._ref_joint_pos_indexes)
        self._gripper_qpos = int(self._robot._ref_gripper_joint_pos_indexes["right"][0])
        self._site = int(self._robot.eef_site_id["right"])
        limits = self.model.jnt_range[[self.model.dof_jntid[d] for d in self._arm_dofs]]
        self._joint_low, self._joint_high = limits[:, 0], limits[:, 1]
        self._expert = LiftExpert(self)
        self._steps = 0
        self._started = False

    def _check_arm(self) -> None:
        joints = [j.removeprefix("robot0_") for j in self._robot.robot_joints]
        if len(joints) != len(ARMS[self.spec.arm].joints):
            raise ValueError(f"robosuite's {self.spec.arm} has joints {joints}; ARMS expects "
                             f"{len(ARMS[self.spec.arm].joints)}")

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def instruction(self) -> str:
        return self.spec.instruction

    @property
    def embodiment(self) -> str:
        return self.spec.embodiment

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.spec.action_names

    @property
    def model(self) -> mujoco.MjModel:
        return self._env.sim.model._model

    @property
    def data(self) -> mujoco.MjData:
        return self._env.sim.data._data

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Start an episode at the placement of `seed` (default: the current seed)."""
        if seed is not None:
            self.seed = seed
        with seeded_global_numpy(self.seed):
            self._env.reset()
        self._steps = 0
        self._started = True
        self._expert.reset()
        return self._observation()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool]:
        """Apply one action [D]; returns (observation, success, done), done on success or after max_steps."""
        if not self._started:
            raise ValueError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        width = len(self.action_names)
        if action.shape != (width,) or not np.isfinite(action).all():
            raise ValueError(f"action must be {width} finite numbers {list(self.action_names)}; got {action}")
        if self.spec.controller == "OSC_POSE":
            action = np.clip(action, -1.0, 1.0)
        else:  # absolute joint targets: keep them inside the joints' range
            action = np.concatenate([np.clip(action[:-1], self._joint_low, self._joint_high),
                                     np.clip(action[-1:], -1.0, 1.0)])
        self._env.step(action)
        self._steps += 1
        success = self.success()
        return self._observation(), success, success or self._steps >= self.max_steps

    def success(self) -> bool:
        """robosuite's own success check (Lift: the cube's centre over 4 cm above the table)."""
        return bool(self._env._check_success())

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action float32 [D] for the current state."""
        if not self._started:
            raise ValueError("call reset() before expert_action()")
        return self._expert.action()

    def object_positions(self) -> np.ndarray:
        """Privileged float64 [7] cube pose (xyz, quaternion wxyz), for the expert, tests and debugging only."""
        body = self._env.cube_body_id
        return np.concatenate([self.data.xpos[body], self.data.xquat[body]])

    # --- what the expert and the arm adapters read -------------------------------------------------------------

    def hand_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Grip site position [3] (m) and orientation [3, 3] in the world frame (= the robot base frame here)."""
        return self.data.site_xpos[self._site].copy(), self.data.site_xmat[self._site].reshape(3, 3).copy()

    def arm_action(self, position: np.ndarray, rotation: np.ndarray, gripper: float, max_step_m: float) -> np.ndarray:
        """The action [D] moving the grip site towards `position` [3] / `rotation` [3, 3], at most `max_step_m` a
        step, with gripper command `gripper`."""
        here, orientation = self.hand_pose()
        offset = position - here
        offset *= min(1.0, max_step_m / max(np.linalg.norm(offset), 1e-9))
        turn = Rotation.from_matrix(rotation @ orientation.T).as_rotvec()
        if self.spec.controller == "OSC_POSE":
            arm = np.concatenate([offset / OSC_POSITION_STEP_M, turn / OSC_ROTATION_STEP_RAD]).clip(-1.0, 1.0)
        else:
            arm = self._joint_targets(offset, turn)
        return np.append(arm, gripper).astype(np.float32)

    def _joint_targets(self, offset: np.ndarray, turn: np.ndarray, damping: float = 0.05) -> np.ndarray:
        """Joint positions [J] that move the grip site by `offset` [3] and turn it by `turn` [3] (rotation vector):
        damped least squares on the site Jacobian, from the current joint positions."""
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jacp, jacr, self._site)
        jac = np.concatenate([jacp, jacr])[:, self._arm_dofs]
        twist = np.concatenate([offset, turn])
        dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(6), twist)
        return self.data.qpos[self._arm_qpos] + dq

    # --- observation -------------------------------------------------------------------------------------------

    def state(self) -> np.ndarray:
        """Robot-only state float32 [J + 1] (+ cube xyz with privileged_state)."""
        parts = [self.data.qpos[self._arm_qpos], self.data.qpos[self._gripper_qpos:self._gripper_qpos + 1]]
        if self.privileged_state:
            parts.append(self.object_positions()[:3])
        return np.concatenate(parts).astype(np.float32)

    def render(self) -> np.ndarray:
        """uint8 [C, S, S, 3]: one picture per camera (C = 0 with cameras=(): nothing is rendered)."""
        pictures = [self._renderer.render(self.data, camera) for camera in self.cameras]
        return np.stack(pictures) if pictures else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def _observation(self) -> dict[str, Any]:
        images = self.render()
        first = {"image": images[0]} if len(images) else {}
        return {"images": images, **first, "state": self.state(), "instruction": self.instruction}

    def close(self) -> None:
        self._renderer.close()
        self._env.close()


class LiftExpert:
    """Scripted Lift: above the cube (gripper turned to its faces) -> down -> close -> lift, from the privileged cube
    pose. Phases advance when the grip site is within tolerance of the phase's target (or after a time-out); a
    cube that slips out while lifting sends it back to the start."""

    HOVER_M, LIFT_M = 0.06, 0.12  # above the cube's centre: approach height, lift height
    CLOSE_STEPS = 8  # steps with the gripper closing before lifting (robosuite closes 0.2 of the stroke a step)
    PHASE_TIMEOUT = 60
    MAX_STEP_M = 0.03  # at most 0.6 m/s

    def __init__(self, env: RobosuiteEnv) -> None:
        self.env = env
        self.reset()

    def reset(self) -> None:
        self.phase, self.phase_steps = "hover", 0
        self.rotation: np.ndarray | None = None  # grip orientation, fixed at the first step of an attempt
        self.lift_to: np.ndarray | None = None  # where the hand goes once the gripper has closed

    def _grip_rotation(self, cube_quat: np.ndarray) -> np.ndarray:
        """The current hand orientation turned about the vertical so its axes line up with the cube's faces (the
        smallest such turn: a cube's faces repeat every 90 degrees)."""
        _, hand = self.env.hand_pose()
        cube_x = Rotation.from_quat(cube_quat, scalar_first=True).as_matrix()[:, 0]
        yaw = np.arctan2(cube_x[1], cube_x[0]) - np.arctan2(hand[1, 0], hand[0, 0])
        yaw = (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
        return Rotation.from_euler("z", yaw).as_matrix() @ hand

    def _advance(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def action(self) -> np.ndarray:
        pose = self.env.object_positions()
        cube, here = pose[:3], self.env.hand_pose()[0]
        if self.rotation is None:
            self.rotation = self._grip_rotation(pose[3:])
        self.phase_steps += 1
        timed_out = self.phase_steps > self.PHASE_TIMEOUT
        if self.phase == "hover":
            target, gripper = cube + [0.0, 0.0, self.HOVER_M], -1.0
            if np.linalg.norm(target - here) < 0.01 or timed_out:
                self._advance("descend")
        elif self.phase == "descend":
            target, gripper = cube, -1.0
            if np.linalg.norm(target - here) < 0.008 or timed_out:
                self._advance("close")
        elif self.phase == "close":
            target, gripper = cube, 1.0
            if self.phase_steps >= self.CLOSE_STEPS:
                self._advance("lift")
                self.lift_to = here + [0.0, 0.0, self.LIFT_M]  # straight up from where it grasped
        else:  # lift
            target, gripper = self.lift_to, 1.0
            if np.linalg.norm(cube - here) > 0.04:  # it slipped out: open and start again
                self.reset()
                return self.action()
        return self.env.arm_action(target, self.rotation, gripper, self.MAX_STEP_M)
