"""The cost benchmark (vla.eval.cost): matched widths, FLOPs, the floor and ratios on a smoke config. No timing
value is asserted (the machine is shared); only that every figure is there and consistent."""

from __future__ import annotations

import json

import pytest

from vla.eval.cost import CostConfig, build_ours, count, flops, match_width, run_cost
from vla.eval.heads_benchmark import HeadSizeConfig
from vla.eval.lerobot_train import LeRobotPolicySpec


def smoke(report_dir: str) -> CostConfig:
    diffusion = LeRobotPolicySpec(type="diffusion", options={"down_dims": [16, 32], "diffusion_step_embed_dim": 16,
                                                             "num_inference_steps": 3})
    act = LeRobotPolicySpec(type="act", options={"dim_model": 32, "dim_feedforward": 64, "n_heads": 2,
                                                 "n_encoder_layers": 1, "n_vae_encoder_layers": 1})
    return CostConfig(heads=["dit", "flow"], head=HeadSizeConfig(horizon=8, depth=2, heads=2), width_step=16,
                      max_hidden=256, baselines={"diffusion": diffusion, "act": act}, num_inference_steps=3,
                      cond_tokens=12, cond_width=32, batch_size=4, reps=2, train_reps=1, warmup=1, matmul_size=128,
                      matmul_reps=2, report_dir=report_dir)


def test_matched_width_is_the_closest_multiple():
    cfg = smoke("unused")
    target = 60_000
    width = match_width(cfg, "dita", target)
    counts = {w: count(build_ours(cfg, "dita", w)) for w in range(16, 257, 16)}
    assert width % 16 == 0 and abs(counts[width] - target) == min(abs(c - target) for c in counts.values())


def test_cost_benchmark_reports_flops_floor_and_ratios(tmp_path):
    report = run_cost(smoke(str(tmp_path))).read_text()
    results = json.loads((tmp_path / "cost.json").read_text())
    assert results["matmul_gflops"] > 0 and results["provenance"]["config"]["baselines"]["act"]["type"] == "act"
    rows = results["rows"]
    assert [(r["baseline"], r["name"]) for r in rows] == [(b, n) for b in ("diffusion", "act")
                                                          for n in (b, "dit", "flow")]
    for row in rows:
        assert row["flops"] > 0 and row["p50_ms"] > 0 and row["train_step_ms"] > 0
        assert row["floor_ms"] == pytest.approx(1000 * row["flops"] / (results["matmul_gflops"] * 1e9))
        assert row["x_floor"] == pytest.approx(row["p50_ms"] / row["floor_ms"])
        base = next(r for r in rows if r["name"] == row["baseline"])
        assert row["latency_ratio"] == pytest.approx(row["p50_ms"] / base["p50_ms"])
        if row["kind"] == "ours":  # matched: within a width step of the baseline's count
            assert abs(row["params"] - base["params"]) < 0.5 * base["params"]
    diffusion = rows[0]
    assert diffusion["steps"] == 3 and rows[3]["steps"] is None  # DP's sampling steps; ACT: one pass
    assert "## vs `diffusion` (LeRobot `diffusion`" in report and "| <= 0.5x DP | <= 3x floor |" in report


def test_flops_count_a_matmul():
    import torch

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_baseline_chunk_length_must_match_ours():
    spec = LeRobotPolicySpec(type="act", options={"chunk_size": 100})
    with pytest.raises(ValueError, match="chunk_size=100 differs from head.horizon=16"):
        CostConfig(baselines={"act": spec})
