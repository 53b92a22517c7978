"""Few-shot benchmark (issue 11 item 5): pretrain on Meta-World ML10's training tasks, then train on 10 demos of
each held-out task from scratch, by full fine-tuning and by LoRA, and compare closed-loop success.

    python benchmarks/fewshot.py                                           # the report; hours on a 2-core CPU
    python benchmarks/fewshot.py --config_path configs/bench/fewshot_smoke.yaml --output_dir /tmp/fewshot

Stages, each cached (a stage whose summary.json exists is reused; a stopped training resumes from its last
checkpoint; a stage made at another commit or with other settings is refused unless reuse_stale):
1. Pretraining: `run_pipeline` on the `pretrain_recipe` (configs/pretrain/ml10.yaml: ML10's training tasks, 50
   scripted demos each, robot-only state, camera images) with the held-out tasks' instructions in the tiny VLM's
   vocabulary, evaluated closed loop on every training task (reported per Meta-World difficulty group).
2. Zero-shot (`zero_shot`): the pretrained policy on every held-out task, no training.
3. For every held-out task, `demos_per_task` expert demos (one dataset, the same for every arm and seed); for every
   (arm, task, seed), training with the `finetune_recipe` (configs/finetune/10shot.yaml: equal steps and batch for
   every arm) and evaluation on that task. Arms: `scratch` (the same architecture from the backbone's initial
   weights, i.e. the pretraining's starting point, without robot pretraining), `full` (train.init_from the
   pretrained checkpoint), `lora` (init_from + adapters); each may set its own learning rate.
4. The same for every task of `new_robots`, robots the pretraining never saw (robosuite/Lift/Panda: 7-D
   end-effector steps with rotation + gripper where the pretraining had Meta-World's 4-D Sawyer steps): the model
   is widened to the robot's action and state (init_from re-initialises the layers the widths shape,
   `vla.training.finetune`) and reads the robot's registry entry, its main camera in the `primary` image slot.
Everything lives under output_dir; results.json there and <report_dir>/fewshot_results.json (every stage's summary
with its provenance), <report_dir>/fewshot.md and fewshot.png are the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import draccus
from safetensors import safe_open

from vla.config import DataConfig, EvalConfig, LoraConfig, ModelConfig, from_yaml, parse_with_recipe
from vla.eval.heads_benchmark import check_run_origin, median_s_per_step
from vla.eval.suite import group_results
from vla.pipeline import PipelineConfig
from vla.provenance import git_commit, provenance
from vla.sim.demos import EVAL_SEED_START, DemoConfig, generate_demos
from vla.sim.envs import sim_spec
from vla.sim.tasks import get_task
from vla.training import train as training  # through the module, so that tests can stop a training midway

DEFAULT_CONFIG = "configs/bench/fewshot.yaml"
INITS = ("pretrained", "scratch")
NEW_ROBOT_CAMERA = "primary"  # a new robot's image slot: its registry entry's main camera
VALIDATION_SEED_START = 50_000  # validation demos' simulator seeds: past the training demos', below evaluation's


@dataclass
class ArmConfig:
    """How one arm trains on a held-out task's demos; every arm has the fine-tuning recipe's steps and batch."""

    init: str = "pretrained"  # pretrained: train.init_from the pretrained checkpoint | scratch: the backbone's init
    lr: float = 0.0  # 0 = the fine-tuning recipe's train.optim.lr
    lora: LoraConfig = field(default_factory=LoraConfig)  # targets [] = every parameter trains
    freeze: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"an arm's init must be one of {INITS}; got {self.init!r}")
        if self.init == "scratch" and self.lora.targets:
            raise ValueError("a scratch arm has no pretrained weights for LoRA to adapt: give it init: pretrained")


@dataclass
class FewshotConfig:
    # a vla-quickstart (PipelineConfig) recipe and dotted overrides on it, e.g. ["--train.steps=100"]
    pretrain_recipe: str = "configs/pretrain/ml10.yaml"
    pretrain_args: list[str] = field(default_factory=list)
    # a vla-train recipe whose train and data sections every arm uses (the model is the pretrained one), + overrides
    finetune_recipe: str = "configs/finetune/10shot.yaml"
    finetune_args: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: ["drawer-open", "door-close", "shelf-place", "sweep-into",
                                                      "lever-pull"])  # held out: ML10's test tasks
    demos_per_task: int = 10
    arms: dict[str, ArmConfig] = field(default_factory=lambda: {
        "scratch": ArmConfig(init="scratch"), "full": ArmConfig(),
        "lora": ArmConfig(lora=LoraConfig(targets=["backbone.vision.*", "backbone.language.*"], train_also=["head"]))})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    zero_shot: bool = True  # also evaluate the pretrained policy on the held-out tasks without training
    # the held-out evaluation (its tasks are each run's task); seeds from eval.seed_start, never used by demos
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes_per_task=20, num_inference_steps=10,
                                                                videos_per_task=1))
    output_dir: str = "outputs/bench/fewshot"
    report_dir: str = "docs/results"
    # tasks of robots the pretraining never saw (simulator names, e.g. robosuite/Lift/Panda): every arm also trains on
    # demos_per_task demos of each, with the same recipe and seeds
    new_robots: list[str] = field(default_factory=list)
    # demos of each held-out task and new robot on placements no run trains on (simulator seeds from 50000): every
    # run's offline action error on them (`vla.eval.offline`, in robot units), beside closed-loop success; 0 = none
    validation_demos: int = 10
    # reuse (or resume) stages made at another commit or with other settings; the report names the commits
    reuse_stale: bool = False

    def __post_init__(self) -> None:
        check_held_out_settings(self)
        for task in self.new_robots:
            sim_spec(task)  # a ValueError naming the known tasks
        if set(self.new_robots) & set(self.tasks):
            raise ValueError(f"{sorted(set(self.new_robots) & set(self.tasks))} are both in tasks and in new_robots")
        if self.validation_demos < 0:
            raise ValueError(f"validation_demos must be >= 0 (0: no offline action error); got {self.validation_demos}")


def check_held_out_settings(cfg) -> None:
    """A ValueError unless every held-out task exists and seeds, arms and demos_per_task >= 1 are given (`cfg`: this
    benchmark's config or the latent benchmark's)."""
    for task in cfg.tasks:
        get_task(task)
    if cfg.eval.seed_start < EVAL_SEED_START:
        raise ValueError(f"eval.seed_start {cfg.eval.seed_start} is below {EVAL_SEED_START}, where demos may use the "
                         f"same simulator seeds: evaluate on seeds from {EVAL_SEED_START} on")
    if not cfg.seeds or not cfg.arms or cfg.demos_per_task < 1:
        raise ValueError(f"the benchmark needs seeds, arms and demos_per_task >= 1; got seeds={cfg.seeds}, "
                         f"arms={list(cfg.arms)}, demos_per_task={cfg.demos_per_task}")


@dataclass
class FinetuneRun:
    """What one (arm, task, seed) run is: its training and its evaluation (its provenance is this)."""

    train: training.TrainRunConfig
    eval: EvalConfig


# ---- configs ------------------------------------------------------------------------------------------------


def pretrain_config(cfg: FewshotConfig) -> PipelineConfig:
    """The pretraining recipe with its overrides, everything it makes under output_dir, and the held-out tasks'
    instructions in the tiny VLM's vocabulary."""
    recipe = draccus.parse(PipelineConfig, args=[f"--config_path={cfg.pretrain_recipe}", *cfg.pretrain_args])
    pretrained_robots = {sim_spec(t).embodiment for t in recipe.demos.tasks}
    seen = [t for t in cfg.new_robots if sim_spec(t).embodiment in pretrained_robots]
    if seen:
        raise ValueError(f"new_robots {seen} are robots the pretraining demos ({cfg.pretrain_recipe}) already have "
                         f"({sorted(pretrained_robots)}): a new robot is one the pretraining never saw")
    # a new robot's instruction is not added to the tiny VLM's vocabulary: its byte-level BPE encodes any text, and
    # one task per robot leaves the words nothing to choose between
    return held_out_pretraining(cfg, recipe, "the pretraining demos include")


def held_out_pretraining(cfg, recipe: PipelineConfig, subject: str) -> PipelineConfig:
    """`recipe` with everything it makes under cfg.output_dir and the held-out tasks' instructions in the tiny VLM's
    vocabulary; a ValueError ("<subject> held-out tasks ...") when its demos include a held-out task (`cfg`: this
    benchmark's config or the latent benchmark's)."""
    held_out = [t for t in recipe.demos.tasks if t in cfg.tasks]
    if held_out:
        raise ValueError(f"{subject} held-out tasks {held_out}: remove them from {cfg.pretrain_recipe} (demos.tasks) "
                         f"or from the benchmark's tasks")
    out = Path(cfg.output_dir)
    extra = list(dict.fromkeys(recipe.tiny_backbone.extra_tasks + cfg.tasks))
    return dataclasses.replace(
        recipe, demos=dataclasses.replace(recipe.demos, root=str(out / "datasets")),
        tiny_backbone=dataclasses.replace(recipe.tiny_backbone, root=str(out / "tiny_vlm"), extra_tasks=extra),
        train=dataclasses.replace(recipe.train, output_dir=str(out / "pretrain" / "train")),
        eval=dataclasses.replace(recipe.eval, output_dir=str(out / "pretrain" / "eval")),
        results_dir=str(out / "pretrain"))


def finetune_recipe(cfg: FewshotConfig) -> training.TrainRunConfig:
    return draccus.parse(training.TrainRunConfig, args=[f"--config_path={cfg.finetune_recipe}", *cfg.finetune_args])


def held_out_demos(cfg: FewshotConfig, pretrain: PipelineConfig, task: str) -> DemoConfig:
    """The task's demos, recorded as the pretraining's were (camera, size, expert settings)."""
    return dataclasses.replace(pretrain.demos, tasks=[task], episodes_per_task=cfg.demos_per_task,
                               repo_id=f"local/fewshot_{task}")


def validation_demos(cfg: FewshotConfig, pretrain: PipelineConfig, task: str) -> DemoConfig:
    """Demos of `task` on placements no run trains on, recorded as its training demos are (a ValueError when the
    training demos' seeds would reach the validation seeds)."""
    if pretrain.demos.seed_start + 10_000 > VALIDATION_SEED_START:
        raise ValueError(f"the demos' seed_start {pretrain.demos.seed_start} is within 10000 of the validation demos' "
                         f"seeds ({VALIDATION_SEED_START} on): keep seed_start below {VALIDATION_SEED_START - 10_000}")
    return dataclasses.replace(held_out_demos(cfg, pretrain, task), episodes_per_task=cfg.validation_demos,
                               seed_start=VALIDATION_SEED_START, repo_id=f"local/fewshot_{task}_validation")


def run_dir(cfg: FewshotConfig, arm: str, task: str, seed: int) -> Path:
    return Path(cfg.output_dir) / "finetune" / arm / task / f"s{seed}"


def finetune_run(cfg: FewshotConfig, recipe: training.TrainRunConfig, pretrained: Path, vlm: Path, dataset: Path,
                 demos: DemoConfig, arm: str, task: str, seed: int) -> FinetuneRun:
    """One arm's training on one task's demos: the pretrained model config (widened to a new robot's action and
    state, `for_new_robot`); init_from the pretrained checkpoint, or (scratch) the backbone's initial weights, i.e.
    the tiny VLM folder the pretraining started from."""
    spec, out = cfg.arms[arm], run_dir(cfg, arm, task, seed)
    model = from_yaml(ModelConfig, str(pretrained / "config.yaml"))
    model = dataclasses.replace(model, backbone=dataclasses.replace(model.backbone, pretrained=str(vlm)))
    data = dataclasses.replace(recipe.data, root=str(dataset), repo_id=demos.repo_id)
    if task in getattr(cfg, "new_robots", ()):
        model, data = for_new_robot(model, data, task)
    optim = dataclasses.replace(recipe.train.optim, lr=spec.lr or recipe.train.optim.lr)
    train = dataclasses.replace(recipe.train, seed=seed, output_dir=str(out / "train"), resume=True, optim=optim,
                                init_from=str(pretrained) if spec.init == "pretrained" else "", lora=spec.lora,
                                freeze=spec.freeze)
    evaluation = dataclasses.replace(cfg.eval, tasks=[task], output_dir=str(out / "eval"))
    return FinetuneRun(train=training.TrainRunConfig(model=model, data=data, train=train), eval=evaluation)


def for_new_robot(model: ModelConfig, data: DataConfig, task: str) -> tuple[ModelConfig, DataConfig]:
    """The model and data settings for a robot the pretraining never saw: action / state widths grown to the robot's
    (never shrunk: the pretrained robot keeps its layers), its registry entry (`SimSpec.embodiment`) mapping its
    main camera to the model's image slot `primary` (the pretrained policy must have one camera)."""
    if len(model.cameras) != 1:
        raise ValueError(f"a new robot's runs map its main camera to the pretrained policy's one image slot; the "
                         f"pretrained policy has {len(model.cameras)}: {model.cameras}")
    spec = sim_spec(task)
    model = dataclasses.replace(model, max_action_dim=max(model.max_action_dim, len(spec.action_names)),
                                max_state_dim=max(model.max_state_dim, len(spec.state_names)),
                                cameras=[NEW_ROBOT_CAMERA])
    return model, dataclasses.replace(data, embodiment_config=spec.embodiment)


# ---- stages -------------------------------------------------------------------------------------------------


def pretrain(cfg: FewshotConfig, pipeline: PipelineConfig) -> dict:
    """The pretraining stage's summary (reused when it exists), with its results per difficulty group."""
    from vla.pipeline import run_pipeline

    out = Path(pipeline.results_dir)
    check_run_origin(out, pipeline, cfg.reuse_stale)
    summary = (json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists()
               else run_pipeline(pipeline))
    summary["groups"], summary["overall"] = group_results(summary["tasks"])
    summary["train_s_per_step"] = median_s_per_step(Path(pipeline.train.output_dir) / "metrics.csv")
    return summary


def cached_summary(out: Path, config, reuse_stale: bool) -> dict | None:
    """A finished stage's summary.json, or None; its origin is checked (or recorded, for a new one)."""
    check_run_origin(out, config, reuse_stale)
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def evaluate_checkpoint(checkpoint: Path, eval_cfg: EvalConfig) -> dict:
    from vla.checkpoint import load_policy
    from vla.eval.rollout import evaluate

    policy = load_policy(checkpoint)
    return evaluate(policy, eval_cfg, policy.config.image_size, policy.config.cameras)


def zero_shot(cfg: FewshotConfig, checkpoint: Path) -> dict:
    """The pretrained policy on every held-out task, without training (reused when done)."""
    out = Path(cfg.output_dir) / "zero_shot"
    eval_cfg = dataclasses.replace(cfg.eval, tasks=list(cfg.tasks), output_dir=str(out / "eval"),
                                   checkpoint=str(checkpoint))
    summary = cached_summary(out, eval_cfg, cfg.reuse_stale)
    if summary is None:
        summary = evaluate_checkpoint(checkpoint, eval_cfg) | {"checkpoint": str(checkpoint)}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def train_and_eval(run: FinetuneRun, out: Path, reuse_stale: bool, validation: tuple[Path, str] | None = None) -> dict:
    """One (arm, task, seed): training (resumed if stopped) and evaluation; reused when its summary exists. With
    `validation` (dataset folder, repo_id), also the offline action error on those demos (`measure_offline_error`;
    added on every read, so that a summary written before it existed gets it too)."""
    summary = cached_summary(out, run, reuse_stale)
    if summary is None:
        summary = train_and_eval_now(run, out)
    if validation is not None:
        summary["offline"] = measure_offline_error(run, out, Path(summary["checkpoint"]), *validation)
    return summary


def measure_offline_error(run: FinetuneRun, out: Path, checkpoint: Path, root: Path, repo_id: str) -> dict:
    """The checkpoint's offline action error on the demos at `root` (`vla.eval.offline.action_error`, with the
    evaluation's denoising steps), read with the run's data settings. Cached in out/offline.json for this
    checkpoint, dataset, setting and version of the code under vla/ (so the figures on a page are always measured by
    the code that wrote it, even when the runs are reused from older commits)."""
    from vla.checkpoint import load_policy
    from vla.eval.offline import action_error

    steps = run.eval.num_inference_steps
    key = {"checkpoint": str(checkpoint), "validation": str(root), "num_steps": steps,
           "code": git_commit().get("code")}
    path = out / "offline.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    if recorded.items() >= key.items():
        return recorded
    policy = load_policy(checkpoint)
    demos = training.load_demos(policy.config, dataclasses.replace(run.train.data, root=str(root), repo_id=repo_id))
    result = key | action_error(policy, demos, **({"num_steps": steps} if steps else {})) | {"provenance": provenance(
        {"checkpoint": str(checkpoint), "validation": str(root), "num_steps": steps})}
    path.write_text(json.dumps(result, indent=1))
    return result


def train_and_eval_now(run: FinetuneRun, out: Path) -> dict:
    start = time.time()
    checkpoint = training.train(run.train)
    train_s, start = time.time() - start, time.time()
    summary = evaluate_checkpoint(checkpoint, run.eval)
    summary |= {"checkpoint": str(checkpoint), "timings_s": {"train_s": train_s, "eval_s": time.time() - start},
                "train_s_per_step": median_s_per_step(Path(run.train.train.output_dir) / "metrics.csv"),
                "parameters": {"total": json.loads((checkpoint / "meta.json").read_text())["parameters"]["total"],
                               "trained": trained_parameters(checkpoint)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def trained_parameters(checkpoint: Path) -> int:
    """How many parameters the run trained: those with AdamW moments in the checkpoint's training state."""
    with safe_open(str(checkpoint / "training_state" / "optimizer.safetensors"), "pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys() if k.endswith(".exp_avg"))


def _numel(shape: list[int]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


# ---- entry point --------------------------------------------------------------------------------------------


def run_benchmark(cfg: FewshotConfig) -> Path:
    """Every stage (cached), then results.json and the report; returns the report's path."""
    from vla.eval.fewshot_report import write_report
    from vla.pipeline import build_backbone

    pipeline = pretrain_config(cfg)
    recipe = finetune_recipe(cfg)
    pretrained = pretrain(cfg, pipeline)
    checkpoint = Path(pretrained["checkpoint"])
    vlm = build_backbone(pipeline)  # the pretraining's starting point (cached)
    results = {"pretrain": pretrained, "zero_shot": zero_shot(cfg, checkpoint) if cfg.zero_shot else None,
               "runs": {}}
    for task in [*cfg.tasks, *cfg.new_robots]:
        demos = held_out_demos(cfg, pipeline, task)
        dataset = generate_demos(demos)
        validation = None
        if cfg.validation_demos:
            held = validation_demos(cfg, pipeline, task)
            validation = (generate_demos(held), held.repo_id)
        results["runs"] |= run_arms(cfg, recipe, checkpoint, vlm, dataset, demos, task, validation)
    save_results(cfg, pipeline, recipe, results, "fewshot_results.json")
    return write_report(cfg, pipeline, recipe, results)


def run_arms(cfg, recipe: training.TrainRunConfig, pretrained: Path, vlm: Path, dataset: Path, demos: DemoConfig,
             task: str, validation: tuple[Path, str] | None = None) -> dict[str, dict]:
    """Every (arm, seed) on one held-out task's demos (each cached): {"arm/task/sS": summary}, with the offline
    action error on `validation` demos (`train_and_eval`). `cfg`: any benchmark config with arms, seeds, eval,
    output_dir and reuse_stale (FewshotConfig, the latent benchmark's)."""
    runs = {}
    for seed in cfg.seeds:  # seed-major within a task, so that a stopped benchmark has every arm's first seeds
        for arm in cfg.arms:
            run = finetune_run(cfg, recipe, pretrained, vlm, dataset, demos, arm, task, seed)
            runs[f"{arm}/{task}/s{seed}"] = train_and_eval(run, run_dir(cfg, arm, task, seed), cfg.reuse_stale,
                                                           validation)
    return runs


def save_results(cfg, pipeline: PipelineConfig, recipe: training.TrainRunConfig, results: dict, name: str) -> None:
    """results.json under output_dir and <report_dir>/<name>: every stage's summary with the provenance of the
    benchmark (also stored in `results`, for the report: taken before these files change the checkout), its
    pretraining and its fine-tuning recipe."""
    results["provenance"] = provenance(cfg)
    text = json.dumps({"provenance": results["provenance"], "pretrain_config": provenance(pipeline)["config"],
                       "finetune_recipe": provenance(recipe)["config"], **results}, indent=1)
    (Path(cfg.output_dir) / "results.json").write_text(text)
    Path(cfg.report_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.report_dir) / name).write_text(text)


def main(args: list[str] | None = None) -> None:
    """Parse flags on top of configs/bench/fewshot.yaml (or another --config_path) and run."""
    print(f"report: {run_benchmark(parse_with_recipe(FewshotConfig, DEFAULT_CONFIG, args))}")

if __name__ == "__main__":
    main()
