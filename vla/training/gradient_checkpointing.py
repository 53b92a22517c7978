"""Gradient checkpointing of the backbone: `train.gradient_checkpointing`."""

from __future__ import annotations

from torch import nn

from vla.config import ModelConfig


def enable_gradient_checkpointing(model: nn.Module, config: ModelConfig) -> None:
    """Recompute the VLM's layer activations in the backward pass instead of keeping them (transformers'
    gradient_checkpointing_enable; non-reentrant, which works with DDP, frozen inputs and restores the RNG state,
    so the losses are the same as without it). Saves memory at roughly one more forward pass of compute."""
    if config.head.reads_language_cache:
        raise ValueError(f"train.gradient_checkpointing cannot be used with the {config.head.type} head: "
                         f"checkpointed transformers layers drop the key/value cache this head reads from the "
                         f"language model; set train.gradient_checkpointing=false")
    model.backbone.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
