"""What a person reads of an evaluation: success per task (and per difficulty group) as plots and printed lines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# bar colours of the Meta-World difficulty groups (vla.sim.tasks.DIFFICULTIES); other bars are blue
GROUP_COLOURS = {"easy": "#59a14f", "medium": "#4878a8", "hard": "#f28e2b", "very_hard": "#e15759"}
DEFAULT_COLOUR = "#4878a8"


def success_bars(ax, results: dict[str, dict], colours: list[str] | None = None) -> None:
    """Bars of success rate (%) for {name: result}; a result has success_rate, successes and episodes, and
    optionally ci95 = [low, high] (fractions), drawn as an error bar. Few bars are labelled k/n."""
    names = list(results)
    rates = [100 * results[n]["success_rate"] for n in names]
    ax.bar(names, rates, color=colours or DEFAULT_COLOUR)
    tops = rates
    if all("ci95" in results[n] for n in names):
        # max(0, ...): at 0/n and n/n the bound equals the rate up to rounding, and errorbar refuses negatives
        low = [max(0.0, rate - 100 * results[n]["ci95"][0]) for rate, n in zip(rates, names, strict=True)]
        high = [max(0.0, 100 * results[n]["ci95"][1] - rate) for rate, n in zip(rates, names, strict=True)]
        ax.errorbar(names, rates, yerr=[low, high], fmt="none", ecolor="black", elinewidth=1, capsize=3)
        tops = [100 * results[n]["ci95"][1] for n in names]
    if len(names) <= 16:
        for i, (name, top) in enumerate(zip(names, tops, strict=True)):
            ax.text(i, top + 1, f"{results[name]['successes']}/{results[name]['episodes']}", ha="center",
                    va="bottom", fontsize=8)
    if sum(len(name) for name in names) > 8 * max(len(names), 6):  # the labels would overlap side by side
        ax.tick_params(axis="x", labelrotation=90)
    ax.set_ylim(0, 112)
    ax.set_ylabel("success rate (%)")


def plot_success(summary: dict, path: str | Path, title: str = "closed-loop success (unseen seeds)") -> Path:
    tasks = summary["tasks"]
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.5))
    success_bars(ax, tasks)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_groups(summary: dict, path: str | Path, title: str) -> Path:
    """Success per difficulty group and overall (summary["groups"], summary["overall"]) above success per task
    coloured by its group (summary["tasks"][t]["difficulty"]); error bars are the 95% intervals."""
    tasks = summary["tasks"]
    groups = {name.replace("_", " "): result for name, result in summary["groups"].items()} | {
        "all": summary["overall"]}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.3 * len(tasks) + 2), 8),
                                      gridspec_kw={"height_ratios": [1, 1.4]})
    success_bars(top, groups, [GROUP_COLOURS.get(g.replace(" ", "_"), "#777777") for g in groups])
    top.set_title("per difficulty group (episodes pooled)")
    success_bars(bottom, tasks, [GROUP_COLOURS.get(tasks[t].get("difficulty"), DEFAULT_COLOUR) for t in tasks])
    bottom.set_title("per task")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def print_summary(summary: dict) -> None:
    for task, result in summary["tasks"].items():
        print(f"{task:>24}: success {result['successes']}/{result['episodes']} "
              f"({100 * result['success_rate']:.0f}%), mean length {result['mean_episode_length']:.0f}")
    latency = summary["chunk_latency_ms"]
    print(f"{'mean':>24}: {100 * summary['mean_success_rate']:.0f}%  |  chunk latency p50 {latency['p50']:.1f} ms, "
          f"p99 {latency['p99']:.1f} ms")
