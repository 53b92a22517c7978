"""Candidate action chunks for test-time scaling (RoboMonkey, METHODS.md section 10): n policy samples per
observation from one backbone pass, and their Gaussian expansion.

Shapes: B observations, N policy samples, K expanded candidates, H horizon, D action dims (robot units; the
embodiment's own width), D_max the policy's padded width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vla.types import Cond, Observation


@dataclass
class Candidates:
    """n sampled chunks per observation and the conditioning they were sampled from (reused by the verifier).

    cond: the policy's `Cond` for the B observations (one backbone pass).
    normalized: [B, N, H, D_max] in the head's normalised, padded space.
    actions: [B, N, H, D] in robot units (D: the widest embodiment of the batch; narrower rows zero-padded).
    mask: bool [B, D]; False at padded dimensions.
    """

    cond: Cond
    normalized: Tensor
    actions: Tensor
    mask: Tensor


@dataclass(frozen=True)
class GripperRule:
    """Which action dims are grippers and the value that splits open from closed (robot units), for the vote."""

    dims: tuple[int, ...]
    thresholds: tuple[float, ...]


def check_deterministic_head(policy, n: int, options: dict, flag: str = "test_time.temperature") -> None:
    """A ValueError when n > 1 samples would all be equal: a token head (ar, latent) decoding greedily (temperature
    0). `flag`: the option that sets the temperature where the caller reads it."""
    head = policy.head
    temperature = options.get("temperature")
    if temperature is None:
        temperature = getattr(head.config, "temperature", None)
    if n > 1 and getattr(head, "deterministic_when_greedy", False) and temperature == 0:
        raise ValueError(f"the {head.config.type} head decodes greedily (temperature 0), so its {n} samples would all "
                         f"be the same chunk: sample with temperature > 0 ({flag}, e.g. 1.0)")


@torch.no_grad()
def sample_candidates(policy, obs: Observation, n: int, generator: torch.Generator | None = None,
                      **sample_options) -> Candidates:
    """n chunks per observation from ONE backbone pass: the conditioning is repeated n times and the head samples
    all B * n chunks in one batched call (`ActionHead.sample_n`: different noise for diffusion / flow heads,
    temperature sampling for token heads). sample_options go to the head (num_steps, bac, temperature)."""
    if n < 1:
        raise ValueError(f"test-time sampling needs n >= 1 samples per observation; got {n}")
    check_deterministic_head(policy, n, sample_options)
    device = next(policy.parameters()).device
    obs = obs.to(device)
    cond = policy.condition(obs.images, obs.state.float(), obs.instruction, obs.embodiment, obs.image_mask)
    normalized = policy.head.sample_n(cond, n, generator=generator, **sample_options).float()  # (B, N, H, D_max)
    if not torch.isfinite(normalized).all():
        raise FloatingPointError("the action head produced NaN or inf actions")
    actions, mask = policy.normalizer.unnormalize_actions(normalized, obs.embodiment)
    return Candidates(cond=cond, normalized=normalized, actions=actions, mask=mask)


def normalize(normalizer, actions: Tensor, embodiment: list[str]) -> Tensor:
    """[B, K, H, D] robot units (zero-padded to the batch's widest embodiment) -> [B, K, H, D_max] normalised."""
    rows = [normalizer.normalize_action(actions[i, ..., : normalizer.action_dim(e)], e)
            for i, e in enumerate(embodiment)]
    return torch.stack(rows)


def gripper_rule(normalizer, embodiment: str) -> GripperRule:
    """The gripper dims of `embodiment` and their open / closed split. From its embodiment registry entry
    (`Gripper.dims`, split at the midpoint of open and closed) when one of that name lists the checkpoint's action
    names; otherwise the action names containing "gripper", split at the midpoint of the training data's range."""
    from vla.data.registry import load_embodiment, registry_names

    names = normalizer.info[embodiment].action_names if embodiment in normalizer.info else []
    if embodiment in registry_names():
        entry = load_embodiment(embodiment)
        if entry.gripper is not None and entry.action_names == names:
            dims = tuple(names.index(d) for d in entry.gripper.dims)
            return GripperRule(dims, tuple((entry.gripper.open + entry.gripper.closed) / 2 for _ in dims))
    dims = tuple(i for i, name in enumerate(names) if "gripper" in name.lower())
    stats = normalizer.stats[embodiment]["action"]
    return GripperRule(dims, tuple((stats["min"][d] + stats["max"][d]) / 2 for d in dims))


def gaussian_expand(samples: Tensor, k: int, gripper: GripperRule, generator: torch.Generator | None = None) -> Tensor:
    """RoboMonkey's expansion of n samples into k candidates for one observation.

    samples: [N, H, D] in robot units. A diagonal Gaussian (per action entry, over all H x D; the paper fits a full
    covariance to one 7-D action) is fitted to the non-gripper dims and k chunks are drawn from it; every gripper
    entry is the majority vote of the samples (per step: open or closed, split at the rule's threshold; the value is
    the mean of the samples on the winning side; a tie goes to the side of the samples' mean). With one sample the
    spread is zero and every candidate equals it. Returns [K, H, D].
    """
    if k < 1:
        raise ValueError(f"gaussian_expand needs k >= 1 candidates; got {k}")
    mean = samples.mean(0)
    std = samples.std(0, unbiased=True) if samples.shape[0] > 1 else torch.zeros_like(mean)
    noise = torch.randn(k, *mean.shape, generator=generator, device=generator.device if generator else None)
    out = mean + std * noise.to(mean)
    for dim, threshold in zip(gripper.dims, gripper.thresholds, strict=True):
        out[:, :, dim] = majority(samples[:, :, dim], threshold)
    return out


def majority(values: Tensor, threshold: float) -> Tensor:
    """values [N, H] -> [H]: per step, the mean of the samples on the side of `threshold` most of them are on."""
    above = values > threshold
    votes = above.float().mean(0)  # (H,)
    side = torch.where(votes == 0.5, values.mean(0) > threshold, votes > 0.5)  # (H,)
    chosen = above == side  # (N, H): samples on the winning side
    return (values * chosen).sum(0) / chosen.sum(0)
