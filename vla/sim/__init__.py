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
from vla.sim.tasks import DIFFICULTIES, tasks_in

__all__ = ["ACTION_NAMES", "CONTROL_FPS", "DIFFICULTIES", "EMBODIMENT", "STATE_NAMES", "TASKS", "MetaWorldEnv",
           "TaskSpec", "get_task", "tasks_in"]
