"""Training scalars to CSV and TensorBoard, and the loss curve as a PNG."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402


class ScalarLogger:
    """Appends rows of scalars to <dir>/metrics.csv and TensorBoard event files in <dir>/tb.

    A run (re)starting at `start_step` first drops what an earlier attempt logged after it: CSV rows with a
    larger step are deleted, and TensorBoard is told to purge events from step start_step + 1 on (purge_step),
    so steps replayed after a resume are logged once.
    """

    def __init__(self, directory: str | Path, enabled: bool = True, start_step: int = 0):
        self.directory = Path(directory)
        self.enabled = enabled
        self.csv_path = self.directory / "metrics.csv"
        self.writer = None
        if enabled:
            truncate_metrics(self.csv_path, start_step)
            self.writer = SummaryWriter(str(self.directory / "tb"), purge_step=start_step + 1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", *scalars])
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **scalars})
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(csv_path: str | Path, last_step: int) -> None:
    """Keep the rows of a metrics CSV up to `last_step` (atomically rewritten; removed when none is left)."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if float(r["step"]) <= last_step]
    if not rows:
        csv_path.unlink()
        return
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)


def read_metrics(csv_path: str | Path) -> dict[str, list[float]]:
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {})}


def plot_loss_curve(csv_path: str | Path, png_path: str | Path) -> Path:
    metrics = read_metrics(csv_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(metrics["step"], metrics["loss"], label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("diffusion loss (MSE)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)
