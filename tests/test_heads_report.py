"""The head benchmark's report, from made-up run summaries (the benchmark itself takes an hour)."""

import dataclasses
import json

import pytest

from vla.eval.heads_benchmark import BACBenchConfig, HeadsBenchmarkConfig, HeadVariant, pipeline_config
from vla.eval.heads_report import mean_std, write_report


def fake_summary(success: float) -> dict:
    return {"mean_success_rate": success, "tasks": {"reach": {"success_rate": 1.0},
                                                   "button-press-topdown": {"success_rate": 2 * success - 1}},
            "train_s_per_step": 0.2, "chunk_latency_ms": {"p50": 30.0, "p99": 40.0},
            "parameters": {"head": 1_000_000, "total": 2_000_000}, "provenance": {"commit": "c0ffee" * 6 + "abcd"}}


def test_report_has_mean_std_table_bac_rows_and_plot(tmp_path):
    cfg = HeadsBenchmarkConfig(heads=["dit", "flow"], seeds=[0, 1], report_dir=str(tmp_path))
    cfg.eval.tasks = ["reach", "button-press-topdown"]
    runs = {(h, s): fake_summary(0.5 + 0.1 * s + (0.2 if h == "flow" else 0)) for h in cfg.heads for s in cfg.seeds}
    bac = [{"head": "dit", "steps": 10, "mode": mode, "setting": setting, "threshold": threshold, "success": 0.8,
            "p50_ms": 20.0, "p99_ms": 25.0, "computed_fraction": fraction, "deviation": deviation, "sampling_ms": ms}
           for mode, setting, threshold, fraction, deviation, ms in [("off", None, None, 1.0, 0.0, 30.0),
                                                                     ("threshold", 0.25, 0.25, 0.5, 0.03, 10.0),
                                                                     ("tolerance", 0.01, 0.08, 0.7, 0.008, 20.0)]]
    report = write_report(cfg, runs, bac).read_text()
    assert "| `flow` | **75 ± 7%** | **100 ± 0%** | **50 ± 14%** |" in report  # seeds at 70% and 80%
    assert "| `dit` | 55 ± 7% | **100 ± 0%** | 10 ± 14% |" in report  # only each column's best (and ties) in bold
    assert "Made by `vla-eval heads` at commit c0ffeec0ff;" in report
    assert "- overall: `flow` 75 ± 7%; no other within the spread" in report  # dit: 55 ± 7%
    assert "- reach: `dit` 100 ± 0%; within the spread: `flow`" in report  # a tie is said to be one
    assert "| `dit` | 10 | off | - | 80% | 30.0 | 20.0 / 25.0 | 100% | 0.0000 |" in report
    assert "| `dit` | 10 | tolerance 0.01 | 0.08 | 80% | 20.0 (1.5x) | 20.0 / 25.0 | 70% | 0.0080 |" in report
    assert "| `dit` | 10 | threshold 0.25 | 0.25 | 80% | 10.0 (3.0x) |" in report
    assert (tmp_path / "heads.png").stat().st_size > 10_000


def test_timings_come_from_the_first_seed_and_name_its_machines(tmp_path):
    cfg = HeadsBenchmarkConfig(heads=["dit", "flow"], seeds=[0, 1], report_dir=str(tmp_path))
    cfg.eval.tasks = ["reach", "button-press-topdown"]
    machine = {"cpu_model": "AMD EPYC", "cpu_cores": 2, "boot_id": "boot-a"}
    runs = {(h, s): fake_summary(0.5) for h in cfg.heads for s in cfg.seeds}
    for (_, seed), run in runs.items():
        run["provenance"] = {**run["provenance"], "machine": {**machine, "boot_id": f"boot-{'ab'[seed]}"}}
        run["train_s_per_step"] = 0.1 if seed == 0 else 0.9  # seed 1 ran on a slower machine
        run["chunk_latency_ms"] = {"p50": 10.0, "p99": 12.0} if seed == 0 else {"p50": 90.0, "p99": 99.0}
    report = write_report(cfg, runs, []).read_text()
    assert "| 50, 50 | 0.100 | 10.0 / 12.0 |" in report  # not the mean over seeds (0.5, 50 / 55.5)
    assert "Timings: seed-0 runs, all on one machine (AMD EPYC, 2 cores)." in report
    runs[("flow", 0)]["provenance"]["machine"]["boot_id"] = "boot-b"
    assert "made on 2 machines (boots): the timing columns compare machines" in write_report(cfg, runs, []).read_text()
    del runs[("flow", 0)]["provenance"]["machine"]["boot_id"]  # a record from before boot ids
    assert "some of them do not record which machine" in write_report(cfg, runs, []).read_text()


def test_machine_record_names_the_cpu_and_boot():
    from vla.provenance import machine

    record = machine()
    assert record["cpu_cores"] > 0 and "boot_id" in record and "cpu_model" in record
    assert record["boot_id"] == machine()["boot_id"]  # one boot, one id


def test_mean_std_uses_sample_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    assert mean_std([0.0, 1.0]) == pytest.approx((0.5, 0.7071), abs=1e-4)


def test_unknown_head_in_benchmark_config_is_named():
    with pytest.raises(ValueError, match="Did you mean 'dita'"):
        HeadsBenchmarkConfig(heads=["ditaa"])


def test_variants_build_their_own_configs_and_are_listed(tmp_path):
    shared = HeadVariant(head="dita", options={"denoiser": "shared"})
    history = HeadVariant(head="dita", n_obs_steps=2)
    cfg = HeadsBenchmarkConfig(heads=["dita", "dita_shared", "dita_h2"], seeds=[0], report_dir=str(tmp_path),
                               variants={"dita_shared": shared, "dita_h2": history})
    model = pipeline_config(cfg, "dita_shared", 0).model
    assert (model.head.type, model.head.denoiser, model.head.hidden, model.n_obs_steps) == ("dita", "shared", 128, 1)
    assert pipeline_config(cfg, "dita_h2", 0).model.n_obs_steps == 2
    assert pipeline_config(cfg, "dita", 0).model.head.denoiser == "separate"
    cfg.eval.tasks = ["reach", "button-press-topdown"]
    report = write_report(cfg, {(h, 0): fake_summary(0.5) for h in cfg.heads}, []).read_text()
    assert "- `dita_shared`: `dita` with denoiser=shared" in report
    assert "- `dita_h2`: `dita` with model.n_obs_steps=2" in report
    assert "| 1.00 M | 2.00 M | - |" in report  # continuous heads have no tokenizer column
    with pytest.raises(ValueError, match="do not fit the dita head config.*`depht` are not valid"):
        HeadsBenchmarkConfig(heads=["bad"], variants={"bad": HeadVariant(head="dita", options={"depht": 2})})
    nested = HeadVariant(head="dita", options={"diffusion": {"num_inference_steps": 5}})
    assert nested.build_head_config(cfg.head).diffusion.num_inference_steps == 5  # nested options are decoded
    with pytest.raises(ValueError, match="must name its registered head"):
        HeadsBenchmarkConfig(heads=["x"], variants={"x": HeadVariant(options={"depth": 2})})
    with pytest.raises(ValueError, match="bac.heads: dita_shared denoises inside the backbone"):
        HeadsBenchmarkConfig(heads=["dita_shared"], variants={"dita_shared": shared},
                             bac=BACBenchConfig(heads=["dita_shared"]))


def test_token_heads_report_their_tokenizer_over_seeds(tmp_path):
    ar_fast = HeadVariant(head="ar", options={"tokenizer": {"type": "fast"}})
    cfg = HeadsBenchmarkConfig(heads=["dit", "ar_fast"], seeds=[0, 1], report_dir=str(tmp_path),
                               variants={"ar_fast": ar_fast})
    assert pipeline_config(cfg, "ar_fast", 0).model.head.tokenizer.type == "fast"
    cfg.eval.tasks = ["reach", "button-press-topdown"]
    runs = {(h, s): fake_summary(0.5) for h in cfg.heads for s in cfg.seeds}
    for seed, (tokens, error) in enumerate([(10.0, 0.02), (12.0, 0.04)]):
        runs[("ar_fast", seed)]["tokenizer"] = {"type": "fast", "round_trip": {"tokens_per_chunk": tokens,
                                                                               "mean_abs_error": error}}
    report = write_report(cfg, runs, []).read_text()
    assert "| 1.00 M | 2.00 M | fast: 11.0 / 0.0300 |" in report  # means over the two seeds
    assert "| 1.00 M | 2.00 M | - |" in report  # dit
    assert "their action tokenizer is fit on the training chunks before training" in report


def test_run_folder_refuses_other_settings_or_commit(tmp_path, monkeypatch, capsys):
    from vla import provenance
    from vla.eval.heads_benchmark import check_run_origin

    cfg = HeadsBenchmarkConfig(heads=["dita"], seeds=[0])
    pipeline = pipeline_config(cfg, "dita", 0)
    at_commit = {"commit": "a" * 40, "dirty": False, "code": "c" * 40, "code_dirty": False}
    monkeypatch.setattr(provenance, "git_commit", lambda: dict(at_commit))
    check_run_origin(tmp_path, pipeline, reuse_stale=False)
    recorded = json.loads((tmp_path / "provenance.json").read_text())
    assert recorded["commit"] == "a" * 40 and recorded["config"]["model"]["head"]["type"] == "dita"
    assert {"torch", "transformers"} <= set(recorded["versions"]) and recorded["machine"]["cpu_cores"] > 0
    check_run_origin(tmp_path, pipeline, reuse_stale=False)  # same commit, same settings: reused
    other = pipeline_config(dataclasses.replace(cfg, variants={"dita": HeadVariant("dita", options={"depth": 2})}),
                            "dita", 0)
    with pytest.raises(ValueError, match=r"other settings \(model.head.depth\).*--reuse_stale"):
        check_run_origin(tmp_path, other, reuse_stale=False)
    at_commit.update(commit="b" * 40, dirty=True)  # a later commit that changed only docs or tests: reused
    check_run_origin(tmp_path, pipeline, reuse_stale=False)
    at_commit["code_dirty"] = True  # but not with uncommitted changes to the package
    with pytest.raises(ValueError, match="uncommitted changes"):
        check_run_origin(tmp_path, pipeline, reuse_stale=False)
    at_commit.update(code="d" * 40, code_dirty=False)
    with pytest.raises(ValueError, match="at commit aaaaaaaaaa with other code under vla/, this checkout is at bb"):
        check_run_origin(tmp_path, pipeline, reuse_stale=False)
    check_run_origin(tmp_path, pipeline, reuse_stale=True)  # only when asked
    assert "although it was made at commit aaaaaaaaaa with other code" in capsys.readouterr().out


def test_sampling_times_cover_every_schedule():
    import torch

    from vla.action_heads import build_head, head_config_class
    from vla.action_heads.bac import calibrate_head
    from vla.eval.heads_benchmark import first_observation, sampling_ms
    from vla.types import BackboneOutput, Cond

    head = build_head(head_config_class("flow")(horizon=4, hidden=32, depth=2, heads=2), cond_dim=16, action_dim=2,
                      state_dim=3).eval()
    tokens = torch.randn(3, 5, 16)
    cond = Cond(BackboneOutput(tokens, torch.ones(3, 5, dtype=torch.bool), tokens[:, -1]), torch.randn(3, 3))
    schedule = calibrate_head(head, cond, 6, threshold=0.5)
    one = first_observation(cond)
    assert one.backbone.tokens.shape == (1, 5, 16) and one.proprio.shape == (1, 3)
    times = sampling_ms(head, one, 6, [None, schedule], reps=2)
    assert len(times) == 2 and all(t > 0 for t in times)
