"""Real-time chunking by inpainting: a new chunk denoised onto the actions still queued.

When the next chunk is computed while the current one executes (asynchronous inference), its
first actions overlap actions that are already committed. Black et al. ("Real-Time Execution
of Action Chunking Flow Policies", arXiv 2506.07339) freeze those and softly guide the rest of
the overlap towards them, so consecutive chunks join without a jump. This is the inpainting form
of that idea (RePaint-style: after every denoising step the prefix is replaced by the committed
actions noised to the current level, blended by a per-step weight) rather than the paper's
gradient guidance, which needs a backward pass through the denoiser at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Inpainting:
    """prefix: normalised actions [B, P, D] (P <= H) the chunk should start with; weights: [P] in [0, 1]
    (1 = keep the committed action, 0 = free); noise: [B, P, D], one draw reused at every level."""

    prefix: Tensor
    weights: Tensor
    noise: Tensor

    @classmethod
    def make(cls, prefix: Tensor, weights: Tensor, generator: torch.Generator | None = None) -> Inpainting:
        noise = torch.randn(prefix.shape, generator=generator, device=generator.device if generator else None)
        return cls(prefix, weights.to(prefix), noise.to(prefix))

    def apply(self, x: Tensor, noised: Callable[[Tensor, Tensor], Tensor] | None) -> Tensor:
        """Blend x's first P actions [B, P, D] with the prefix at x's noise level; `noised(prefix, noise)` gives
        that level, None means x is clean (the last step)."""
        p = self.prefix.shape[1]
        target = self.prefix if noised is None else noised(self.prefix, self.noise)
        w = self.weights[None, :, None].to(x.dtype)
        return torch.cat([w * target.to(x.dtype) + (1 - w) * x[:, :p], x[:, p:]], dim=1)


def make_inpainting(options: dict, generator: torch.Generator | None) -> Inpainting | None:
    """The Inpainting described by a head's sample options `prefix` [B, P, D] / `prefix_weights` [P], if any."""
    prefix, weights = options.pop("prefix", None), options.pop("prefix_weights", None)
    if prefix is None:
        return None
    if weights is None or weights.shape != prefix.shape[1:2]:
        raise ValueError(f"prefix_weights must be [{prefix.shape[1]}], one per prefix action")
    return Inpainting.make(prefix, weights, generator)
