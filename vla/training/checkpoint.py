"""Training state saved beside a policy checkpoint, for resuming only: <ckpt>/training_state/.

The policy itself (config, weights, statistics) is written by `vla.checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, step: int, extra: dict) -> None:
    """Optimiser tensors to safetensors, the rest (step, param-group settings) to JSON."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    save_file(tensors, str(path / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    (path / "state.json").write_text(json.dumps({"step": step, "scalars": scalars, "param_groups": groups, **extra}))


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore optimiser state saved by save_training_state; returns the JSON record (with "step")."""
    path = Path(path)
    record = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(record["scalars"].items()):
        pid, slot = key.split(".", 1)
        state.setdefault(int(pid), {})[slot] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in record["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return record
