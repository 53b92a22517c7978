"""The suite's report page (report.md) and the published MT50 figures it shows for reference."""

from __future__ import annotations

from pathlib import Path

from vla.sim.demos import EVAL_SEED_START

# Published Meta-World MT50 success, as quoted in this repo's issue 14 from the papers; NOT measured here.
# They come from other setups (LeRobot's Meta-World environment and MT50 dataset, 480 px images, other episode
# lengths and placements), so they are a bar to aim at, not a like-for-like comparison.
BASELINE_ROWS = "baseline rows of the SmolVLA / Evo-1 Meta-World tables"
PUBLISHED_MT50 = [
    {"policy": "Evo-1 (0.77B)", "success": "80.6%", "source": "Lin et al. 2025, arXiv 2511.04555"},
    {"policy": "SmolVLA (0.45B / 2.25B)", "success": "57-68%", "source": "Shukor et al. 2025, arXiv 2506.01844"},
    {"policy": "pi0", "success": "48-51%", "source": BASELINE_ROWS},
    {"policy": "Diffusion Policy", "success": "10.5%", "source": BASELINE_ROWS},
]
PUBLISHED_CONDITIONS = "50 demos per task, 480 px corner camera"

GROUP_NAMES = {"easy": "easy", "medium": "medium", "hard": "hard", "very_hard": "very hard"}


def pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def ci(result: dict) -> str:
    low, high = result["ci95"]
    return f"{100 * low:.1f}-{100 * high:.1f}%"


def success(result: dict) -> str:
    return f"{pct(result['success_rate'])} ({result['successes']}/{result['episodes']})"


def write_report(results: dict, path: str | Path) -> Path:
    """report.md for the results run_suite writes to suite.json."""
    sections = [header(results), group_table(results), task_table(results), demos_section(results),
                published_section(), METHOD]
    Path(path).write_text("\n\n".join(sections) + "\n")
    return Path(path)


def header(results: dict) -> str:
    origin, settings = results["provenance"], results["settings"]
    commit = str(origin.get("commit"))[:10]
    dirty = " with uncommitted changes" if origin.get("dirty") else ""
    n, first = settings["episodes_per_task"], settings["seed_start"]
    latency = results["chunk_latency_ms"]
    tasks = " (its task list replaced by --tasks)" if results["tasks_from_flag"] else ""
    return (f"# `vla-eval suite`: {results['suite']}{tasks} on `{results['checkpoint']}`\n\n"
            f"Made by `{origin['command']}` at commit {commit}{dirty}. Every task ran {n} "
            f"episode{'s' if n != 1 else ''} on seeds {first}-{first + n - 1} (demos use seeds below "
            f"{EVAL_SEED_START}), at most {settings['max_steps']} actions each, seen through the {results['camera']} "
            f"camera at {results['image_size']} px (the checkpoint's); {settings['num_inference_steps']} sampling "
            f"steps, BAC {'on' if settings['bac'] else 'off'}, schedule {settings['schedule']['mode']}. Chunk "
            f"latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms."
            f"\n\n![success per difficulty group and per task](suite.png)")


def group_table(results: dict) -> str:
    rows = ["## Per difficulty group", "",
            "| group | tasks | success (episodes pooled) | 95% CI (Wilson) | mean of the tasks' rates |",
            "|---|---|---|---|---|"]
    for name, group in results["groups"].items():
        rows.append(f"| {GROUP_NAMES.get(name, name)} | {len(group['tasks'])} | {success(group)} | {ci(group)} | "
                    f"{pct(group['mean_task_success_rate'])} |")
    overall = results["overall"]
    rows.append(f"| **all** | {len(results['tasks'])} | {success(overall)} | {ci(overall)} | "
                f"{pct(overall['mean_task_success_rate'])} |")
    rows += ["", f"Mean of the group rates: {pct(overall['mean_of_groups'])}. Meta-World papers report their average "
             f"per difficulty group; check whether a published average is over groups or over tasks before comparing."]
    return "\n".join(rows)


def task_table(results: dict) -> str:
    rows = ["## Per task", "",
            "| task | group | success | 95% CI (Wilson) | mean episode length | demos in training data | video |",
            "|---|---|---|---|---|---|---|"]
    for name, task in results["tasks"].items():
        demos = {True: "yes", False: "**no**", None: "unknown"}[task["in_training_demos"]]
        video = f"[mp4]({task['video']})" if task["video"] else "-"
        rows.append(f"| {name} | {GROUP_NAMES.get(task['difficulty'], task['difficulty'])} | {success(task)} | "
                    f"{ci(task)} | {task['mean_episode_length']:.0f} | {demos} | {video} |")
    return "\n".join(rows)


def demos_section(results: dict) -> str:
    tasks = results["tasks"]
    missing = [t for t, r in tasks.items() if r["in_training_demos"] is False]
    head = "## Tasks without demos\n\n"
    if any(r["in_training_demos"] is None for r in tasks.values()):
        return head + (f"Unknown: the checkpoint's training demos could not be read "
                       f"({results['training_demos_source']}).")
    if not missing:
        return head + f"None: the checkpoint's training data ({results['training_demos_source']}) covers every task."
    return head + (f"The checkpoint's training data ({results['training_demos_source']}) has no demos for "
                   f"{len(missing)} of the {len(tasks)} tasks: {', '.join(missing)}. Their scores measure a policy "
                   f"on instructions and scenes it never saw, not what it learnt from demos. Every task has "
                   f"Meta-World's scripted expert, so `vla-demos --tasks '[...]'` can record them.")


def published_section() -> str:
    rows = ["## Published MT50 figures (reference only, not measured here)", "",
            "| policy | MT50 success | source | conditions |", "|---|---|---|---|"]
    rows += [f"| {r['policy']} | {r['success']} | {r['source']} | {PUBLISHED_CONDITIONS} |" for r in PUBLISHED_MT50]
    rows += ["", "As quoted in issue 14 from the papers. They were measured in other setups (LeRobot's Meta-World "
             "environment and MT50 demos, 480 px images, other episode lengths and placements) and are not "
             "reproduced by this repo: a bar to aim at, not a like-for-like comparison."]
    return "\n".join(rows)


METHOD = """## How the numbers are computed

- Success: Meta-World's own success flag; an episode ends at its first success or after the step limit.
- 95% CI: the Wilson score interval (without continuity correction) of successes out of episodes. For a group
  and overall, the group's episodes are pooled as one binomial sample; across tasks of different difficulty this
  is wider than an interval stratified by task, so it errs on the cautious side.
- Mean episode length: actions until success, or the step limit for a failed episode.
- Seeds: episode i of every task uses seed seed_start + i (100000 by default) for the placement and the policy's
  sampling noise, so two runs of the same checkpoint and settings give the same episodes."""
