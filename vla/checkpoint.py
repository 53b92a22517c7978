"""Checkpoints as folders, like an HF model repo; no pickle anywhere.

    <ckpt>/config.yaml         ModelConfig (backbone, head type and settings, dims, norm mode)
    <ckpt>/model.safetensors   every weight of the policy (backbone + head)
    <ckpt>/norm_stats.json     normalisation statistics per embodiment, and the mode
    <ckpt>/backbone/           the VLM's HF config and processor (no weights): rebuilds offline
    <ckpt>/meta.json           format version, head type, embodiments, parameter counts, the backbone's family and
                               source, the provenance of the code that saved it, the training run (format 2)
    <ckpt>/README.md           the model card (vla.model_card), written from the files above; rewritten by push
    <ckpt>/bac_schedule.json   optional: block-caching schedules per step count (vla.action_heads.bac)
    <ckpt>/action_tokenizer/   token heads only: the fitted action tokenizer (vla.tokenizers; action_tokenizer.json
                               + its files), required by them, never present for the others
    <ckpt>/adapter/            LoRA runs only: the adapters (peft format) and the tensors trained in full beside
                               them (vla.training.lora); model.safetensors then holds the merged weights
    <ckpt>/training_state/     resume only, written by vla.training.checkpoint (optimiser, step, RNG states); never
                               shared (SHARED_PATTERNS)
    <ckpt>/export_check.json   the last checkpoint of a vla-train run: its predictions against the live model's
                               (vla.training.export)

`load_policy` takes such a folder or a hub id (+ revision), resolved through the HF cache (vla.hub).
Deploy, the policy server and evaluation load checkpoints from here without importing training.

Format versions. meta.json's `format_version` is read before anything else: a checkpoint newer than
FORMAT_VERSION is refused, naming both versions; an older one is brought up to date in memory, one
version at a time, by MIGRATIONS (the files are never rewritten: a checkpoint in the HF cache is
read-only; `save_pretrained` writes the current format).
  1: the first format.
  2: meta.json gains "backbone" (family, source), "provenance" (commit, dirty, versions), "training"
     (data, steps; null when saved outside vla-train); README.md model card.
To change the format: bump FORMAT_VERSION, write `_vN_to_vN+1` (plain data in, plain data out; a
`weights` step only when tensors are renamed or reshaped) and add it to MIGRATIONS, then freeze a
checkpoint of the outgoing format next to tests/data/checkpoint_v1 (tests/data/make_format_checkpoint.py,
run with the code of the commit before the change) and add it to the migration test.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import draccus
import torch
import yaml
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor

from vla.action_heads.bac import SCHEDULE_FILE, load_schedules, save_schedules
from vla.config import ModelConfig, to_yaml
from vla.tokenizers import ActionTokenizer

TOKENIZER_DIR = "action_tokenizer"
CARD_FILE = "README.md"

FORMAT_VERSION = 2
REQUIRED_FILES = ("config.yaml", "model.safetensors", "norm_stats.json", "meta.json", "backbone")
PARTS = ("backbone", "head")
# what a checkpoint shares (vla.hub: uploaded, downloaded, replaced on push); fnmatch's * also matches "/"
SHARED_PATTERNS = ["config.yaml", "model.safetensors", "norm_stats.json", "meta.json", "backbone/*", CARD_FILE,
                   SCHEDULE_FILE, f"{TOKENIZER_DIR}/*", "adapter/*"]


@dataclasses.dataclass
class Migration:
    """Turns a checkpoint of one format into the next: `describe` rewrites meta.json and config.yaml (as plain
    data), `weights` (when tensors were renamed or reshaped) the state dict."""

    describe: Callable[[dict, dict], tuple[dict, dict]]
    weights: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None


def _v1_to_v2(meta: dict, config: dict) -> tuple[dict, dict]:
    """Format 1 recorded neither the backbone's source nor the saving code's provenance nor the training run."""
    backbone = {"family": config["backbone"]["family"], "source": None}
    return {**meta, "format_version": 2, "backbone": backbone, "provenance": None, "training": None}, config


MIGRATIONS: dict[int, Migration] = {1: Migration(_v1_to_v2)}  # version -> its step to version + 1


def save_policy(policy, path: str | Path, training: dict | None = None,
                weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `policy` as a checkpoint folder (format FORMAT_VERSION) with its model card. `training`: what the
    training run was (data, steps; vla-train passes it), stored in meta.json and shown on the card. weights: the
    tensors to write instead of the policy's own, under a plain policy's names (a LoRA-trained policy passes its
    merged weights: vla.training.lora.save_trained)."""
    from vla.model_card import write_model_card
    from vla.provenance import git_commit, versions

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
        "backbone": {"family": policy.config.backbone.family, "source": policy.backbone_source},
        "provenance": {**git_commit(), "versions": versions()},
        "training": training,
    }
    if tokenizer is not None:
        tokenizer.save(path / TOKENIZER_DIR)
        meta["action_tokenizer"] = {"type": tokenizer.config.type, "vocab_size": tokenizer.vocab_size,
                                    "embodiment": tokenizer.embodiment}
    (path / "meta.json").write_text(json.dumps(meta, indent=2))
    if getattr(policy.head, "bac_schedules", None):
        save_schedules(policy.head.bac_schedules, path / SCHEDULE_FILE)
    write_model_card(path)
    return path


def read_description(path: Path) -> tuple[dict, dict, int]:
    """meta.json and config.yaml of the checkpoint folder `path` as plain data, migrated to FORMAT_VERSION,
    and the format they were written in. Errors name a missing file or a format this code cannot read."""
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {missing}")
    meta = json.loads((path / "meta.json").read_text())
    written = meta.get("format_version")
    if not isinstance(written, int) or not 1 <= written <= FORMAT_VERSION:
        newer = isinstance(written, int) and written > FORMAT_VERSION
        raise ValueError(f"checkpoint {path} has format_version {written!r}; this vla reads formats 1 to "
                         f"{FORMAT_VERSION}" + (": it was written by a newer vla, upgrade vla to load it" if newer
                                                else " (meta.json is corrupt or not a vla checkpoint's)"))
    config = yaml.safe_load((path / "config.yaml").read_text())
    for version in range(written, FORMAT_VERSION):
        meta, config = MIGRATIONS[version].describe(meta, config)
    return meta, config, written


def migrate_weights(state: dict[str, Tensor], written: int) -> dict[str, Tensor]:
    """The state dict of a checkpoint of format `written`, with every later migration's weight step applied."""
    for version in range(written, FORMAT_VERSION):
        if MIGRATIONS[version].weights is not None:
            state = MIGRATIONS[version].weights(state)
    return state


def load_policy(path: str | Path, expected_head: str | None = None, device: str | torch.device = "cpu",
                revision: str | None = None, cache_dir: str | Path | None = None):
    """Rebuild a VLAPolicy from a checkpoint folder or a hub id (at `revision`: branch, tag or commit; resolved
    through the HF cache, offline with HF_HUB_OFFLINE=1), of this format or an older one. Errors name what is
    missing or wrong."""
    from vla.backbones import VLMBackbone
    from vla.data.normalize import Normalizer
    from vla.hub import resolve_checkpoint
    from vla.policy import VLAPolicy

    path = resolve_checkpoint(path, revision=revision, cache_dir=cache_dir)
    meta, config_data, written = read_description(path)
    if expected_head is not None and meta["head"] != expected_head:
        raise ValueError(f"checkpoint {path} was made for head '{meta['head']}', not '{expected_head}'")
    config = draccus.decode(ModelConfig, config_data)
    backbone_config = dataclasses.replace(config.backbone, pretrained=str(path / "backbone"))
    config = dataclasses.replace(config, backbone=backbone_config)
    normalizer = Normalizer.load(path / "norm_stats.json")
    # read first, so that a missing or foreign tokenizer fails before the weights are loaded
    tokenizer = load_tokenizer(path, config, normalizer.embodiments) if config.head.tokenizer_config else None
    backbone = VLMBackbone(backbone_config, load_weights=False, lm_head=config.head.uses_vocabulary)
    policy = VLAPolicy(config, normalizer, backbone=backbone)
    policy.backbone_source = meta["backbone"]["source"]  # the original VLM, not this folder: kept on a new save
    state = migrate_weights(load_file(str(path / "model.safetensors"), device=str(device)), written)
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
    """Parameter count; a ZeRO-3-partitioned parameter counts with its full size (ds_numel)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad or not trainable_only)
