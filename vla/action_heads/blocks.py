"""Transformer pieces shared by the diffusion and flow heads: timestep embedding, DiT block, final layer.

Written here rather than taken from diffusers because diffusers' DiT blocks are tied to image
patch latents and its own conditioning classes; ours take [B, T, C] action tokens and can attend
to a memory of condition tokens [B, M, C] (backbone prefix), the way pi0's action expert and
Dita's in-context denoiser read the VLM tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.kv_cache import SuffixKV, attend_keys
from vla.types import KV


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of (possibly fractional) timesteps. t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep -> [B, C] through sinusoidal features and a 2-layer MLP (DiT, Peebles & Xie 2023).

    `scale` maps the caller's time range onto ~[0, 1000] (flow time t in [0, 1] uses scale=1000).
    """

    def __init__(self, hidden: int, freq_dim: int = 256, scale: float = 1.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t * self.scale, self.freq_dim).to(self.mlp[0].weight.dtype))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation. x: [B, T, C]; shift, scale: [B, C]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block; optionally adaLN-Zero conditioned, optionally attending to a memory.

    adaln=True: conditioned on a vector c [B, C]; the modulation is zero-initialised, so every block
    starts as the identity (DiT's adaLN-Zero). adaln=False: a plain pre-norm block (Dita's
    LLaMA-style causal transformer), called with c=None.
    Memory: keys/values of condition tokens [B, M, C] (`memory_kv`), placed before the tokens' own and
    computed from the same norm1 (unmodulated). Attending to a layer's prefix hidden states this way
    equals running the block over [prefix, tokens] with prefix-causal attention, and the memory's
    keys/values are computed once per observation, not once per denoising step or noise draw.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, adaln: bool = True):
        super().__init__()
        self.n_heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=not adaln, eps=1e-6)
        # Holds the q/k/v/out projections (names kept for checkpoints); attention itself runs through SDPA below.
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=not adaln, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, int(hidden * mlp_ratio)), nn.GELU(approximate="tanh"),
            nn.Linear(int(hidden * mlp_ratio), hidden),
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden)) if adaln else None
        if self.ada is not None:
            nn.init.zeros_(self.ada[-1].weight)
            nn.init.zeros_(self.ada[-1].bias)

    def _split(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, heads, N, C / heads]."""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def memory_kv(self, memory: Tensor) -> KV:
        """Keys and values of memory tokens [B, M, C]: ([B, heads, M, C / heads],) * 2."""
        weight, bias = self.attn.in_proj_weight, self.attn.in_proj_bias
        kv = F.linear(self.norm1(memory), weight[weight.shape[1]:], bias[weight.shape[1]:])  # (B, M, 2C)
        k, v = kv.chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def _attend(self, h: Tensor, memory: KV | SuffixKV | None, allowed: Tensor | None) -> Tensor:
        q, k, v = (self._split(p) for p in F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, -1))
        if memory is not None:
            k, v = attend_keys(memory, k, v)  # (B, heads, M + T, C / heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.attn.dropout if self.training else 0.0)
        return self.attn.out_proj(out.transpose(1, 2).flatten(2))  # (B, T, C)

    def forward(self, x: Tensor, c: Tensor | None = None, memory: KV | SuffixKV | None = None,
                allowed: Tensor | None = None) -> Tensor:
        """x: [B, T, C] tokens; c: [B, C] or None; memory: `memory_kv` output or None.

        allowed: bool, broadcastable to [B, heads, T, M + T]; True where a query may attend to a key.
        """
        if self.ada is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        else:
            shift1 = scale1 = shift2 = scale2 = x.new_zeros(())
            gate1 = gate2 = x.new_ones(())
        x = x + gate1 * self._attend(self.norm1(x) * (1 + scale1) + shift1, memory, allowed)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class FinalLayer(nn.Module):
    """adaLN-modulated projection from tokens [B, T, C] to outputs [B, T, D], zero-initialised."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.proj = nn.Linear(hidden, out_dim)
        for layer in (self.ada[-1], self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))
