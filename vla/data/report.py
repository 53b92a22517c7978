"""`vla-data report`: what is in a LeRobot dataset, before training on it (`vla-data convert-rlds`,
`vla-data export-rlds` and `vla-data import-videos`: see vla.data.convert_rlds, vla.data.export_rlds and
vla.data.import_videos).

    vla-data report --root outputs/datasets --repo_id local/metaworld-1a2b3c4d \\
        [--embodiment_config metaworld_sawyer] [--output_dir outputs/data_report] [--idle_threshold 0.01]

Reads the numeric columns (actions, state, episode and frame indices) straight from the dataset's arrow table, and
decodes only the frames it shows (through LeRobotDataset, so image and video datasets alike). Writes
output_dir/dataset_report.md (+ .json with provenance): episodes and their lengths, episodes per task, per-dimension
ranges and normalisation statistics of actions and state (min, 1st percentile, mean, std, 99th percentile, max),
the idle (no-op) share per episode and overall, NaN / inf frames by episode and frame; frames.png (a grid of frames
per camera from episodes across the dataset) and actions.png (every action dimension over time for a few episodes,
and the episode-length histogram). `--noop_frames` also writes the idle frames' indices (noop_frames.json), for
filtering them out of training.

A frame is idle when no action dimension moves more than `idle_threshold` times that dimension's 1-99% range:
a displacement or velocity dimension (ee_delta_*, ee_vel_*, joint_delta, joint_velocity, base, and a relative
gripper command) moves by its value, an absolute one (joint_position, ee_abs_*, an absolute gripper) by its change
since the episode's previous frame. Kinds come from the embodiment registry entry; without one, from the dataset's
recorded action kind (ee_delta: every dimension a displacement except ones named like "gripper").

An action-free dataset (no action column: `vla-data import-videos`, `vla-demos --action_free`) gets the same report
without the action statistics, idle frames and action plots (and without state statistics when it has no state).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import draccus
import matplotlib
import numpy as np

from vla.data.dataset import DatasetLayout, describe_dataset, read_numeric_columns
from vla.data.registry import Embodiment, load_embodiment
from vla.provenance import provenance

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# dimension kinds whose value is itself a motion (the rest are absolute targets: their change is the motion)
MOTION_KINDS = {"ee_delta_xyz", "ee_delta_rpy", "ee_vel_xyz", "ee_vel_rpy", "joint_delta", "joint_velocity", "base"}
STAT_NAMES = ("min", "q01", "mean", "std", "q99", "max")


@dataclass
class DatasetReportConfig:
    root: str = "outputs/datasets"
    repo_id: str = ""
    embodiment_config: str = ""  # a registry entry (name or YAML path); "" = LeRobot's default keys
    output_dir: str = "outputs/data_report"
    idle_threshold: float = 0.01  # share of a dimension's 1-99% range below which it counts as not moving
    frames_per_camera: int = 6
    plot_episodes: int = 5
    noop_frames: bool = False  # also write the idle frames' dataset indices to noop_frames.json
    video_backend: str = ""  # video datasets: torchcodec | pyav (no ffmpeg needed); "" = lerobot's default


@dataclass
class Columns:
    """The numeric columns of a dataset: action [N, D], state [N, S], episode_index / frame_index / index /
    task_index [N] (int64), in table order."""

    action: np.ndarray
    state: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    index: np.ndarray
    task_index: np.ndarray


def read_columns(dataset, layout: DatasetLayout) -> Columns:
    """The numeric columns `layout` names, without decoding any image (the training loader's reader)."""
    return Columns(**read_numeric_columns(dataset, layout))


def dimension_stats(values: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """{name: {min, q01, mean, std, q99, max}} over the finite rows of values [N, D]."""
    finite = values[np.isfinite(values).all(axis=1)]
    if len(finite) == 0:
        raise ValueError("no frame has finite values in every dimension")
    q01, q99 = np.quantile(finite, [0.01, 0.99], axis=0)
    stats = np.stack([finite.min(0), q01, finite.mean(0), finite.std(0), q99, finite.max(0)])
    return {name: dict(zip(STAT_NAMES, map(float, stats[:, d]), strict=True)) for d, name in enumerate(names)}


def non_finite(columns: Columns, keys: dict[str, str]) -> list[dict]:
    """Every frame with NaN or inf: [{key, episode, frame}] (key: the dataset key it is in)."""
    bad = []
    for name, key in keys.items():
        rows = np.flatnonzero(~np.isfinite(getattr(columns, name)).all(axis=1))
        bad += [{"key": key, "episode": int(columns.episode_index[r]), "frame": int(columns.frame_index[r])}
                for r in rows]
    return bad


def motion_dims(entry: Embodiment | None, action_names: list[str], action_kind: str) -> np.ndarray:
    """bool [D]: True where an action dimension's value is a motion (displacement / velocity / relative gripper
    command), False where it is an absolute target whose change is the motion."""
    if entry is not None:
        relative_gripper = entry.gripper is not None and entry.gripper.command == "relative"
        return np.array([kind in MOTION_KINDS or (kind == "gripper" and relative_gripper)
                         for kind in entry.action_kinds])
    return np.array([action_kind == "ee_delta" and "gripper" not in name.lower() for name in action_names])


def idle_frames(columns: Columns, is_motion: np.ndarray, threshold: float) -> np.ndarray:
    """bool [N]: frames where no action dimension moves more than threshold x its 1-99% range. An absolute
    dimension's motion is its change since the episode's previous frame (an episode's first frame never idles)."""
    action = columns.action.astype(np.float64)
    previous = np.concatenate([action[:1], action[:-1]])
    first = np.concatenate([[True], columns.episode_index[1:] != columns.episode_index[:-1]])
    motion = np.where(is_motion, np.abs(action), np.abs(action - previous))
    finite = action[np.isfinite(action).all(axis=1)]
    q01, q99 = np.quantile(finite, [0.01, 0.99], axis=0)
    scale = np.where(q99 - q01 > 0, q99 - q01, 1.0)
    idle = (np.nan_to_num(motion, nan=np.inf) <= threshold * scale).all(axis=1)
    return idle & ~(first & (~is_motion).any())  # a first frame has no previous to compare absolute dims with


def episode_table(columns: Columns, idle: np.ndarray) -> list[dict]:
    """Per episode: index, length, task index, idle share."""
    rows = []
    for episode in np.unique(columns.episode_index):
        mine = columns.episode_index == episode
        rows.append({"episode": int(episode), "length": int(mine.sum()),
                     "task_index": int(columns.task_index[mine][0]), "idle_share": float(idle[mine].mean())})
    return rows


def build_report(cfg: DatasetReportConfig) -> dict:
    """Everything the markdown says, as a dict (also saved as JSON), plus what the plots need under "_plots"."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    if not cfg.repo_id:
        raise ValueError("--repo_id is required (the dataset's LeRobot repo id under --root)")
    if not cfg.idle_threshold >= 0:
        raise ValueError(f"--idle_threshold must be >= 0; got {cfg.idle_threshold}")
    meta = LeRobotDatasetMetadata(cfg.repo_id, root=cfg.root)
    entry = load_embodiment(cfg.embodiment_config) if cfg.embodiment_config else None
    described = describe_dataset(meta, cfg.root, entry)
    layout, info = described.layout, described.info
    action_names, state_names, action_kind = info.action_names, info.state_names, info.action_kind
    dataset = LeRobotDataset(cfg.repo_id, root=cfg.root, video_backend=cfg.video_backend or None)
    columns = read_columns(dataset, layout)
    bad = non_finite(columns, {"action": layout.action_key, "state": layout.state_key})
    if info.has_actions:
        idle = idle_frames(columns, motion_dims(entry, action_names, action_kind), cfg.idle_threshold)
    else:
        idle = np.zeros(len(columns.index), dtype=bool)  # no action: nothing to call idle
    episodes = episode_table(columns, idle)
    tasks = list(meta.tasks.index)
    lengths = np.array([e["length"] for e in episodes])
    report = {
        "dataset": {"root": cfg.root, "repo_id": cfg.repo_id, "robot_type": meta.robot_type, "fps": float(meta.fps),
                    "embodiment_entry": entry.source if entry is not None else None,
                    "action_kind": action_kind or None, "action_free": not info.has_actions,
                    "cameras": dict(zip(layout.camera_slots, layout.camera_keys, strict=True)),
                    "video": bool(meta.video_keys)},
        "frames": int(len(columns.index)), "episodes": len(episodes),
        "episode_length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max()),
                           "mean_s": float(lengths.mean() / meta.fps)},
        "tasks": {task: sum(e["task_index"] == i for e in episodes) for i, task in enumerate(tasks)},
        "action": dimension_stats(columns.action, action_names) if action_names else {},
        "state": dimension_stats(columns.state, state_names) if state_names else {},
        "idle": ({"threshold": cfg.idle_threshold, "frames": int(idle.sum()), "share": float(idle.mean())}
                 if info.has_actions else None),
        "non_finite": {"frames": len(bad), "first": bad[:20]},
        "per_episode": episodes,
    }
    if cfg.noop_frames:
        report["noop_indices"] = columns.index[idle].tolist()
    report["_plots"] = {"dataset": dataset, "columns": columns, "layout": layout, "action_names": action_names}
    return report


def markdown(report: dict, cfg: DatasetReportConfig) -> str:
    d = report["dataset"]
    length = report["episode_length"]
    idle = report["idle"]
    actions = "action-free (no actions)" if d["action_free"] else f"actions {d['action_kind']}"
    lines = [f"# Dataset report: {d['repo_id']}", "",
             f"Made by `{report['provenance']['command']}` at commit {str(report['provenance']['commit'])[:10]}.", "",
             f"- {report['episodes']} episodes, {report['frames']} frames at {d['fps']:g} fps "
             f"({'video' if d['video'] else 'image'} mode); robot type {d['robot_type']!r}; {actions}"
             f"{'; entry ' + d['embodiment_entry'] if d['embodiment_entry'] else ''}",
             f"- episode length: min {length['min']}, median {length['median']:g}, max {length['max']} frames "
             f"(mean {length['mean_s']:.1f} s)",
             "- cameras (model slot: key): " + ", ".join(f"{s}: `{k}`" for s, k in d["cameras"].items())]
    if idle is not None:
        lines += [f"- idle frames (no action dimension moving more than {cfg.idle_threshold:g} x its 1-99% range): "
                  f"{idle['frames']} ({100 * idle['share']:.1f}%)"]
    lines += [f"- frames with NaN or inf: {report['non_finite']['frames']}", ""]
    if report["non_finite"]["frames"]:
        lines += ["First non-finite frames: " + ", ".join(f"episode {b['episode']} frame {b['frame']} (`{b['key']}`)"
                                                          for b in report["non_finite"]["first"]), ""]
    lines += ["## Tasks", "", "| task | episodes |", "|---|---|"]
    lines += [f"| {task} | {n} |" for task, n in report["tasks"].items()]
    for part in (p for p in ("action", "state") if report[p]):
        lines += ["", f"## {part.capitalize()} dimensions (normalisation statistics)", "",
                  "| dim | " + " | ".join(STAT_NAMES) + " |", "|---|" + "---|" * len(STAT_NAMES)]
        lines += [f"| {name} | " + " | ".join(f"{s[k]:.4g}" for k in STAT_NAMES) + " |"
                  for name, s in report[part].items()]
    if idle is not None:
        idle_heavy = sorted(report["per_episode"], key=lambda e: -e["idle_share"])[:5]
        lines += ["", "## Episodes with the most idle frames", "", "| episode | length | idle |", "|---|---|---|"]
        lines += [f"| {e['episode']} | {e['length']} | {100 * e['idle_share']:.0f}% |" for e in idle_heavy]
    plot = "episode lengths" if d["action_free"] else "actions over time"
    lines += ["", "![frames per camera](frames.png)", "", f"![{plot}](actions.png)", ""]
    return "\n".join(lines)


def plot_frames(report: dict, cfg: DatasetReportConfig, path: Path) -> None:
    """A grid: one row per camera, `frames_per_camera` frames from episodes spread over the dataset (mid-episode)."""
    plots = report["_plots"]
    columns, layout, dataset = plots["columns"], plots["layout"], plots["dataset"]
    episodes = np.unique(columns.episode_index)
    chosen = episodes[np.linspace(0, len(episodes) - 1, min(cfg.frames_per_camera, len(episodes))).astype(int)]
    rows = [int(np.flatnonzero(columns.episode_index == e)[(columns.episode_index == e).sum() // 2]) for e in chosen]
    cams = list(layout.camera_keys)
    fig, axes = plt.subplots(len(cams), len(rows), figsize=(2 * len(rows), 2 * len(cams)), squeeze=False)
    for j, row in enumerate(rows):
        item = dataset[row]
        for i, key in enumerate(cams):
            axes[i, j].imshow(item[key].permute(1, 2, 0).numpy())  # lerobot gives float [3, H, W] in 0..1
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(layout.camera_slots[i], fontsize=9)
            if i == 0:
                axes[i, j].set_title(f"ep {int(columns.episode_index[row])} f {int(columns.frame_index[row])}",
                                     fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_actions(report: dict, cfg: DatasetReportConfig, path: Path) -> None:
    """Each action dimension over time for the first `plot_episodes` episodes, then the episode-length histogram."""
    plots = report["_plots"]
    columns, names = plots["columns"], plots["action_names"]
    dims = len(names)
    fig, axes = plt.subplots(dims + 1, 1, figsize=(8, 1.6 * (dims + 1)), squeeze=False)
    for episode in np.unique(columns.episode_index)[:cfg.plot_episodes]:
        mine = columns.episode_index == episode
        for d in range(dims):
            axes[d, 0].plot(columns.frame_index[mine], columns.action[mine, d], lw=1, label=f"ep {episode}")
    for d, name in enumerate(names):
        axes[d, 0].set_ylabel(name, fontsize=8)
    if dims:  # action-free data: the histogram alone
        axes[0, 0].legend(fontsize=7, ncol=cfg.plot_episodes, loc="upper right")
        axes[dims - 1, 0].set_xlabel("frame")
    axes[dims, 0].hist([e["length"] for e in report["per_episode"]], bins=20, color="#4878a8")
    axes[dims, 0].set_xlabel("episode length (frames)")
    axes[dims, 0].set_ylabel("episodes", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(cfg: DatasetReportConfig, command: list[str] | None = None) -> Path:
    """Build the report and write output_dir/dataset_report.{md,json}, frames.png, actions.png (noop_frames.json)."""
    report = build_report(cfg)
    report["provenance"] = provenance(cfg, command)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_frames(report, cfg, out / "frames.png")
    plot_actions(report, cfg, out / "actions.png")
    noops = report.pop("noop_indices", None)
    if noops is not None:
        (out / "noop_frames.json").write_text(json.dumps({"repo_id": cfg.repo_id, "idle_threshold":
                                                          cfg.idle_threshold, "indices": noops}))
    (out / "dataset_report.md").write_text(markdown(report, cfg))
    report.pop("_plots")
    (out / "dataset_report.json").write_text(json.dumps(report, indent=1))
    return out / "dataset_report.md"


# sub-commands besides `report`: (module, config class, function taking the config and returning what it wrote)
SUBCOMMANDS = {"convert-rlds": ("vla.data.convert_rlds", "ConvertRLDSConfig", "convert"),
               "export-rlds": ("vla.data.export_rlds", "ExportRLDSConfig", "export"),
               "import-videos": ("vla.data.import_videos", "ImportVideosConfig", "import_videos")}


def run_subcommand(name: str, args: list[str]) -> None:
    """Parse a sub-command's config, run it, print what it wrote; a ValueError (bad input) exits with its message."""
    import importlib

    module_name, config_name, function_name = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    cfg = draccus.parse(getattr(module, config_name), args=args)
    try:
        written = getattr(module, function_name)(cfg)
    except ValueError as error:
        sys.exit(f"vla-data {name}: {error}")
    print(f"vla-data {name}: wrote {written}")


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    if args[:1] and args[0] in SUBCOMMANDS:
        return run_subcommand(args[0], args[1:])
    if args[:1] != ["report"]:
        raise SystemExit("usage: vla-data report --root DIR --repo_id ID [--embodiment_config NAME] "
                         "[--output_dir DIR]\n"
                         "       vla-data convert-rlds --rlds_dir DIR --embodiment_config NAME --output_root DIR "
                         "--repo_id ID\n"
                         "       vla-data export-rlds --root DIR --repo_id ID --embodiment_config NAME "
                         "--output_root DIR\n"
                         "       vla-data import-videos --videos_dir DIR --output_root DIR --repo_id ID "
                         "[--image_size N] [--camera NAME]\n(vla-data <command> --help lists every option)")
    cfg = draccus.parse(DatasetReportConfig, args=args[1:])
    path = write_report(cfg, ["vla-data", *args])
    print(f"wrote {path} (+ dataset_report.json, frames.png, actions.png)")


if __name__ == "__main__":
    main()
