"""Checkpoints as folders, like an HF model repo; no pickle anywhere.

    <ckpt>/config.yaml         ModelConfig (backbone, head type and settings, dims, norm mode)
    <ckpt>/model.safetensors   every weight of the policy (backbone + head)
    <ckpt>/norm_stats.json     normalisation statistics per embodiment, and the mode
    <ckpt>/backbone/           the VLM's HF config and processor (no weights): rebuilds offline
    <ckpt>/meta.json           format version, head type, embodiments, parameter counts
    <ckpt>/bac_schedule.json   optional: block-caching schedules per step count (vla.action_heads.bac)
    <ckpt>/training_state/     resume only: optimiser moments (safetensors), step + run record (state.json),
                               every RNG of each rank (rng_rank<r>.safetensors + .json)
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file, save_model

from vla.action_heads.bac import SCHEDULE_FILE, load_schedules, save_schedules
from vla.config import ModelConfig, from_yaml, to_yaml

FORMAT_VERSION = 1
REQUIRED_FILES = ("config.yaml", "model.safetensors", "norm_stats.json", "meta.json", "backbone")


def save_policy(policy, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone = dataclasses.replace(policy.config.backbone, pretrained="backbone")  # relative to the folder
    config = dataclasses.replace(policy.config, backbone=backbone)
    (path / "config.yaml").write_text(to_yaml(config))
    policy.backbone.save_structure(path / "backbone")
    save_model(policy, str(path / "model.safetensors"))  # save_model handles tied weights
    policy.normalizer.save(path / "norm_stats.json")
    meta = {
        "format_version": FORMAT_VERSION,
        "head": policy.config.head.type,
        "embodiments": policy.embodiments,
        "parameters": {"total": count_parameters(policy), "backbone": count_parameters(policy.backbone),
                       "head": count_parameters(policy.head)},
    }
    (path / "meta.json").write_text(json.dumps(meta, indent=2))
    if getattr(policy.head, "bac_schedules", None):
        save_schedules(policy.head.bac_schedules, path / SCHEDULE_FILE)
    return path


def load_policy(path: str | Path, expected_head: str | None = None, device: str | torch.device = "cpu"):
    """Rebuild a VLAPolicy from a checkpoint folder, offline. Errors name what is missing or wrong."""
    from vla.backbones import VLMBackbone
    from vla.data.normalize import Normalizer
    from vla.policy import VLAPolicy

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {missing}")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version {meta.get('format_version')}; "
                         f"this vla reads version {FORMAT_VERSION}")
    if expected_head is not None and meta["head"] != expected_head:
        raise ValueError(f"checkpoint {path} was made for head '{meta['head']}', not '{expected_head}'")
    config = from_yaml(ModelConfig, str(path / "config.yaml"))
    backbone_config = dataclasses.replace(config.backbone, pretrained=str(path / "backbone"))
    config = dataclasses.replace(config, backbone=backbone_config)
    normalizer = Normalizer.load(path / "norm_stats.json")
    policy = VLAPolicy(config, normalizer, backbone=VLMBackbone(backbone_config, load_weights=False))
    state = load_file(str(path / "model.safetensors"), device=str(device))
    missing_keys, unexpected = policy.load_state_dict(state, strict=False)
    # save_model keeps one name of each tied pair; the others are filled by the tie. Anything else is an error.
    missing = sorted(set(missing_keys) - tied_parameter_names(policy))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config: missing weights {missing[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if (path / SCHEDULE_FILE).exists():
        for schedule in load_schedules(path / SCHEDULE_FILE):
            policy.head.add_bac_schedule(schedule)
    return policy.to(device).eval()


def tied_parameter_names(module: torch.nn.Module) -> set[str]:
    """Names of parameters that share their tensor with another parameter (tied weights)."""
    first_name: dict[int, str] = {}
    tied: set[str] = set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            tied.update((name, first_name[id(param)]))
        else:
            first_name[id(param)] = name
    return tied


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, step: int, extra: dict) -> None:
    """Optimiser tensors to safetensors, the rest (step, param-group settings, `extra`) to JSON."""
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


def rng_state_files(path: str | Path, rank: int) -> tuple[Path, Path]:
    path = Path(path)
    return path / f"rng_rank{rank}.safetensors", path / f"rng_rank{rank}.json"


def save_rng_state(path: str | Path, rank: int, generator: torch.Generator) -> None:
    """Every RNG one rank's training step draws from: torch CPU (and CUDA), the batch sampler's `generator`,
    numpy and Python `random`. Tensors (states as uint8, numpy's key) to safetensors, the rest to JSON."""
    tensor_file, json_file = rng_state_files(path, rank)
    tensor_file.parent.mkdir(parents=True, exist_ok=True)
    _, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "sampler": generator.get_state(),
               "numpy_key": torch.from_numpy(np_key.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tensor_file))
    version, internal, gauss_next = random.getstate()
    record = {"python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
              "numpy": {"pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)}}
    json_file.write_text(json.dumps(record))


def load_rng_state(path: str | Path, rank: int, generator: torch.Generator) -> None:
    """Restore what save_rng_state wrote for `rank` into the global RNGs and `generator`."""
    tensor_file, json_file = rng_state_files(path, rank)
    if not (tensor_file.exists() and json_file.exists()):
        raise FileNotFoundError(f"{path} has no RNG state for rank {rank} ({tensor_file.name}); it was written by "
                                f"a run with fewer processes or by an older vla")
    tensors = load_file(str(tensor_file))
    record = json.loads(json_file.read_text())
    torch.set_rng_state(tensors["torch_cpu"])
    generator.set_state(tensors["sampler"])
    if torch.cuda.is_available() and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    numpy = record["numpy"]
    np.random.set_state(("MT19937", tensors["numpy_key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = record["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
