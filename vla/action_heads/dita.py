"""Dita: a diffusion transformer whose noisy action tokens attend in context to the raw VLM tokens.

Hou et al., "Dita" (ICCV 2025, arXiv 2503.19757). Instead of conditioning on one pooled feature,
the denoiser is a causal transformer over

    [prefix: backbone tokens (image + instruction) | state token | timestep token | action tokens]

and the output at the action positions predicts the DDPM noise. The prefix never attends to
the tokens after it, so its hidden state at every layer is the same at every denoising step:
`memory` computes it once per observation and the denoising steps reuse it as each
layer's key/value memory (the prefix KV-cache trick of Dita / HybridVLA). Each action token can
carry several consecutive actions (`num_action_tokens` < horizon).

Where the denoiser lives (`denoiser`):
- `separate`: its own causal stack of `depth` blocks at width `hidden`, attending to the backbone's
  last-layer tokens projected to that width (each layer's prefix keys/values computed once).
- `shared`: the backbone's own LLM is the denoiser. State, timestep and action tokens are embedded
  to the LLM's width and run through all its layers after the observation, attending to the
  prefix keys/values the backbone cached while encoding it (`LanguagePrefix`); `hidden`, `depth` and
  `heads` are unused, and the language model trains with the head. This is Dita's single
  transformer over [observation, timestep, actions], with the VLM's weights as that transformer.
The observation history (Dita uses two frames) is `model.n_obs_steps`: past frames are extra image
slots of the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vla.action_heads.bac import BlockCache, run_block
from vla.action_heads.base import TransformerHeadConfig, register_head
from vla.action_heads.blocks import KV, DiTBlock, TimestepEmbedder
from vla.action_heads.diffusion import ActionDiffusion, DiffusionConfig
from vla.action_heads.prefix import PrefixHead, memory_allowed
from vla.backbones.continuation import LanguagePrefix

DENOISERS = ("separate", "shared")


class InContextDenoiser(nn.Module):
    """Causal transformer: noisy action tokens [B, N, D * G] after a cached prefix -> noise [B, N, D * G]."""

    def __init__(self, token_dim: int, n_suffix: int, hidden: int, depth: int, heads: int, mlp_ratio: float,
                 dropout: float, causal_actions: bool):
        super().__init__()
        self.causal_actions = causal_actions
        self.action_in = nn.Linear(token_dim, hidden)
        self.t_embed = TimestepEmbedder(hidden)
        self.pos = nn.Parameter(torch.randn(1, n_suffix, hidden) * 0.02)  # suffix positions
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, dropout, adaln=False) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def memory(self, prefix: Tensor, real: Tensor) -> list[KV]:
        """Every layer's keys/values of the prefix [B, L, C] under causal attention (padding masked).

        real: bool [B, L], False at padding. Returns depth (keys, values) pairs [B, heads, L, C / heads].
        """
        length = prefix.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=prefix.device).tril()
        allowed = (causal & real[:, None, :])[:, None]  # (B, 1, L, L); right padding: no row is empty
        memory, x = [], prefix
        for i, block in enumerate(self.blocks):
            memory.append(block.memory_kv(x))
            if i < len(self.blocks) - 1:  # the last block's prefix output is never attended to
                x = block(x, allowed=allowed)
        return memory

    def forward(self, noisy_tokens: Tensor, t: Tensor, memory: list[KV], real: Tensor, extra: Tensor,
                cache: BlockCache | None = None) -> Tensor:
        """noisy_tokens [B, N, D*G], t [B], memory from `memory`, real bool [B, L], extra [B, K, C]."""
        n = noisy_tokens.shape[1]
        x = torch.cat([extra, self.t_embed(t)[:, None], self.action_in(noisy_tokens)], dim=1) + self.pos
        allowed = memory_allowed(real, x.shape[1], causal_queries=self.causal_actions)  # (B, 1, T, L + T)
        for i, block in enumerate(self.blocks):
            x = run_block(cache, i, block, x, memory=memory[i], allowed=allowed)
        return self.out(self.norm_out(x[:, -n:]))


class LLMDenoiser(nn.Module):
    """Dita's denoiser inside the backbone LLM: [extra, timestep, action tokens] run after the cached prefix.

    noisy tokens [B, N, D * G] -> noise [B, N, D * G]; `width` is the LLM's hidden size. The LLM's
    final norm is applied by the LLM itself, so only the output projection is added.
    """

    blocks = ()  # no blocks of its own for BAC to cache: the LLM's layers run inside `LanguagePrefix.extend`

    def __init__(self, token_dim: int, width: int, causal_actions: bool):
        super().__init__()
        self.causal_actions = causal_actions
        self.action_in = nn.Linear(token_dim, width)
        self.t_embed = TimestepEmbedder(width)
        self.out = nn.Linear(width, token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, noisy_tokens: Tensor, t: Tensor) -> Tensor:
        """[timestep token, action tokens] [B, 1 + N, C] at unit scale, for noisy tokens [B, N, D*G] at times t [B]
        (shared with the hybrid head, which places them between its span markers)."""
        return torch.cat([self.t_embed(t)[:, None], self.action_in(noisy_tokens)], dim=1)

    def project(self, hidden: Tensor) -> Tensor:
        """The LLM's last-layer hidden states at the action tokens [B, N, C] -> prediction [B, N, D*G]."""
        return self.out(hidden.to(self.out.weight.dtype))

    def forward(self, noisy_tokens: Tensor, t: Tensor, memory: LanguagePrefix, real: Tensor, extra: Tensor,
                cache: BlockCache | None = None) -> Tensor:
        """noisy_tokens [B, N, D*G], t [B], memory: the backbone's prefix cache, real bool [B, L], extra [B, K, C].

        cache is always None: with no blocks of its own, `CachedSampling` never hands this head a BAC cache."""
        n = noisy_tokens.shape[1]
        x = torch.cat([extra, self.embed(noisy_tokens, t)], dim=1)
        allowed = memory_allowed(real, x.shape[1], causal_queries=self.causal_actions)  # (B, 1, T, L + T)
        hidden = memory.extend(x, allowed)
        return self.project(hidden[:, -n:])


@dataclass
class DitaHeadConfig(TransformerHeadConfig):
    num_action_tokens: int = 0  # action tokens in the sequence; 0 = one per action (horizon); must divide horizon
    causal_actions: bool = True  # Dita's causal transformer; False: state, timestep and action tokens see each other
    # separate: own causal stack (hidden, depth, heads); shared: the backbone's LLM layers denoise (see module doc)
    denoiser: str = "separate"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.denoiser not in DENOISERS:
            raise ValueError(f"head.denoiser must be one of {DENOISERS}; got {self.denoiser!r}")
        tokens = self.num_action_tokens or self.horizon
        if tokens < 1 or self.horizon % tokens:
            raise ValueError(f"head.num_action_tokens={self.num_action_tokens} must divide head.horizon={self.horizon} "
                             f"(or be 0 for one token per action)")

    @property
    def reads_language_cache(self) -> bool:
        return self.denoiser == "shared"

    @property
    def actions_per_token(self) -> int:
        return self.horizon // (self.num_action_tokens or self.horizon)


class DitaHead(PrefixHead):
    def __init__(self, config: DitaHeadConfig, cond_dim: int, action_dim: int, state_dim: int):
        super().__init__(config, cond_dim, action_dim, state_dim)
        self.config: DitaHeadConfig = config
        self.group = config.actions_per_token
        token_dim = action_dim * self.group
        if self.reads_language_cache:
            self.net = LLMDenoiser(token_dim, cond_dim, config.causal_actions)
        else:
            n_suffix = self.n_extra_tokens + 1 + config.horizon // self.group  # [state] + timestep + action tokens
            self.net = InContextDenoiser(token_dim, n_suffix, config.hidden, config.depth, config.heads,
                                         config.mlp_ratio, config.dropout, config.causal_actions)
        self.process = ActionDiffusion(config.diffusion)

    def denoise(self, noisy: Tensor, t: Tensor, memory: list[KV] | LanguagePrefix, real: Tensor, extra: Tensor,
                cache: BlockCache | None = None) -> Tensor:
        """Noisy actions [B, H, D] -> predicted noise [B, H, D], grouping G actions per token."""
        b, h, d = noisy.shape
        out = self.net(noisy.reshape(b, h // self.group, self.group * d), t, memory, real, extra, cache)
        return out.reshape(b, h, d)

    def default_steps(self) -> int:
        return self.config.diffusion.num_inference_steps


DitaHeadConfig.head_class = DitaHead
register_head("dita")(DitaHeadConfig)
