"""The plot a person reads after a deploy run: per-tick timing and why the arm was held."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_timing(rows: list[dict], period_s: float, path: str | Path, title: str = "") -> Path:
    """Tick period (ms) over the episode, nominal period dashed, held ticks marked red."""
    t = np.array([r["t_s"] for r in rows])
    periods = np.diff(t) * 1000
    held = np.array([r["event"].startswith(("hold", "stop")) for r in rows])
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(t[1:], periods, lw=1, color="#4878a8", label="tick period")
    ax.axhline(period_s * 1000, ls="--", color="k", lw=0.8, label=f"nominal {period_s * 1000:.1f} ms")
    if held.any():
        ax.scatter(t[held], np.full(held.sum(), period_s * 1000), color="#c44e52", s=8, zorder=3,
                   label=f"arm held ({held.sum()} ticks)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("period (ms)")
    ax.set_title(title or "control loop timing")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
