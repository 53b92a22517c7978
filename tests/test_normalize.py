"""Per-embodiment normaliser: round trip, padding, errors, JSON persistence."""

from __future__ import annotations

import pytest
import torch

from vla.data.normalize import Normalizer, compute_stats


def make_normalizer(mode: str = "quantile") -> tuple[Normalizer, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    actions = torch.randn(500, 4, generator=gen) * torch.tensor([0.1, 1.0, 5.0, 1.0]) + 2.0
    actions[:, 3] = 1.0  # a constant dimension
    state = torch.randn(500, 7, generator=gen)
    state[:, 4:] = 0.0  # an always-zero goal slot
    stats = {"sawyer": {"action": compute_stats(actions), "state": compute_stats(state)}}
    return Normalizer(stats=stats, mode=mode, max_action_dim=7, max_state_dim=10), actions, state


@pytest.mark.parametrize("mode", ["quantile", "zscore"])
def test_round_trip_inside_quantiles(mode):
    norm, actions, _ = make_normalizer(mode)
    stats = norm.stats["sawyer"]["action"]
    inside = ((actions >= torch.tensor(stats["q01"]) - 1e-6) & (actions <= torch.tensor(stats["q99"]) + 1e-6)).all(1)
    x = actions[inside]
    back = norm.unnormalize_action(norm.normalize_action(x, "sawyer"), "sawyer")
    assert back.shape == x.shape
    assert torch.allclose(back, x, atol=1e-5)


def test_quantile_actions_are_clipped_and_padded():
    norm, actions, _ = make_normalizer()
    out = norm.normalize_action(actions.reshape(100, 5, 4), "sawyer")
    assert out.shape == (100, 5, 7)
    assert out.abs().max() <= 1.0
    assert torch.all(out[..., 4:] == 0)
    assert norm.action_mask("sawyer").tolist() == [True] * 4 + [False] * 3


def test_constant_dims_stay_finite():
    norm, actions, state = make_normalizer()
    assert torch.all(norm.normalize_action(actions, "sawyer")[:, 3] == 0)
    normalized_state = norm.normalize_state(state, ["sawyer"] * len(state))
    assert normalized_state.shape == (500, 10) and torch.isfinite(normalized_state).all()
    assert torch.all(normalized_state[:, 4:] == 0)


def test_state_is_not_clipped():
    norm, _, state = make_normalizer()
    assert norm.normalize_state(state * 10, ["sawyer"] * len(state)).abs().max() > 1.5


def test_missing_embodiment_names_what_the_checkpoint_has():
    norm, actions, _ = make_normalizer()
    with pytest.raises(ValueError, match=r"no normalisation statistics for embodiment 'ur5e'.*\['sawyer'\]"):
        norm.normalize_action(actions, "ur5e")
    with pytest.raises(ValueError, match="ur5e"):
        norm.normalize_state(torch.zeros(1, 7), ["ur5e"])


def test_save_load_keeps_mode(tmp_path):
    norm, actions, _ = make_normalizer("zscore")
    norm.save(tmp_path / "norm.json")
    loaded = Normalizer.load(tmp_path / "norm.json")
    assert loaded.mode == "zscore" and loaded.max_action_dim == 7 and loaded.stats == norm.stats
    assert torch.equal(loaded.normalize_action(actions, "sawyer"), norm.normalize_action(actions, "sawyer"))


def test_load_refuses_a_file_without_mode(tmp_path):
    (tmp_path / "norm.json").write_text('{"max_action_dim": 7, "max_state_dim": 7, "stats": {}}')
    with pytest.raises(ValueError, match="mode"):
        Normalizer.load(tmp_path / "norm.json")


def test_wrong_action_dim_is_an_error():
    norm, _, _ = make_normalizer()
    with pytest.raises(ValueError, match="5 dims; expected 4 for embodiment 'sawyer'"):
        norm.normalize_action(torch.zeros(2, 5), "sawyer")
