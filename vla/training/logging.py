"""Training scalars to CSV and TensorBoard, and the loss curve as a PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402


class ScalarLogger:
    """Appends rows of scalars to <dir>/metrics.csv and TensorBoard event files in <dir>/tb."""

    def __init__(self, directory: str | Path, enabled: bool = True):
        self.directory = Path(directory)
        self.enabled = enabled
        self.csv_path = self.directory / "metrics.csv"
        self.writer = SummaryWriter(str(self.directory / "tb")) if enabled else None

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
