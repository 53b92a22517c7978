"""Simulated tasks (Meta-World) and scripted demonstrations."""

from vla.sim.metaworld_env import (
    ACTION_NAMES,
    CONTROL_FPS,
    EMBODIMENT,
    STATE_NAMES,
    TASKS,
    MetaWorldEnv,
    TaskSpec,
    get_task,
)

__all__ = ["ACTION_NAMES", "CONTROL_FPS", "EMBODIMENT", "STATE_NAMES", "TASKS", "MetaWorldEnv", "TaskSpec", "get_task"]
