"""Conditioning on the raw backbone prefix (image + instruction tokens) instead of one pooled feature.

Shared by the heads whose denoiser attends to the VLM tokens (dita, flow): the tokens are projected
to the head's width once per observation, each denoiser layer turns them into keys/values once
(`net.memory(prefix, real)`), and every denoising step and noise draw reuses those. A denoiser
inside the backbone (dita's `denoiser: shared`) uses the backbone LLM's own prefix cache instead.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from vla.action_heads.bac import BlockCache, CachedSampling
from vla.action_heads.base import ActionHead, TransformerHeadConfig, denoising_loss
from vla.action_heads.blocks import KV
from vla.action_heads.diffusion import ActionDiffusion
from vla.action_heads.flow_matching import FlowMatching
from vla.action_heads.inpaint import make_inpainting
from vla.backbones.continuation import LanguagePrefix
from vla.kv_cache import suffix_kv
from vla.types import Cond, repeat_kv


class PrefixProjector(nn.Module):
    """Backbone tokens [B, L, C_backbone] -> head width [B, L, C], plus the key-padding mask.

    Shared by the heads that read the raw VLM prefix (dita, flow) instead of one pooled feature.
    """

    def __init__(self, cond_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, hidden))

    def forward(self, tokens: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (prefix [B, L, C], real [B, L] with True where the token is not padding)."""
        return self.proj(tokens), token_mask.bool()


def memory_allowed(real: Tensor, queries: int, causal_queries: bool = False) -> Tensor:
    """Attention mask [B, 1, T, M + T] (True = may attend) for T queries after a memory of M tokens.

    real: bool [B, M], False where the memory token is padding. causal_queries: each query sees only
    the queries up to itself (the memory stays fully visible).
    """
    b, m = real.shape
    own = torch.ones(queries, queries, dtype=torch.bool, device=real.device)
    if causal_queries:
        own = own.tril()
    keys = torch.cat([real[:, None, :].expand(b, queries, m), own.expand(b, -1, -1)], dim=-1)  # (B, T, M + T)
    return keys[:, None]


class PrefixHead(CachedSampling, ActionHead):
    """Base of heads that denoise with a `net` attending to the backbone prefix.

    A subclass sets `self.net`, whose forward(x [B, H, D], t [B], memory, real, extra, cache) predicts
    the training target, and `self.process`: the noise process (ActionDiffusion or FlowMatching),
    whose `noisy_batch` makes training pairs and whose `sample` runs the sampler. The memory is
    `net.memory(prefix [B, L, C], real [B, L]) -> list[KV]` (each layer's prefix keys/values), or,
    when the config `reads_language_cache`, the backbone's `LanguagePrefix` (the net then needs no `memory`).
    """

    process: ActionDiffusion | FlowMatching

    def __init__(self, config: TransformerHeadConfig, cond_dim: int, action_dim: int, state_dim: int):
        super().__init__(config, action_dim)
        # A denoiser inside the backbone's LLM (`reads_language_cache`) has the backbone's width and attends to
        # the backbone's own cache, so there is no prefix projection.
        in_backbone = self.reads_language_cache
        self.prefix = None if in_backbone else PrefixProjector(cond_dim, config.hidden)
        self.width = cond_dim if in_backbone else config.hidden  # the denoiser's token width
        self.state_proj = nn.Linear(state_dim, self.width) if config.use_proprio else None

    @property
    def n_extra_tokens(self) -> int:
        return int(self.state_proj is not None)

    def prefix_memory(self, cond: Cond) -> tuple[list[KV] | LanguagePrefix, Tensor]:
        """(what the denoiser attends to, real-token mask bool [B, L]): each layer's keys/values of the
        projected prefix, or, for a denoiser inside the backbone, the backbone LLM's own prefix cache."""
        if self.prefix is None:
            cached = cond.backbone.past_key_values
            if cached is None:
                raise ValueError(f"the {self.config.type} head denoises inside the backbone's LLM and needs its prefix "
                                 f"cache: call the backbone with keep_cache=True (VLAPolicy does this)")
            return cached, cached.token_mask
        prefix, real = self.prefix(cond.backbone.tokens, cond.backbone.token_mask)
        return self.net.memory(prefix, real), real

    def encode(self, cond: Cond, repeat: int = 1) -> tuple[list[KV] | LanguagePrefix, Tensor, Tensor]:
        """(prefix memory, real-token mask [B, L], extra tokens [B, K, C]), each row repeated `repeat`
        times (repeat_interleave, one per noise draw); K = 1 with the state token, else 0."""
        memory, real = self.prefix_memory(cond)
        if self.state_proj is None:
            extra = cond.proprio.new_zeros(real.shape[0], 0, self.width)
        else:
            extra = self.state_proj(cond.proprio.to(self.state_proj.weight.dtype))[:, None]
        memory = memory.repeat_interleave(repeat) if isinstance(memory, LanguagePrefix) else repeat_kv(memory, repeat)
        return memory, real.repeat_interleave(repeat, 0), extra.repeat_interleave(repeat, 0)

    @abstractmethod
    def default_steps(self) -> int:
        """Sampling steps when the caller gives none."""

    def denoise(self, x: Tensor, t: Tensor, memory: list[KV] | LanguagePrefix, real: Tensor, extra: Tensor,
                cache: BlockCache | None = None) -> Tensor:
        """Network prediction for noisy actions x [B, H, D] at times t [B]."""
        return self.net(x, t, memory, real, extra, cache)

    def loss(self, cond: Cond, actions: Tensor, valid: Tensor) -> dict[str, Tensor]:
        k = self.config.noise_samples_per_cond
        memory, real, extra = self.encode(cond, repeat=k)
        return denoising_loss(self.process.noisy_batch, lambda x, t: self.denoise(x, t, memory, real, extra),
                              actions, valid, k)

    @torch.no_grad()
    def sample(self, cond: Cond, generator: torch.Generator | None = None, num_steps: int | None = None,
               bac: bool | BlockCache = False, **options) -> Tensor:
        """[B, H, D] with num_steps sampler steps (default: `default_steps()`); the prefix is encoded once
        and reused by every step. bac: see CachedSampling.block_cache; options prefix / prefix_weights:
        real-time chunking (inpaint.py)."""
        num_steps = num_steps or self.default_steps()
        cache = self.block_cache(num_steps, bac)
        memory, real, extra = self.encode(cond)
        if not isinstance(memory, LanguagePrefix):  # (a LanguagePrefix reuses its own buffers in `extend`)
            memory = suffix_kv(memory)  # each step writes its tokens' keys after the prefix's, copying nothing else
        shape = (real.shape[0], self.config.horizon, self.action_dim)
        return self.process.sample(lambda x, t: self.denoise(x, t, memory, real, extra, cache), shape,
                                   extra.device, extra.dtype, generator, num_steps,
                                   inpaint=make_inpainting(options, generator), clip=self.action_clip)
