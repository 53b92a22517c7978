"""The few-shot benchmark driver (issue 11 item 5; vla.eval.fewshot_benchmark): its task split is Meta-World's
ML10, its settings are checked before hours of work, and a smoke run makes every stage, resumes a stopped
fine-tune, reuses what is finished and writes the report."""

from __future__ import annotations

import json

import draccus
import pytest
from metaworld.env_dict import ML10_V3
from test_resume import Killed, die_on_call

from vla.eval import fewshot_benchmark, offline
from vla.eval.fewshot_benchmark import ArmConfig, FewshotConfig, main, pretrain_config
from vla.eval.fewshot_report import run_key_parts
from vla.pipeline import PipelineConfig
from vla.training import train as train_module
from vla.training.logging import read_metrics

SMOKE = "configs/bench/fewshot_smoke.yaml"


def ml10(split: str) -> list[str]:
    return [name.removesuffix("-v3") for name in ML10_V3[split]]


def test_recipes_use_metaworlds_ml10_split():
    pretrain = draccus.parse(PipelineConfig, args=["--config_path=configs/pretrain/ml10.yaml"])
    bench = draccus.parse(FewshotConfig, args=["--config_path=configs/bench/fewshot.yaml"])
    assert pretrain.demos.tasks == ml10("train") == pretrain.eval.tasks
    assert pretrain.demos.episodes_per_task == 50 and not pretrain.demos.privileged_state
    assert bench.tasks == ml10("test") == pretrain.tiny_backbone.extra_tasks
    assert bench.demos_per_task == 10 and len(bench.seeds) >= 3 and bench.eval.episodes_per_task >= 20
    assert list(bench.arms) == ["scratch", "full", "lora"] and bench.arms["lora"].lora.targets
    gpu = draccus.parse(FewshotConfig, args=["--config_path=configs/bench/fewshot_gpu.yaml"])
    assert gpu.tasks == bench.tasks and pretrain_config(gpu).demos.tasks == ml10("train")


def test_settings_that_would_waste_the_run_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pretraining demos include held-out tasks"):
        pretrain_config(FewshotConfig(tasks=["reach"], output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="a scratch arm has no pretrained weights for LoRA"):
        ArmConfig(init="scratch", lora=fewshot_benchmark.LoraConfig(targets=["head.*"]))
    with pytest.raises(ValueError, match="unknown Meta-World task 'no-such-task'"):
        FewshotConfig(tasks=["no-such-task"])
    with pytest.raises(ValueError, match="eval.seed_start 5 is below 100000, where demos may use the same"):
        FewshotConfig(eval=fewshot_benchmark.EvalConfig(seed_start=5))
    with pytest.raises(ValueError, match=r"new_robots \['drawer-open'\] are robots the pretraining demos .* already"):
        pretrain_config(FewshotConfig(tasks=["lever-pull"], new_robots=["drawer-open"], output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"\['lever-pull'\] are both in tasks and in new_robots"):
        FewshotConfig(new_robots=["lever-pull"])
    assert run_key_parts("lora/robosuite/Lift/Panda/s2") == ("lora", "robosuite/Lift/Panda")


@pytest.mark.slow
def test_smoke_run_resumes_reuses_and_reports(tmp_path, monkeypatch, capsys):
    from vla import provenance

    # a checkout with uncommitted changes never reuses results; the stages are made and reused at one clean commit
    monkeypatch.setattr(provenance, "git_commit", lambda: {"commit": "c" * 40, "dirty": False})
    out, report = tmp_path / "bench", tmp_path / "report"
    args = ["--config_path", SMOKE, "--output_dir", str(out), "--report_dir", str(report)]
    # make_batch calls: pretraining 1-4, then 3 per arm: scratch 5-7, full 8-10 (its checkpoint at step 2 is saved)
    with monkeypatch.context() as patch:
        die_on_call(patch, train_module, "make_batch", 10)
        with pytest.raises(Killed):
            main(args)
    full = out / "finetune" / "full" / "button-press-topdown" / "s0"
    assert (full / "train" / "checkpoints" / "last").resolve().name == "step_0000002"
    assert not (full / "summary.json").exists() and not (report / "fewshot.md").exists()
    finished = {path: path.stat().st_mtime_ns for path in (out / "pretrain" / "summary.json",
                                                           out / "zero_shot" / "summary.json",
                                                           out / "finetune" / "scratch" / "button-press-topdown" /
                                                           "s0" / "summary.json")}
    capsys.readouterr()
    main(args)  # resumes the stopped fine-tune, runs lora, reuses the rest
    assert "resuming from step_0000002 at step 2" in capsys.readouterr().out
    assert [int(s) for s in read_metrics(full / "train" / "metrics.csv")["step"]] == [1, 2, 3]
    assert {path: path.stat().st_mtime_ns for path in finished} == finished

    results = json.loads((report / "fewshot_results.json").read_text())
    assert results["provenance"]["commit"] == "c" * 40
    assert results["provenance"]["config"]["tasks"] == ["button-press-topdown"]
    tasks = ("button-press-topdown", "robosuite/Lift/Panda")
    assert sorted(results["runs"]) == [f"{arm}/{task}/s0" for arm in ("full", "lora", "scratch") for task in tasks]
    for key, run in results["runs"].items():
        assert run["tasks"][run_key_parts(key)[1]]["episodes"] == 2 and run["provenance"]["commit"]
        assert run["offline"]["rmse"] > 0 and run["offline"]["frames"] > 0  # on 1 demo of unseen placements
        assert run["offline"]["units"] == "robot" and run["offline"]["num_steps"] == 2  # the evaluation's steps
    # the new robot: the pretrained Sawyer policy widened to the Panda's 7-D end-effector steps and 8-D joint state,
    # the layers these shape re-initialised and the rest loaded
    robot_run = out / "finetune" / "full" / "robosuite" / "Lift" / "Panda" / "s0" / "train"
    init = json.loads((robot_run / "init_report.json").read_text())
    assert {"model.max_action_dim: 4 -> 7", "model.max_state_dim: 7 -> 8"} <= set(init["config_changes"])
    assert init["loaded"] and init["reinitialised"]
    assert init["embodiments"]["statistics"] == "added"
    lora, full_run = results["runs"]["lora/button-press-topdown/s0"], results["runs"]["full/button-press-topdown/s0"]
    assert 0 < lora["parameters"]["trained"] < full_run["parameters"]["trained"] == full_run["parameters"]["total"]
    assert results["pretrain"]["groups"]["easy"]["tasks"] == ["reach"] and results["zero_shot"]["tasks"]
    text = (report / "fewshot.md").read_text()
    for line in ("| `zero-shot` |", "| `scratch` |", "| `full` |", "| `lora` |", "| easy | reach |", "## A new robot",
                 "| arm | mean | robosuite/Lift/Panda |", "- `full` - `scratch`: ",
                 "- `lora` - `scratch`: ", "| offline RMSE |",
                 "this page written (and the offline errors measured) at commit cccccccccc;"):
        assert line in text
    assert (report / "fewshot.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]

    with monkeypatch.context() as patch:  # everything finished: nothing trains or rolls out again
        patch.setattr(train_module, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
        patch.setattr(fewshot_benchmark, "evaluate_checkpoint", lambda *a, **k: pytest.fail("re-evaluated"))
        patch.setattr(offline, "action_error", lambda *a, **k: pytest.fail("offline error measured again"))
        main(args)
    assert json.loads((report / "fewshot_results.json").read_text())["runs"] == results["runs"]
