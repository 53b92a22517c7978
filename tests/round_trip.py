"""Shared by head tests: train through vla-train on the tiny demos, then save -> reload -> the same actions."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from vla.checkpoint import load_policy
from vla.data.dataset import ChunkedDemos
from vla.policy import VLAPolicy
from vla.training.train import load_demos, train
from vla.types import ActionChunk, Observation


class Trained(NamedTuple):
    policy: VLAPolicy  # the final checkpoint of the run, loaded
    demos: ChunkedDemos
    obs: Observation  # two demo frames
    first: ActionChunk  # the policy's chunk for `obs` with seed 0 and 3 sampling steps


def train_and_round_trip(run_config, model, tmp_path, steps: int) -> Trained:
    """Train `model` for `steps` steps with `run_config`'s data and training settings, load its final checkpoint and
    predict two demo frames; assert that saving it and loading the copy predicts exactly the same chunk."""
    cfg = dataclasses.replace(run_config, model=model, train=dataclasses.replace(
        run_config.train, steps=steps, save_every=steps, output_dir=str(tmp_path / "train")))
    policy = load_policy(train(cfg))
    demos = load_demos(model, run_config.data)
    idx = torch.tensor([0, 5])
    obs = Observation(images=demos.images[idx], state=demos.state[idx], instruction=demos.instructions(idx),
                      embodiment=[demos.embodiment] * 2)
    first = policy.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=3)
    policy.save_pretrained(tmp_path / "copy")
    again = VLAPolicy.from_pretrained(tmp_path / "copy").predict(obs, generator=torch.Generator().manual_seed(0),
                                                                 num_steps=3)
    assert torch.equal(first.actions, again.actions)
    return Trained(policy, demos, obs, first)
