"""The latent-action benchmark driver (issue 13 item 4; vla.eval.latent_benchmark): its recipe is action-free video of
ML10's training tasks with a latent head, settings that would waste hours are refused, and a smoke run makes every
stage (video, latent action model, labels, pretraining, both arms), reuses them and writes the report."""

from __future__ import annotations

import json

import draccus
import pytest
from metaworld.env_dict import ML10_V3

from vla.eval.latent_benchmark import LatentBenchConfig, main, pretrain_config
from vla.latent.labels import read_labels
from vla.pipeline import PipelineConfig

SMOKE = "configs/bench/latent_smoke.yaml"


def ml10(split: str) -> list[str]:
    return [name.removesuffix("-v3") for name in ML10_V3[split]]


def test_recipe_is_action_free_video_of_ml10_training_tasks():
    recipe = draccus.parse(PipelineConfig, args=["--config_path=configs/pretrain/latent_ml10.yaml"])
    labelled = draccus.parse(PipelineConfig, args=["--config_path=configs/pretrain/ml10.yaml"])
    bench = draccus.parse(LatentBenchConfig, args=["--config_path=configs/bench/latent.yaml"])
    assert recipe.demos.action_free and recipe.model.head.type == "latent"
    assert recipe.demos.tasks == ml10("train") and bench.tasks == ml10("test") == recipe.tiny_backbone.extra_tasks
    # comparable with the few-shot benchmark's labelled pretraining: same demos, VLM and budget
    assert (recipe.demos.episodes_per_task, recipe.demos.image_size, recipe.train.steps) == (
        labelled.demos.episodes_per_task, labelled.demos.image_size, labelled.train.steps)
    assert recipe.tiny_backbone == labelled.tiny_backbone
    assert bench.demos_per_task == 10 and len(bench.seeds) >= 3 and bench.eval.episodes_per_task >= 20
    assert list(bench.arms) == ["latent", "scratch"] and bench.arms["scratch"].init == "scratch"


def test_settings_that_would_waste_the_run_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pretraining video includes held-out tasks"):
        pretrain_config(LatentBenchConfig(tasks=["reach"], output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="must write action-free demos"):
        pretrain_config(LatentBenchConfig(pretrain_recipe="configs/pretrain/ml10.yaml", output_dir=str(tmp_path)))


@pytest.mark.slow
def test_smoke_run_makes_every_stage_reuses_them_and_reports(tmp_path, monkeypatch):
    from vla import provenance
    from vla.latent import training as lam_training

    monkeypatch.setattr(provenance, "git_commit", lambda: {"commit": "c" * 40, "dirty": False})
    out, report = tmp_path / "bench", tmp_path / "report"
    args = ["--config_path", SMOKE, "--output_dir", str(out), "--report_dir", str(report)]
    main(args)
    results = json.loads((report / "latent_results.json").read_text())
    assert results["provenance"]["commit"] == "c" * 40
    assert set(results["runs"]) == {"latent/button-press-topdown/s0", "scratch/button-press-topdown/s0"}
    for run in results["runs"].values():
        assert run["tasks"]["button-press-topdown"]["episodes"] == 2
    # the video has no actions and was labelled by the model fit on it
    video = read_labels(results["pretrain"]["video"])
    assert video.lam_fingerprint == results["lam"]["fingerprint"] and video.frame_gap == 4
    pretrained = json.loads((out / "pretrain" / "train" / "checkpoints" / "last" / "meta.json").read_text())
    assert pretrained["training"]["datasets"][0]["action_free"] is True
    assert results["lam"]["stage2"]["codes_used"] >= 1 and "motion" in results["lam"]["stage2"]
    held_out = json.loads((out / "finetune" / "scratch" / "button-press-topdown" / "s0" / "summary.json").read_text())
    assert held_out["checkpoint"]
    for arm in ("latent", "scratch"):  # both arms' demos labelled by the model fit on the video
        run = json.loads((out / "finetune" / arm / "button-press-topdown" / "s0" / "train" / "checkpoints" / "last"
                          / "meta.json").read_text())
        assert run["training"]["datasets"][0]["latent_labels"]["lam_fingerprint"] == video.lam_fingerprint
    # the latent arm starts from the video-pretrained policy (its LLM loaded, a decoder for the robot added); the
    # scratch arm from nothing of it
    init = json.loads((out / "finetune" / "latent" / "button-press-topdown" / "s0" / "train" / "init_report.json")
                      .read_text())
    assert any(name.startswith("backbone.vlm.language_model.layers.") for name in init["loaded"])
    assert init["new"] and all(name.startswith("head.decoders.") for name in init["new"])
    assert not (out / "finetune" / "scratch" / "button-press-topdown" / "s0" / "train" / "init_report.json").exists()
    text = (report / "latent.md").read_text()
    assert "`latent` - `scratch`" in text and "## The latent action model" in text
    assert "this page written at commit cccccccccc;" in text and "offline RMSE" not in text  # no validation demos
    assert (report / "latent.png").stat().st_size > 0 and (report / "latent_lam.png").stat().st_size > 0
    stage_times = json.loads((out / "pretrain" / "timings.json").read_text())
    assert stage_times["demos_s"] > 0 and stage_times["lam_s"] > 0
    timings = results["pretrain"]["timings_s"]
    assert {k: v for k, v in timings.items() if k != "train_s"} == stage_times and timings["train_s"] > 0

    # a second run reuses every stage: nothing is fit or trained again
    def refit(*_, **__):
        raise AssertionError("the latent action model was fit again")

    monkeypatch.setattr(lam_training, "fit_lam", refit)
    monkeypatch.setattr("vla.training.train.train", lambda *_: pytest.fail("a stage was trained again"))
    main(args)
    assert json.loads((report / "latent_results.json").read_text())["runs"] == results["runs"]
    assert json.loads((out / "pretrain" / "timings.json").read_text()) == stage_times  # reused stages keep their times


def test_training_time_from_the_logged_step_times_counts_a_resumed_run_whole(tmp_path):
    from vla.eval.heads_benchmark import logged_train_s

    metrics = tmp_path / "metrics.csv"  # windows of 50 steps; the run stopped after step 100 and resumed
    metrics.write_text("step,loss,s_per_step\n50,1.0,0.2\n100,0.9,0.2\n150,0.8,0.4\n200,0.7,0.4\n")
    assert logged_train_s(metrics) == pytest.approx(50 * 0.2 * 2 + 50 * 0.4 * 2)


def test_labelled_pretraining_rows_skip_other_tasks_and_new_robots():
    from types import SimpleNamespace

    from vla.eval.latent_report import labelled_pretraining

    def run(task: str, rate: float) -> dict:
        return {"tasks": {task: {"success_rate": rate}}}

    fewshot = {"runs": {"full/drawer-open/s0": run("drawer-open", 0.4), "full/drawer-open/s1": run("drawer-open", 0.6),
                        "full/robosuite/Lift/Panda/s0": run("robosuite/Lift/Panda", 0.9),
                        "scratch/lever-pull/s0": run("lever-pull", 1.0)}}
    lines = labelled_pretraining(SimpleNamespace(tasks=["drawer-open"]), fewshot)
    assert "| `full` (few-shot) | 50 ± 14% | 2 |" in lines and not any("scratch" in line for line in lines)
