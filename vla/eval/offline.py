"""Offline action error on recorded demos: how far a policy's sampled chunks land from the expert's, in the robot's
own action units, without running the simulator. The few-shot benchmark measures it on demos of placements no run
trained on (does pretraining generalise beyond the 10 demos?); RoboMonkey's offline scaling shares its frame choice
and observations."""

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


@torch.no_grad()
def action_error(policy, demos, frames: int = 512, batch: int = 32, seed: int = 0, **sample_options) -> dict:
    """RMSE between one sampled chunk and the expert's at `frames` evenly spaced demo frames, in robot units over the
    entries before each episode's end: {"rmse": mean over frames, "frames": how many}. Robot units, not the policy's
    normalised ones, so that policies with different normalisation statistics (a fine-tuned checkpoint keeps its
    pretraining's; one trained from scratch has its demos') are compared on one scale. Seeded: the same policy, demos
    and options give the same figure. sample_options go to the head (num_steps, temperature)."""
    policy.eval()
    index_all = demo_frames(demos, frames)
    expert = demos.actions.float()  # [N, H, D]
    valid = (~demos.action_is_pad)[:, :, None].expand_as(expert)
    generator = torch.Generator().manual_seed(seed)
    errors = []
    for start in tqdm(range(0, len(index_all), batch), desc="offline action error", unit="batch", leave=False):
        index = index_all[start:start + batch]
        drawn = sample_candidates(policy, demo_observation(demos, index, policy.config.n_obs_steps), 1, generator,
                                  **sample_options)
        errors.append(rmse(drawn.actions, expert[index], valid[index])[:, 0])
    return {"rmse": torch.cat(errors).mean().item(), "frames": len(index_all), "units": "robot"}
