"""Head benchmark: dit vs dita vs flow, the token heads (and named variants) on the same Meta-World demos, step budget
and seeds; then BAC.

    vla-eval heads                          # the committed report, 3-6 h alone on 2 CPU cores
    python benchmarks/heads.py --seeds='[0]' --train.steps=200

Each (head, seed) is one pipeline run (`vla.pipeline.run_pipeline`: demos and the tiny VLM are
cached, training resumes from its last checkpoint) in <output_dir>/<head>_s<seed>; a run whose
summary.json exists is reused, so a crash costs at most the run in progress. A run (finished or not)
made with other code under vla/ or with other settings is never reused or resumed unless `reuse_stale` is
set; the report's header names every commit its runs were made at. With `archive_dir` (the committed
recipe's docs/results/heads_runs) every finished run's records are copied there and restored from there,
so the 3-6 h benchmark can be spread over sessions on fresh checkouts (`vla.eval.run_archive`). A name in
`heads` is a registered head or a `variants` entry (a registered head with options of its own, such as
dita with `denoiser: shared` or a two-frame history). Right after a head's first-seed run, if the head is in
`bac.heads`, on that checkpoint (so that no later session needs it), BAC schedules are calibrated in memory
on demo frames, with the fixed threshold and with the error tolerance, and every (steps, caching) pair is
evaluated closed loop on the same episode seeds. The report is report_dir/heads.md + heads.png."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import numpy as np
import torch

from vla.action_heads import head_config_class
from vla.action_heads.bac import SCHEDULE_FILE, BlockCache, calibrate_head, load_schedules, save_schedules
from vla.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig, parse_with_recipe
from vla.eval.run_archive import archive_run, restore_run
from vla.pipeline import PipelineConfig, TinyBackboneConfig
from vla.provenance import as_plain, blocking_reasons, provenance
from vla.sim.demos import DemoConfig
from vla.training.tokenizer_fit import FIT_REPORT

TASKS = ["reach", "button-press-topdown"]
BAC_ROWS = "rows.json"
DEFAULT_RECIPE = "configs/bench/heads.yaml"  # nested defaults live here: draccus rebuilds an overridden section


@dataclass
class HeadSizeConfig:
    """The settings every benchmarked head gets, so they differ only in how they condition and denoise."""

    horizon: int = 8
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    noise_samples_per_cond: int = 2


@dataclass
class BACBenchConfig:
    heads: list[str] = field(default_factory=list)  # each must be one of the benchmarked heads
    steps: list[int] = field(default_factory=lambda: [100, 10, 5])
    threshold: float = 0.3  # recompute a block once its accumulated relative change exceeds this
    # also compare: per step count, the largest threshold whose samples stay within this mean absolute
    # deviation (normalised action units) of uncached sampling on the calibration frames; None: skip
    tolerance: float | None = None
    calibration_frames: int = 16  # demo frames (spread over the dataset) the schedule is measured on


@dataclass
class HeadVariant:
    """A benchmarked head under its own name: a registered head type with settings of its own.

    options: head-config fields on top of the shared `head` sizes (e.g. {denoiser: shared});
    n_obs_steps: frames of observation history (model.n_obs_steps).
    """

    head: str = ""  # required: a registered head name
    n_obs_steps: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def build_head_config(self, sizes: HeadSizeConfig):
        """The head config: the shared sizes it has (a token head such as ar has no denoiser sizes), then the
        options (nested ones too, e.g. {diffusion: {...}} or {tokenizer: {type: fast}})."""
        if not self.head:
            raise ValueError("a head variant must name its registered head (head: dit | dita | flow | ar ...)")
        config_class = head_config_class(self.head)
        names = {f.name for f in dataclasses.fields(config_class)}
        shared = {k: v for k, v in dataclasses.asdict(sizes).items() if k in names}
        try:
            return draccus.decode(config_class, shared | self.options)
        except draccus.utils.DecodingError as err:
            raise ValueError(f"variant options {self.options} do not fit the {self.head} head config: {err}") from err


@dataclass
class HeadsBenchmarkConfig:
    # registered head names, or names from `variants`
    heads: list[str] = field(default_factory=lambda: ["dit", "dita", "flow"])
    variants: dict[str, HeadVariant] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    demos: DemoConfig = field(default_factory=lambda: DemoConfig(
        tasks=list(TASKS), episodes_per_task=30, image_size=64, root="outputs/bench/datasets"))
    tiny_backbone: TinyBackboneConfig = field(default_factory=lambda: TinyBackboneConfig(
        root="outputs/bench/tiny_vlm", patch_size=8))
    head: HeadSizeConfig = field(default_factory=HeadSizeConfig)
    image_shift: int = 4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1200, batch_size=32, save_every=400, log_every=50, optim=OptimConfig(lr=5e-4, warmup_steps=100)))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(
        tasks=list(TASKS), episodes_per_task=10, videos_per_task=1, num_inference_steps=10))
    bac: BACBenchConfig = field(default_factory=BACBenchConfig)
    output_dir: str = "outputs/bench/heads"
    report_dir: str = "docs/results"
    # reuse (or resume) runs and evaluations made at another commit or with other settings; the report's header
    # names the commits its runs were made at
    reuse_stale: bool = False
    # keep every finished run's records (not its checkpoints) here and restore them on a fresh checkout; None: off
    archive_dir: str | None = None

    def __post_init__(self) -> None:
        for name in self.heads + self.bac.heads:
            self.variant(name).build_head_config(self.head)  # unknown names and fields fail here, with the reason
        missing = [name for name in self.bac.heads if name not in self.heads]
        if missing:
            raise ValueError(f"bac.heads {missing} are not in heads: BAC runs on their first-seed checkpoints "
                             f"(add them to heads, or pass --bac.heads='[]')")
        for name in self.bac.heads:  # fail now, not after hours of training
            if self.variant(name).build_head_config(self.head).reads_language_cache:
                raise ValueError(f"bac.heads: {name} denoises inside the backbone's LLM and has no blocks to cache")
        if self.bac.tolerance is not None and not self.bac.tolerance >= 0:
            raise ValueError(f"bac.tolerance must be >= 0 (or null to skip); got {self.bac.tolerance}")
        if not self.seeds:
            raise ValueError("benchmark needs at least one seed")

    def variant(self, name: str) -> HeadVariant:
        """The variant called `name`, or a registered head by that name with default settings."""
        return self.variants.get(name) or HeadVariant(head=name)


# ---- runs ------------------------------------------------------------------------------------------


def run_dir(cfg: HeadsBenchmarkConfig, head: str, seed: int) -> Path:
    return Path(cfg.output_dir) / f"{head}_s{seed}"


def pipeline_config(cfg: HeadsBenchmarkConfig, head: str, seed: int) -> PipelineConfig:
    out = run_dir(cfg, head, seed)
    variant = cfg.variant(head)
    model = ModelConfig(head=variant.build_head_config(cfg.head), n_obs_steps=variant.n_obs_steps)
    return PipelineConfig(
        demos=cfg.demos, tiny_backbone=cfg.tiny_backbone, model=model,
        data=DataConfig(image_shift=cfg.image_shift),
        train=dataclasses.replace(cfg.train, seed=seed, output_dir=str(out / "train")),
        eval=dataclasses.replace(cfg.eval, output_dir=str(out / "eval")), results_dir=str(out))


def train_and_eval(cfg: HeadsBenchmarkConfig, head: str, seed: int) -> dict:
    """One pipeline run (reused when its summary exists), plus its median training time per step."""
    pipeline = pipeline_config(cfg, head, seed)
    out = run_dir(cfg, head, seed)
    if cfg.archive_dir and restore_run(out, Path(cfg.archive_dir), pipeline, cfg.reuse_stale):
        print(f"{out.name}: restored from {cfg.archive_dir}")
    check_run_origin(out, pipeline, cfg.reuse_stale)
    summary = run_summary(pipeline, out)
    if cfg.archive_dir:
        archive_run(out, Path(cfg.archive_dir))
    return summary


def run_summary(pipeline: PipelineConfig, out: Path) -> dict:
    """The summary of the pipeline run in `out` (reused when it exists, else the pipeline runs: training resumes or
    is reused), plus its median training time per step. The caller has checked the folder's origin."""
    from vla.pipeline import run_pipeline

    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else run_pipeline(pipeline)
    summary["train_s_per_step"] = median_s_per_step(out / "train" / "metrics.csv")
    fit = out / "train" / FIT_REPORT  # token heads: the tokenizer fit before training, with its held-out round trip
    if fit.exists():
        summary["tokenizer"] = json.loads(fit.read_text())
    return summary


def check_run_origin(out: Path, pipeline: PipelineConfig, reuse_stale: bool) -> None:
    """Record where a new run folder comes from (provenance.json), or refuse to reuse / resume one made at
    another commit or with other settings (unless reuse_stale: then say so)."""
    path = out / "provenance.json"
    if path.exists():
        reasons = blocking_reasons(json.loads(path.read_text()), pipeline, reuse_stale, f"the run folder {out}")
        if reasons:
            raise ValueError(f"{out} cannot be reused: {'; '.join(reasons)}. Delete the folder, pick another "
                             f"output_dir, or pass --reuse_stale=true to reuse it anyway")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(provenance(pipeline), indent=1))


def median_s_per_step(metrics_csv: Path) -> float:
    """Median over the logged s_per_step windows after the first (start-up costs): the machine is shared,
    and the median ignores the windows in which another job took the cores."""
    with open(metrics_csv) as f:
        values = [float(row["s_per_step"]) for row in csv.DictReader(f)]
    return float(np.median(values[1:] or values))


def logged_train_s(metrics_csv: Path) -> float:
    """Training time from the logged step times (each window's s/step x its steps): the same figure whether the run
    went in one go or was stopped and resumed across sessions (wall-clock of the last call would count only the
    part after the resume)."""
    with open(metrics_csv) as f:
        rows = [(int(row["step"]), float(row["s_per_step"])) for row in csv.DictReader(f)]
    steps = [0] + [step for step, _ in rows]
    return float(sum(seconds * (step - previous) for previous, (step, seconds) in zip(steps, rows, strict=False)))


# ---- BAC -------------------------------------------------------------------------------------------


def bac_modes(cfg: HeadsBenchmarkConfig) -> list[tuple[str, float | None]]:
    """The caching settings compared at every step count: (mode, its threshold or tolerance)."""
    modes = [("off", None), ("threshold", cfg.bac.threshold)]
    return modes + ([("tolerance", cfg.bac.tolerance)] if cfg.bac.tolerance is not None else [])


def reusable(out: Path, schedule, eval_cfg: EvalConfig, reuse_stale: bool) -> bool:
    """A finished evaluation in `out` may be reused if it ran with this schedule (or both without caching), at
    this commit with these settings (or reuse_stale)."""
    if not (out / "summary.json").exists():
        return False
    saved = load_schedules(out / SCHEDULE_FILE) if (out / SCHEDULE_FILE).exists() else []
    same_schedule = not saved if schedule is None else bool(saved) and saved[0].recompute == schedule.recompute
    recorded = json.loads((out / "summary.json").read_text()).get("provenance")
    return same_schedule and not blocking_reasons(recorded, eval_cfg, reuse_stale, f"the evaluation in {out}")


def bac_settings(cfg: HeadsBenchmarkConfig, head: str) -> dict:
    """What a head's BAC rows depend on: its first-seed run, the BAC settings and the evaluation."""
    return {"run": as_plain(pipeline_config(cfg, head, cfg.seeds[0])), "bac": as_plain(cfg.bac),
            "eval": as_plain(cfg.eval)}


def bac_runs(cfg: HeadsBenchmarkConfig, head: str, summary: dict) -> list[dict]:
    """A head's BAC rows, cached with their provenance in its first-seed run folder (bac/rows.json, archived
    with the run), or measured on the first-seed checkpoint (`measure_bac`)."""
    out = run_dir(cfg, head, cfg.seeds[0])
    cached = out / "bac" / BAC_ROWS
    if cached.exists():
        recorded = json.loads(cached.read_text())
        if not blocking_reasons(recorded["provenance"], bac_settings(cfg, head), cfg.reuse_stale,
                                f"{head}'s BAC rows in {cached}"):
            return recorded["rows"]
    checkpoint = Path(summary["checkpoint"])
    if not checkpoint.exists():
        raise ValueError(f"BAC for {head} needs its seed-{cfg.seeds[0]} checkpoint {checkpoint}, which is not on "
                         f"this machine (its run was restored from {cfg.archive_dir}, without BAC rows made with "
                         f"these settings and code): delete {out} and the archived run to train it again")
    rows = measure_bac(cfg, head, checkpoint)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"provenance": provenance(bac_settings(cfg, head)), "rows": rows}, indent=1))
    if cfg.archive_dir:
        archive_run(out, Path(cfg.archive_dir))
    return rows


def measure_bac(cfg: HeadsBenchmarkConfig, head: str, checkpoint: Path) -> list[dict]:
    """Closed-loop success and latency for each (steps, caching mode) on one checkpoint, on the same episode
    seeds and sampling noise; finished evaluations are reused."""
    from vla.checkpoint import load_policy
    from vla.eval.bac_calibration import calibration_observations
    from vla.eval.rollout import evaluate
    from vla.sim.demos import generate_demos

    policy = load_policy(checkpoint)
    obs = calibration_observations(generate_demos(cfg.demos), cfg.demos.repo_id, cfg.bac.calibration_frames,
                                   policy.config)
    with torch.no_grad():
        cond = policy.condition(obs.images, obs.state, obs.instruction, obs.embodiment)
    valid = policy.normalizer.action_masks(obs.embodiment)
    one = first_observation(cond)  # for the same-run sampling times
    rows = []
    for steps in cfg.bac.steps:
        schedules = {}
        for mode, value in bac_modes(cfg):
            schedule = None
            if mode != "off":  # calibrated in memory: the checkpoint's own bac_schedule.json is left alone
                schedule = calibrate_head(policy.head, cond, steps, valid=valid, **{mode: value})
            schedules[mode] = schedule
            name = f"steps{steps:03d}_off" if mode == "off" else f"steps{steps:03d}_{mode[:3]}{value:g}"
            out = run_dir(cfg, head, cfg.seeds[0]) / "bac" / name
            eval_cfg = dataclasses.replace(cfg.eval, num_inference_steps=steps, bac=schedule is not None,
                                           output_dir=str(out), videos_per_task=0)
            if reusable(out, schedule, eval_cfg, cfg.reuse_stale):
                result = json.loads((out / "summary.json").read_text())
            else:
                result = evaluate(policy, eval_cfg, policy.config.image_size, policy.config.cameras[0])
                if schedule is not None:
                    save_schedules({steps: schedule}, out / SCHEDULE_FILE)
            rows.append({"head": head, "steps": steps, "mode": mode, "setting": value,
                         "threshold": schedule.threshold if schedule else None,
                         "deviation": schedule.error if schedule else 0.0,
                         "computed_fraction": schedule.computed_fraction() if schedule else 1.0,
                         "success": result["mean_success_rate"], "p50_ms": result["chunk_latency_ms"]["p50"],
                         "p99_ms": result["chunk_latency_ms"]["p99"]})
        for row, ms in zip(rows[-len(schedules):], sampling_ms(policy.head, one, steps, list(schedules.values())),
                           strict=True):
            row["sampling_ms"] = ms
    return rows


def first_observation(cond):
    """The Cond of the first calibration observation alone (batch 1, as on a robot)."""
    backbone = cond.backbone
    return dataclasses.replace(cond, proprio=cond.proprio[:1], backbone=dataclasses.replace(
        backbone, tokens=backbone.tokens[:1], token_mask=backbone.token_mask[:1], cognition=backbone.cognition[:1]))


def sampling_ms(head, cond, steps: int, schedules: list, reps: int = 15) -> list[float]:
    """Median time (ms) of one `head.sample` call per schedule (None: no caching), timed interleaved in one
    process, so that the machine's load hits every schedule alike (closed-loop latencies of reused
    evaluations may come from other runs)."""
    times: list[list[float]] = [[] for _ in schedules]
    for _ in range(reps + 1):  # the first round warms up
        for i, schedule in enumerate(schedules):
            start = time.perf_counter()
            head.sample(cond, generator=torch.Generator().manual_seed(0), num_steps=steps,
                        bac=BlockCache(schedule) if schedule is not None else False)
            times[i].append(time.perf_counter() - start)
    return [1000 * float(np.median(t[1:])) for t in times]


# ---- entry point -----------------------------------------------------------------------------------


def run_benchmark(cfg: HeadsBenchmarkConfig) -> Path:
    from vla.eval.heads_report import write_report

    # seed-major, so that an interrupted benchmark has every head at its first seeds; a head's BAC right after its
    # first-seed run, while that checkpoint is on this machine (an archive keeps records, not checkpoints)
    runs, bac_rows = {}, []
    for seed in cfg.seeds:
        for head in cfg.heads:
            runs[(head, seed)] = train_and_eval(cfg, head, seed)
            if seed == cfg.seeds[0] and head in cfg.bac.heads:
                bac_rows += bac_runs(cfg, head, runs[(head, seed)])
    bac_rows.sort(key=lambda row: cfg.bac.heads.index(row["head"]))
    results = json.dumps({"provenance": provenance(cfg), "runs": {f"{h}_s{s}": r for (h, s), r in runs.items()},
                          "bac": bac_rows}, indent=1)
    (Path(cfg.output_dir) / "results.json").write_text(results)
    Path(cfg.report_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.report_dir) / "heads_results.json").write_text(results)  # the figures behind the report
    return write_report(cfg, runs, bac_rows)


def main(args: list[str] | None = None) -> None:
    """Parse flags on top of configs/bench/heads.yaml (or another --config_path) and run."""
    print(f"report: {run_benchmark(parse_with_recipe(HeadsBenchmarkConfig, DEFAULT_RECIPE, args))}")

if __name__ == "__main__":
    main()
