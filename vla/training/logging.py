"""Training scalars to CSV plus TensorBoard or Weights & Biases (one switch, train.log_backend), the loss curve as a
PNG, and the telemetry logged beside the loss (throughput, peak memory, data-wait fraction)."""

from __future__ import annotations

import csv
import os
import resource
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WANDB_ID_FILE = "wandb_run_id.txt"


class ScalarLogger:
    """Appends rows of scalars to <dir>/metrics.csv (always) and to the chosen backend: TensorBoard event files in
    <dir>/tb, or a Weights & Biases run in <dir>/wandb (offline unless WANDB_MODE says otherwise, so no network is
    needed; `wandb sync <dir>/wandb/offline-run-*` uploads it later). "csv" writes nothing else.

    A run (re)starting at `start_step` first drops what an earlier attempt logged after it: CSV rows with a
    larger step are deleted, and TensorBoard is told to purge events from step start_step + 1 on (purge_step),
    so steps replayed after a resume are logged once. A resumed run continues the same W&B run (its id is kept in
    <dir>/wandb_run_id.txt); W&B keeps what it has and ignores replayed steps.
    """

    def __init__(self, directory: str | Path, enabled: bool = True, start_step: int = 0, backend: str = "tensorboard",
                 config: dict | None = None, project: str = "vla"):
        self.directory = Path(directory)
        self.enabled = enabled
        self.csv_path = self.directory / "metrics.csv"
        self.writer = None
        self.wandb_run = None
        if not enabled:
            return
        truncate_metrics(self.csv_path, start_step)
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.directory / "tb"), purge_step=start_step + 1)
        elif backend == "wandb":
            self.wandb_run = start_wandb(self.directory, project, config)
        elif backend != "csv":
            raise ValueError(f"unknown log backend {backend!r}; use csv, tensorboard or wandb")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        append_row(self.csv_path, {"step": step, **scalars})
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_wandb(directory: Path, project: str, config: dict | None):
    """A W&B run in <directory>/wandb, offline by default; the same run id for every (re)start of one output dir."""
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    id_file = directory / WANDB_ID_FILE
    if not id_file.exists():
        id_file.write_text(wandb.util.generate_id())
    return wandb.init(project=project, id=id_file.read_text().strip(), resume="allow", name=directory.name,
                      dir=str(directory), mode=os.environ.get("WANDB_MODE", "offline"), config=config)


def append_row(csv_path: Path, row: dict) -> None:
    """Append one row; a file written with other columns (an older run being resumed) is rewritten with the union."""
    fields = list(row)
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            old_fields = next(csv.reader(f), [])
        if old_fields != fields:
            with open(csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
            fields = old_fields + [k for k in fields if k not in old_fields]
            _write_rows(csv_path, fields, rows)
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


class Telemetry:
    """Per-window measurements logged beside the loss: samples/s (all processes), the share of wall time spent
    waiting for batches (drawing, augmenting and moving them to the device), and this process's peak memory
    (CUDA max allocated, or the CPU process's max resident set size)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.data_wait = 0.0

    def waited(self, seconds: float) -> None:
        self.data_wait += seconds

    def window(self, steps: int, samples_per_step: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"s_per_step": elapsed / steps, "samples_per_s": steps * samples_per_step / elapsed,
                "data_wait_frac": self.data_wait / elapsed, "peak_mem_mb": peak_memory_mb(self.device)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    _write_rows(csv_path, fields, rows)


def _write_rows(csv_path: Path, fields: list[str], rows: list[dict]) -> None:
    """Rewrite a metrics CSV atomically."""
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)


def read_metrics(csv_path: str | Path) -> dict[str, list[float]]:
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) if r[key] not in ("", None) else float("nan") for r in rows]
            for key in (rows[0] if rows else {})}


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
