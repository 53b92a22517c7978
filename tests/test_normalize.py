"""Per-embodiment normaliser: round trip, padding, errors, JSON persistence."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vla.data.embodiment import EmbodimentInfo
from vla.data.normalize import Normalizer, compute_stats
from vla.data.registry import load_embodiment


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


def with_gripper(mode: str = "quantile") -> tuple[Normalizer, torch.Tensor]:
    """The sawyer normaliser with per-dimension modes: action dim 2 a 0/1 gripper passed through, state dim 0 too."""
    norm, actions, state = make_normalizer(mode)
    actions = actions.clone()
    actions[:, 2] = (torch.arange(len(actions)) % 2).float()
    stats = {"sawyer": {"action": compute_stats(actions), "state": compute_stats(state)}}
    modes = {"sawyer": {"action": [mode, mode, "none", mode], "state": ["none"] + [mode] * 6}}
    return Normalizer(stats=stats, mode=mode, max_action_dim=7, max_state_dim=10, modes=modes), actions


@pytest.mark.parametrize("mode", ["quantile", "zscore"])
def test_a_none_dimension_passes_through_and_the_others_keep_the_mode(mode):
    norm, actions = with_gripper(mode)
    plain = Normalizer(stats=norm.stats, mode=mode, max_action_dim=7, max_state_dim=10)
    out = norm.normalize_action(actions, "sawyer")
    assert out.shape == (500, 7) and torch.all(out[:, 4:] == 0)
    assert torch.equal(out[:, 2], actions[:, 2])  # the gripper, unchanged
    expected = plain.normalize_action(actions, "sawyer")
    assert torch.equal(out[:, [0, 1, 3]], expected[:, [0, 1, 3]])
    assert not torch.equal(expected[:, 2], actions[:, 2])  # (the global mode would have moved it)
    back = norm.unnormalize_action(out, "sawyer")
    assert torch.equal(back[:, 2], actions[:, 2]) and back.shape == (500, 4)
    state = torch.randn(3, 7) * 3
    normalized_state = norm.normalize_state(state, ["sawyer"] * 3)
    assert torch.equal(normalized_state[:, 0], state[:, 0])
    assert torch.equal(normalized_state[:, 1:7], plain.normalize_state(state, ["sawyer"] * 3)[:, 1:7])


def test_a_none_dimension_is_neither_clipped_nor_zeroed_when_constant():
    norm, actions = with_gripper()
    x = actions[:4].clone()
    x[:, 2] = torch.tensor([1.5, -3.0, 0.25, 0.0])  # beyond [-1, 1]: quantile dims are clipped, a passed one not
    assert norm.normalize_action(x, "sawyer")[:, 2].tolist() == [1.5, -3.0, 0.25, 0.0]
    constant = dict(norm.stats["sawyer"]["state"], std=[0.0] * 7, q01=[2.0] * 7, q99=[2.0] * 7)
    stats = {"sawyer": {"action": norm.stats["sawyer"]["action"], "state": constant}}
    flat = Normalizer(stats=stats, mode="quantile", max_action_dim=7, max_state_dim=10, modes=norm.modes)
    out = flat.normalize_state(torch.full((1, 7), 2.0), ["sawyer"])
    assert out[0, :7].tolist() == [2.0] + [0.0] * 6  # EPS: a constant normalised dim is 0, a passed one itself


def test_save_load_keeps_per_dimension_modes(tmp_path):
    norm, actions = with_gripper("zscore")
    norm.save(tmp_path / "norm.json")
    loaded = Normalizer.load(tmp_path / "norm.json")
    assert loaded.modes == norm.modes and loaded.dim_modes("sawyer", "action") == ["zscore", "zscore", "none",
                                                                                  "zscore"]
    assert torch.equal(loaded.normalize_action(actions, "sawyer"), norm.normalize_action(actions, "sawyer"))


def old_normalize(stats: dict, mode: str, x: torch.Tensor, clip: bool) -> torch.Tensor:
    """What the normaliser computed before per-dimension modes (one mode everywhere; actions clipped in quantile)."""
    s = {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}
    if mode == "quantile":
        center, scale = (s["q99"] + s["q01"]) / 2, (s["q99"] - s["q01"]) / 2
    else:
        center, scale = s["mean"], s["std"]
    valid = scale >= 1e-6
    center, scale = center.float(), torch.where(valid, scale, torch.ones_like(scale)).float()
    out = torch.where(valid, (x - center) / scale, torch.zeros_like(x))
    return out.clamp(-1, 1) if clip and mode == "quantile" else out


@pytest.mark.parametrize("mode", ["quantile", "zscore"])
def test_a_file_written_before_per_dimension_modes_loads_and_normalises_as_before(tmp_path, mode):
    _, actions, state = make_normalizer(mode)
    stats = {"sawyer": {"action": compute_stats(actions), "state": compute_stats(state)}}
    old = {"mode": mode, "max_action_dim": 7, "max_state_dim": 10, "stats": stats,  # what save() wrote then
           "embodiments": {"sawyer": {"action_names": ["a", "b", "c", "d"], "state_names": list("abcdefg"),
                                      "action_kind": "joint_position", "fps": 10.0}}}
    (tmp_path / "norm_stats.json").write_text(json.dumps(old))
    loaded = Normalizer.load(tmp_path / "norm_stats.json")
    assert loaded.modes == {} and loaded.dim_modes("sawyer", "action") == [mode] * 4
    normalized = loaded.normalize_action(actions, "sawyer")
    assert torch.equal(normalized[:, :4], old_normalize(stats["sawyer"]["action"], mode, actions, clip=True))
    assert torch.equal(loaded.normalize_state(state, ["sawyer"] * 500)[:, :7],
                       old_normalize(stats["sawyer"]["state"], mode, state, clip=False))
    s = {k: torch.tensor(v) for k, v in stats["sawyer"]["action"].items()}
    center = (s["q99"] + s["q01"]) / 2 if mode == "quantile" else s["mean"]
    scale = (s["q99"] - s["q01"]) / 2 if mode == "quantile" else s["std"]
    back = loaded.unnormalize_action(normalized, "sawyer")
    assert torch.allclose(back[:, :3], normalized[:, :3] * scale[:3] + center[:3], atol=1e-5)
    assert torch.all(back[:, 3] == 1.0)  # the constant dim unnormalises to its centre


def test_modes_other_than_the_policy_mode_or_none_are_refused():
    norm, _ = with_gripper()
    for bad in (["quantile", "zscore", "none", "quantile"], ["quantile", "none"]):
        with pytest.raises(ValueError, match=r"'sawyer' action modes .*expected 4 of 'quantile' / 'none'"):
            Normalizer(stats=norm.stats, mode="quantile", max_action_dim=7, max_state_dim=10,
                       modes={"sawyer": {"action": bad}})


def test_a_passed_through_action_beyond_the_head_clip_is_refused():
    norm, actions = with_gripper()
    norm.info["sawyer"] = EmbodimentInfo(["x", "y", "gripper.pos", "z"], list("abcdefg"), "joint_position", 10.0)
    norm.check_passthrough(1.0)  # 0 / 1 fits [-1, 1]
    with pytest.raises(ValueError, match=r"'sawyer' passes action dimension 'gripper.pos' through .*span \[0, 1\], "
                                         r"beyond the head's sample clip \[-0.5, 0.5\]"):
        norm.check_passthrough(0.5)
    norm.check_passthrough(None)  # no clip


class Source:
    """A frame source as Normalizer.from_sources reads it (vla.data.mixture)."""

    def __init__(self, entry, actions: torch.Tensor, state: torch.Tensor):
        self.entry, self.embodiment, self._numeric = entry, entry.name, {"action": actions.numpy(),
                                                                          "state": state.numpy()}
        self.info = EmbodimentInfo(entry.action_names, entry.state_names, "ee_delta", entry.fps)

    def numeric(self) -> dict:
        return self._numeric


def bridge_source(gripper_max: float = 1.0) -> Source:
    gen = torch.Generator().manual_seed(1)
    actions, state = torch.randn(200, 7, generator=gen), torch.randn(200, 7, generator=gen)
    actions[:, 6] = (torch.arange(200) % 2) * gripper_max  # the bool open_gripper
    return Source(load_embodiment("bridge"), actions, state)


def test_from_sources_takes_the_modes_of_the_registry_entry():
    """bridge.yaml: quantile everywhere but `normalization: none` on the 0/1 gripper."""
    source = bridge_source()
    norm = Normalizer.from_sources([source], "quantile", 8, 8)
    assert norm.modes == {"bridge": {"action": ["quantile"] * 6 + ["none"], "state": ["quantile"] * 7}}
    actions = torch.from_numpy(source.numeric()["action"])
    assert torch.equal(norm.normalize_action(actions, "bridge")[:, 6], actions[:, 6])
    norm.check_passthrough(1.0)
    with pytest.raises(ValueError, match=r"'bridge' passes action dimension 'gripper' through .*\[0, 100\]"):
        Normalizer.from_sources([bridge_source(100.0)], "quantile", 8, 8).check_passthrough(1.0)
    with pytest.raises(ValueError, match=r"bridge\.yaml normalises \{'action dx': 'quantile', .*model\.normalization="
                                         r"'zscore' .*set those parts' normalization to 'zscore' or 'none', or "
                                         r"--model\.normalization to 'quantile'"):
        Normalizer.from_sources([source], "zscore", 8, 8)


def test_an_entry_that_matches_the_mode_everywhere_records_no_modes():
    entry = load_embodiment("bridge")
    source = bridge_source()
    source.entry = dataclasses.replace(entry, action=entry.action[:-1] + (
        dataclasses.replace(entry.action[-1], normalization="quantile"),))
    assert Normalizer.from_sources([source], "quantile", 8, 8).modes == {}
    with pytest.raises(ValueError, match="datasets of embodiment 'bridge' normalise it differently"):
        Normalizer.from_sources([source, bridge_source()], "quantile", 8, 8)
