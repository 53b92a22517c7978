"""Flow matching over action chunks, pi0's conventions (Black et al., arXiv 2410.24164).

Time t runs from 1 (pure noise) to 0 (data): x_t = t * noise + (1 - t) * actions, and the network
predicts the velocity u = noise - actions. Training draws t ~ Beta(1.5, 1) scaled to
[0.001, 1], which weights the noisier times more (pi0, Sec. 3 / openpi `sample_beta`).
Sampling integrates dx/dt = v with `num_steps` Euler steps from t = 1 to t = 0.

Hand-written instead of diffusers' FlowMatchEulerDiscreteScheduler: that scheduler shifts and
rescales sigmas to image-latent conventions, and five lines of Euler keep pi0's exact grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vla.action_heads.inpaint import Inpainting


@dataclass
class FlowMatchingConfig:
    num_steps: int = 10  # Euler steps at inference; overridable per call
    beta_alpha: float = 1.5  # t ~ Beta(alpha, beta) * (1 - t_min) + t_min
    beta_beta: float = 1.0
    t_min: float = 0.001

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"flow.num_steps must be >= 1; got {self.num_steps}")
        if self.beta_alpha <= 0 or self.beta_beta <= 0:
            raise ValueError(f"flow.beta_alpha and flow.beta_beta must be > 0; got {self.beta_alpha}, {self.beta_beta}")
        if not 0 <= self.t_min < 1:
            raise ValueError(f"flow.t_min must be in [0, 1); got {self.t_min}")


Velocity = Callable[[Tensor, Tensor], Tensor]  # (x_t [B, H, D], t [B]) -> velocity [B, H, D]


class FlowMatching:
    """Training pairs and Euler sampling for normalised actions (samples are clipped to ±`clip`)."""

    def __init__(self, config: FlowMatchingConfig):
        self.config = config

    def sample_time(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """t [B] ~ Beta(alpha, beta) scaled to [t_min, 1], via two Gamma draws (torch's Beta takes no generator)."""
        a = torch._standard_gamma(torch.full((batch,), self.config.beta_alpha), generator=generator)
        b = torch._standard_gamma(torch.full((batch,), self.config.beta_beta), generator=generator)
        return (a / (a + b) * (1 - self.config.t_min) + self.config.t_min).to(device)

    def noisy_batch(self, actions: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t [B, H, D], t [B], target velocity [B, H, D]) for clean actions [B, H, D]."""
        noise = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
        t = self.sample_time(actions.shape[0], actions.device, generator).to(actions.dtype)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        return x_t, t, noise - actions

    def sample(self, velocity: Velocity, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
               generator: torch.Generator | None = None, num_steps: int | None = None,
               inpaint: Inpainting | None = None, clip: float | None = 1.0) -> Tensor:
        """Euler-integrate from noise at t = 1 to actions at t = 0: [B, H, D]; `inpaint` pins the first actions.

        clip: the result is clipped to [-clip, clip]; None: no clip.
        """
        steps = num_steps or self.config.num_steps
        x = torch.randn(shape, generator=generator, device=generator.device if generator else device, dtype=dtype)
        x = x.to(device)
        dt = 1.0 / steps
        for k in range(steps):
            t = torch.full((shape[0],), 1.0 - k * dt, device=device, dtype=dtype)
            x = x - dt * velocity(x, t)
            if inpaint is not None:
                level = 1.0 - (k + 1) * dt  # x now sits at this time: x_t = t * noise + (1 - t) * actions
                x = inpaint.apply(x, (lambda a, n, s=level: s * n + (1 - s) * a) if k + 1 < steps else None)
        return x if clip is None else x.clamp(-clip, clip)
