"""A trained policy behind the small interface the control loop and the server use.

`infer(observation) -> actions [H, D]` in the robot's own units, numpy in and out. The robot
PC uses `RemotePolicy` (vla.deploy.client) with the same interface and no torch.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from vla.deploy.protocol import ObservationMessage, PolicySpec, blank_observation
from vla.types import Observation


def policy_spec(policy) -> PolicySpec:
    """The observation a VLAPolicy expects, and what its training data was, per embodiment it was trained on."""
    normalizer = policy.normalizer
    info = normalizer.info
    return PolicySpec(
        cameras=list(policy.config.cameras), image_size=policy.config.image_size, horizon=policy.config.head.horizon,
        state_dims={e: normalizer.state_dim(e) for e in normalizer.embodiments},
        action_dims={e: normalizer.action_dim(e) for e in normalizer.embodiments},
        n_obs_steps=policy.config.n_obs_steps,
        action_names={e: i.action_names for e, i in info.items()},
        action_kinds={e: i.action_kind for e, i in info.items()}, fps={e: i.fps for e, i in info.items()},
    )


class LocalPolicy:
    """A VLAPolicy in this process. Thread-safe: one inference at a time.

    bac: block caching with the checkpoint's schedule for num_steps; off unless asked, as in predict and vla-eval.
    """

    def __init__(self, policy, num_steps: int | None = None, seed: int = 0, device: str | None = None,
                 bac: bool = False):
        self.policy = policy.eval()
        if device:
            self.policy.to(device)
        self.num_steps = num_steps
        self.bac = bac
        self.sampling = policy.sampling_settings(num_steps, bac)  # what it samples with; fails now without a schedule
        self.generator = torch.Generator().manual_seed(seed)
        self.spec = policy_spec(policy)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str, revision: str | None = None, cache_dir: str | None = None,
                        **kwargs) -> LocalPolicy:
        """A checkpoint folder, or a hub id at `revision` through the HF cache (vla.checkpoint.load_policy)."""
        from vla.checkpoint import load_policy

        return cls(load_policy(path, revision=revision, cache_dir=cache_dir), **kwargs)

    def warmup(self) -> None:
        """One inference on a blank observation, so the first real one is not slow."""
        self.infer(blank_observation(self.spec))

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        batch = Observation(images=torch.from_numpy(np.array(obs.images))[None],  # a copy: wire buffers are read-only
                            state=torch.from_numpy(np.asarray(obs.state, dtype=np.float32))[None],
                            instruction=[obs.instruction], embodiment=[obs.embodiment])
        options = {"num_steps": self.num_steps, "bac": self.bac}
        if obs.prefix is not None:
            options |= {"prefix_actions": torch.from_numpy(np.array(obs.prefix))[None],
                        "prefix_weights": torch.from_numpy(np.array(obs.prefix_weights))}
        with self._lock, torch.inference_mode():
            chunk = self.policy.predict(batch, generator=self.generator, **options)
        return chunk.actions[0, :, chunk.mask[0]].numpy()
