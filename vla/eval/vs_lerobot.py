"""Our action heads against LeRobot's own policies (ACT, Diffusion Policy, SmolVLA) on the same data (issue 14).

    python benchmarks/vs_lerobot.py                        # configs/bench/vs_lerobot.yaml -> docs/results/vs_lerobot.*
    vla-eval vs-lerobot --config_path=configs/bench/vs_lerobot_smoke.yaml    # a few minutes, for a try

Every policy learns from the same LeRobot dataset (`vla.sim.demos`: the same demos, camera, image size and the
robot-only state) with the same number of samples seen (train.steps x train.batch_size for all), and is evaluated
by the same rollout code (`vla.eval.rollout.run_tasks`) on the same Meta-World seeds.
- Our heads (`heads`): each (head, seed) is a run of the head benchmark (`vla.eval.heads_benchmark`, the same run
  folders, caching and provenance checks). Training runs first in a subprocess so that its peak memory is its own;
  the finished run is then evaluated in this process.
- LeRobot's policies (`lerobot`): each (policy, seed) is trained by LeRobot's own training script in a subprocess
  (`vla.eval.lerobot_train`: its defaults, optimiser presets, normalisation and augmentation; no pretrained weights)
  and driven through its own `select_action` with its own pre/post-processors (`vla.eval.lerobot_policy`).
  SmolVLA's backbone is a tiny random SmolVLM built locally with our backbone's sizes (SmolVLM2-500M cannot be
  fetched here; ours is a tiny random PaliGemma).

Runs live in <output_dir>/<name>_s<seed>/ and are reused when finished (and resumed when interrupted); a run made at
another commit or with other settings is refused unless `reuse_stale`. The results (one row per run, each with its
provenance) go to <output_dir>/results.json and <report_dir>/vs_lerobot.json, the table to vs_lerobot.md, the plot
to vs_lerobot.png.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vla.config import EvalConfig, OptimConfig, TrainConfig, parse_with_recipe, to_yaml
from vla.deploy.chunking import ScheduleConfig
from vla.eval.heads_benchmark import (
    BACBenchConfig,
    HeadsBenchmarkConfig,
    HeadSizeConfig,
    HeadVariant,
    check_run_origin,
    pipeline_config,
    run_dir,
    run_summary,
)
from vla.eval.lerobot_train import LeRobotPolicySpec, LeRobotRun, child_env, run_measured, train_lerobot
from vla.pipeline import PipelineConfig, TinyBackboneConfig
from vla.provenance import REPO_ROOT, provenance
from vla.sim.demos import DemoConfig

DEFAULT_RECIPE = "configs/bench/vs_lerobot.yaml"
TRAIN_PROCESS_FILE = "train_process.json"  # our training subprocess: peak memory and wall time
TASKS = ["push"]


@dataclass
class LeRobotTrainSettings:
    """How LeRobot's training script runs (the same for every LeRobot policy)."""

    device: str = "cpu"
    num_workers: int = 0  # LeRobot's data-loader processes (PNG decoding); 0: in the training process
    # LeRobot's image augmentation (`--dataset.image_transforms.enable`; off by its default): on, as our heads train
    # with random shifts (image_shift)
    image_transforms: bool = True


def default_lerobot() -> dict[str, LeRobotPolicySpec]:
    return {"act": LeRobotPolicySpec(type="act"), "diffusion": LeRobotPolicySpec(type="diffusion"),
            "smolvla": LeRobotPolicySpec(type="smolvla")}


@dataclass
class VsLeRobotConfig:
    heads: list[str] = field(default_factory=lambda: ["dit", "dita", "flow"])  # ours: registered heads or variants
    variants: dict[str, HeadVariant] = field(default_factory=dict)
    lerobot: dict[str, LeRobotPolicySpec] = field(default_factory=default_lerobot)  # name -> LeRobot policy
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    demos: DemoConfig = field(default_factory=lambda: DemoConfig(
        tasks=list(TASKS), episodes_per_task=50, image_size=96, root="outputs/bench/datasets"))
    tiny_backbone: TinyBackboneConfig = field(default_factory=lambda: TinyBackboneConfig(
        root="outputs/bench/tiny_vlm", patch_size=8))
    head: HeadSizeConfig = field(default_factory=HeadSizeConfig)
    image_shift: int = 4  # our random-shift augmentation (LeRobot's policies use their own)
    # steps x batch_size: the samples every policy sees; log_every / save_every apply to LeRobot's runs too
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1000, batch_size=32, save_every=250, log_every=50, optim=OptimConfig(lr=5e-4, warmup_steps=100)))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(
        tasks=list(TASKS), episodes_per_task=20, max_steps=300, videos_per_task=1, num_inference_steps=10))
    lerobot_train: LeRobotTrainSettings = field(default_factory=LeRobotTrainSettings)
    output_dir: str = "outputs/bench/vs_lerobot"
    report_dir: str = "docs/results"
    reuse_stale: bool = False  # reuse (or resume) runs made at another commit or with other settings

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("vs_lerobot needs at least one seed")
        clash = sorted(set(self.heads) & set(self.lerobot))
        if clash:
            raise ValueError(f"{clash} name both one of our heads and a LeRobot policy: rename the LeRobot entry")
        heads_config(self)  # unknown heads or variant options fail here
        for name, spec in self.lerobot.items():
            try:
                spec.validate()
            except ValueError as err:
                raise ValueError(f"lerobot.{name}: {err}") from err

    def names(self) -> list[str]:
        return [*self.heads, *self.lerobot]


def heads_config(cfg: VsLeRobotConfig) -> HeadsBenchmarkConfig:
    """The head benchmark's config for our side (its run folders under the same output_dir; no BAC)."""
    return HeadsBenchmarkConfig(heads=list(cfg.heads), variants=cfg.variants, seeds=list(cfg.seeds), demos=cfg.demos,
                                tiny_backbone=cfg.tiny_backbone, head=cfg.head, image_shift=cfg.image_shift,
                                train=cfg.train, eval=cfg.eval, bac=BACBenchConfig(heads=[]),
                                output_dir=cfg.output_dir, report_dir=cfg.report_dir, reuse_stale=cfg.reuse_stale)


# ---- our heads -------------------------------------------------------------------------------------


def train_ours(pipeline_yaml: str) -> None:
    """Entry point of our training subprocess: demos, tiny VLM and training of one pipeline config."""
    from vla.config import from_yaml
    from vla.pipeline import train_stage

    train_stage(from_yaml(PipelineConfig, pipeline_yaml))


def our_run(cfg: VsLeRobotConfig, head: str, seed: int) -> dict:
    """One (head, seed): trained in a measured subprocess unless done, then evaluated here (both cached)."""
    bench = heads_config(cfg)
    pipeline = pipeline_config(bench, head, seed)
    out = run_dir(bench, head, seed)
    check_run_origin(out, pipeline, cfg.reuse_stale)
    process = out / TRAIN_PROCESS_FILE
    if not (out / "summary.json").exists() and not process.exists():
        (out / "pipeline.yaml").write_text(to_yaml(pipeline))
        code = "import sys; from vla.eval.vs_lerobot import train_ours; train_ours(sys.argv[1])"
        env = child_env() | {"PYTHONPATH": f"{REPO_ROOT}:{child_env().get('PYTHONPATH', '')}".rstrip(":")}
        measured = run_measured([sys.executable, "-c", code, str(out / "pipeline.yaml")], out / "train.log", env)
        if measured.returncode != 0:
            tail = "\n".join((out / "train.log").read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"training {head} seed {seed} failed (exit {measured.returncode}); the last lines of "
                               f"{out / 'train.log'}:\n{tail}")
        process.write_text(json.dumps(dataclasses.asdict(measured), indent=1))
    summary = run_summary(pipeline, out)
    trained = json.loads(process.read_text()) if process.exists() else {}
    return our_row(cfg, head, seed, summary, trained)


def our_row(cfg: VsLeRobotConfig, head: str, seed: int, summary: dict, trained: dict) -> dict:
    from vla.checkpoint import load_policy

    policy = load_policy(Path(summary["checkpoint"]))
    vision = sum(p.numel() for name in policy.backbone.family.vision_modules
                 for p in getattr(policy.backbone.vlm, name).parameters())
    settings = summary["settings"]
    return {"name": head, "kind": "ours", "type": heads_config(cfg).variant(head).head, "seed": seed,
            **outcome(summary), "parameters": {"total": summary["parameters"]["total"], "vision": vision},
            "s_per_step": summary["train_s_per_step"],
            "samples_per_s": cfg.train.batch_size / summary["train_s_per_step"],
            "samples_per_s_update": None,  # our batches come from memory: nothing to take apart
            "peak_rss_mb": trained.get("peak_rss_mb"), "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
            "execution": {"chunk_size": cfg.head.horizon, "n_action_steps": settings["schedule"]["execute_steps"],
                          "num_inference_steps": settings["num_inference_steps"]},
            "pretrained": f"none: tiny random {cfg.tiny_backbone.family} (hidden {cfg.tiny_backbone.hidden_size}), "
                          "trained from scratch",
            "provenance": summary["provenance"]}


def outcome(summary: dict) -> dict:
    """What every row takes from an evaluation summary: per-task successes and the latency per chunk."""
    tasks = {t: {k: r[k] for k in ("successes", "episodes", "success_rate")} for t, r in summary["tasks"].items()}
    return {"tasks": tasks, "mean_success_rate": summary["mean_success_rate"],
            "latency_ms": {k: summary["chunk_latency_ms"][k] for k in ("p50", "p99")},
            "eval_settings": summary["settings"]}


# ---- LeRobot's policies ----------------------------------------------------------------------------


def smolvlm_for_smolvla(cfg: VsLeRobotConfig) -> Path:
    """A tiny random SmolVLM (Idefics3) with our tiny backbone's sizes, for SmolVLA's `vlm_model_name`."""
    from vla.backbones.tiny import build_tiny_vlm
    from vla.sim.metaworld_env import get_task

    tiny = cfg.tiny_backbone
    name = f"smolvlm-h{tiny.hidden_size}-px{cfg.demos.image_size}"
    return build_tiny_vlm("smolvlm", Path(tiny.root) / name, [get_task(t).instruction for t in cfg.demos.tasks],
                          image_size=cfg.demos.image_size, patch_size=tiny.patch_size, hidden_size=tiny.hidden_size,
                          vision_layers=tiny.vision_layers, text_layers=tiny.text_layers, heads=tiny.heads)


def resolved_spec(cfg: VsLeRobotConfig, spec: LeRobotPolicySpec) -> LeRobotPolicySpec:
    """The spec with what follows from our data filled in (unless set): SmolVLA's VLM folder and image size."""
    if spec.type != "smolvla":
        return spec
    size = cfg.demos.image_size
    filled = {"vlm_model_name": str(smolvlm_for_smolvla(cfg).resolve()), "resize_imgs_with_padding": [size, size]}
    return dataclasses.replace(spec, options=filled | spec.options)


def lerobot_eval_config(cfg: VsLeRobotConfig, out: Path) -> EvalConfig:
    """Our evaluation settings, with one action per call (LeRobot's select_action executes its own chunks) and
    LeRobot's own sampling settings."""
    return dataclasses.replace(cfg.eval, schedule=ScheduleConfig(mode="receding", execute_steps=1),
                               num_inference_steps=0, bac=False, output_dir=str(out / "eval"))


def lerobot_run(cfg: VsLeRobotConfig, name: str, seed: int, dataset_dir: Path) -> dict:
    """One (LeRobot policy, seed): LeRobot's training in a subprocess, then our rollout (both cached)."""
    from vla.eval.lerobot_policy import LeRobotPolicy, evaluate
    from vla.provenance import blocking_reasons

    out = Path(cfg.output_dir) / f"{name}_s{seed}"
    run = LeRobotRun(spec=resolved_spec(cfg, cfg.lerobot[name]), dataset_root=str(dataset_dir.resolve()),
                     repo_id=cfg.demos.repo_id, steps=cfg.train.steps, batch_size=cfg.train.batch_size, seed=seed,
                     output_dir=str(out / "lerobot"), device=cfg.lerobot_train.device,
                     num_workers=cfg.lerobot_train.num_workers, log_freq=cfg.train.log_every,
                     save_freq=cfg.train.save_every, image_transforms=cfg.lerobot_train.image_transforms)
    eval_cfg = lerobot_eval_config(cfg, out)
    check_run_origin(out, {"run": dataclasses.asdict(run), "eval": eval_cfg}, cfg.reuse_stale)
    trained = train_lerobot(run)
    path = out / "eval" / "summary.json"
    policy = LeRobotPolicy.load(trained["checkpoint"], device=cfg.lerobot_train.device)
    summary = json.loads(path.read_text()) if path.exists() else None
    stale = summary is not None and blocking_reasons(summary.get("provenance"), eval_cfg, cfg.reuse_stale,
                                                     f"the evaluation in {path.parent}")
    if summary is None or stale:
        summary = evaluate(policy, eval_cfg)
    settings = summary["settings"]
    return {"name": name, "kind": "lerobot", "type": run.spec.type, "seed": seed, **outcome(summary),
            "parameters": policy.parameter_counts(), "s_per_step": trained["s_per_step"],
            "samples_per_s": trained["samples_per_s"], "samples_per_s_update": trained["samples_per_s_update"],
            "peak_rss_mb": trained["peak_rss_mb"],
            "steps": run.steps, "batch_size": run.batch_size,
            "execution": {"chunk_size": settings["chunk_size"], "n_action_steps": settings["n_action_steps"],
                          "num_inference_steps": settings["num_inference_steps"],
                          "temporal_ensemble": settings["temporal_ensemble"]},
            "pretrained": pretrained_note(run.spec), "options": run.spec.options,
            "provenance": json.loads((out / "provenance.json").read_text())}


def pretrained_note(spec: LeRobotPolicySpec) -> str:
    return {"act": "none: ResNet-18 from scratch (LeRobot's default ImageNet weights turned off; its frozen batch "
                   "norm then normalises nothing)",
            "diffusion": "none: ResNet-18 from scratch (LeRobot's default)",
            "smolvla": "none: tiny random SmolVLM of our backbone's size (SmolVLM2-500M cannot be fetched here)",
            }.get(spec.type, "none")


# ---- entry point -----------------------------------------------------------------------------------


def run_comparison(cfg: VsLeRobotConfig) -> Path:
    """Every (policy, seed) run (cached), then results JSON + table + plot; returns the table's path."""
    from vla.eval.vs_lerobot_report import write_report
    from vla.sim.demos import generate_demos

    dataset_dir = generate_demos(cfg.demos)
    rows = []
    for seed in cfg.seeds:  # seed-major: an interrupted comparison has every policy at its first seeds
        rows += [our_run(cfg, head, seed) for head in cfg.heads]
        rows += [lerobot_run(cfg, name, seed, dataset_dir) for name in cfg.lerobot]
    results = json.dumps({"provenance": provenance(cfg), "rows": rows}, indent=1, default=str)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "results.json").write_text(results)
    Path(cfg.report_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.report_dir) / "vs_lerobot.json").write_text(results)
    return write_report(cfg, rows)


def main(args: list[str] | None = None) -> None:
    """Parse flags on top of configs/bench/vs_lerobot.yaml (or another --config_path) and run."""
    print(f"report: {run_comparison(parse_with_recipe(VsLeRobotConfig, DEFAULT_RECIPE, args))}")

if __name__ == "__main__":
    main()
