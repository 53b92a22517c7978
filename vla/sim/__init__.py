"""Simulated tasks (Meta-World; robosuite through vla.sim.envs.make_env) and scripted demonstrations."""

from vla.sim.envs import SimEnv, SimSpec, make_env, sim_spec
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
           "SimEnv", "SimSpec", "TaskSpec", "get_task", "make_env", "sim_spec", "tasks_in"]
