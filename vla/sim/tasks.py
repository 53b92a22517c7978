"""The 50 Meta-World v3 tasks: instruction, difficulty group and what the robot-only state may carry.

Difficulty groups: Seo et al. 2022, "Masked World Models for Visual Control" (arXiv 2206.14244), which sorts
Meta-World's 50 tasks into easy (28), medium (11), hard (6) and very hard (5). VLA papers report Meta-World
(MT50) per these groups (SmolVLA, arXiv 2506.01844; Evo-1, arXiv 2511.04555), and LeRobot 0.4.4 ships the same
split as DIFFICULTY_TO_TASKS in lerobot/envs/metaworld_config.json; tests/test_suite.py checks this table
against that copy task by task.

Every task has Meta-World's scripted expert (metaworld.policies), so `vla-demos` can record any of them.
The instructions of reach, push, pick-place, button-press-topdown and drawer-open are the ones this repo has
trained on from the start; the others paraphrase Meta-World's task descriptions, one distinct sentence per task.
"""

from __future__ import annotations

from dataclasses import dataclass

DIFFICULTIES = ("easy", "medium", "hard", "very_hard")


@dataclass(frozen=True)
class TaskSpec:
    """One Meta-World task.

    goal_in_state: whether the goal position goes into state[4:7]. Only where Meta-World draws the goal freely
    and marks it with nothing visible (a hidden site): the policy could not know it otherwise. Where the goal is
    derived from an object (the button, the drawer, the shelf, the puck's own row in sweep), it would leak where
    the object is, so the slot holds zeros and the policy must find the object in the image.
    """

    name: str
    env_name: str
    instruction: str
    goal_in_state: bool
    difficulty: str


# (name, instruction, goal_in_state): goal_in_state read off each env's reset_model in metaworld 3.1 (see above)
_GROUPS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "easy": (
        ("button-press", "press the button from the front", False),
        ("button-press-topdown", "press the button from the top", False),
        ("button-press-topdown-wall", "reach past the wall and press the button from the top", False),
        ("button-press-wall", "reach past the wall and press the button from the front", False),
        ("coffee-button", "press the button on the coffee machine", False),
        ("dial-turn", "turn the dial half a turn", False),
        ("door-close", "close the door", False),
        ("door-lock", "lock the door by turning the lock clockwise", False),
        ("door-open", "open the door", False),
        ("door-unlock", "unlock the door by turning the lock counter-clockwise", False),
        ("drawer-close", "push the drawer closed", False),
        ("drawer-open", "open the drawer", False),
        ("faucet-close", "turn the faucet clockwise", False),
        ("faucet-open", "turn the faucet counter-clockwise", False),
        ("handle-press", "press the handle down", False),
        ("handle-press-side", "press the handle down from the side", False),
        ("handle-pull", "pull the handle up", False),
        ("handle-pull-side", "pull the handle up from the side", False),
        ("lever-pull", "pull the lever a quarter turn", False),
        ("plate-slide", "slide the plate into the cabinet", False),
        # the three below move the goal without moving the cabinet body to it (metaworld sets data.xpos, which
        # the next forward pass overwrites, or moves the cabinet to the plate's start): the goal is invisible
        ("plate-slide-back", "slide the plate out of the cabinet to the goal", True),
        ("plate-slide-back-side", "slide the plate sideways out of the cabinet to the goal", True),
        ("plate-slide-side", "slide the plate sideways into the cabinet", True),
        ("reach", "reach the goal", True),
        ("reach-wall", "reach past the wall to the goal", True),
        ("window-close", "slide the window closed", False),
        ("window-open", "slide the window open", False),
        ("peg-unplug-side", "pull the peg out of its socket sideways", False),
    ),
    "medium": (
        ("basketball", "dunk the ball into the basket", False),
        ("bin-picking", "move the puck from one bin into the other", False),
        ("box-close", "put the lid on the box", False),
        ("coffee-pull", "pull the mug from the coffee machine to the goal", True),
        ("coffee-push", "push the mug under the coffee machine", False),
        ("hammer", "hammer the nail into the wall", False),
        ("peg-insert-side", "insert the peg into the hole from the side", False),
        ("push-wall", "push the puck past the wall to the goal", True),
        ("soccer", "kick the ball into the goal", False),
        ("sweep", "sweep the puck off the table", False),
        ("sweep-into", "sweep the puck into the hole", False),
    ),
    "hard": (
        ("assembly", "put the nut onto the peg", False),
        ("hand-insert", "push the block into the hole at the goal", True),
        ("pick-out-of-hole", "pick the puck out of the hole and lift it to the goal", True),
        ("pick-place", "pick up the puck and place it at the goal", True),
        ("push", "push the puck to the goal", True),
        ("push-back", "push the puck back to the goal", True),
    ),
    "very_hard": (
        ("shelf-place", "place the puck on the shelf", False),
        ("disassemble", "lift the nut off the peg", False),
        ("stick-pull", "grasp the stick and pull the box with it to the goal", True),
        ("stick-push", "grasp the stick and push the box with it to the goal", True),
        ("pick-place-wall", "pick up the puck, lift it over the wall and place it at the goal", True),
    ),
}

TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(name, f"{name}-v3", instruction, goal_in_state, difficulty)
    for difficulty, rows in _GROUPS.items()
    for name, instruction, goal_in_state in rows
}


def get_task(task: str) -> TaskSpec:
    """Look a task up by name (Meta-World's without "-v3"); ValueError listing the known tasks otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown Meta-World task {task!r}; known tasks: {sorted(TASKS)}")
    return TASKS[task]


def tasks_in(difficulty: str) -> list[str]:
    """The tasks of one difficulty group, in the table's order."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown Meta-World difficulty {difficulty!r}; known: {list(DIFFICULTIES)}")
    return [name for name, spec in TASKS.items() if spec.difficulty == difficulty]
