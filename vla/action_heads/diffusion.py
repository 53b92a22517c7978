"""DDPM training and DDIM sampling over action chunks, with diffusers' schedulers.

The sampler is kept out of the network (as diffusers does), so the number of inference steps is
an option at sampling time, not a property of the trained weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from vla.action_heads.inpaint import Inpainting

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 100
    num_inference_steps: int = 10  # DDIM steps at inference; overridable per call
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # what the network predicts: epsilon | sample | v_prediction

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"diffusion.prediction_type must be one of {PREDICTION_TYPES}; "
                             f"got {self.prediction_type!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"diffusion.num_inference_steps={self.num_inference_steps} must be in "
                             f"[1, num_train_timesteps={self.num_train_timesteps}]")


Denoiser = Callable[[Tensor, Tensor], Tensor]  # (noisy actions [B, H, D], timesteps [B]) -> prediction [B, H, D]


class ActionDiffusion:
    """Noise schedule for normalised actions; sampling clips each step's clean-action estimate to ±`clip`."""

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type, clip_sample=True, clip_sample_range=1.0,
        )

    def noisy_batch(self, actions: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw t and noise for clean actions [B, H, D]; returns (noisy [B, H, D], t [B], target [B, H, D])."""
        b = actions.shape[0]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=generator, device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, t)
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = actions
        else:
            target = self.train_scheduler.get_velocity(actions, noise, t)
        return noisy, t, target

    def _scheduler(self, num_steps: int | None, clip: float | None, device: torch.device) -> DDIMScheduler:
        """A fresh DDIM scheduler set to num_steps (default: num_inference_steps); DDIM's set_timesteps mutates
        it, and deployment may sample from two threads."""
        scheduler = DDIMScheduler.from_config(self.train_scheduler.config, clip_sample=clip is not None,
                                              clip_sample_range=1.0 if clip is None else clip)
        scheduler.set_timesteps(num_steps or self.config.num_inference_steps, device=device)
        return scheduler

    def inference_timesteps(self, num_steps: int | None, device: torch.device) -> Tensor:
        """The DDIM timesteps [num_steps] `sample` runs, noisiest first."""
        return self._scheduler(num_steps, 1.0, device).timesteps

    @staticmethod
    def initial_noise(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                      generator: torch.Generator | None = None) -> Tensor:
        """The pure noise [B, H, D] sampling starts from (drawn on the generator's device, moved to `device`)."""
        x = torch.randn(shape, generator=generator, device=generator.device if generator else device, dtype=dtype)
        return x.to(device)

    def sample(self, denoise: Denoiser, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
               generator: torch.Generator | None = None, num_steps: int | None = None,
               inpaint: Inpainting | None = None, clip: float | None = 1.0, noise: Tensor | None = None) -> Tensor:
        """Run DDIM from pure noise to clean actions of `shape` [B, H, D]; `inpaint` pins the first actions.

        clip: every step's clean-action estimate (and so the result) is clipped to [-clip, clip]; None: no clip.
        noise: the starting noise [B, H, D] (default: `initial_noise` drawn with `generator`), for a caller that
        also uses it elsewhere (hybrid's AR tokens read the first step's noisy span).
        """
        scheduler = self._scheduler(num_steps, clip, device)
        if noise is not None and tuple(noise.shape) != tuple(shape):
            raise ValueError(f"the starting noise must be {list(shape)}; got {list(noise.shape)}")
        x = self.initial_noise(shape, device, dtype, generator) if noise is None else noise.to(device, dtype)
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            pred = denoise(x, t.expand(shape[0]).to(device))
            x = scheduler.step(pred, t, x).prev_sample
            if inpaint is not None:
                x = inpaint.apply(x, self._noiser(scheduler, timesteps[i + 1]) if i + 1 < len(timesteps) else None)
        return x

    @staticmethod
    def _noiser(scheduler: DDIMScheduler, t: Tensor):
        """Clean actions + noise -> the noise level of timestep t (for inpainting)."""
        return lambda clean, noise: scheduler.add_noise(clean, noise, t.expand(clean.shape[0]).to(clean.device))
