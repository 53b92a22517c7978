"""What a person reads of an evaluation: success per task as a plot and as printed lines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_success(summary: dict, path: str | Path, title: str = "closed-loop success (unseen seeds)") -> Path:
    tasks = list(summary["tasks"])
    rates = [100 * summary["tasks"][t]["success_rate"] for t in tasks]
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.5))
    bars = ax.bar(tasks, rates, color="#4878a8")
    for bar, task in zip(bars, tasks, strict=True):
        r = summary["tasks"][task]
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, f"{r['successes']}/{r['episodes']}",
                ha="center", va="bottom")
    ax.set_ylim(0, 110)
    ax.set_ylabel("success rate (%)")
    ax.set_title(title)
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
