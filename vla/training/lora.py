"""LoRA adapters (peft) on the policy's linear layers, backbone and head alike: `train.lora`.

    vla-train ... --train.lora.targets '[backbone.language.*_proj]' --train.lora.r 16 --train.lora.train_also '[head]'

Targets are glob patterns over the policy's module names (`backbone.vision` / `backbone.language` stand for the
family's modules, as in train.freeze), resolved here to explicit names: a pattern matching no nn.Linear is refused,
naming it. peft's `inject_adapter_in_model` wraps those layers in place (`lora.Linear`: W x + B A x * alpha / r)
and freezes every other parameter; the prefixes in `train_also` and the tensors init_from re-initialised or added
(they start untrained) are unfrozen again.

A checkpoint of a LoRA run holds the merged weights W + B A * alpha / r under the plain policy's names, so that
`load_policy`, deploy and the policy server need no peft, and

    <ckpt>/adapter/adapter_config.json      the adapters in peft's format (keys "base_model.model.<module>.lora_A
    <ckpt>/adapter/adapter_model.safetensors  .weight", as PeftModel.save_pretrained writes them)
    <ckpt>/adapter/full_weights.safetensors the tensors trained in full beside them, under the plain names

i.e. the trained policy is the base it started from + full_weights + the adapters. A LoRA run resumes by building
its base exactly as at step 0 (the same init_from checkpoint, whose fingerprint the run record holds, or the same
pretrained VLM, and the same seed) and loading adapter/ into it.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import peft
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vla.checkpoint import save_policy, tied_parameter_names
from vla.config import LoraConfig
from vla.training.finetune import expand_aliases, module_aliases, parameters_under, plain_name, top_modules

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "full_weights.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's names for the wrapped model's modules
ADAPTER = "default"  # peft's adapter name; one adapter per policy


def has_lora(policy: nn.Module) -> bool:
    return bool(getattr(policy, "peft_config", None))


def lora_targets(policy: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the nn.Linear modules matched by any glob in `patterns`; a ValueError for a pattern that matches
    none (naming what it matched instead, or the policy's top modules) or a layer whose weight is tied."""
    aliases = module_aliases(policy)
    modules = dict(policy.named_modules())
    tied = tied_parameter_names(policy)
    chosen: list[str] = []
    for pattern in patterns:
        matched = [name for name in modules if any(fnmatch.fnmatchcase(name, p)
                                                   for p in expand_aliases(pattern, aliases))]
        linear = [name for name in matched if isinstance(modules[name], nn.Linear)]
        if not linear:
            found = (f"it matches only {sorted({type(modules[n]).__name__ for n in matched})} modules (LoRA here "
                     f"adapts nn.Linear layers)" if matched else f"the policy's modules are {top_modules(policy)}")
            raise ValueError(f"train.lora.targets: {pattern!r} matches no linear layer; {found}. Patterns are globs "
                             f"over module names, e.g. 'backbone.language.*_proj' or 'head.*'")
        shared = [name for name in linear if f"{name}.weight" in tied]
        if shared:
            raise ValueError(f"train.lora.targets: {pattern!r} matches {shared}, whose weight is tied to another "
                             f"tensor (e.g. the LM head to the token table): merged, the two would differ; leave "
                             f"it out of the pattern")
        chosen += linear
    return sorted(set(chosen))


def add_lora(policy: nn.Module, config: LoraConfig, fresh: list[str] = ()) -> list[str]:
    """Wrap the layers `config.targets` match in LoRA adapters, freeze everything else but `config.train_also` and
    the `fresh` tensors (re-initialised / new on init_from); returns the adapted module names."""
    targets = lora_targets(policy, config.targets)
    also = parameters_under(policy, config.train_also, "train.lora.train_also") if config.train_also else []
    peft_config = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                  target_modules=targets, bias="none")
    peft.inject_adapter_in_model(peft_config, policy, adapter_name=ADAPTER)  # freezes all but the adapters
    unfreeze = {*also, *fresh}
    for name, param in policy.named_parameters():
        if plain_name(name) in unfreeze:
            param.requires_grad_(True)
    return targets


def is_adapter_tensor(name: str) -> bool:
    return ".lora_" in name


def merged_state_dict(policy: nn.Module) -> dict[str, Tensor]:
    """The policy's tensors under plain names with every adapter merged into its layer: W + B A * alpha / r."""
    merged = {plain_name(n): t.detach() for n, t in policy.state_dict().items() if not is_adapter_tensor(n)}
    for name, module in policy.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer().weight
            merged[f"{name}.weight"] = (base + module.get_delta_weight(ADAPTER)).detach().to(base.dtype)
    return merged


def save_trained(policy: nn.Module, path: str | Path, training: dict | None = None) -> Path:
    """Save a policy checkpoint (`training`: see save_policy); with LoRA its weights merged (loadable without peft)
    plus adapter/."""
    if not has_lora(policy):
        return save_policy(policy, path, training=training)
    path = save_policy(policy, path, training=training, weights=merged_state_dict(policy))
    save_adapter(policy, path / ADAPTER_DIR)
    return path


def save_adapter(policy: nn.Module, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors (peft's format) and full_weights.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    policy.peft_config[ADAPTER].save_pretrained(str(folder))
    adapters = peft.get_peft_model_state_dict(policy, adapter_name=ADAPTER)
    save_file({PEFT_PREFIX + k: v.detach().contiguous() for k, v in adapters.items()}, str(folder / ADAPTER_WEIGHTS))
    full = {plain_name(n): p.detach().contiguous() for n, p in policy.named_parameters()
            if p.requires_grad and not is_adapter_tensor(n)}
    save_file(full, str(folder / FULL_WEIGHTS))


def load_adapter(policy: nn.Module, checkpoint: str | Path) -> None:
    """Load a checkpoint's adapter/ into a policy that `add_lora` prepared as that run did (resume); a ValueError
    when the adapters or trained tensors do not fit it."""
    folder = Path(checkpoint) / ADAPTER_DIR
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{checkpoint} has no {ADAPTER_DIR}/{ADAPTER_WEIGHTS}: it was not written by a run "
                                f"with train.lora, so this LoRA run cannot resume from it")
    adapters = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / ADAPTER_WEIGHTS)).items()}
    result = peft.set_peft_model_state_dict(policy, adapters, adapter_name=ADAPTER)
    live = {plain_name(n): n for n, p in policy.named_parameters() if p.requires_grad and not is_adapter_tensor(n)}
    full = load_file(str(folder / FULL_WEIGHTS))
    if result.unexpected_keys or set(full) != set(live):
        raise ValueError(f"{folder} does not fit this run's LoRA setup: unexpected adapter tensors "
                         f"{sorted(result.unexpected_keys)[:5]}, trained tensors {sorted(set(full) ^ set(live))[:5]} "
                         f"differ")
    with torch.no_grad():
        params = dict(policy.named_parameters())
        for name, tensor in full.items():
            params[live[name]].copy_(tensor)
