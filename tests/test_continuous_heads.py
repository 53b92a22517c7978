"""dita, flow and block-wise adaptive caching (BAC): shapes, equivalences, checkpoints and config errors.

The contract tests every head must pass (loss falls, seeded sampling, padding) are in test_heads.py.
"""

import dataclasses

import pytest
import torch

from vla.action_heads import DitaHeadConfig, FlowHeadConfig, build_head, head_config_class
from vla.action_heads.bac import THRESHOLD_GRID, BACSchedule, calibrate_head
from vla.action_heads.flow_matching import FlowMatching, FlowMatchingConfig
from vla.action_heads.prefix import memory_allowed
from vla.types import BackboneOutput, Cond

B, H, D, S, C = 3, 8, 4, 7, 32
DENOISING_HEADS = ["dit", "dita", "flow"]
# At this threshold BAC must stay this close to uncached sampling, in normalised action units (actions live in
# [-1, 1]): mean absolute error, and worst entry. Measured on random heads over 30 steps: dit 0.003 / 0.017,
# dita 0.031 / 0.17, flow < 0.001 (trained heads change more smoothly between steps than random ones).
BAC_THRESHOLD, BAC_MEAN_TOLERANCE, BAC_MAX_TOLERANCE = 0.2, 0.05, 0.25


def padded_cond(seed: int = 0) -> Cond:
    """Backbone output with right padding of different lengths, as VLMBackbone produces."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, 6, C, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3], dtype=torch.bool)
    backbone = BackboneOutput(tokens=tokens, token_mask=mask, cognition=tokens[:, 2])
    return Cond(backbone=backbone, proprio=torch.randn(B, S, generator=g))


def random_head(name: str, **overrides):
    """A head whose zero-initialised (adaLN-Zero, output) weights are randomised, so that every block
    contributes and sampling is not trivially the identity."""
    config = head_config_class(name)(horizon=H, hidden=32, depth=3, heads=2, **overrides)
    torch.manual_seed(0)
    head = build_head(config, cond_dim=C, action_dim=D, state_dim=S)
    with torch.no_grad():
        for p in head.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return head.eval()


def sample(head, cond, steps, **options):
    return head.sample(cond, generator=torch.Generator().manual_seed(3), num_steps=steps, **options)


# ---- dita ------------------------------------------------------------------------------------------


def test_dita_prefix_cache_equals_full_causal_sequence():
    """Attending to per-layer cached prefix keys/values == one causal transformer over [prefix | suffix]."""
    head = random_head("dita")
    cond = padded_cond()
    memory, real, extra = head.encode(cond)
    noisy, t = torch.randn(B, H, D), torch.tensor([5, 50, 99])
    cached = head.denoise(noisy, t, memory, real, extra)

    net = head.net
    prefix, _ = head.prefix(cond.backbone.tokens, cond.backbone.token_mask)
    suffix = torch.cat([extra, net.t_embed(t)[:, None], net.action_in(noisy)], dim=1) + net.pos
    x = torch.cat([prefix, suffix], dim=1)
    n = x.shape[1]
    real_keys = torch.cat([real, real.new_ones(B, suffix.shape[1])], dim=1)
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & real_keys[:, None]
    for block in net.blocks:
        x = block(x, allowed=allowed[:, None])
    full = net.out(net.norm_out(x[:, -H:]))
    assert torch.allclose(cached, full.reshape(B, H, D), atol=1e-5)


def test_dita_padding_tokens_are_ignored():
    head = random_head("dita")
    cond = padded_cond()
    before = sample(head, cond, 3)
    cond.backbone.tokens[~cond.backbone.token_mask] = 1e3
    assert torch.allclose(before, sample(head, cond, 3), atol=1e-6)


@pytest.mark.parametrize("tokens", [1, 2, 4])
def test_dita_groups_actions_into_tokens(tokens):
    head = random_head("dita", num_action_tokens=tokens, causal_actions=False)
    out = sample(head, padded_cond(), 2)
    assert out.shape == (B, H, D)
    assert head.net.action_in.in_features == D * H // tokens


def test_dita_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_action_tokens=3 must divide head.horizon=8"):
        DitaHeadConfig(horizon=8, num_action_tokens=3)
    with pytest.raises(ValueError, match="head.denoiser must be one of"):
        DitaHeadConfig(denoiser="joint")
    with pytest.raises(ValueError, match="divisible"):
        DitaHeadConfig(hidden=30, heads=4)


# ---- flow ------------------------------------------------------------------------------------------


def test_flow_time_is_beta_distributed_in_range():
    flow = FlowMatching(FlowMatchingConfig())
    t = flow.sample_time(20_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert 0.001 <= t.min() and t.max() <= 1.0
    assert abs(t.mean().item() - (0.001 + 0.999 * 1.5 / 2.5)) < 0.01  # Beta(1.5, 1) mean = 0.6


def test_flow_euler_is_exact_for_a_straight_path():
    """With the true velocity of a straight path (noise - target), Euler reaches the target in any step count."""
    target = torch.full((2, H, D), 0.3)
    flow = FlowMatching(FlowMatchingConfig())
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, H, D, generator=torch.Generator().manual_seed(0))
    for steps in (1, 7):
        out = flow.sample(lambda x, t: noise - target, (2, H, D), torch.device("cpu"), torch.float32,
                          torch.Generator().manual_seed(0), steps)
        assert torch.allclose(out, target, atol=1e-5), steps
    x_t, t, velocity = flow.noisy_batch(target, g)
    assert torch.allclose(x_t - t[:, None, None] * velocity, target, atol=1e-5)


def test_flow_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="flow.num_steps must be >= 1"):
        FlowMatchingConfig(num_steps=0)
    with pytest.raises(ValueError, match="beta_alpha"):
        FlowMatchingConfig(beta_alpha=0)
    with pytest.raises(ValueError, match="noise_samples_per_cond"):
        FlowHeadConfig(noise_samples_per_cond=0)


def test_memory_mask_hides_padding_and_future():
    allowed = memory_allowed(torch.tensor([[True, False]]), 3, causal_queries=True)[0, 0]
    assert allowed.tolist() == [[True, False, True, False, False], [True, False, True, True, False],
                                [True, False, True, True, True]]


# ---- sampling range --------------------------------------------------------------------------------


@pytest.mark.parametrize("clip, reached", [(1.0, 1.0), (5.0, 2.5), (None, 2.5)])
def test_samplers_clip_to_the_range_they_are_given(clip, reached):
    """DDIM and flow Euler driven towards clean actions at +-2.5 reach them unless the clip range is narrower
    (quantile normalisation: 1; zscore: model.zscore_clip std, or none)."""
    from vla.action_heads.diffusion import ActionDiffusion, DiffusionConfig

    target = torch.tensor([2.5, -2.5]).repeat(D // 2)  # (D,)
    shape, cpu = (2, H, D), torch.device("cpu")
    ddim = ActionDiffusion(DiffusionConfig(prediction_type="sample"))  # the network predicts the clean actions
    ddim_out = ddim.sample(lambda x, t: target.expand_as(x), shape, cpu, torch.float32, num_steps=5, clip=clip)
    flow = FlowMatching(FlowMatchingConfig(num_steps=5))  # the velocity field of the straight path to target
    flow_out = flow.sample(lambda x, t: (x - target) / t[:, None, None], shape, cpu, torch.float32, clip=clip)
    expected = (target.sign() * reached).expand(shape)
    torch.testing.assert_close(ddim_out, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(flow_out, expected, atol=1e-4, rtol=0)


# ---- BAC -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DENOISING_HEADS)
def test_bac_threshold_zero_is_exact_and_caching_stays_close(name):
    head = random_head(name)
    cond = padded_cond()
    full = sample(head, cond, 30, bac=False)
    calibrate_head(head, cond, 30, threshold=0.0)
    assert head.bac_schedules[30].computed_fraction() == 1.0
    assert torch.equal(sample(head, cond, 30, bac=True), full)
    schedule = calibrate_head(head, cond, 30, threshold=BAC_THRESHOLD)
    cached = sample(head, cond, 30, bac=True)
    assert schedule.computed_fraction() < 1.0, schedule.recompute  # it does skip work
    assert (cached - full).abs().mean() < BAC_MEAN_TOLERANCE
    assert (cached - full).abs().max() < BAC_MAX_TOLERANCE
    assert torch.equal(sample(head, cond, 30, bac=False), full)  # bac=False ignores the schedule
    assert torch.equal(sample(head, cond, 30), full)  # and so does the default: caching only when asked


@pytest.mark.parametrize("name", ["dit", "dita"])
def test_bac_tolerance_picks_the_largest_threshold_within_it(name):
    """Calibrating to a tolerance keeps the measured deviation within it, and the next larger threshold of the
    grid would have broken it; the deviation it reports is what sampling with the schedule gives."""
    head = random_head(name)
    cond = padded_cond()
    full = sample(head, cond, 30, bac=False)
    tolerance = 0.01
    schedule = calibrate_head(head, cond, 30, tolerance=tolerance, seed=3)
    assert schedule.error <= tolerance and schedule.tolerance == tolerance
    assert schedule.computed_fraction() < 1.0  # the random heads tolerate some caching at this bound
    assert float((sample(head, cond, 30, bac=True) - full).abs().mean()) == pytest.approx(schedule.error, abs=1e-6)
    # every grid threshold measured: the bisection found the largest one that fits
    errors = {t: calibrate_head(head, cond, 30, threshold=t, seed=3).error for t in THRESHOLD_GRID}
    assert schedule.threshold == max(t for t, e in errors.items() if e <= tolerance), errors
    assert calibrate_head(head, cond, 30, tolerance=0.0).error == 0.0  # zero tolerance: exact


def test_bac_errors_name_the_problem():
    head = random_head("flow")
    with pytest.raises(ValueError, match="either a threshold or a tolerance"):
        calibrate_head(head, padded_cond(), 10, threshold=0.1, tolerance=0.01)
    with pytest.raises(ValueError, match="tolerance must be finite"):
        calibrate_head(head, padded_cond(), 10, tolerance=float("nan"))
    with pytest.raises(ValueError, match="no BAC schedule is calibrated for 10 steps"):
        sample(head, padded_cond(), 10, bac=True)
    with pytest.raises(ValueError, match="schedule has 2 blocks; this head's denoiser has 3"):
        head.add_bac_schedule(BACSchedule(4, 0.1, [[0], [0, 2]], [[0.0] * 4] * 2))
    with pytest.raises(ValueError, match="must start at 0"):
        BACSchedule(4, 0.1, [[1]], [[0.0] * 4])


# ---- checkpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DENOISING_HEADS)
def test_checkpoint_round_trip_keeps_actions_and_bac_schedule(name, tiny_run_config, tmp_path):
    from vla.data.normalize import Normalizer
    from vla.policy import VLAPolicy
    from vla.training.train import load_demos
    from vla.types import Observation

    head = head_config_class(name)(horizon=4, hidden=32, depth=2, heads=2, noise_samples_per_cond=1)
    model = dataclasses.replace(tiny_run_config.model, head=head)
    demos = load_demos(model, tiny_run_config.data)
    torch.manual_seed(0)
    policy = VLAPolicy(model, Normalizer.from_demos(demos, "quantile", model.max_action_dim, model.max_state_dim))
    with torch.no_grad():
        for p in policy.head.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    policy.eval()
    idx = torch.tensor([0, 7])
    obs = Observation(demos.images[idx], demos.state[idx], demos.instructions(idx), [demos.embodiment] * 2)
    cond = policy.condition(obs.images, obs.state, obs.instruction, obs.embodiment)
    calibrate_head(policy.head, cond, 6, threshold=0.3)
    before = [policy.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=6, bac=b).actions
              for b in (False, True)]
    policy.save_pretrained(tmp_path / name)
    loaded = VLAPolicy.from_pretrained(tmp_path / name, expected_head=name)
    after = [loaded.predict(obs, generator=torch.Generator().manual_seed(0), num_steps=6, bac=b).actions
             for b in (False, True)]
    assert (tmp_path / name / "bac_schedule.json").exists()
    assert loaded.head.bac_schedules[6].recompute == policy.head.bac_schedules[6].recompute
    assert before[0].shape == (2, 4, 4)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_calibrate_bac_cli_with_tolerance_then_threshold(tiny_checkpoint, tiny_demos_path, tiny_demo_config, tmp_path):
    """`vla-eval calibrate-bac` writes schedules into the checkpoint and redoes them when the settings change."""
    import json
    import shutil

    from vla.eval.cli import main

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    common = ["calibrate-bac", f"--checkpoint={checkpoint}", f"--dataset={tiny_demos_path}",
              f"--repo_id={tiny_demo_config.repo_id}", "--frames=4"]
    main(common + ["--steps=[8, 4]", "--tolerance=0.02"])
    schedules = json.loads((checkpoint / "bac_schedule.json").read_text())["schedules"]
    assert [s["num_steps"] for s in schedules] == [4, 8]
    assert all(s["tolerance"] == 0.02 and s["error"] <= 0.02 for s in schedules)
    with pytest.raises(SystemExit, match="not both"):
        main(common + ["--steps=[8]", "--threshold=0.5", "--tolerance=0.02"])
    main(common + ["--steps=[8]", "--threshold=0.5"])
    by_steps = {s["num_steps"]: s for s in json.loads((checkpoint / "bac_schedule.json").read_text())["schedules"]}
    assert by_steps[8]["tolerance"] is None and by_steps[8]["threshold"] == 0.5  # redone with the new setting
    assert by_steps[4]["tolerance"] == 0.02  # not asked for: kept
