"""SampleAndVerify: RoboMonkey's deployment step (METHODS.md section 10, stage 2) around a `VLAPolicy`.

Per observation: N chunks from one backbone pass and one batched head call (`sample_candidates`), expanded to K
Gaussian draws with the gripper by majority vote (`gaussian_expand`; K = 0 keeps the N samples), all scored by the
verifier in one batch, the highest executed. It has the policy's `predict` / `config` / `embodiments`, so the
closed-loop evaluation runs it in place of the policy (`eval.test_time`, `with_test_time`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vla.config import SampleVerifyConfig
from vla.test_time.sampling import gaussian_expand, gripper_rule, normalize, sample_candidates
from vla.test_time.verifier import Verifier, observation_features
from vla.types import ActionChunk, Observation


class SampleAndVerify(nn.Module):
    """policy + verifier; predict(obs) -> ActionChunk [B, H, D], the verifier's argmax among the candidates.
    `last_scores` [B, K] and `last_candidates` [B, K, H, D] (robot units) keep the latest call's pool."""

    def __init__(self, policy, verifier: Verifier, samples: int, candidates: int = 0,
                 temperature: float | None = None):
        super().__init__()
        if samples < 1:
            raise ValueError(f"SampleAndVerify needs samples >= 1 per observation; got {samples}")
        if candidates < 0:
            raise ValueError(f"SampleAndVerify needs candidates >= 0 (0 = score the samples); got {candidates}")
        verifier.check_policy(policy)
        self.policy, self.verifier = policy, verifier
        self.samples, self.candidates, self.temperature = samples, candidates, temperature
        self.last_scores: torch.Tensor | None = None
        self.last_candidates: torch.Tensor | None = None

    @property
    def config(self):
        return self.policy.config

    @property
    def normalizer(self):
        return self.policy.normalizer

    @property
    def embodiments(self) -> list[str]:
        return self.policy.embodiments

    @torch.no_grad()
    def predict(self, obs: Observation, generator: torch.Generator | None = None, prefix_actions=None,
                prefix_weights=None, **sample_options) -> ActionChunk:
        if prefix_actions is not None:
            raise ValueError("test-time sampling does not take a real-time chunking prefix; turn one of them off")
        if self.temperature is not None:
            sample_options["temperature"] = self.temperature
        drawn = sample_candidates(self.policy, obs, self.samples, generator, **sample_options)
        pool = drawn.actions  # (B, N, H, D)
        if self.candidates:
            rules = [gripper_rule(self.normalizer, e) for e in obs.embodiment]
            pool = torch.stack([_expand_row(pool[i], drawn.mask[i], self.candidates, rule, generator)
                                for i, rule in enumerate(rules)])  # (B, K, H, D)
        device = drawn.cond.proprio.device
        normalized = normalize(self.normalizer, pool, obs.embodiment).to(device)
        scores = self.verifier.score(observation_features(drawn.cond), normalized).cpu()  # (B, K)
        best = scores.argmax(1)
        self.last_scores, self.last_candidates = scores, pool
        return ActionChunk(actions=pool[torch.arange(len(best)), best], mask=drawn.mask)

    def sampling_settings(self, num_steps: int | None = None, bac: bool = False) -> dict:
        """The policy's settings plus the test-time ones."""
        return self.policy.sampling_settings(num_steps, bac) | {"test_time": {
            "samples": self.samples, "candidates": self.candidates, "temperature": self.temperature,
            "verifier_hidden": self.verifier.config.hidden}}


def _expand_row(samples: torch.Tensor, mask: torch.Tensor, k: int, rule, generator) -> torch.Tensor:
    """gaussian_expand of one observation's [N, H, D] samples over its real dims; padded dims stay zero."""
    width = int(mask.sum())
    out = samples.new_zeros(k, *samples.shape[1:])
    out[..., :width] = gaussian_expand(samples[..., :width], k, rule, generator)
    return out


def with_test_time(policy, cfg: SampleVerifyConfig):
    """`policy` wrapped in SampleAndVerify when cfg is enabled (a verifier is given), else `policy` itself (also when
    it is wrapped already)."""
    if not cfg.enabled or isinstance(policy, SampleAndVerify):
        return policy
    device = next(policy.parameters()).device
    verifier = Verifier.load(Path(cfg.verifier), device=device)
    return SampleAndVerify(policy, verifier, cfg.samples, cfg.candidates, cfg.temperature)
