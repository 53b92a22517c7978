"""The few-shot benchmark's report: one markdown page and one PNG (held-out tasks by arm; a new robot by arm, when
the benchmark has `new_robots`; the pretrained policy on its training tasks per difficulty group)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vla.eval.heads_report import mean_std, table_cells  # noqa: E402
from vla.eval.report import GROUP_COLOURS, success_bars  # noqa: E402
from vla.eval.suite import pooled  # noqa: E402
from vla.sim.envs import is_robosuite  # noqa: E402
from vla.sim.tasks import get_task  # noqa: E402

ZERO_SHOT = "zero-shot"
ARM_COLOURS = ["#4878a8", "#d08a3c", "#6a9f58", "#b05a7a", "#7a68a6"]


def arm_rows(cfg, results: dict) -> list[dict]:
    """Per arm (and the zero-shot policy): success on each held-out task (mean ± sample std over seeds), the mean
    over tasks (mean ± std over seeds of each seed's mean), episodes pooled with their Wilson interval, and costs."""
    rows = []
    if results.get("zero_shot"):
        tasks = results["zero_shot"]["tasks"]
        rows.append({"arm": ZERO_SHOT, "init": "pretrained, not trained on the task",
                     "tasks": {t: (tasks[t]["success_rate"], 0.0) for t in cfg.tasks},
                     "success": (float(np.mean([tasks[t]["success_rate"] for t in cfg.tasks])), 0.0), "per_seed": [],
                     "pooled": pooled([tasks[t] for t in cfg.tasks]), "trained": 0, "s_per_step": None,
                     "offline": None})
    for arm, spec in cfg.arms.items():
        runs = {(t, s): results["runs"][f"{arm}/{t}/s{s}"] for t in cfg.tasks for s in cfg.seeds}
        rate = {key: run["tasks"][key[0]]["success_rate"] for key, run in runs.items()}
        per_seed = [float(np.mean([rate[(t, s)] for t in cfg.tasks])) for s in cfg.seeds]
        rows.append({"arm": arm, "init": describe_arm(spec),
                     "tasks": {t: mean_std([rate[(t, s)] for s in cfg.seeds]) for t in cfg.tasks},
                     "success": mean_std(per_seed), "per_seed": per_seed,
                     "pooled": pooled([run["tasks"][t] for (t, _), run in runs.items()]),
                     "trained": int(np.mean([run["parameters"]["trained"] for run in runs.values()])),
                     "total": int(np.mean([run["parameters"]["total"] for run in runs.values()])),
                     "s_per_step": float(np.mean([run["train_s_per_step"] for run in runs.values()])),
                     "offline": seed_mean_offline_error(runs, cfg.seeds)})
    return rows


def seed_mean_offline_error(runs: dict[tuple[str, int], dict], seeds: list[int]) -> tuple[float, float] | None:
    """The offline action error on unseen demos of runs {(task, seed): summary}: mean ± std over seeds of each seed's
    mean over tasks; None unless every run has one."""
    errors = {key: run.get("offline", {}).get("rmse") for key, run in runs.items()}
    if not errors or None in errors.values():
        return None
    return mean_std([float(np.mean([e for (_, s), e in errors.items() if s == seed])) for seed in seeds])


def describe_arm(spec) -> str:
    what = "from the backbone's initial weights" if spec.init == "scratch" else "init_from the pretrained policy"
    if spec.lora.targets:
        what += (f", LoRA r={spec.lora.r} alpha={spec.lora.alpha:g} on {', '.join(spec.lora.targets)}"
                 + (f" (+ {', '.join(spec.lora.train_also)} in full)" if spec.lora.train_also else ""))
    if spec.freeze:
        what += f", frozen {', '.join(spec.freeze)}"
    return what + (f", lr {spec.lr:g}" if spec.lr else "")


def ci(result: dict) -> str:
    low, high = result["ci95"]
    return f"{100 * result['success_rate']:.0f}% ({result['successes']}/{result['episodes']}; " \
           f"{100 * low:.0f}-{100 * high:.0f})"


def origin(results: dict, command: str = "benchmarks/fewshot.py", results_file: str = "fewshot_results.json") -> str:
    """The header's provenance line: the commits that made the stages, and the one that wrote the page (from the
    benchmark's provenance, taken before its results files were written)."""
    zero_shot = [results["zero_shot"]] if results.get("zero_shot") else []
    stages = [results["pretrain"], *results["runs"].values(), *zero_shot]
    commits = sorted({str((s.get("provenance") or {}).get("commit"))[:10] for s in stages})
    now = results["provenance"]
    measured = " (and the offline errors measured)" if any("offline" in run for run in results["runs"].values()) else ""
    return f"Stages made by `{command}` at commit {', '.join(commits)}; this page written{measured} at commit " \
           f"{str(now['commit'])[:10]}{' with uncommitted changes' * bool(now['dirty'])}; every stage's figures, " \
           f"with the full config, command, library versions and machine, are in `{results_file}`."


def with_args(recipe: str, args: list[str]) -> str:
    return f"`{recipe}`" + (f" with `{' '.join(args)}`" if args else "")


def setup(cfg, pipeline, recipe) -> str:
    """The paragraph saying what was trained on what, and how it was evaluated."""
    demos, tiny, train, ev = pipeline.demos, pipeline.tiny_backbone, recipe.train, cfg.eval
    return (f"Pretraining tasks ({len(demos.tasks)}): {', '.join(demos.tasks)}; {demos.episodes_per_task} scripted "
            f"demos each, robot-only state, {demos.camera} camera at {demos.image_size} px; a tiny {tiny.family} "
            f"(hidden {tiny.hidden_size}, random init) + {pipeline.model.head.type} head, {pipeline.train.steps} steps "
            f"of batch {pipeline.train.batch_size} ({with_args(cfg.pretrain_recipe, cfg.pretrain_args)}). Held out: "
            f"{', '.join(cfg.tasks)}{new_robots(cfg)}, {cfg.demos_per_task} demos each (the same for every arm and "
            f"seed); every arm "
            f"trains {train.steps} steps of batch {train.batch_size} per task "
            f"({with_args(cfg.finetune_recipe, cfg.finetune_args)}, lr {train.optim.lr:g} unless the arm sets its "
            f"own), seeds {cfg.seeds}. Closed loop on simulator seeds never used for demos: {ev.episodes_per_task} "
            f"episodes per task and seed, at most {ev.max_steps} actions, {ev.num_inference_steps} denoising steps, "
            f"{ev.schedule.execute_steps} actions per chunk.")


def new_robots(cfg) -> str:
    return f"; a new robot: {', '.join(cfg.new_robots)}" if getattr(cfg, "new_robots", None) else ""


def task_label(task: str) -> str:
    """A table column's name: a Meta-World task with its difficulty group, another simulator's task as it is."""
    return task if is_robosuite(task) else f"{task} ({get_task(task).difficulty.replace('_', ' ')})"


def robot_view(cfg) -> SimpleNamespace:
    """The benchmark's arms, seeds and demos over its new robots' tasks, for `arm_rows`, `arm_table`, `arm_bars`."""
    return SimpleNamespace(tasks=list(cfg.new_robots), arms=cfg.arms, seeds=cfg.seeds,
                           demos_per_task=cfg.demos_per_task, validation_demos=cfg.validation_demos)


def arm_table(cfg, rows: list[dict], describe_arms: bool = True) -> list[str]:
    """Markdown lines: success per arm and held-out task (`arm_rows`), with costs (and the offline action error where
    it was measured), then what each arm is."""
    offline = any(r["offline"] is not None for r in rows)
    offline_note = (f"; \"offline RMSE\" is the distance of one sampled chunk to the expert's, in the robot's action "
                    f"units, on {cfg.validation_demos} more demos per task at placements no run trained on (mean over "
                    f"frames and tasks, ± std over seeds): how well an arm's fit generalises, without the simulator's "
                    f"compounding errors." if offline else ".")
    lines = [
        "Success per task is mean ± sample std over seeds; \"mean\" is the mean over tasks (± std over seeds); "
        "\"pooled\" counts every episode of every task and seed, with its 95% Wilson interval" + offline_note,
        "",
        "| arm | mean | " + " | ".join(task_label(t) for t in cfg.tasks) + " | pooled (95% CI) | per seed |"
        + (" offline RMSE |" if offline else "") + " trained params | train s/step |",
        "|---|---|" + "---|" * len(cfg.tasks) + "---|---|" + ("---|" if offline else "") + "---|---|",
    ]
    for r, (success, per_task) in zip(rows, table_cells(rows, cfg.tasks), strict=True):
        seeds = ", ".join(f"{100 * s:.0f}" for s in r["per_seed"]) or "-"
        trained = f"{r['trained'] / 1e6:.2f} M of {r['total'] / 1e6:.2f} M" if r["arm"] != ZERO_SHOT else "-"
        speed = f"{r['s_per_step']:.3f}" if r["s_per_step"] is not None else "-"
        error = (f" {r['offline'][0]:.3f} ± {r['offline'][1]:.3f} |" if r["offline"] is not None else " - |") \
            if offline else ""
        lines.append(f"| `{r['arm']}` | {success} | {per_task} | {ci(r['pooled'])} | {seeds} |{error} "
                     f"{trained} | {speed} |")
    return lines + (["", "Arms:"] + [f"- `{r['arm']}`: {r['init']}" for r in rows] if describe_arms else [])


def gain(rows: list[dict], arm: str, baseline: str) -> str:
    """`arm`'s mean success minus `baseline`'s, in points, with the per-seed differences."""
    by_arm = {r["arm"]: r for r in rows}
    if arm not in by_arm or baseline not in by_arm:
        return ""
    mine, theirs = by_arm[arm], by_arm[baseline]
    per_seed = [100 * (a - b) for a, b in zip(mine["per_seed"], theirs["per_seed"], strict=True)]
    return (f"`{arm}` - `{baseline}`: {100 * (mine['success'][0] - theirs['success'][0]):+.1f} points on the mean "
            f"over tasks (per seed: {', '.join(f'{d:+.0f}' for d in per_seed)}).")


def run_key_parts(key: str) -> tuple[str, str]:
    """(arm, task) of a run's key "arm/task/sS" (a robosuite task has slashes of its own)."""
    arm, rest = key.split("/", 1)
    return arm, rest.rsplit("/", 1)[0]


def markdown(cfg, pipeline, recipe, results: dict, rows: list[dict], robot_rows: list[dict]) -> str:
    pre = results["pretrain"]
    lines = [
        "# Few-shot fine-tuning on Meta-World ML10: " + " vs ".join(cfg.arms),
        "",
        setup(cfg, pipeline, recipe),
        "",
        origin(results),
        "",
        "## Held-out tasks",
        "",
        *arm_table(cfg, rows),
        "",
        *gains(cfg, rows),
        *new_robot_section(cfg, robot_rows),
        "## The pretrained policy on its training tasks",
        "",
        f"{pipeline.eval.episodes_per_task} episodes per task; groups are Meta-World's difficulty split (Seo et al. "
        f"2022, `vla/sim/tasks.py`), episodes pooled, 95% Wilson intervals. Pretraining: "
        f"{pre.get('timings_s', {}).get('train_s', 0) / 3600:.2f} h of training at "
        f"{pre['train_s_per_step']:.3f} s/step.",
        "",
        "| group | tasks | success (95% CI) |",
        "|---|---|---|",
    ]
    for group, result in pre["groups"].items():
        lines.append(f"| {group.replace('_', ' ')} | {', '.join(result['tasks'])} | {ci(result)} |")
    lines.append(f"| all | {len(pre['tasks'])} | {ci(pre['overall'])} |")
    lines += ["", "| task | group | success (95% CI) | mean episode length |", "|---|---|---|---|"]
    for task, result in pre["tasks"].items():
        lines.append(f"| {task} | {get_task(task).difficulty.replace('_', ' ')} | {ci(result)} | "
                     f"{result['mean_episode_length']:.0f} |")
    panels = "held-out success by arm" + ("; a new robot by arm" if robot_rows else "") + \
        ("; offline action error by arm" if any(r["offline"] is not None for r in rows + robot_rows) else "")
    lines += ["", f"![{panels}; pretrained policy per group](fewshot.png)", ""]
    return "\n".join(lines)


def gains(cfg, rows: list[dict]) -> list[str]:
    """Markdown lines: the gain of each pretrained arm over the scratch arm (none without a scratch arm)."""
    scratch = [arm for arm, spec in cfg.arms.items() if spec.init == "scratch"]
    if not scratch:
        return []
    lines = [gain(rows, arm, scratch[0]) for arm, spec in cfg.arms.items() if spec.init != "scratch"]
    return ["Gain of pretraining:", "", *[f"- {line}" for line in lines if line], ""]


def new_robot_section(cfg, robot_rows: list[dict]) -> list[str]:
    """Markdown lines: the arms on the robots the pretraining never saw (`arm_rows` over `robot_view`; none without
    `new_robots`)."""
    if not robot_rows:
        return []
    return ["## A new robot", "",
            f"Robots the pretraining never saw, {cfg.demos_per_task} demos each, the same arms, recipe and seeds: "
            f"the model is widened to the robot's action and state (`init_from` re-initialises the layers the widths "
            f"shape; the scratch arm builds them new) and reads the robot's registry entry, its main camera in the "
            f"image slot `primary`. No zero-shot row: the pretrained policy has no output for the new action space.",
            "", *arm_table(robot_view(cfg), robot_rows, describe_arms=False), "", *gains(cfg, robot_rows)]


def arm_bars(ax, cfg, rows: list[dict], title: str = "held-out tasks") -> None:
    """Grouped bars: success per task (and the mean) for each arm, mean ± std over seeds; an arm has one colour in
    every panel."""
    names = [*cfg.tasks, *(["mean"] if len(cfg.tasks) > 1 else [])]
    width = 0.8 / len(rows)
    colours = arm_colours(cfg)
    for i, row in enumerate(rows):
        colour = colours[row["arm"]]
        values = [row["tasks"][t] for t in cfg.tasks] + ([row["success"]] if len(cfg.tasks) > 1 else [])
        x = np.arange(len(names)) + (i - (len(rows) - 1) / 2) * width
        ax.bar(x, [100 * m for m, _ in values], width, yerr=[100 * s for _, s in values], capsize=3, color=colour,
               label=row["arm"])
    ax.set_xticks(np.arange(len(names)), names, rotation=20)
    ax.set_ylim(0, 105)
    ax.set_ylabel("closed-loop success (%)")
    ax.set_title(f"{title}, {cfg.demos_per_task} demos each: mean ± std over seeds {cfg.seeds}", fontsize=10)
    ax.legend(fontsize=8)


def arm_colours(cfg) -> dict[str, str]:
    """One colour per arm (and the zero-shot policy), the same in every panel."""
    return dict(zip([ZERO_SHOT, *cfg.arms], ARM_COLOURS * (len(cfg.arms) + 1), strict=False))


def offline_bars(ax, cfg, groups: dict[str, list[dict]]) -> None:
    """Grouped bars: each arm's offline action error on unseen placements (mean ± std over seeds) per group of
    rows (held-out tasks, a new robot)."""
    colours = arm_colours(cfg)
    for g, rows in enumerate(groups.values()):
        measured = [r for r in rows if r["offline"] is not None]
        if not measured:
            continue
        width = 0.8 / len(measured)
        for i, row in enumerate(measured):
            ax.bar(g + (i - (len(measured) - 1) / 2) * width, row["offline"][0], width, yerr=row["offline"][1],
                   capsize=3, color=colours[row["arm"]], label=row["arm"] if g == 0 else None)
    ax.set_xticks(np.arange(len(groups)), list(groups))
    ax.set_ylabel("RMSE to the expert's chunk (robot units)")
    ax.set_title("offline action error on unseen placements (lower is better)", fontsize=10)
    ax.legend(fontsize=8)


def plot(cfg, rows: list[dict], robot_rows: list[dict], pretrained: dict, path: Path) -> None:
    """Held-out tasks by arm | a new robot by arm (with new_robots) | offline action error by arm (when measured) |
    the pretrained policy per group."""
    offline = any(r["offline"] is not None for r in rows + robot_rows)
    widths = [2, *([1] if robot_rows else []), *([1] if offline else []), 1]
    fig, axes = plt.subplots(1, len(widths), figsize=(14 * sum(widths) / 3, 4.8), gridspec_kw={"width_ratios": widths})
    arm_bars(axes[0], cfg, rows)
    if robot_rows:
        arm_bars(axes[1], robot_view(cfg), robot_rows, title="a new robot")
    if offline:
        offline_bars(axes[-2], cfg, {"held-out tasks": rows, **({"a new robot": robot_rows} if robot_rows else {})})
    right = axes[-1]
    groups = {g.replace("_", " "): r for g, r in pretrained["groups"].items()} | {"all": pretrained["overall"]}
    success_bars(right, groups, [GROUP_COLOURS.get(g.replace(" ", "_"), "#777777") for g in groups])
    right.set_title("pretrained policy on its training tasks (pooled, 95% CI)", fontsize=10)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg, pipeline, recipe, results: dict) -> Path:
    out = Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = arm_rows(cfg, results)
    robot_rows = arm_rows(robot_view(cfg), {"runs": results["runs"]}) if cfg.new_robots else []
    (out / "fewshot.md").write_text(markdown(cfg, pipeline, recipe, results, rows, robot_rows))
    plot(cfg, rows, robot_rows, results["pretrain"], out / "fewshot.png")
    return out / "fewshot.md"
