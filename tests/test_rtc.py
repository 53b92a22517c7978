"""Real-time chunking by inpainting: the denoising heads start a chunk from the actions still queued."""

import pytest
import torch
from test_continuous_heads import DENOISING_HEADS, B, D, H, padded_cond, random_head, sample


@pytest.mark.parametrize("name", DENOISING_HEADS)
def test_committed_prefix_is_kept_and_the_rest_joins_smoothly(name):
    head, cond = random_head(name), padded_cond()
    prefix = torch.rand(B, 3, D) * 1.6 - 0.8  # [B, P, D] in the normalised range
    weights = torch.tensor([1.0, 1.0, 0.5])
    pinned = sample(head, cond, 10, prefix=prefix, prefix_weights=weights)
    free = sample(head, cond, 10)
    assert pinned.shape == (B, H, D)
    assert torch.allclose(pinned[:, :2], prefix[:, :2], atol=1e-5), "weight 1: the committed actions are kept"
    between = (pinned[:, 2] - prefix[:, 2]).abs().mean()
    assert between < (free[:, 2] - prefix[:, 2]).abs().mean(), "weight 0.5: pulled towards the queued action"
    jump_pinned = (pinned[:, 2] - pinned[:, 1]).abs().mean()
    assert jump_pinned < 1.0  # no discontinuity right after the committed part


def test_prefix_weights_must_match_the_prefix():
    head, cond = random_head("dit"), padded_cond()
    with pytest.raises(ValueError, match="prefix_weights must be \\[3\\]"):
        sample(head, cond, 4, prefix=torch.zeros(B, 3, D), prefix_weights=torch.ones(2))


def test_policy_keeps_queued_actions_in_robot_units(tiny_checkpoint):
    """Through VLAPolicy.predict: robot-unit prefix -> normalised -> inpainted -> back to robot units."""
    import numpy as np

    from vla.checkpoint import load_policy
    from vla.deploy.protocol import blank_observation
    from vla.deploy.runner import LocalPolicy

    runner = LocalPolicy(load_policy(tiny_checkpoint), num_steps=4)
    obs = blank_observation(runner.spec)
    stats = runner.policy.normalizer.stats[obs.embodiment]["action"]
    low, high = np.array(stats["q01"]), np.array(stats["q99"])
    obs.prefix = np.stack([low + (high - low) * f for f in (0.3, 0.6)]).astype(np.float32)  # inside the data range
    obs.prefix_weights = np.ones(2, np.float32)
    chunk = runner.infer(obs)
    assert np.allclose(chunk[:2], obs.prefix, atol=1e-4)
