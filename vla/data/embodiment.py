"""What a checkpoint knows about each robot its data came from, so a deployment can be checked against it.

A LeRobot dataset records its action / state names and fps, but not whether its actions are
joint positions or end-effector displacements. vla's own writers (`vla-demos`, `vla-record`)
put that in `meta/vla_embodiment.json` beside LeRobot's metadata; for other datasets give
`--data.action_kind`, or describe the dataset with an embodiment registry entry
(`vla.data.registry`, `--data.embodiment_config`), which then supplies names, kind and fps.
The description is saved with the checkpoint (in norm_stats.json) and carried in the deploy
`PolicySpec`; `deploy.py` refuses an arm whose action names, action kind or control rate differ
from the training data's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

ACTION_KINDS = ("joint_position", "ee_delta")  # = vla.robot_io.base.ActionKind
EMBODIMENT_FILE = Path("meta") / "vla_embodiment.json"


@dataclass
class EmbodimentInfo:
    """action_names [D] / state_names [S] in dataset order; action_kind: one of ACTION_KINDS, or "" for action-free
    data (D = 0: video without action labels, which has no kind); fps: the dataset's frame rate, i.e. the rate its
    actions are meant to be executed at."""

    action_names: list[str]
    state_names: list[str]
    action_kind: str
    fps: float

    def __post_init__(self) -> None:
        if self.action_names or self.action_kind:
            check_action_kind(self.action_kind)

    @property
    def has_actions(self) -> bool:
        return bool(self.action_names)

    def to_dict(self) -> dict:
        return asdict(self)


def check_action_kind(action_kind: str) -> str:
    """`action_kind`, or a ValueError unless it is one of ACTION_KINDS."""
    if action_kind not in ACTION_KINDS:
        raise ValueError(f"action kind must be one of {ACTION_KINDS}; got {action_kind!r}")
    return action_kind


def write_action_kind(dataset_root: str | Path, action_kind: str) -> None:
    """Record beside a LeRobot dataset what kind of actions it holds (read back by `read_action_kind`)."""
    check_action_kind(action_kind)
    path = Path(dataset_root) / EMBODIMENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"action_kind": action_kind}))


def recorded_action_kind(dataset_root: str | Path) -> str:
    """The action kind vla's writers recorded beside a dataset; "" when there is no record."""
    path = Path(dataset_root) / EMBODIMENT_FILE
    return json.loads(path.read_text())["action_kind"] if path.exists() else ""


def read_action_kind(dataset_root: str | Path, configured: str = "") -> str:
    """The dataset's action kind: `configured` (--data.action_kind) when given, else the recorded one; an error
    when neither says, since a policy of unknown action kind could drive an arm in the wrong space."""
    path = Path(dataset_root) / EMBODIMENT_FILE
    recorded = recorded_action_kind(dataset_root)
    if configured and recorded and configured != recorded:
        raise ValueError(f"--data.action_kind={configured!r} contradicts the dataset's {path} ({recorded!r})")
    kind = configured or recorded
    if not kind:
        raise ValueError(f"the dataset at {dataset_root} does not say what its actions are: pass "
                         f"--data.action_kind joint_position (target joint positions) or ee_delta (tool "
                         f"displacements), so that deploy.py can refuse an arm that takes the other kind")
    return check_action_kind(kind)
