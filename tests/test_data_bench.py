"""The loader benchmark (vla.eval.data_benchmark) on a smoke config: every arm measured in its own process, the
results JSON and page have every figure, ratios are against LeRobot's arm of the same run. No timing value is
asserted (the machine is shared)."""

from __future__ import annotations

import json

import pytest

from vla.eval.data_benchmark import ARMS, DataBenchConfig, run_data_bench, wait_fraction
from vla.sim.demos import DemoConfig


def smoke(tmp_path, **options) -> DataBenchConfig:
    demos = DemoConfig(tasks=["reach"], episodes_per_task=1, image_size=32, max_steps=60, root=str(tmp_path / "data"),
                       repo_id="local/bench_smoke")
    options = {"rounds": 1} | options
    return DataBenchConfig(demos=demos, chunk_size=4, batch_size=4, num_workers=1, batches=2, warmup_batches=1,
                           profile_items=3, report_dir=str(tmp_path / "report"), **options)


def test_data_benchmark_reports_every_arm(tmp_path):
    """In one process (isolate false), to stay quick; the isolated runs are checked below."""
    report = run_data_bench(smoke(tmp_path, isolate=False)).read_text()
    results = json.loads((tmp_path / "report" / "data.json").read_text())
    assert results["provenance"]["config"]["batch_size"] == 4 and results["frames"]["video"] > 0
    rows = {r["arm"]: r for r in results["rows"]}
    assert list(rows) == list(ARMS)
    base = rows["lerobot_video"]["samples_per_s"]
    for row in rows.values():
        assert row["samples_per_s"] > 0 and row["vs_lerobot"] == pytest.approx(row["samples_per_s"] / base)
        assert row["peak_pss_mb"] > 50 and row["peak_rss_mb"] >= row["peak_pss_mb"] and row["build_s"] > 0
        assert row["wait_fraction"] == pytest.approx(wait_fraction(row["samples_per_s"], 0.23, 32))
    assert rows["lerobot_video"]["vs_lerobot"] == 1.0
    assert {p["function"] for p in results["profile"]["ours_video"]} >= {"total"}
    assert "| `ours_video` | vla-train's loader, data.reader=stream (LeRobotFrames" in report
    assert "x LeRobot's samples/s on video data" in report


@pytest.mark.slow
def test_isolated_arms_run_in_their_own_processes(tmp_path):
    cfg = smoke(tmp_path, arms=["lerobot_video", "ours_video"], profile=False, rounds=2)
    run_data_bench(cfg)
    results = json.loads((tmp_path / "report" / "data.json").read_text())
    assert [(r["arm"], r["round"]) for r in results["runs"]] == [(a, k) for k in (0, 1) for a in cfg.arms]
    for row in results["rows"]:
        assert row["rounds"] == 2 and row["samples_per_s"] > 0 and row["peak_pss_mb"] > 50
    assert results["profile"] == {} and "## Where" not in (tmp_path / "report" / "data.md").read_text()


def test_wait_fraction():
    assert wait_fraction(32 / 0.23, 0.23, 32) == pytest.approx(0.0)
    assert wait_fraction(1000.0, 0.23, 32) == 0.0  # faster than the step: no wait
    assert wait_fraction(32 / 0.46, 0.23, 32) == pytest.approx(0.5)  # a batch takes twice the step
