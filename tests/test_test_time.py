"""Test-time scaling (vla.test_time, RoboMonkey): n samples from one backbone pass, Gaussian expansion with the
gripper by majority, the verifier (training, ranking, save / load), SampleAndVerify and the eval option."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from vla.checkpoint import load_policy
from vla.config import EvalConfig, SampleVerifyConfig
from vla.test_time import SampleAndVerify, Verifier, VerifierConfig, gaussian_expand, gripper_rule, sample_candidates
from vla.test_time.sampling import GripperRule, check_deterministic_head
from vla.test_time.verifier_training import VerifierTrainConfig, preference_data, preference_loss, train_verifier
from vla.training.train import load_demos
from vla.types import Observation


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return load_policy(tiny_checkpoint).eval()


@pytest.fixture(scope="module")
def demos(tiny_run_config):
    return load_demos(tiny_run_config.model, tiny_run_config.data)


@pytest.fixture(scope="module")
def verifier_dir(policy, demos, tmp_path_factory):
    cfg = VerifierTrainConfig(output_dir=str(tmp_path_factory.mktemp("verifier")), hidden=64, steps=200,
                              batch_size=32, lr=3e-3, holdout_episodes=1)
    return train_verifier(cfg, policy=policy, demos=demos)


def observation(demos, indices=(0, 70)) -> Observation:
    idx = torch.tensor(indices)
    return Observation(images=demos.images[idx], state=demos.state[idx], instruction=demos.instructions(idx),
                       embodiment=[demos.embodiment] * len(indices))


def test_n_candidates_per_observation_differ(policy, demos):
    drawn = sample_candidates(policy, observation(demos), 5, generator=torch.Generator().manual_seed(0))
    assert drawn.actions.shape == (2, 5, 4, 4) and drawn.normalized.shape == (2, 5, 4, policy.config.max_action_dim)
    assert drawn.mask.all()
    for i in range(2):
        assert all(not torch.allclose(drawn.actions[i, 0], drawn.actions[i, j]) for j in range(1, 5))
    # in robot units, as predict: the normaliser's inverse of the normalised samples
    assert torch.allclose(drawn.actions[0], policy.normalizer.unnormalize_action(drawn.normalized[0],
                                                                                 demos.embodiment))


def test_n_samples_cost_one_backbone_pass_and_one_head_call(policy, demos, monkeypatch):
    calls = {"backbone": 0, "head": 0}
    handle = policy.backbone.register_forward_hook(lambda *_: calls.__setitem__("backbone", calls["backbone"] + 1))
    sample = policy.head.sample

    def counted(cond, **options):
        calls["head"] += 1
        assert cond.proprio.shape[0] == 2 * 8  # the conditioning of 2 observations, each repeated 8 times
        return sample(cond, **options)

    monkeypatch.setattr(policy.head, "sample", counted)
    try:
        sample_candidates(policy, observation(demos), 8)
    finally:
        handle.remove()
    assert calls == {"backbone": 1, "head": 1}


def test_gaussian_expansion_fits_the_samples_and_keeps_the_gripper_by_majority():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(5, 3, 4, generator=generator) * torch.tensor([0.1, 0.2, 0.3, 0.0])
    samples[:, :, 3] = torch.tensor([1.0, 0.8, 0.9, -1.0, -1.0])[:, None]  # 3 of 5 close the gripper
    samples[:, 1, 3] = torch.tensor([-1.0, -0.8, 1.0, -1.0, 1.0])  # at step 1, 3 of 5 open it
    out = gaussian_expand(samples, 4000, GripperRule(dims=(3,), thresholds=(0.0,)), generator)
    assert out.shape == (4000, 3, 4)
    assert torch.allclose(out[:, 0, 3], torch.tensor(0.9)) and torch.allclose(out[:, 1, 3], torch.tensor(-14 / 15))
    assert torch.allclose(out[..., :3].mean(0), samples[..., :3].mean(0), atol=0.02)
    assert torch.allclose(out[..., :3].std(0), samples[..., :3].std(0), rtol=0.1)
    one = gaussian_expand(samples[:1], 3, GripperRule(dims=(3,), thresholds=(0.0,)), generator)
    assert torch.equal(one, samples[:1].expand(3, -1, -1))  # a single sample has no spread


def test_gripper_dims_come_from_the_embodiment_registry(policy, demos):
    rule = gripper_rule(policy.normalizer, demos.embodiment)  # metaworld_sawyer: [dx, dy, dz, gripper]
    assert rule == GripperRule(dims=(3,), thresholds=(0.0,))


def test_greedy_token_head_and_bad_counts_are_refused(policy, demos):
    greedy = SimpleNamespace(head=SimpleNamespace(deterministic_when_greedy=True,
                                                  config=SimpleNamespace(type="ar", temperature=0.0)))
    with pytest.raises(ValueError, match="temperature > 0"):
        check_deterministic_head(greedy, 4, {})
    check_deterministic_head(greedy, 4, {"temperature": 1.0})
    with pytest.raises(ValueError, match="n >= 1"):
        sample_candidates(policy, observation(demos), 0)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        SampleVerifyConfig(verifier="v", samples=0)


def test_preference_loss_prefers_the_closer_candidate_with_a_margin():
    distance = torch.tensor([[0.0, 1.0]])
    right, wrong = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert preference_loss(right, distance, margin=0.0) < preference_loss(wrong, distance, margin=0.0)
    # the margin asks for a score gap that grows with the RMSE gap
    assert preference_loss(right, distance, margin=1.0) > preference_loss(right, distance, margin=0.0)


def test_verifier_loss_falls_and_ranks_the_expert_above_heavy_perturbations(verifier_dir, policy):
    summary = json.loads((verifier_dir / "verifier.json").read_text())["training"]
    losses = summary["loss_every_10"]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert summary["train"]["expert_above_heavy"] > 0.9 and summary["train"]["pair_accuracy"] > 0.7  # chance: 0.5
    assert summary["held_out"]["frames"] > 0 and summary["held_out"]["expert_above_heavy"] > 0.7
    assert (verifier_dir / "loss.png").stat().st_size > 0
    loaded = Verifier.load(verifier_dir)
    loaded.check_policy(policy)
    features, actions = torch.randn(2, 2 * 32 + policy.config.max_state_dim), torch.randn(2, 3, 4, 4)
    assert loaded.score(features, actions).shape == (2, 3)


def test_verifier_trained_on_policy_samples_picks_closer_samples(policy, demos, tmp_path):
    """RoboMonkey's own candidates: with the policy's samples among them, the verifier learns to choose among
    samples (what test-time scaling asks of it), not only to tell the expert from a heavy perturbation."""
    cfg = VerifierTrainConfig(output_dir=str(tmp_path / "verifier"), hidden=64, steps=200, batch_size=32, lr=3e-3,
                              holdout_episodes=1, policy_samples=4)
    summary = json.loads((train_verifier(cfg, policy=policy, demos=demos) / "verifier.json").read_text())["training"]
    train = summary["train"]
    assert summary["settings"]["policy_samples"] == 4
    assert train["sample_oracle_rmse"] < train["sample_pick_rmse"] < train["sample_rmse"]
    # the choice closes a real part of the gap between no choice and the oracle's
    assert train["sample_rmse"] - train["sample_pick_rmse"] > 0.2 * (train["sample_rmse"] - train["sample_oracle_rmse"])
    assert {"sample_rmse", "sample_pick_rmse", "sample_oracle_rmse"} <= set(summary["held_out"])


def test_verifier_policy_samples_are_refused_when_they_would_all_be_equal(demos):
    greedy = SimpleNamespace(head=SimpleNamespace(deterministic_when_greedy=True,
                                                  config=SimpleNamespace(type="ar", temperature=0.0)))
    with pytest.raises(ValueError, match=r"temperature > 0 \(verifier_train.temperature"):
        preference_data(greedy, demos, VerifierTrainConfig(policy_samples=4))
    with pytest.raises(ValueError, match="policy_samples"):
        VerifierTrainConfig(policy_samples=-1)


def test_sample_and_verify_executes_the_best_scored_candidate(policy, demos, verifier_dir):
    verifier = Verifier.load(verifier_dir)
    for candidates, pool in ((6, 6), (0, 4)):
        wrapped = SampleAndVerify(policy, verifier, samples=4, candidates=candidates)
        chunk = wrapped.predict(observation(demos), generator=torch.Generator().manual_seed(0))
        assert chunk.actions.shape == (2, 4, 4) and chunk.mask.all()
        assert wrapped.last_scores.shape == (2, pool) and wrapped.last_candidates.shape == (2, pool, 4, 4)
        best = wrapped.last_scores.argmax(1)
        assert torch.equal(chunk.actions, wrapped.last_candidates[torch.arange(2), best])
    with pytest.raises(ValueError, match="real-time chunking"):
        wrapped.predict(observation(demos), prefix_actions=torch.zeros(2, 1, 4))


def test_verifier_for_another_policy_is_refused(policy, tmp_path):
    other = Verifier(VerifierConfig(cond_dim=32, state_dim=policy.config.max_state_dim, horizon=4,
                                    action_dim=policy.config.max_action_dim + 3))
    with pytest.raises(ValueError, match=r"action_dim \d+ \(verifier\) vs \d+ \(policy\)"):
        SampleAndVerify(policy, other, samples=2)
    with pytest.raises(ValueError, match="scores chunks"):
        other.score(torch.randn(1, 64 + policy.config.max_state_dim), torch.randn(1, 2, 4, 4))
    with pytest.raises(FileNotFoundError, match="verifier.json is missing"):
        Verifier.load(tmp_path)


def test_eval_option_runs_an_episode_with_sample_and_verify(policy, verifier_dir, tmp_path, monkeypatch):
    from vla.eval.rollout import evaluate

    calls = []
    predict = SampleAndVerify.predict
    monkeypatch.setattr(SampleAndVerify, "predict", lambda self, *a, **k: calls.append(1) or predict(self, *a, **k))
    cfg = EvalConfig(tasks=["reach"], episodes_per_task=1, max_steps=6, videos_per_task=0, output_dir=str(tmp_path),
                     test_time=SampleVerifyConfig(verifier=str(verifier_dir), samples=3, candidates=5))
    summary = evaluate(policy, cfg, policy.config.image_size, policy.config.cameras)
    assert summary["tasks"]["reach"]["episodes"] == 1 and len(calls) >= 1
    assert summary["settings"]["test_time"] == {"samples": 3, "candidates": 5, "temperature": None,
                                                "verifier_hidden": 64}
    assert summary["provenance"]["config"]["test_time"]["samples"] == 3


def test_robomonkey_benchmark_smoke(tiny_checkpoint, policy, demos, tmp_path):
    from vla.eval.robomonkey import RoboMonkeyConfig, power_law, run_robomonkey

    eval_cfg = EvalConfig(tasks=["reach"], episodes_per_task=1, max_steps=4, videos_per_task=0)
    cfg = RoboMonkeyConfig(checkpoint=str(tiny_checkpoint), samples=[1, 3], candidates=4, eval=eval_cfg,
                           verifier_train=VerifierTrainConfig(steps=20, batch_size=8, hidden=16),
                           offline_k=[1, 2, 4], offline_frames=6, offline_batch=4, output_dir=str(tmp_path / "out"),
                           report_dir=str(tmp_path / "report"))
    report = run_robomonkey(cfg, policy=policy).read_text()  # demos and verifier from the checkpoint's run
    results = json.loads((tmp_path / "report" / "robomonkey.json").read_text())
    assert [r["name"] for r in results["closed_loop"]] == ["policy", "N=1", "N=3"]
    assert all(r["episodes"] == 1 and r["latency_ms"]["p50"] > 0 for r in results["closed_loop"])
    offline = results["offline"]
    assert offline["frames"] == 6 and [r["k"] for r in offline["rows"]] == [1, 2, 4]
    oracle = [r["oracle_rmse"] for r in offline["rows"]]
    assert oracle == sorted(oracle, reverse=True) and oracle[0] == pytest.approx(offline["rows"][0]["single_rmse"])
    assert results["provenance"]["config"]["samples"] == [1, 3]
    assert "## Offline: action error vs number of samples" in report
    assert (tmp_path / "report" / "robomonkey.png").stat().st_size > 0
    # the verifier is cached in the run folder and reused while its provenance matches
    assert (tmp_path / "out" / "verifier" / "verifier.json").is_file()
    fit = power_law([1, 2, 4, 8], [1.0, 0.5, 0.25, 0.125])
    assert fit["b"] == pytest.approx(-1.0) and fit["a"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)


def test_offline_action_error_is_seeded_and_is_the_distance_to_the_expert(policy, demos, monkeypatch):
    from vla.eval import offline

    first = offline.action_error(policy, demos, frames=16, batch=8, seed=0, num_steps=2)
    assert first == offline.action_error(policy, demos, frames=16, batch=8, seed=0, num_steps=2)
    assert first["frames"] == 16 and first["rmse"] > 0 and first["units"] == "robot"
    # a policy that always commands zero is as far off as the expert's actions are from zero, in robot units, over
    # the steps before each episode's end
    horizon, width = policy.config.head.horizon, demos.actions.shape[-1]
    monkeypatch.setattr(offline, "sample_candidates", lambda _policy, obs, n, _generator: SimpleNamespace(
        actions=torch.zeros(len(obs.state), n, horizon, width)))
    index = offline.demo_frames(demos, 16)
    valid = (~demos.action_is_pad[index])[:, :, None].expand(-1, -1, width).float()
    per_frame = ((demos.actions[index] ** 2 * valid).sum((1, 2)) / valid.sum((1, 2))).sqrt()
    assert offline.action_error(policy, demos, frames=16, batch=8)["rmse"] == pytest.approx(per_frame.mean().item())
