"""Checkpoints as folders, like an HF model repo; no pickle anywhere.

    <ckpt>/config.yaml         ModelConfig (backbone, head type and settings, dims, norm mode)
    <ckpt>/model.safetensors   every weight of the policy (backbone + head)
    <ckpt>/norm_stats.json     normalisation statistics per embodiment, and the mode
    <ckpt>/backbone/           the VLM's HF config and processor (no weights): rebuilds offline
    <ckpt>/meta.json           format version, head type, embodiments, parameter counts
    <ckpt>/bac_schedule.json   optional: block-caching schedules per step count (vla.action_heads.bac)
    <ckpt>/action_tokenizer/   token heads only: the fitted action tokenizer (vla.tokenizers; action_tokenizer.json
                               + its files), required by them, never present for the others
    <ckpt>/adapter/            LoRA runs only: the adapters (peft format) and the tensors trained in full beside
                               them (vla.training.lora); model.safetensors then holds the merged weights
    <ckpt>/training_state/     resume only, written by vla.training.checkpoint (optimiser, step, RNG states)

Deploy, the policy server and evaluation load checkpoints from here without importing training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file, save_model

from vla.action_heads.bac import SCHEDULE_FILE, load_schedules, save_schedules
from vla.config import ModelConfig, from_yaml, to_yaml
from vla.tokenizers import ActionTokenizer

TOKENIZER_DIR = "action_tokenizer"

FORMAT_VERSION = 1
REQUIRED_FILES = ("config.yaml", "model.safetensors", "norm_stats.json", "meta.json", "backbone")
PARTS = ("backbone", "head")


def save_policy(policy, path: str | Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint folder. weights: the tensors to write instead of the policy's own, under a plain
    policy's names (a LoRA-trained policy passes its merged weights: vla.training.lora.save_trained)."""
    path = Path(path)
    tokenizer = policy.head.action_tokenizer
    if policy.config.head.tokenizer_config is not None and tokenizer is None:  # before anything is written
        raise ValueError(f"the {policy.config.head.type} head has no fitted action tokenizer to save with it; "
                         f"attach one with policy.head.set_action_tokenizer (vla-train fits it)")
    path.mkdir(parents=True, exist_ok=True)
    backbone = dataclasses.replace(policy.config.backbone, pretrained="backbone")  # relative to the folder
    config = dataclasses.replace(policy.config, backbone=backbone)
    (path / "config.yaml").write_text(to_yaml(config))
    policy.backbone.save_structure(path / "backbone")
    if weights is None:
        save_model(policy, str(path / "model.safetensors"))  # save_model handles tied weights
    else:
        weights = without_shared(weights)
        save_file(weights, str(path / "model.safetensors"))
    policy.normalizer.save(path / "norm_stats.json")
    meta = {
        "format_version": FORMAT_VERSION,
        "head": policy.config.head.type,
        "embodiments": policy.embodiments,
        "parameters": parameter_counts(policy) if weights is None else {
            "total": sum(t.numel() for t in weights.values()),
            **{part: sum(t.numel() for n, t in weights.items() if n.startswith(f"{part}.")) for part in PARTS}},
    }
    if tokenizer is not None:
        tokenizer.save(path / TOKENIZER_DIR)
        meta["action_tokenizer"] = {"type": tokenizer.config.type, "vocab_size": tokenizer.vocab_size,
                                    "embodiment": tokenizer.embodiment}
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
    # read first, so that a missing or foreign tokenizer fails before the weights are loaded
    tokenizer = load_tokenizer(path, config, normalizer.embodiments) if config.head.tokenizer_config else None
    backbone = VLMBackbone(backbone_config, load_weights=False, lm_head=config.head.uses_vocabulary)
    policy = VLAPolicy(config, normalizer, backbone=backbone)
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
    if tokenizer is not None:
        policy.head.set_action_tokenizer(tokenizer)
    return policy.to(device).eval()


def load_tokenizer(path: Path, config: ModelConfig, embodiments: list[str]) -> ActionTokenizer:
    """The checkpoint's action tokenizer; errors name a missing folder or file and a tokenizer fit on an
    embodiment the checkpoint has no statistics for."""
    folder = path / TOKENIZER_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {path} has a {config.head.type} head but no {TOKENIZER_DIR}/ folder: "
                                f"the head predicts {config.head.tokenizer_config.type} tokens and needs the tokenizer "
                                f"it was trained with (saved there by save_pretrained)")
    tokenizer = ActionTokenizer.load(folder)
    if tokenizer.embodiment not in embodiments:
        raise ValueError(f"the action tokenizer in {folder} was fit on embodiment {tokenizer.embodiment!r}, but "
                         f"checkpoint {path} was trained on {embodiments}; its tokens would mean other actions")
    return tokenizer


def parameter_counts(policy) -> dict[str, int]:
    return {"total": count_parameters(policy), **{part: count_parameters(getattr(policy, part)) for part in PARTS}}


def without_shared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One name per tensor storage (tied weights keep their first name, as save_model does), each contiguous:
    safetensors refuses shared tensors. load_policy fills the others through the tie."""
    kept, seen = {}, set()
    for name, tensor in weights.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            kept[name] = tensor.contiguous()
    return kept


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
