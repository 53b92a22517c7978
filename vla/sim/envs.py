"""What the demo recorder and closed-loop evaluation need from a simulated task, and one `make_env` for every simulator.

A task name picks the simulator family: `robosuite/<Task>/<Arm>[/<Controller>]` (e.g. `robosuite/Lift/UR5e`) is
robosuite (vla.sim.robosuite_env); any other name is a Meta-World v3 task (vla.sim.metaworld_env). `sim_spec(task)`
says what a dataset of that task holds (embodiment, fps, action / state names, action kind, cameras) without
building a simulator, so one dataset can be checked to hold one embodiment before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

ROBOSUITE_PREFIX = "robosuite/"


@dataclass(frozen=True)
class SimSpec:
    """What a simulated task's frames are: `embodiment` (the registry / dataset robot_type name), control `fps`,
    action names [D] and their coarse `action_kind` (joint_position | ee_delta), robot-only state names [S] (with
    `privileged_state`, the object position follows: diagnostics only), the simulator's default `cameras`."""

    task: str
    instruction: str
    embodiment: str
    fps: int
    action_names: tuple[str, ...]
    state_names: tuple[str, ...]
    action_kind: str
    cameras: tuple[str, ...]


class SimEnv(Protocol):
    """A seeded simulated task with camera images and a scripted expert (MetaWorldEnv, RobosuiteEnv).

    Observations are dicts: "images" uint8 [C, S, S, 3] (one picture per camera, in `cameras` order), "image" the
    first of them [S, S, 3], "state" float32 [len(state_names)] (robot-only), "instruction" str.
    `reset(seed)` gives the placement of that seed (a pure function of task and seed); `step(action [D])` returns
    (observation, success, done), done on success or after `max_steps` actions; `expert_action()` is the scripted
    expert's next action [D] (it may read privileged simulator state; the policy never does).
    """

    task: str
    instruction: str
    embodiment: str
    cameras: tuple[str, ...]
    max_steps: int

    def reset(self, seed: int | None = None) -> dict[str, Any]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool]: ...

    def expert_action(self) -> np.ndarray: ...

    def close(self) -> None: ...


def is_robosuite(task: str) -> bool:
    return task.startswith(ROBOSUITE_PREFIX)


def sim_spec(task: str, privileged_state: bool = False) -> SimSpec:
    """What `task`'s frames are, without building its simulator; a ValueError naming the known tasks otherwise."""
    if is_robosuite(task):
        from vla.sim.robosuite_env import robosuite_spec

        return robosuite_spec(task, privileged_state)
    from vla.sim.metaworld_env import metaworld_spec

    return metaworld_spec(task, privileged_state)


def make_env(task: str, seed: int, image_size: int = 64, cameras: Sequence[str] | None = None, max_steps: int = 200,
             privileged_state: bool = False) -> SimEnv:
    """The simulator of `task` at `seed`. `cameras`: the simulator's camera names or the model image slots of its
    embodiment registry entry (e.g. "primary", "wrist"), in the order the observation's images should have;
    None = `sim_spec(task).cameras`."""
    if is_robosuite(task):
        from vla.sim.robosuite_env import RobosuiteEnv

        return RobosuiteEnv(task, seed=seed, image_size=image_size, cameras=cameras, max_steps=max_steps,
                            privileged_state=privileged_state)
    from vla.sim.metaworld_env import MetaWorldEnv

    cameras = resolve_cameras(sim_spec(task).embodiment, cameras or ("corner",))
    if len(cameras) != 1:
        raise ValueError(f"Meta-World tasks render one camera; got {list(cameras)} for {task!r}")
    return MetaWorldEnv(task, seed=seed, image_size=image_size, camera=cameras[0], max_steps=max_steps,
                        privileged_state=privileged_state)


def camera_slot_mask(embodiment: str, cameras: Sequence[str]) -> list[bool]:
    """For each of the policy's `cameras` (model.cameras), whether the embodiment has a camera for it: False at an
    image slot its registry entry maps to null (e.g. the wrist slot of a Meta-World Sawyer in a policy trained on a
    mixture with wrist cameras); such a slot is fed zeros and masked, not rendered."""
    from vla.data.registry import load_embodiment, registry_names

    if embodiment not in registry_names():
        return [True] * len(cameras)
    entry = load_embodiment(embodiment)
    missing = {s.name for s in entry.cameras if s.missing}
    return [name not in missing for name in cameras]


def resolve_cameras(embodiment: str, cameras: Sequence[str]) -> tuple[str, ...]:
    """Simulator camera names for `cameras`: a model image slot of the embodiment's registry entry (e.g. "primary")
    becomes the camera it maps ("observation.images.<camera>"); any other name is taken as a camera name, which the
    simulator checks. A model trained through the registry names slots; one trained without it, cameras."""
    from vla.data.registry import load_embodiment, registry_names

    if isinstance(cameras, str):
        raise TypeError(f"cameras must be a sequence of names; got the string {cameras!r}")
    entry = load_embodiment(embodiment) if embodiment in registry_names() else None
    slots = {s.name: s.key for s in entry.cameras} if entry is not None else {}
    resolved = []
    for name in cameras:
        if name in slots:
            if slots[name] is None:
                raise ValueError(f"image slot {name!r} of {embodiment!r} ({entry.source}) has no camera (null)")
            name = slots[name].removeprefix("observation.images.")
        resolved.append(name)
    return tuple(resolved)
