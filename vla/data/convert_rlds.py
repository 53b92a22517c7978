"""`vla-data convert-rlds`: an RLDS / Open-X dataset to a LeRobot v3 dataset, through its registry entry.

    vla-data convert-rlds --rlds_dir data/bridge/0.1.0 --embodiment_config bridge \\
        --output_root outputs/datasets/bridge --repo_id local/bridge [--max_episodes 100] [--image_size 224] \\
        [--skip_bad_episodes true] [--embodiment_name NAME]

Writes with lerobot's own API (LeRobotDataset.create, add_frame, save_episode, finalize), images stored as images
(not video): `action` [D] and `observation.state` [S] hold the entry's action / state parts concatenated in entry
order, named by the entry's names; each camera slot the entry fills becomes `observation.images.<slot>`; the
episode's instruction is its task; fps is the entry's. `--image_size S` resizes every camera to S x S (bilinear,
aspect ratio not kept); 0 keeps each camera's size from features.json.

Beside LeRobot's metadata it writes `meta/vla_embodiment.yaml`, the LeRobot-format entry of the converted dataset
(`lerobot_entry`: same fps, names, kinds, units, normalisation and gripper, keys as above; named as the RLDS entry,
or `--embodiment_name`, which is also the dataset's robot_type), which
`--data.embodiment_config <output_root>/meta/vla_embodiment.yaml` reads, and `meta/vla_embodiment.json` with the
action kind when the entry's arm dimensions have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import yaml
from tqdm import tqdm

from vla.data.embodiment import EMBODIMENT_FILE, write_action_kind
from vla.data.features import lerobot_features
from vla.data.registry import Embodiment, Part, load_embodiment
from vla.data.rlds import Episode, RLDSDataset

ENTRY_FILE = Path("meta") / "vla_embodiment.yaml"


@dataclass
class ConvertRLDSConfig:
    rlds_dir: str = ""  # the tfds <name>/<version>/ folder (dataset_info.json, features.json, shards)
    embodiment_config: str = ""  # the registry entry describing it (format rlds), name or YAML path
    output_root: str = ""  # the LeRobot dataset's root (must not exist yet)
    repo_id: str = ""
    split: str = "train"
    max_episodes: int = 0  # 0 = all
    image_size: int = 0  # > 0: resize every camera to image_size x image_size; 0 = keep features.json's size
    fps: float = 0.0  # the source's control rate if known; must equal the entry's (0 = take the entry's)
    skip_bad_episodes: bool = False  # leave out (and count) episodes that fail their checks instead of stopping
    # the converted dataset's embodiment (its robot_type and entry name, statistics are kept under it); "" = the RLDS
    # entry's name. E.g. robosuite_panda_osc for robosuite_panda_osc_rlds data, so that a policy trained on it runs on
    # the simulator's robosuite/<Task>/Panda tasks (whose embodiment that is)
    embodiment_name: str = ""


def lerobot_entry(entry: Embodiment, name: str = "") -> dict:
    """The LeRobot-format registry entry (as a YAML mapping) of a dataset convert-rlds wrote from `entry`'s data,
    named `name` ("" = the entry's name)."""
    cameras = {s.name: None if s.missing else f"observation.images.{s.name}" for s in entry.cameras}
    raw = {"name": name or entry.name, "format": "lerobot", "fps": entry.fps,
           "dataset": f"converted from {entry.dataset}", "robot": entry.robot, "normalization": entry.normalization,
           "action": _parts(entry.action, "action"), "state": _parts(entry.state, "observation.state"),
           "cameras": cameras}
    if entry.gripper is not None:
        g = entry.gripper
        raw["gripper"] = {"dims": list(g.dims), "open": g.open, "closed": g.closed, "command": g.command}
    return raw


def _parts(parts: tuple[Part, ...], key: str) -> list[dict]:
    return [{"key": key, "names": list(p.names), "kind": p.kind, "unit": p.unit, "normalization": p.normalization}
            for p in parts]


def convert(cfg: ConvertRLDSConfig) -> Path:
    """Write the LeRobot dataset; returns its root."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    for name in ("rlds_dir", "embodiment_config", "output_root", "repo_id"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    entry = load_embodiment(cfg.embodiment_config)
    if cfg.fps and abs(cfg.fps - entry.fps) > 1e-6:
        raise ValueError(f"--fps {cfg.fps} != {entry.fps} in {entry.source} (fps); the actions would be executed at "
                         f"the wrong rate: fix the entry or the flag")
    source = RLDSDataset(Path(cfg.rlds_dir), entry, split=cfg.split)
    root = Path(cfg.output_root)
    sizes = {slot: _image_shape(source, slot, cfg.image_size) for slot in source.camera_slots}
    features = lerobot_features([], 0, entry.state_names, entry.action_names)
    features |= {f"observation.images.{slot}": {"dtype": "image", "shape": shape,
                                                "names": ["height", "width", "channels"]}
                 for slot, shape in sizes.items()}
    dataset = LeRobotDataset.create(repo_id=cfg.repo_id, fps=round(entry.fps), root=root,
                                    robot_type=cfg.embodiment_name or entry.name, use_videos=False, features=features)
    episodes = source.episodes(cfg.max_episodes or None, skip_bad_episodes=cfg.skip_bad_episodes)
    written = 0
    for episode in tqdm(episodes, desc=f"converting {source.name}", unit="episode"):
        _add_episode(dataset, episode, sizes, task=episode.instruction or source.name)
        written += 1
    if written == 0:
        raise ValueError(f"no episode of {source.name} was converted ({len(source.skipped)} skipped)")
    dataset.finalize()
    converted = lerobot_entry(entry, cfg.embodiment_name)
    (root / ENTRY_FILE).write_text(yaml.safe_dump(converted, sort_keys=False, default_flow_style=None))
    if entry.action_kind is not None:
        write_action_kind(root, entry.action_kind)
    print(f"wrote {written} episodes to {root} ({len(source.skipped)} skipped); its entry: {root / ENTRY_FILE}"
          f"{f', action kind in {root / EMBODIMENT_FILE}' if entry.action_kind else ''}")
    return root


def _image_shape(source: RLDSDataset, slot: str, image_size: int) -> tuple[int, int, int]:
    if image_size > 0:
        return (image_size, image_size, 3)
    shape = source.features[source.entry.slot(slot).key].shape
    return (int(shape[0]), int(shape[1]), 3)


def _add_episode(dataset, episode: Episode, sizes: dict[str, tuple[int, int, int]], task: str) -> None:
    for t in range(len(episode)):
        frame = {"action": episode.actions[t], "observation.state": episode.state[t], "task": task}
        for slot, (height, width, _) in sizes.items():
            image = episode.images[slot][t]
            if image.shape[:2] != (height, width):
                image = np.asarray(PIL.Image.fromarray(image).resize((width, height), PIL.Image.BILINEAR))
            frame[f"observation.images.{slot}"] = image
        dataset.add_frame(frame)
    dataset.save_episode()

