"""A benchmark spread over sessions: finished runs' records are archived and restored only at the same code."""

import dataclasses
import json
import shutil

import pytest

from vla import provenance
from vla.eval.heads_benchmark import (
    BACBenchConfig,
    HeadsBenchmarkConfig,
    bac_runs,
    bac_settings,
    pipeline_config,
    run_dir,
    train_and_eval,
)
from vla.eval.run_archive import archive_run, records, restore_run

AT = {"commit": "a" * 40, "dirty": False, "code": "c" * 40, "code_dirty": False}


def finished_run(cfg, head="dit", seed=0):
    """A run folder as the pipeline leaves it: records beside a checkpoint and a video."""
    out = run_dir(cfg, head, seed)
    (out / "train" / "checkpoints" / "000010").mkdir(parents=True)
    (out / "train" / "checkpoints" / "000010" / "config.json").write_text("{}")
    (out / "train" / "checkpoints" / "000010" / "model.safetensors").write_bytes(b"weights")
    (out / "train" / "metrics.csv").write_text("step,loss,s_per_step\n5,1.0,0.2\n10,0.5,0.3\n")
    (out / "rollouts.mp4").write_bytes(b"video")
    (out / "train" / "action_tokenizer").mkdir()
    (out / "train" / "action_tokenizer" / "action_tokenizer.json").write_text("{}")  # the tokenizer, a model file
    (out / "bac" / "steps010_thr0.25").mkdir(parents=True)
    (out / "bac" / "steps010_thr0.25" / "bac_schedule.json").write_text("{}")  # needs the checkpoint it fits
    (out / "provenance.json").write_text(json.dumps(provenance.provenance(pipeline_config(cfg, head, seed))))
    summary = {"mean_success_rate": 0.7, "checkpoint": str(out / "train" / "checkpoints" / "000010")}
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture
def at_commit(monkeypatch):
    now = dict(AT)
    monkeypatch.setattr(provenance, "git_commit", lambda: dict(now))
    return now


def test_archive_keeps_records_not_weights_and_restores_at_same_code(tmp_path, at_commit):
    cfg = HeadsBenchmarkConfig(heads=["dit"], seeds=[0], output_dir=str(tmp_path / "out"),
                               archive_dir=str(tmp_path / "archive"))
    out = finished_run(cfg)
    archive = tmp_path / "archive"
    assert [str(p) for p in archive_run(out, archive)] == ["provenance.json", "summary.json", "train/metrics.csv"]
    assert not (archive / out.name / "rollouts.mp4").exists()

    fresh = tmp_path / "fresh" / out.name  # a new checkout: outputs/ is gone
    at_commit.update(commit="b" * 40, dirty=True)  # later commits changed docs, not vla/
    assert restore_run(fresh, archive, pipeline_config(cfg, "dit", 0))
    assert records(fresh) == records(archive / out.name)
    assert json.loads((fresh / "summary.json").read_text())["mean_success_rate"] == 0.7
    assert not restore_run(fresh, archive, pipeline_config(cfg, "dit", 0))  # it has a summary now


def test_archived_run_is_not_restored_with_other_code_or_settings(tmp_path, at_commit, capsys):
    cfg = HeadsBenchmarkConfig(heads=["dit"], seeds=[0], output_dir=str(tmp_path / "out"))
    archive = tmp_path / "archive"
    archive_run(finished_run(cfg), archive)
    fresh = tmp_path / "fresh" / "dit_s0"
    other_steps = pipeline_config(HeadsBenchmarkConfig(heads=["dit"], seeds=[0], output_dir=str(tmp_path / "out"),
                                                       train=dataclasses.replace(cfg.train, steps=7)), "dit", 0)
    assert not restore_run(fresh, archive, other_steps)
    assert "other settings (train.steps)" in capsys.readouterr().out
    at_commit.update(commit="b" * 40, code="d" * 40)
    assert not restore_run(fresh, archive, pipeline_config(cfg, "dit", 0))
    assert "with other code under vla/" in capsys.readouterr().out and not fresh.exists()
    assert restore_run(fresh, archive, pipeline_config(cfg, "dit", 0), reuse_stale=True)  # only when asked
    assert "although it was made at commit aaaaaaaaaa with other code" in capsys.readouterr().out


def test_benchmark_reuses_restored_run_and_cached_bac_rows(tmp_path, at_commit, capsys):
    cfg = HeadsBenchmarkConfig(heads=["dit"], seeds=[0], output_dir=str(tmp_path / "out"),
                               archive_dir=str(tmp_path / "archive"), bac=BACBenchConfig(heads=["dit"]))
    out = finished_run(cfg)
    rows = [{"head": "dit", "steps": 10, "mode": "off", "success": 0.7}]
    (out / "bac" / "rows.json").write_text(json.dumps({"provenance": provenance.provenance(bac_settings(cfg, "dit")),
                                                       "rows": rows}))
    archive_run(out, tmp_path / "archive")
    shutil.rmtree(out)  # a new checkout: outputs/ is gone, with the checkpoint

    at_commit["commit"] = "b" * 40
    summary = train_and_eval(cfg, "dit", 0)  # no training: the archived run is reused
    assert summary["mean_success_rate"] == 0.7 and summary["train_s_per_step"] == 0.3
    assert bac_runs(cfg, "dit", summary) == rows  # no checkpoint needed: the rows are cached
    other_steps = HeadsBenchmarkConfig(heads=["dit"], seeds=[0], output_dir=cfg.output_dir,
                                       bac=BACBenchConfig(heads=["dit"], steps=[5]))
    with pytest.raises(ValueError, match="needs its seed-0 checkpoint .* not on this machine"):
        bac_runs(other_steps, "dit", summary)
    capsys.readouterr()
    stale = dataclasses.replace(other_steps, reuse_stale=True)  # stale rows reused only when asked, and it says so
    assert bac_runs(stale, "dit", summary) == rows
    assert "reusing dit's BAC rows in" in capsys.readouterr().out


def test_bac_heads_must_be_benchmarked():
    with pytest.raises(ValueError, match=r"bac.heads \['flow'\] are not in heads"):
        HeadsBenchmarkConfig(heads=["dit"], bac=BACBenchConfig(heads=["flow"]))
