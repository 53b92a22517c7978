"""Demo generation (LeRobot dataset) and in-memory chunk loading."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from vla.data import Normalizer, check_finite, load_chunked_demos
from vla.sim.demos import GENERATION_FILE, generate_demos
from vla.sim.metaworld_env import EMBODIMENT, MetaWorldEnv

CHUNK = 8


@pytest.fixture(scope="module")
def demos(tiny_demo_config, tiny_demos_path):
    return load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, chunk_size=CHUNK,
                              expected_action_dim=4, expected_state_dim=7)


def test_shapes_and_metadata(demos):
    n = len(demos)
    assert demos.images.shape == (n, 1, 32, 32, 3) and demos.images.dtype == torch.uint8
    assert demos.state.shape == (n, 7) and demos.actions.shape == (n, CHUNK, 4)
    assert demos.action_is_pad.shape == (n, CHUNK) and demos.action_is_pad.dtype == torch.bool
    assert demos.embodiment == EMBODIMENT and demos.camera_keys == ["observation.images.corner"]
    assert demos.fps == 80 and demos.action_names == ["dx", "dy", "dz", "gripper"]
    assert sorted(demos.tasks) == ["press the button from the top", "reach the goal"]
    assert demos.episode_index.unique().numel() == 4


def test_pad_flags_mark_episode_ends(demos):
    for episode in demos.episode_index.unique():
        rows = (demos.episode_index == episode).nonzero().flatten()
        length = len(rows)
        expected = torch.arange(CHUNK)[None, :] >= (length - torch.arange(length))[:, None]
        assert torch.equal(demos.action_is_pad[rows], expected)


def test_actions_and_images_round_trip(tiny_demo_config, tiny_demos_path, demos):
    seed = json.loads((tiny_demos_path / GENERATION_FILE).read_text())["seeds_used"]["reach"][0]
    env = MetaWorldEnv("reach", seed=seed, image_size=32, max_steps=tiny_demo_config.max_steps)
    obs = env.reset()
    rows = (demos.episode_index == 0).nonzero().flatten()
    for row in rows[:5]:
        action = env.expert_action()
        assert np.array_equal(demos.images[row, 0].numpy(), obs["image"])
        assert np.allclose(demos.state[row].numpy(), obs["state"])
        assert np.allclose(demos.actions[row, 0].numpy(), action)
        obs, _, _ = env.step(action)
    env.close()
    assert torch.equal(demos.actions[rows[0], 1], demos.actions[rows[1], 0])


def test_sample_batch(demos):
    batch = demos.sample(6, torch.Generator().manual_seed(0))
    assert batch["images"].shape == (6, 1, 32, 32, 3) and batch["actions"].shape == (6, CHUNK, 4)
    assert len(batch["instruction"]) == 6 and batch["embodiment"] == [EMBODIMENT] * 6


def test_normalizer_from_demos(demos):
    norm = Normalizer.from_demos(demos, mode="quantile", max_action_dim=7, max_state_dim=8)
    out = norm.normalize_action(demos.actions, demos.embodiment)
    assert out.shape == (len(demos), CHUNK, 7) and torch.isfinite(out).all()
    assert torch.isfinite(norm.normalize_state(demos.state, [demos.embodiment] * len(demos))).all()


def test_second_generation_is_a_cache_hit(tiny_demo_config, tiny_demos_path, capsys):
    before = (tiny_demos_path / GENERATION_FILE).stat().st_mtime_ns
    assert generate_demos(tiny_demo_config) == tiny_demos_path
    assert "cached" in capsys.readouterr().out
    assert (tiny_demos_path / GENERATION_FILE).stat().st_mtime_ns == before
    other = dataclasses.replace(tiny_demo_config, episodes_per_task=3)
    assert other.dataset_dir() != tiny_demos_path


def test_dim_mismatch_is_an_error(tiny_demo_config, tiny_demos_path):
    with pytest.raises(ValueError, match="dataset action dim 4 != config action dim 7"):
        load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, CHUNK, expected_action_dim=7)
    with pytest.raises(ValueError, match="dataset state dim 7 != config state dim 8"):
        load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, CHUNK, expected_state_dim=8)


def test_nan_names_episode_and_frame():
    values = torch.zeros(5, 4)
    values[3, 2] = float("nan")
    with pytest.raises(ValueError, match="action has NaN or inf at episode 7, frame 2"):
        check_finite("action", values, torch.full((5,), 7), torch.tensor([9, 0, 1, 2, 3]))
    check_finite("action", torch.zeros(5, 4), torch.zeros(5), torch.arange(5))


def test_expert_keeps_recording_after_success():
    from vla.sim.demos import rollout_expert

    env = MetaWorldEnv("reach", seed=0, image_size=16, max_steps=150)
    until_success, ok = rollout_expert(env, seed=3, steps_after_success=0)
    longer, ok_longer = rollout_expert(env, seed=3, steps_after_success=5)
    env.close()
    assert ok and ok_longer
    assert len(longer) == len(until_success) + 5
    assert all(np.array_equal(a["action"], b["action"]) for a, b in zip(until_success, longer, strict=False))


def test_data_embodiment_names_the_dataset_instead_of_its_robot_type(tiny_run_config):
    from vla.training.train import load_demos

    data = dataclasses.replace(tiny_run_config.data, embodiment="my_arm")
    demos = load_demos(tiny_run_config.model, data)
    assert demos.embodiment == "my_arm"
    assert demos.sample(3, torch.Generator().manual_seed(0))["embodiment"] == ["my_arm"] * 3
    model = tiny_run_config.model
    assert Normalizer.from_demos(demos, model.normalization, model.max_action_dim,
                                 model.max_state_dim).embodiments == ["my_arm"]
    assert load_demos(model, tiny_run_config.data).embodiment == EMBODIMENT  # "" = the dataset's robot_type


def test_dataset_action_kind_is_recorded_or_required(tiny_demo_config, tiny_demos_path, tmp_path):
    """vla-demos records that Meta-World actions are ee_delta; a dataset that does not say (here: the same dataset
    without vla's sidecar file) needs --data.action_kind, and the description travels with the statistics."""
    from vla.data.embodiment import EMBODIMENT_FILE

    demos = load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, CHUNK)
    assert (demos.info.action_kind, demos.info.fps) == ("ee_delta", 80.0)
    assert demos.info.action_names == ["dx", "dy", "dz", "gripper"]
    bare = tmp_path / "bare"
    shutil.copytree(tiny_demos_path, bare)
    (bare / EMBODIMENT_FILE).unlink()
    with pytest.raises(ValueError, match="does not say what its actions are: pass --data.action_kind"):
        load_chunked_demos(str(bare), tiny_demo_config.repo_id, CHUNK)
    with pytest.raises(ValueError, match="action kind must be one of"):
        load_chunked_demos(str(bare), tiny_demo_config.repo_id, CHUNK, action_kind="joints")
    with pytest.raises(ValueError, match="contradicts the dataset"):
        load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, CHUNK, action_kind="joint_position")
    named = load_chunked_demos(str(bare), tiny_demo_config.repo_id, CHUNK, action_kind="joint_position")
    norm = Normalizer.from_demos(named, "quantile")
    norm.save(tmp_path / "norm_stats.json")
    assert Normalizer.load(tmp_path / "norm_stats.json").info == {named.embodiment: named.info}
