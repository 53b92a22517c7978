"""Plots a person reads: success per task."""

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
