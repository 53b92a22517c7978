"""Training state saved beside a policy checkpoint, for resuming only: <ckpt>/training_state/.

    <ckpt>/training_state/state.json            step, run record, samples seen, the loss window being logged
    <ckpt>/training_state/optimizer.safetensors single process / DDP: the optimiser moments (param-group settings in
                                                state.json)
    <ckpt>/training_state/model.safetensors     single process / DDP with EMA: the trained weights (the policy
                                                folder then holds the EMA weights)
    <ckpt>/training_state/accelerate/           DeepSpeed / FSDP: accelerator.save_state, every rank's partition of
                                                the weights and optimiser (DeepSpeed's / torch.distributed.checkpoint's
                                                own format)
    <ckpt>/training_state/ema*.safetensors      with EMA: its fp32 averages (vla.training.ema; one file per rank when
                                                they are partitioned)
    <ckpt>/training_state/rng_rank<r>.*         every RNG of each rank (safetensors + JSON)

The policy itself (config, consolidated weights, statistics) is written by `vla.checkpoint`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

SHARDED_STATE_DIR = "accelerate"  # accelerator.save_state's folder under DeepSpeed / FSDP
TRAINED_WEIGHTS = "model.safetensors"


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer | None, step: int, extra: dict) -> None:
    """Optimiser tensors to safetensors, the rest (step, param-group settings, `extra`) to JSON; without an optimiser
    (its state is in the sharded folder) only the JSON."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if optimizer is None:
        (path / "state.json").write_text(json.dumps({"step": step, **extra}))
        return
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


def read_training_record(path: str | Path) -> dict:
    """The JSON record save_training_state wrote (step, run record, ...), without touching an optimiser."""
    return json.loads((Path(path) / "state.json").read_text())


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore optimiser state saved by save_training_state; returns the JSON record (with "step")."""
    path = Path(path)
    record = read_training_record(path)
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(record["scalars"].items()):
        pid, slot = key.split(".", 1)
        state.setdefault(int(pid), {})[slot] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in record["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return record


def save_trained_weights(path: str | Path, model: nn.Module) -> None:
    """The trained (not averaged) weights, when the policy folder holds EMA weights (save_model handles ties)."""
    save_model(model, str(Path(path) / TRAINED_WEIGHTS))


def load_trained_weights(path: str | Path, model: nn.Module) -> None:
    """Restore what save_trained_weights wrote; a missing file names the likely cause."""
    file = Path(path) / TRAINED_WEIGHTS
    if not file.exists():
        raise FileNotFoundError(f"{path} has no {TRAINED_WEIGHTS}: the checkpoint was written without EMA, so its "
                                f"policy weights are the trained ones")
    load_model(model, str(file))


def rng_state_files(path: str | Path, rank: int) -> tuple[Path, Path]:
    path = Path(path)
    return path / f"rng_rank{rank}.safetensors", path / f"rng_rank{rank}.json"


def save_rng_state(path: str | Path, rank: int) -> None:
    """Every global RNG one rank's training step draws from: torch CPU (and CUDA), numpy and Python `random`
    (which samples the batches hold needs no RNG state: vla.data.mixture derives them from the step).
    Tensors (states as uint8, numpy's key) to safetensors, the rest to JSON."""
    tensor_file, json_file = rng_state_files(path, rank)
    tensor_file.parent.mkdir(parents=True, exist_ok=True)
    _, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_key": torch.from_numpy(np_key.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tensor_file))
    version, internal, gauss_next = random.getstate()
    record = {"python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
              "numpy": {"pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)}}
    json_file.write_text(json.dumps(record))


def load_rng_state(path: str | Path, rank: int) -> None:
    """Restore what save_rng_state wrote for `rank` into the global RNGs."""
    tensor_file, json_file = rng_state_files(path, rank)
    if not (tensor_file.exists() and json_file.exists()):
        raise FileNotFoundError(f"{path} has no RNG state for rank {rank} ({tensor_file.name}); it was written by "
                                f"a run with fewer processes or by an older vla")
    tensors = load_file(str(tensor_file))
    record = json.loads(json_file.read_text())
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available() and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    numpy = record["numpy"]
    np.random.set_state(("MT19937", tensors["numpy_key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = record["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
