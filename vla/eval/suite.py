"""`vla-eval suite`: one command evaluates a checkpoint on a fixed Meta-World task suite.

    vla-eval suite --checkpoint outputs/train/quickstart/checkpoints/last                # metaworld8, 20 episodes
    vla-eval suite --checkpoint CKPT --suite mt50                                       # all 50 tasks, 10 episodes
    vla-eval suite --checkpoint CKPT --tasks '[push,reach]' --episodes_per_task 5

Episodes run on seeds EVAL_SEED_START (100000), +1, ... of every task: demos never use them (vla.sim.demos).
Writes to --output_dir (default <run>/eval/suite-<name>): suite.json (per task, per difficulty group and overall:
success with its 95% Wilson interval, mean episode length, whether the checkpoint's training demos cover the
task; chunk latency; the published MT50 figures for reference; provenance), report.md, suite.png and
videos/<task>.mp4 (the first episode of each task). The rollouts are vla.eval.rollout's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import numpy as np

from vla.config import EvalConfig
from vla.eval.stats import wilson_interval
from vla.sim.demos import EVAL_SEED_START
from vla.sim.tasks import DIFFICULTIES, TASKS, get_task


@dataclass(frozen=True)
class Suite:
    """A named task list with its default episodes per task and episode length (actions)."""

    tasks: tuple[str, ...]
    episodes_per_task: int
    max_steps: int
    description: str


MAX_EPISODE_STEPS = 500  # Meta-World refuses to step an episode further (its max_path_length)

SUITES: dict[str, Suite] = {
    # Eight tasks over the four difficulty groups of vla.sim.tasks (Seo et al. 2022): push among them, and the
    # tasks this repo has demos recipes for (reach, button-press-topdown, push) kept, so a quickstart checkpoint
    # has tasks it was trained on. Every one has Meta-World's scripted expert.
    "metaworld8": Suite(
        tasks=("reach", "button-press-topdown", "drawer-open",  # easy
               "push-wall", "sweep-into",  # medium
               "push", "pick-place",  # hard
               "shelf-place"),  # very hard
        episodes_per_task=20, max_steps=300,
        description="8 Meta-World tasks: 3 easy, 2 medium, 2 hard, 1 very hard"),
    # MT50: every task, grouped by difficulty. 400 actions is LeRobot's Meta-World episode length
    # (episode_length of its MetaworldEnv config, lerobot 0.4.4).
    "mt50": Suite(tasks=tuple(TASKS), episodes_per_task=10, max_steps=400,
                  description="all 50 Meta-World v3 tasks (MT50) in 4 difficulty groups"),
}


@dataclass
class SuiteConfig(EvalConfig):
    """EvalConfig's settings (sampling, schedule, seeds) plus the suite; 0 / [] take the suite's defaults."""

    suite: str = "metaworld8"
    tasks: list[str] = field(default_factory=list)  # override the suite's task list
    episodes_per_task: int = 0
    max_steps: int = 0
    videos_per_task: int = 1
    output_dir: str = ""  # default: <checkpoint>/../../eval/suite-<suite>


def resolve(cfg: SuiteConfig) -> SuiteConfig:
    """cfg with the suite's defaults filled in; errors name a bad suite, task, count or seed."""
    if not cfg.checkpoint:
        raise SystemExit("vla-eval suite needs --checkpoint PATH (a checkpoint folder written by vla-train)")
    if cfg.suite not in SUITES:
        raise ValueError(f"unknown suite {cfg.suite!r}; known suites: {list(SUITES)}")
    suite = SUITES[cfg.suite]
    tasks = list(cfg.tasks or suite.tasks)
    for task in tasks:
        get_task(task)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"--tasks names a task twice: {tasks}")
    if cfg.episodes_per_task < 0 or not 0 <= cfg.max_steps <= MAX_EPISODE_STEPS:
        raise ValueError(f"episodes_per_task must be positive and max_steps in 1..{MAX_EPISODE_STEPS} (Meta-World "
                         f"stops there; 0 = the suite's default); got {cfg.episodes_per_task} and {cfg.max_steps}")
    if cfg.seed_start < EVAL_SEED_START:
        raise ValueError(f"seed_start {cfg.seed_start} is below {EVAL_SEED_START}: demos use those seeds, so the "
                         f"suite would score placements a policy may have been trained on")
    output_dir = cfg.output_dir or str(Path(cfg.checkpoint).parent.parent / "eval" / f"suite-{cfg.suite}")
    return dataclasses.replace(cfg, tasks=tasks, episodes_per_task=cfg.episodes_per_task or suite.episodes_per_task,
                               max_steps=cfg.max_steps or suite.max_steps, output_dir=output_dir)


def group_results(tasks: dict[str, dict]) -> tuple[dict[str, dict], dict]:
    """Per difficulty group present, and overall: episodes pooled (success rate and its Wilson interval) plus
    the mean of the tasks' rates; overall also has the mean of the group rates (Meta-World papers report per
    group, and an average may be over groups rather than tasks)."""
    groups = {}
    for difficulty in DIFFICULTIES:
        mine = [t for t in tasks if get_task(t).difficulty == difficulty]
        if mine:
            groups[difficulty] = pooled([tasks[t] for t in mine]) | {"tasks": mine}
    overall = pooled(list(tasks.values())) | {
        "mean_of_groups": float(np.mean([g["mean_task_success_rate"] for g in groups.values()]))}
    return groups, overall


def pooled(results: list[dict]) -> dict:
    successes, episodes = sum(r["successes"] for r in results), sum(r["episodes"] for r in results)
    return {"successes": successes, "episodes": episodes, "success_rate": successes / episodes,
            "ci95": list(wilson_interval(successes, episodes)),
            "mean_task_success_rate": float(np.mean([r["success_rate"] for r in results]))}


def training_instructions(checkpoint: str | Path) -> tuple[set[str] | None, str]:
    """The instructions of the demos a vla-train checkpoint learnt from: its run folder's train_config.yaml names
    the LeRobot dataset (data.root), whose meta/tasks.parquet lists them. (None, why) when that trail breaks."""
    import pandas as pd
    import yaml

    run = Path(checkpoint).parent.parent
    config = run / "train_config.yaml"
    if not config.exists():
        return None, f"{config} does not exist (not a vla-train run folder)"
    root = (yaml.safe_load(config.read_text()).get("data") or {}).get("root")
    if not isinstance(root, str) or not root:
        return None, f"{config} names no single dataset (data.root)"
    # a relative root is relative to where vla-train ran: try here, then each folder above the run
    candidates = [Path(root)] + [parent / root for parent in run.resolve().parents]
    tasks_file = next((c / "meta" / "tasks.parquet" for c in candidates if (c / "meta" / "tasks.parquet").exists()),
                      None)
    if tasks_file is None:
        return None, f"the training dataset {root} (from {config}) is not found here"
    return set(pd.read_parquet(tasks_file).index), f"instructions of {tasks_file}"


def run_suite(cfg: SuiteConfig) -> dict:
    """Evaluate cfg.checkpoint on the suite; write suite.json, report.md, suite.png and videos; return the results."""
    from vla.checkpoint import load_policy
    from vla.eval.report import plot_groups
    from vla.eval.rollout import run_tasks, summarize, write_video
    from vla.eval.suite_report import PUBLISHED_MT50, write_report
    from vla.provenance import provenance

    cfg = resolve(cfg)
    policy = load_policy(cfg.checkpoint)
    out = Path(cfg.output_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    sampling = policy.sampling_settings(cfg.num_inference_steps, cfg.bac)  # fails now if bac has no schedule
    image_size, camera = policy.config.image_size, policy.config.cameras[0]
    episodes, latencies = run_tasks(policy, cfg, image_size, camera)
    results = summarize(episodes, latencies, cfg, sampling)
    trained_on, demos_source = training_instructions(cfg.checkpoint)
    for task, result in results["tasks"].items():
        spec = get_task(task)
        recorded = [e for e in episodes if e.task == task and e.frames]
        video = Path("videos") / f"{task}.mp4"
        write_video(recorded, out / video)
        result.update(difficulty=spec.difficulty, instruction=spec.instruction,
                      in_training_demos=None if trained_on is None else spec.instruction in trained_on,
                      video=str(video) if recorded else None)
    results["groups"], results["overall"] = group_results(results["tasks"])
    results |= {"suite": cfg.suite, "tasks_from_flag": tuple(cfg.tasks) != SUITES[cfg.suite].tasks,
                "checkpoint": str(cfg.checkpoint), "camera": camera, "image_size": image_size,
                "training_demos_source": demos_source, "published_mt50": PUBLISHED_MT50,
                "provenance": provenance(cfg)}
    (out / "suite.json").write_text(json.dumps(results, indent=2))
    plot_groups(results, out / "suite.png", f"{cfg.suite}: closed-loop success, 95% Wilson intervals")
    write_report(results, out / "report.md")
    return results


def main(args: list[str] | None = None) -> None:
    cfg = resolve(draccus.parse(SuiteConfig, args=list(sys.argv[1:] if args is None else args)))
    results = run_suite(cfg)
    overall = results["overall"]
    low, high = overall["ci95"]
    print(f"{results['suite']}: {100 * overall['success_rate']:.1f}% of {overall['episodes']} episodes "
          f"(95% CI {100 * low:.1f}-{100 * high:.1f}%); report: {Path(cfg.output_dir) / 'report.md'}")


if __name__ == "__main__":
    main()
