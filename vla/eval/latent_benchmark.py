"""Latent-action benchmark (issue 13 item 4): pretrain on action-free video of Meta-World ML10's training tasks
through UniVLA's latent actions, then train on 10 labelled demos of each held-out task, and compare closed-loop
success against the same policy trained on those 10 demos alone.

    python benchmarks/latent.py                                            # the report; hours on a 2-core CPU
    python benchmarks/latent.py --config_path configs/bench/latent_smoke.yaml --output_dir /tmp/latent

Stages, each cached (a stage whose summary.json exists is reused; a stopped training resumes from its last
checkpoint; a stage made at another commit or with other settings is refused unless reuse_stale):
1. Video: the pretraining recipe's scripted demos written action-free (`demos.action_free`: renders and
   instructions only; configs/pretrain/latent_ml10.yaml).
2. The latent action model (vla.latent) fit on that video alone, then every dataset labelled with its codes.
3. Pretraining: the `latent` head's policy on the labelled video (latent-token cross-entropy only: no sample has
   actions, so no action decoder exists yet).
4. For every held-out task, `demos_per_task` labelled expert demos (the same for every arm and seed), labelled by the
   same latent action model; for every (arm, task, seed), training with the fine-tuning recipe (equal steps and batch)
   and evaluation on that task. Arms: `latent` (train.init_from the video-pretrained policy: a decoder for the robot is
   added and everything trains) and `scratch` (the same architecture from the backbone's initial weights, trained on
   the 10 demos and their latent labels alone).
The latent action model's diagnostics on a held-out task's labelled demos (code perplexity, how much of the true
motion the codes explain) are part of the report. results.json under output_dir and <report_dir>/latent_results.json
hold every stage's summary with its provenance; <report_dir>/latent.md and latent.png are the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from vla.config import EvalConfig, parse_with_recipe
from vla.eval.fewshot_benchmark import (
    ArmConfig,
    check_held_out_settings,
    finetune_recipe,
    held_out_pretraining,
    run_arms,
    save_results,
)
from vla.eval.heads_benchmark import check_run_origin, logged_train_s, median_s_per_step
from vla.latent.lam import LAMConfig
from vla.pipeline import PipelineConfig
from vla.provenance import provenance
from vla.sim.demos import DemoConfig, generate_demos, load_cached
from vla.training import train as training

DEFAULT_CONFIG = "configs/bench/latent.yaml"


@dataclass
class LatentBenchConfig:
    # a vla-quickstart (PipelineConfig) recipe whose demos are written action-free and whose head is `latent`, and
    # dotted overrides on it (its eval section is unused: the pretrained policy has no decoder to act with)
    pretrain_recipe: str = "configs/pretrain/latent_ml10.yaml"
    pretrain_args: list[str] = field(default_factory=list)
    # the latent action model, fit on the pretraining video (image_size: the demos'; frame_gap 0: the head's horizon)
    lam: LAMConfig = field(default_factory=lambda: LAMConfig(stage1_steps=3000, stage2_steps=3000))
    # a vla-train recipe whose train and data sections every arm uses, + overrides
    finetune_recipe: str = "configs/finetune/10shot.yaml"
    finetune_args: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: ["drawer-open", "door-close", "shelf-place", "sweep-into",
                                                      "lever-pull"])  # held out: ML10's test tasks
    demos_per_task: int = 10
    arms: dict[str, ArmConfig] = field(default_factory=lambda: {
        "latent": ArmConfig(), "scratch": ArmConfig(init="scratch", lr=5e-4)})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes_per_task=20, videos_per_task=1))
    output_dir: str = "outputs/bench/latent"
    report_dir: str = "docs/results"
    # the labelled-data pretraining of the few-shot benchmark, shown beside when that file exists
    fewshot_results: str = "docs/results/fewshot_results.json"
    reuse_stale: bool = False

    def __post_init__(self) -> None:
        check_held_out_settings(self)


# ---- configs ------------------------------------------------------------------------------------------------


def pretrain_config(cfg: LatentBenchConfig) -> PipelineConfig:
    """The pretraining recipe with its overrides, everything under output_dir, the held-out tasks' instructions in
    the tiny VLM's vocabulary; a ValueError unless it pretrains a latent head on action-free demos without the
    held-out tasks."""
    recipe = draccus.parse(PipelineConfig, args=[f"--config_path={cfg.pretrain_recipe}", *cfg.pretrain_args])
    if not recipe.demos.action_free or recipe.model.head.type != "latent":
        raise ValueError(f"{cfg.pretrain_recipe} must write action-free demos (demos.action_free: true) and train a "
                         f"latent head (model.head.type: latent); got action_free={recipe.demos.action_free}, head "
                         f"{recipe.model.head.type}")
    return held_out_pretraining(cfg, recipe, "the pretraining video includes")


def held_out_demos(cfg: LatentBenchConfig, pretrain: PipelineConfig, task: str) -> DemoConfig:
    """The task's labelled demos, recorded as the pretraining video was (camera, size, expert settings)."""
    return dataclasses.replace(pretrain.demos, tasks=[task], episodes_per_task=cfg.demos_per_task, action_free=False,
                               repo_id=f"local/latent_{task}")


# ---- stages -------------------------------------------------------------------------------------------------


def fit_latent_model(cfg: LatentBenchConfig, video: Path, pipeline: PipelineConfig) -> Path:
    """The latent action model fit on the pretraining video (reused when its folder has one), at the demos' image
    size; frame_gap 0 means the head's horizon (a latent action then describes the chunk the decoder emits; the
    model's own default, one second, spans most of a Meta-World episode at 80 frames/s)."""
    from vla.latent.cli import FitConfig, fit

    out, demos = Path(cfg.output_dir) / "lam", pipeline.demos
    lam = dataclasses.replace(cfg.lam, image_size=demos.image_size,
                              frame_gap=cfg.lam.frame_gap or pipeline.model.head.horizon)
    fit_cfg = FitConfig(root=str(video), repo_id=demos.repo_id, output_dir=str(out), lam=lam)
    check_run_origin(out, fit_cfg, cfg.reuse_stale)
    return out if (out / "lam.safetensors").exists() else fit(fit_cfg)


def label(lam: Path, root: Path, repo_id: str) -> None:
    """Write the dataset's latent-action labels unless that model already labelled it."""
    from vla.latent.cli import LabelConfig
    from vla.latent.cli import label as write_labels
    from vla.latent.labels import has_labels, read_labels
    from vla.latent.lam import file_fingerprint

    if has_labels(root) and read_labels(root).lam_fingerprint == file_fingerprint(lam):
        return
    write_labels(LabelConfig(root=str(root), repo_id=repo_id, lam=str(lam)))


def pretrain(cfg: LatentBenchConfig, pipeline: PipelineConfig) -> tuple[dict, Path, Path]:
    """Video, latent action model, labels and the latent policy's pretraining: (summary, checkpoint, lam folder)."""
    from vla.pipeline import build_backbone, wire

    out = Path(pipeline.results_dir)
    check_run_origin(out, pipeline, cfg.reuse_stale)
    timings = StageTimes(out / "timings.json")
    with timings.measure("demos_s", made=load_cached(pipeline.demos) is None):
        video = generate_demos(pipeline.demos)
    with timings.measure("lam_s", made=not (Path(cfg.output_dir) / "lam" / "lam.safetensors").exists()):
        lam = fit_latent_model(cfg, video, pipeline)
        label(lam, video, pipeline.demos.repo_id)
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        return summary, Path(summary["checkpoint"]), lam
    wired = wire(pipeline, video, build_backbone(pipeline))
    checkpoint = training.train(training.TrainRunConfig(model=wired.model, data=wired.data, train=wired.train))
    metrics = Path(wired.train.output_dir) / "metrics.csv"
    train_s = logged_train_s(metrics)
    summary = {"checkpoint": str(checkpoint), "timings_s": timings.recorded() | {"train_s": train_s},
               "video": str(video),
               "frames": json.loads((checkpoint / "meta.json").read_text())["training"]["datasets"][0]["frames"],
               "train_s_per_step": median_s_per_step(metrics),
               "provenance": provenance(pipeline)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary, checkpoint, lam


class StageTimes:
    """Seconds each pretraining stage took when it was made, kept in a file: a benchmark spread over sessions
    reuses the stages made earlier, and their times must not read as ~0."""

    def __init__(self, path: Path):
        self.path = path

    def recorded(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    @contextmanager
    def measure(self, name: str, made: bool):
        """Time the block and record it under `name` when `made` (the stage is made here, not reused)."""
        start = time.time()
        yield
        if made:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.recorded() | {name: time.time() - start}, indent=1))


def lam_diagnostics(cfg: LatentBenchConfig, lam: Path, dataset: Path, repo_id: str) -> dict:
    """The latent action model's report on one held-out task's labelled demos (reused when written)."""
    from vla.latent.cli import ReportConfig, report
    from vla.latent.lam import file_fingerprint

    out = Path(cfg.output_dir) / "lam_report"
    path = out / "latent_report.json"
    if not path.exists() or json.loads(path.read_text())["fingerprint"] != file_fingerprint(lam):
        report(ReportConfig(root=str(dataset), repo_id=repo_id, lam=str(lam), output_dir=str(out)))
    return json.loads(path.read_text()) | {"plot": str(out / "latent_report.png")}


# ---- entry point --------------------------------------------------------------------------------------------


def run_benchmark(cfg: LatentBenchConfig) -> Path:
    """Every stage (cached), then results.json and the report; returns the report's path."""
    from vla.eval.latent_report import write_report
    from vla.pipeline import build_backbone

    pipeline = pretrain_config(cfg)
    recipe = finetune_recipe(cfg)
    pretrained, checkpoint, lam = pretrain(cfg, pipeline)
    vlm = build_backbone(pipeline)  # the pretraining's starting point (cached)
    results = {"pretrain": pretrained, "runs": {}, "lam": None}
    for task in cfg.tasks:
        demos = held_out_demos(cfg, pipeline, task)
        dataset = generate_demos(demos)
        label(lam, dataset, demos.repo_id)
        if results["lam"] is None:
            results["lam"] = lam_diagnostics(cfg, lam, dataset, demos.repo_id)
        results["runs"] |= run_arms(cfg, recipe, checkpoint, vlm, dataset, demos, task)
    fewshot = Path(cfg.fewshot_results)
    results["fewshot"] = json.loads(fewshot.read_text()) if fewshot.exists() else None
    save_results(cfg, pipeline, recipe, results, "latent_results.json")
    return write_report(cfg, pipeline, recipe, results)


def main(args: list[str] | None = None) -> None:
    """Parse flags on top of configs/bench/latent.yaml (or another --config_path) and run."""
    print(f"report: {run_benchmark(parse_with_recipe(LatentBenchConfig, DEFAULT_CONFIG, args))}")


if __name__ == "__main__":
    main()
