"""Offline action error on recorded demos: how far a policy's sampled chunks land from the expert's, in normalised
action units, without running the simulator. The few-shot benchmark measures it on demos of placements no run
trained on (does pretraining generalise beyond the 10 demos, or only fit them?); RoboMonkey's offline scaling
measures it for k samples per frame."""

from __future__ import annotations

import torch
from tqdm import tqdm

from vla.test_time.sampling import sample_candidates
from vla.test_time.verifier_training import rmse
from vla.types import Observation


def demo_frames(demos, count: int) -> torch.Tensor:
    """`count` frame indices evenly spaced over the demos (all of them when there are fewer) [F]."""
    return torch.linspace(0, len(demos) - 1, min(count, len(demos))).round().long().unique()


def demo_observation(demos, index: torch.Tensor, n_obs_steps: int) -> Observation:
    """The observations of frames `index` [B] as the policy sees them in closed loop."""
    return Observation(images=demos.observation_images(index, n_obs_steps), state=demos.state[index],
                       instruction=demos.instructions(index), embodiment=[demos.embodiment] * len(index))


def expert_targets(policy, demos) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert chunk of every frame, normalised as the policy's head predicts it [N, H, D_max], and which of its
    entries count (not padding past an episode's end, a dimension of the embodiment) [N, H, D_max]."""
    expert = policy.normalizer.normalize_action(demos.actions, demos.embodiment).float()
    valid = (~demos.action_is_pad)[:, :, None] & policy.normalizer.action_mask(demos.embodiment)[None, None, :]
    return expert, valid


@torch.no_grad()
def action_error(policy, demos, frames: int = 512, batch: int = 32, seed: int = 0) -> dict:
    """RMSE between one sampled chunk and the expert's at `frames` evenly spaced demo frames, over the valid entries
    of the normalised chunk: {"rmse": mean over frames, "frames": how many}. Seeded: the same policy and demos give
    the same figure."""
    policy.eval()
    index_all = demo_frames(demos, frames)
    expert, valid = expert_targets(policy, demos)
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for start in tqdm(range(0, len(index_all), batch), desc="offline action error", unit="batch", leave=False):
        index = index_all[start:start + batch]
        drawn = sample_candidates(policy, demo_observation(demos, index, policy.config.n_obs_steps), 1, generator)
        errors.append(rmse(drawn.normalized.cpu(), expert[index], valid[index])[:, 0])
    return {"rmse": torch.cat(errors).mean().item(), "frames": len(index_all)}
