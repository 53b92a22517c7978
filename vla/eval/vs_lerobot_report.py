"""The comparison with LeRobot's policies as one table (markdown) and one plot, from the rows of
`vla.eval.vs_lerobot` (one row per (policy, seed), each with its provenance)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from vla.eval.heads_report import mean_std
from vla.eval.stats import wilson_interval

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The reference the issue quotes, measured once on this machine with LeRobot's own scripts (not by this benchmark)
REFERENCE = ("Reference quoted in issue 14, measured once on this machine outside this benchmark (not re-run here): "
             "LeRobot ACT on 50 push-v3 demos, 96 px corner camera, batch 32, robot-only state, 20 minutes of "
             "training: 5/20; Diffusion Policy: 0/20 after 25 minutes.")


def pooled(rows: list[dict], task: str | None = None) -> dict:
    """Successes and episodes summed over the rows (seeds) for one task (or all), with the 95% Wilson interval."""
    parts = [r["tasks"][task] for r in rows] if task else [t for r in rows for t in r["tasks"].values()]
    successes, episodes = sum(p["successes"] for p in parts), sum(p["episodes"] for p in parts)
    return {"successes": successes, "episodes": episodes, "success_rate": successes / episodes,
            "ci95": list(wilson_interval(successes, episodes))}


def policy_rows(cfg, rows: list[dict]) -> list[dict]:
    """One row per policy (ours first, in config order): pooled success per task and overall, mean over seeds of
    the timings, the largest peak memory, parameters, and the commits its runs were made at."""
    table = []
    for name in cfg.names():
        mine = [r for r in rows if r["name"] == name]
        if not mine:
            continue
        memory = [r["peak_rss_mb"] for r in mine if r["peak_rss_mb"] is not None]
        table.append({
            "name": name, "kind": mine[0]["kind"], "type": mine[0]["type"], "seeds": [r["seed"] for r in mine],
            "tasks": {t: pooled(mine, t) for t in cfg.eval.tasks}, "overall": pooled(mine),
            "per_seed": [r["mean_success_rate"] for r in mine], "parameters": mine[0]["parameters"],
            "samples_per_s": mean_std([r["samples_per_s"] for r in mine]),
            "samples_per_s_update": mean_std([r["samples_per_s_update"] for r in mine])
            if mine[0].get("samples_per_s_update") else None,
            "p50": mean_std([r["latency_ms"]["p50"] for r in mine]),
            "p99": mean_std([r["latency_ms"]["p99"] for r in mine]),
            "peak_rss_mb": max(memory) if memory else None, "execution": mine[0]["execution"],
            "pretrained": mine[0]["pretrained"], "options": mine[0].get("options"),
            "commits": sorted({str(r["provenance"].get("commit"))[:10] + ("+" if r["provenance"].get("dirty") else "")
                               for r in mine})})
    return table


def rate(result: dict) -> str:
    """"45% (28-63)": success rate and its 95% interval, in percent."""
    low, high = result["ci95"]
    return f"{100 * result['success_rate']:.0f}% ({100 * low:.0f}-{100 * high:.0f})"


def execution(r: dict) -> str:
    e = r["execution"]
    steps = f", {e['num_inference_steps']} steps" if e.get("num_inference_steps") else ""
    ensemble = ", temporal ensemble" if e.get("temporal_ensemble") else ""
    return f"{e['n_action_steps']} of {e['chunk_size']}{steps}{ensemble}"


def throughput(r: dict) -> str:
    """"9.6 (18.9 model)": samples/s with data loading, and LeRobot's without (its logged update time alone)."""
    model = f" ({r['samples_per_s_update'][0]:.1f} model)" if r["samples_per_s_update"] else ""
    return f"{r['samples_per_s'][0]:.1f}{model}"


def shown(value) -> str:
    """An option's value as the page shows it: paths inside the working directory relative to it."""
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(Path.cwd()):
        return str(Path(value).relative_to(Path.cwd()))
    return str(value)


def source(r: dict) -> str:
    return f"ours (`{r['type']}` head)" if r["kind"] == "ours" else f"LeRobot `{r['type']}`"


def markdown(cfg, table: list[dict]) -> str:
    tasks = cfg.eval.tasks
    demos = cfg.demos
    lines = [
        "# Our action heads vs LeRobot's own policies",
        "",
        f"Same LeRobot dataset for every policy ({demos.episodes_per_task} scripted demos per task of "
        f"{', '.join(demos.tasks)}, {demos.image_size} px {demos.camera} camera, robot-only 7-D state), the same "
        f"samples seen ({cfg.train.steps} steps of batch {cfg.train.batch_size}), seeds {cfg.seeds}. Ours: a tiny "
        f"{cfg.tiny_backbone.family} VLM (hidden {cfg.tiny_backbone.hidden_size}) + head (hidden {cfg.head.hidden}, "
        f"depth {cfg.head.depth}, horizon {cfg.head.horizon}) trained by `vla-train`; LeRobot's: trained by LeRobot's "
        "own `lerobot_train` (its defaults, optimiser presets and normalisation, except the options listed below), "
        "with its image augmentation "
        f"{'on' if cfg.lerobot_train.image_transforms else 'off'} (`dataset.image_transforms`; ours: random shifts "
        f"of up to {cfg.image_shift} px), driven through its own `select_action` with its own pre/post-processors. "
        "No policy has pretrained weights (none can be fetched here).",
        "",
        f"Closed loop with our rollout code on Meta-World seeds from {cfg.eval.seed_start} (never used for demos): "
        f"{cfg.eval.episodes_per_task} episodes per task and seed, at most {cfg.eval.max_steps} steps. Success is "
        "pooled over seeds (successes / episodes) with its 95% Wilson interval. Latency is one model call (a "
        "chunk: pre-processing + model + post-processing) at batch 1 on the CPU during the rollouts, mean over seeds "
        "of each run's p50 / p99 (the first call of a rollout, which warms up, left out). Training samples/s is "
        "batch / median seconds per step (each framework's own "
        "logged step time, after the first log window), mean over seeds; ours samples batches from frames decoded "
        "into memory before training, LeRobot's data loader decodes PNG frames during it "
        f"(num_workers {cfg.lerobot_train.num_workers}), so its rate without data loading (its logged update "
        "time alone) is given in brackets. Peak memory is the training process's "
        "peak resident set (the largest over seeds; LeRobot's data-loader workers not added). Parameters: all of "
        "the policy's, and (in brackets) its image "
        "encoder's.",
        "",
        "| policy | source | success | " + " | ".join(tasks) + " | per seed | params (vision) | train samples/s | "
        "latency p50 / p99 (ms) | peak train memory | executes (of chunk) | pretrained weights | commit |",
        "|---|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|---|---|---|",
    ]
    best = max((r["overall"]["success_rate"] for r in table), default=None)
    for r in table:
        per_task = " | ".join(rate(r["tasks"][t]) for t in tasks)
        overall = f"**{rate(r['overall'])}**" if r["overall"]["success_rate"] == best else rate(r["overall"])
        seeds = ", ".join(f"{100 * s:.0f}" for s in r["per_seed"])
        memory = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f} MB"
        params = r["parameters"]
        lines.append(
            f"| `{r['name']}` | {source(r)} | {overall} | {per_task} | {seeds} | "
            f"{params['total'] / 1e6:.2f} M ({params['vision'] / 1e6:.2f} M) | {throughput(r)} | "
            f"{r['p50'][0]:.1f} / {r['p99'][0]:.1f} | {memory} | {execution(r)} | {r['pretrained']} | "
            f"{', '.join(r['commits'])} |")
    lines += ["", "LeRobot settings (on top of LeRobot's defaults; LeRobot's seed = our seed):"]
    for r in table:
        if r["kind"] == "lerobot":
            options = ", ".join(f"`{k}={shown(v)}`" for k, v in (r["options"] or {}).items()) or "LeRobot's defaults"
            lines.append(f"- `{r['name']}` (`{r['type']}`): {options}")
    lines += ["", REFERENCE, "",
              "The raw rows (one per policy and seed, each with its commit, full config, command, library versions "
              "and machine) are in `vs_lerobot.json`.", "", "![success and latency](vs_lerobot.png)", ""]
    return "\n".join(lines)


def plot(cfg, table: list[dict], path: Path) -> None:
    tasks = cfg.eval.tasks
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
    width = 0.8 / len(table)
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(table):
        xs = np.arange(len(tasks)) + (i - (len(table) - 1) / 2) * width
        rates = [100 * r["tasks"][t]["success_rate"] for t in tasks]
        low = [max(0.0, rate - 100 * r["tasks"][t]["ci95"][0]) for rate, t in zip(rates, tasks, strict=True)]
        high = [max(0.0, 100 * r["tasks"][t]["ci95"][1] - rate) for rate, t in zip(rates, tasks, strict=True)]
        left.bar(xs, rates, width, yerr=[low, high], capsize=3, color=colours(i), label=r["name"],
                 hatch="" if r["kind"] == "ours" else "//", edgecolor="white")
    left.set_xticks(range(len(tasks)), tasks)
    left.set_ylim(0, 105)
    left.set_ylabel("closed-loop success (%), 95% Wilson interval")
    left.set_title("success per task, pooled over seeds (hatched: LeRobot)", fontsize=10)
    left.legend(fontsize=8)
    names = [r["name"] for r in table]
    right.bar(names, [r["p50"][0] for r in table], color=[colours(i) for i in range(len(table))])
    right.scatter(names, [r["p99"][0] for r in table], color="k", marker="_", s=300, zorder=3, label="p99")
    for i, r in enumerate(table):
        right.text(i, r["p50"][0], f"{r['parameters']['total'] / 1e6:.1f}M", ha="center", va="bottom", fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("latency per chunk, batch 1 (ms, log)")
    right.set_title("inference per model call (label: parameters)", fontsize=10)
    right.tick_params(axis="x", labelrotation=25)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg, rows: list[dict]) -> Path:
    out = Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = policy_rows(cfg, rows)
    (out / "vs_lerobot.md").write_text(markdown(cfg, table))
    plot(cfg, table, out / "vs_lerobot.png")
    return out / "vs_lerobot.md"
