"""CogACT's action module: a diffusion transformer conditioned on the VLM cognition feature.

Li et al., "CogACT" (arXiv 2411.19650). The DiT reads [cognition token, state token, H noisy
action tokens], is conditioned through adaLN on the diffusion timestep plus the cognition
feature, and predicts the noise on the action tokens. As in CogACT, several (noise, t) draws share
one backbone forward pass (`noise_samples_per_cond`), because the backbone dominates the cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vla.action_heads.bac import BlockCache, CachedSampling, run_block
from vla.action_heads.base import ActionHead, TransformerHeadConfig, denoising_loss, register_head
from vla.action_heads.blocks import DiTBlock, FinalLayer, TimestepEmbedder
from vla.action_heads.diffusion import ActionDiffusion, DiffusionConfig
from vla.action_heads.inpaint import make_inpainting
from vla.types import Cond


class DiT(nn.Module):
    """Denoiser: noisy actions [B, H, D] + timestep [B] + condition tokens [B, K, C] -> prediction [B, H, D]."""

    def __init__(self, action_dim: int, horizon: int, n_cond_tokens: int, hidden: int, depth: int, heads: int,
                 mlp_ratio: float, dropout: float):
        super().__init__()
        self.action_in = nn.Linear(action_dim, hidden)
        self.pos = nn.Parameter(torch.randn(1, n_cond_tokens + horizon, hidden) * 0.02)
        self.t_embed = TimestepEmbedder(hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, dropout) for _ in range(depth))
        self.final = FinalLayer(hidden, action_dim)

    def forward(self, noisy: Tensor, t: Tensor, cond_tokens: Tensor, cache: BlockCache | None = None) -> Tensor:
        h = noisy.shape[1]
        x = torch.cat([cond_tokens, self.action_in(noisy)], dim=1) + self.pos  # (B, K + H, C)
        c = self.t_embed(t) + cond_tokens[:, 0]  # (B, C): timestep + cognition, for adaLN
        for i, block in enumerate(self.blocks):
            x = run_block(cache, i, block, x, c)
        return self.final(x[:, -h:], c)  # (B, H, D)


@dataclass
class DiTHeadConfig(TransformerHeadConfig):
    cond_dropout: float = 0.0  # probability of replacing the cognition with a learned null (enables CFG)
    cfg_scale: float = 1.0  # classifier-free guidance scale at sampling; 1.0 = off
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cfg_scale != 1.0 and self.cond_dropout <= 0:
            raise ValueError(f"head.cfg_scale={self.cfg_scale} needs head.cond_dropout > 0 at training")


class DiTHead(CachedSampling, ActionHead):
    def __init__(self, config: DiTHeadConfig, cond_dim: int, action_dim: int, state_dim: int):
        super().__init__(config, action_dim)
        self.config: DiTHeadConfig = config
        self.cog_proj = nn.Sequential(
            nn.Linear(cond_dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.hidden))
        self.state_proj = nn.Linear(state_dim, config.hidden) if config.use_proprio else None
        # learned "no condition" for classifier-free guidance; only made when trained (DDP rejects unused weights)
        self.null_cog = nn.Parameter(torch.zeros(config.hidden)) if config.cond_dropout > 0 else None
        n_cond = 2 if config.use_proprio else 1
        self.net = DiT(action_dim, config.horizon, n_cond, config.hidden, config.depth, config.heads,
                       config.mlp_ratio, config.dropout)
        self.diffusion = ActionDiffusion(config.diffusion)

    def cond_tokens(self, cond: Cond, drop: Tensor | None = None) -> Tensor:
        """[B, K, C] condition tokens; rows where drop is True get the null cognition."""
        cog = self.cog_proj(cond.backbone.cognition)
        if drop is not None:
            cog = torch.where(drop[:, None], self.null_cog.to(cog.dtype).expand_as(cog), cog)
        tokens = [cog]
        if self.state_proj is not None:
            tokens.append(self.state_proj(cond.proprio.to(cog.dtype)))
        return torch.stack(tokens, dim=1)

    def loss(self, cond: Cond, actions: Tensor, valid: Tensor) -> dict[str, Tensor]:
        k = self.config.noise_samples_per_cond
        drop = None
        if self.training and self.config.cond_dropout > 0:
            drop = torch.rand(actions.shape[0], device=actions.device) < self.config.cond_dropout
        tokens = self.cond_tokens(cond, drop).repeat_interleave(k, dim=0)  # (B*k, K, C)
        return denoising_loss(self.diffusion.noisy_batch, lambda x, t: self.net(x, t, tokens), actions, valid, k)

    def default_steps(self) -> int:
        return self.config.diffusion.num_inference_steps

    @torch.no_grad()
    def sample(self, cond: Cond, generator: torch.Generator | None = None, num_steps: int | None = None,
               bac: bool | BlockCache = False, **options) -> Tensor:
        """[B, H, D] by DDIM with num_steps steps (default: diffusion.num_inference_steps); bac: see
        CachedSampling.block_cache; options prefix / prefix_weights: real-time chunking (inpaint.py)."""
        num_steps = num_steps or self.default_steps()
        cache = self.block_cache(num_steps, bac)
        tokens = self.cond_tokens(cond)
        b, scale = tokens.shape[0], self.config.cfg_scale
        if scale != 1.0:  # conditional and null rows in one batch, so each step is one network call
            null = self.cond_tokens(cond, torch.ones(b, dtype=torch.bool, device=tokens.device))
            tokens = torch.cat([tokens, null])

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            if scale == 1.0:
                return self.net(x, t, tokens, cache)
            cond_pred, null_pred = self.net(torch.cat([x, x]), torch.cat([t, t]), tokens, cache).chunk(2)
            return null_pred + scale * (cond_pred - null_pred)

        shape = (b, self.config.horizon, self.action_dim)
        return self.diffusion.sample(denoise, shape, tokens.device, tokens.dtype, generator, num_steps,
                                     inpaint=make_inpainting(options, generator), clip=self.action_clip)


DiTHeadConfig.head_class = DiTHead
register_head("dit")(DiTHeadConfig)
