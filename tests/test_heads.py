"""Contract tests run over every registered action head."""

import pytest
import torch

from vla.action_heads import HeadConfig, build_head, head_config_class
from vla.types import BackboneOutput, Cond

B, H, D, S, C = 4, 8, 4, 7, 32
# Every registered head that runs on a fake condition. Token heads (ar) write tokens of the backbone LLM's vocabulary
# and need a real backbone: their contract (loss falls, seeded sampling, padding) is tested in test_ar_head.py.
HEADS = sorted(name for name in HeadConfig.get_known_choices() if not head_config_class(name)().uses_vocabulary)


def fake_cond(batch: int = B, seed: int = 0) -> Cond:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, 5, C, generator=g)
    backbone = BackboneOutput(tokens=tokens, token_mask=torch.ones(batch, 5, dtype=torch.bool), cognition=tokens[:, -1])
    return Cond(backbone=backbone, proprio=torch.randn(batch, S, generator=g))


def make_head(name: str, **overrides):
    config = head_config_class(name)(horizon=H, **overrides)
    torch.manual_seed(0)
    return build_head(config, cond_dim=C, action_dim=D, state_dim=S)


@pytest.mark.parametrize("name", HEADS)
def test_loss_falls_on_fixed_batch(name):
    head = make_head(name)
    cond = fake_cond()
    # actions that depend on the condition, so the head has something to learn
    actions = torch.tanh(cond.backbone.cognition[:, :D, None].expand(B, D, H).transpose(1, 2))
    valid = torch.ones(B, H, D, dtype=torch.bool)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    losses = []
    for step in range(150):
        torch.manual_seed(step)
        loss = head.loss(cond, actions, valid)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20


@pytest.mark.parametrize("name", HEADS)
def test_sample_shape_and_seed(name):
    head = make_head(name).eval()
    cond = fake_cond()
    a = head.sample(cond, generator=torch.Generator().manual_seed(1), num_steps=3)
    b = head.sample(cond, generator=torch.Generator().manual_seed(1), num_steps=3)
    c = head.sample(cond, generator=torch.Generator().manual_seed(2), num_steps=3)
    assert a.shape == (B, H, D)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max() <= 1.0 + 1e-5  # samples live in the normalised [-1, 1] range


@pytest.mark.parametrize("name", HEADS)
def test_padded_entries_do_not_affect_loss(name):
    head = make_head(name)
    cond = fake_cond()
    actions = torch.rand(B, H, D) * 2 - 1
    valid = torch.ones(B, H, D, dtype=torch.bool)
    valid[:, -3:] = False
    valid[:, :, -1] = False
    garbage = actions.clone()
    garbage[~valid] = 1e3
    torch.manual_seed(0)
    clean = head.loss(cond, actions, valid)["loss"]
    torch.manual_seed(0)
    dirty = head.loss(cond, garbage, valid)["loss"]
    assert torch.allclose(clean, dirty)


def test_unknown_head_suggests_closest():
    with pytest.raises(ValueError, match="Did you mean 'dit'"):
        head_config_class("ditt")


def test_dit_config_checks():
    from vla.action_heads import DiTHeadConfig

    with pytest.raises(ValueError, match="divisible"):
        DiTHeadConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="cond_dropout"):
        DiTHeadConfig(cfg_scale=1.5)


def test_dit_classifier_free_guidance_runs():
    head = make_head("dit", cond_dropout=0.2, cfg_scale=1.5)
    cond = fake_cond()
    loss = head.loss(cond, torch.zeros(B, H, D), torch.ones(B, H, D, dtype=torch.bool))["loss"]
    assert torch.isfinite(loss)
    assert head.eval().sample(cond, num_steps=2).shape == (B, H, D)
