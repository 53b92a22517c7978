"""Loader throughput and memory (issue 15 item 6): our streaming frame source against LeRobot's own loader.

    python benchmarks/data.py                 # configs/bench/data.yaml -> docs/results/data.{md,json}
    vla-eval data --config_path=configs/bench/data_smoke.yaml

The same scripted Meta-World demos are recorded twice by `vla-demos`, with the cameras as video (LeRobot v3's
default) and as PNG frames. Arms, each a map-style dataset in a shuffled `torch.utils.data.DataLoader` with the same
workers and batch size, except `in_memory`:
- `lerobot_video`: `LeRobotDataset(delta_timestamps={"action": chunk}, video_backend="pyav")` on the video dataset
  (torchcodec, lerobot's default, cannot load here without system FFmpeg libraries);
- `ours_video` / `ours_image`: vla-train's data path with `data.reader=stream`: `vla.data.frames.LeRobotFrames` on
  the video / image dataset behind `vla.data.mixture.make_loader` (mixture sampler, per-sample random shift and
  normalisation, collate) in the same number of workers, so ours does more per sample than LeRobot's arm;
- `in_memory`: the same path with `data.reader=memory` (`load_chunked_demos`: every frame decoded into RAM at
  build), read in the training process (no workers), as vla-train reads small datasets.
Each arm runs in a fresh process (`isolate`), so its peak memory is its own: the process and its DataLoader workers'
proportional set size (PSS: shared pages split between the processes that map them) and resident set size (RSS,
shared pages counted once per process), sampled every `memory_interval_s`. Throughput: `batches` batches after
`warmup_batches` (worker start-up and first file opens), median over `rounds` interleaved rounds (round r runs every
arm once, so load on the machine hits them alike). Build time (reading columns, or decoding everything) is separate.

Data wait at the quickstart's size: a training step of `step_seconds` at batch `step_batch` consumes step_batch /
step_seconds samples/s; with the loader prefetching in its workers, a step waits max(0, step_batch / rate -
step_seconds) seconds for its batch, a fraction max(0, 1 - step_seconds * rate / step_batch) of its time. The rate is
measured with the CPUs free of training, so on a machine whose cores also train this is a lower bound.

With `profile`, `profile_items` items of `ours_video` and `lerobot_video` are read in one process under cProfile, and
the functions with the most own time are kept (where a sample's time goes).
"""

from __future__ import annotations

import cProfile
import dataclasses
import io
import json
import multiprocessing
import pstats
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch

from vla.config import parse_with_recipe
from vla.provenance import provenance
from vla.sim.demos import DemoConfig, generate_demos

DEFAULT_RECIPE = "configs/bench/data.yaml"
ARMS = ("lerobot_video", "ours_video", "ours_image", "in_memory")
BASELINE = "lerobot_video"


def default_demos() -> DemoConfig:
    return DemoConfig(tasks=["reach", "push", "button-press-topdown"], episodes_per_task=10, image_size=96)


@dataclass
class DataBenchConfig:
    demos: DemoConfig = field(default_factory=default_demos)  # recorded as video and as images (`video` is set)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    chunk_size: int = 8  # the quickstart's horizon
    n_obs_steps: int = 1
    image_shift: int = 4  # our arms' augmentation (the quickstart's data.image_shift)
    batch_size: int = 32
    num_workers: int = 2
    batches: int = 40
    warmup_batches: int = 3
    rounds: int = 2
    isolate: bool = True  # each arm in a fresh process (false: in this one; its memory figures then mix arms)
    memory_interval_s: float = 0.05
    step_seconds: float = 0.23  # the quickstart's measured training step (README) ...
    step_batch: int = 32  # ... at this batch size
    profile: bool = True
    profile_items: int = 100
    profile_top: int = 12
    seed: int = 0
    report_dir: str = "docs/results"

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or BASELINE not in self.arms:
            raise ValueError(f"arms {self.arms}: must include {BASELINE!r} and be among {list(ARMS)}")
        for name in ("batch_size", "batches", "rounds", "chunk_size", "n_obs_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")


# ---- datasets and loaders ---------------------------------------------------------------------------


def datasets(cfg: DataBenchConfig) -> dict[str, Path]:
    """{"video": folder, "image": folder}: the demos recorded (or found cached) in both storage modes."""
    return {mode: generate_demos(dataclasses.replace(cfg.demos, video=mode == "video")) for mode in ("video", "image")}


def build_arm(cfg: DataBenchConfig, arm: str, roots: dict[str, Path]):
    """The DataLoader one arm iterates."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    from vla.data.dataset import load_chunked_demos
    from vla.data.frames import LeRobotFrames
    from vla.data.mixture import make_loader
    from vla.data.normalize import Normalizer

    repo, size = cfg.demos.repo_id, cfg.demos.image_size
    if arm == "lerobot_video":
        fps = LeRobotDatasetMetadata(repo, root=roots["video"]).fps
        dataset = LeRobotDataset(repo, root=roots["video"], video_backend="pyav",
                                 delta_timestamps={"action": [k / fps for k in range(cfg.chunk_size)]})
        return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                           num_workers=cfg.num_workers,
                                           generator=torch.Generator().manual_seed(cfg.seed))
    if arm == "in_memory":
        source = load_chunked_demos(str(roots["image"]), repo, cfg.chunk_size, image_size=size)
        source.n_obs_steps = cfg.n_obs_steps
    else:
        source = LeRobotFrames(roots[arm.removeprefix("ours_")], repo, cfg.chunk_size, image_size=size,
                               n_obs_steps=cfg.n_obs_steps)
    # vla-train's own data path: mixture sampler -> per-sample augmentation and normalisation -> collate
    return make_loader([source], [1.0], Normalizer.from_demos(source), cfg.batch_size, cfg.seed,
                       image_shift=cfg.image_shift, num_workers=0 if arm == "in_memory" else cfg.num_workers)


def batches(loader: torch.utils.data.DataLoader, count: int):
    """`count` batches from a DataLoader (cycled when it is finite)."""
    done = 0
    while done < count:
        for batch in loader:
            yield batch
            done += 1
            if done == count:
                return


# ---- measurement --------------------------------------------------------------------------------------


class MemorySampler:
    """Peak PSS and RSS (MiB) of this process and its children, sampled in a thread."""

    def __init__(self, interval_s: float):
        self.interval_s, self.peak_pss, self.peak_rss = interval_s, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        me = psutil.Process()
        pss = rss = 0.0
        for process in [me, *me.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss / 2**20), max(self.peak_rss, rss / 2**20)


def measure_arm(cfg: DataBenchConfig, arm: str, roots: dict[str, Path]) -> dict:
    """Build one arm, time `batches` batches after `warmup_batches`; samples/s, batch times, build time, memory."""
    torch.manual_seed(cfg.seed)
    with MemorySampler(cfg.memory_interval_s) as memory:
        start = time.perf_counter()
        source = build_arm(cfg, arm, roots)
        build_s = time.perf_counter() - start
        times, first = [], time.perf_counter()
        last = first
        for k, _batch in enumerate(batches(source, cfg.warmup_batches + cfg.batches)):
            now = time.perf_counter()
            if k >= cfg.warmup_batches:
                times.append(now - last)
            last = now
            if k == cfg.warmup_batches - 1:
                first = now
        del source
    samples = cfg.batch_size * cfg.batches
    return {"arm": arm, "samples_per_s": samples / (last - first), "batch_s_p50": float(np.median(times)),
            "batch_s_p90": float(np.percentile(times, 90)), "build_s": build_s, "peak_pss_mb": memory.peak_pss,
            "peak_rss_mb": memory.peak_rss, "batch_keys": batch_keys(arm)}


def batch_keys(arm: str) -> str:
    return ("LeRobot item (float32 CHW images, robot units)" if arm == BASELINE
            else "vla-train batch (uint8 HWC images, augmented, normalised and padded)")


def _arm_in_child(cfg: DataBenchConfig, arm: str, roots: dict[str, Path], queue) -> None:
    torch.set_num_threads(1)
    queue.put(measure_arm(cfg, arm, roots))


def run_arm(cfg: DataBenchConfig, arm: str, roots: dict[str, Path]) -> dict:
    """measure_arm in a fresh (spawned) process when cfg.isolate, else in this one."""
    if not cfg.isolate:
        return measure_arm(cfg, arm, roots)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_arm_in_child, args=(cfg, arm, roots, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"arm {arm} exited with code {process.exitcode}")
    return result


def profile_items(cfg: DataBenchConfig, roots: dict[str, Path]) -> dict[str, list[dict]]:
    """Own time of the top functions reading `profile_items` random items of ours_video and lerobot_video."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vla.data.frames import LeRobotFrames

    repo = cfg.demos.repo_id
    ours = LeRobotFrames(roots["video"], repo, cfg.chunk_size, image_size=cfg.demos.image_size)
    fps = ours.info.fps
    theirs = LeRobotDataset(repo, root=roots["video"], video_backend="pyav",
                            delta_timestamps={"action": [k / fps for k in range(cfg.chunk_size)]})
    indices = np.random.default_rng(cfg.seed).integers(len(ours), size=cfg.profile_items)
    out = {}
    for name, dataset in (("ours_video", ours), ("lerobot_video", theirs)):
        dataset[0]  # first open outside the profile
        profiler = cProfile.Profile()
        profiler.enable()
        for i in indices:
            dataset[int(i)]
        profiler.disable()
        out[name] = top_functions(profiler, cfg.profile_top, cfg.profile_items)
    return out


def top_functions(profiler: cProfile.Profile, top: int, items: int) -> list[dict]:
    """The `top` functions by own time: name, ms per item of own and cumulative time."""
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats
    total = sum(own for _, _, own, _, _ in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [{"function": f"{Path(file).name}:{line}({name})", "own_ms_per_item": 1000 * own / items,
             "cum_ms_per_item": 1000 * cum / items, "own_share": own / total}
            for (file, line, name), (_, _, own, cum, _) in rows] + [
               {"function": "total", "own_ms_per_item": 1000 * total / items, "cum_ms_per_item": 1000 * total / items,
                "own_share": 1.0}]


def wait_fraction(samples_per_s: float, step_seconds: float, step_batch: int) -> float:
    """Share of a training step spent waiting for its batch (see the module docstring)."""
    return max(0.0, 1.0 - step_seconds * samples_per_s / step_batch)


def summarise(cfg: DataBenchConfig, runs: list[dict]) -> list[dict]:
    """One row per arm: medians over rounds of throughput and batch time, the largest memory and build time; the
    ratio to LeRobot's samples/s and the quickstart data-wait share."""
    rows = []
    for arm in cfg.arms:
        mine = [r for r in runs if r["arm"] == arm]
        row = {"arm": arm, "rounds": len(mine), "batch_keys": mine[0]["batch_keys"]}
        for key in ("samples_per_s", "batch_s_p50", "batch_s_p90"):
            row[key] = float(np.median([r[key] for r in mine]))
        for key in ("build_s", "peak_pss_mb", "peak_rss_mb"):
            row[key] = float(max(r[key] for r in mine))
        row["per_round_samples_per_s"] = [r["samples_per_s"] for r in mine]
        rows.append(row)
    base = next(r for r in rows if r["arm"] == BASELINE)["samples_per_s"]
    for row in rows:
        row["vs_lerobot"] = row["samples_per_s"] / base
        row["wait_fraction"] = wait_fraction(row["samples_per_s"], cfg.step_seconds, cfg.step_batch)
    return rows


def run_data_bench(cfg: DataBenchConfig) -> Path:
    from vla.eval.data_report import write_report

    roots = datasets(cfg)
    runs = []
    for round_ in range(cfg.rounds):
        for arm in cfg.arms:
            runs.append(run_arm(cfg, arm, roots) | {"round": round_})
            r = runs[-1]
            print(f"round {round_} {arm:>14}: {r['samples_per_s']:8.1f} samples/s  batch p50 {r['batch_s_p50']:.3f} s"
                  f"  build {r['build_s']:.1f} s  peak PSS {r['peak_pss_mb']:.0f} MiB (RSS {r['peak_rss_mb']:.0f})")
    rows = summarise(cfg, runs)
    for row in rows:
        print(f"{row['arm']:>14}: {row['samples_per_s']:8.1f} samples/s = {row['vs_lerobot']:.2f}x LeRobot; "
              f"quickstart step waits {100 * row['wait_fraction']:.0f}%")
    frames = {mode: _frame_count(cfg, root) for mode, root in roots.items()}
    results = {"provenance": provenance(cfg), "datasets": {m: str(p) for m, p in roots.items()}, "frames": frames,
               "dataset_bytes": {m: _folder_bytes(p) for m, p in roots.items()}, "rows": rows, "runs": runs,
               "profile": profile_items(cfg, roots) if cfg.profile else {}}
    out = Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(results, indent=1))
    return write_report(cfg, results)


def _frame_count(cfg: DataBenchConfig, root: Path) -> int:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    return int(LeRobotDatasetMetadata(cfg.demos.repo_id, root=root).total_frames)


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def main(args: list[str] | None = None) -> None:
    """Parse flags on top of configs/bench/data.yaml (or another --config_path) and run."""
    print(f"report: {run_data_bench(parse_with_recipe(DataBenchConfig, DEFAULT_RECIPE, args))}")


if __name__ == "__main__":
    main()
