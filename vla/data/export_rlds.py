"""`vla-data export-rlds`: a LeRobot dataset to an RLDS / Open X-Embodiment dataset in tfds' on-disk layout, through
two registry entries: the source's (which LeRobot columns hold what) and a target entry of format rlds (which RLDS
step keys to write them to). The inverse of `vla-data convert-rlds`.

    vla-data export-rlds --root outputs/datasets/robosuite_panda --repo_id local/robosuite_panda \\
        --source_embodiment robosuite_panda_osc --embodiment_config robosuite_panda_osc_rlds \\
        --output_root outputs/rlds [--name robosuite_panda_osc_rlds] [--version 0.1.0] [--shards 4]

Writes `<output_root>/<name>/<version>/`: dataset_info.json, features.json and `shards` TFRecord shards
`<name>-train.tfrecord-0000i-of-0000N`, one `tf.train.Example` per episode with tfds' flattened keys (as
vla.data.rlds reads them): every step feature under `steps/<key>`, its T steps' values concatenated.

What goes where: the action / state values go to the target's action / state parts by dimension name (the source's
names: its entry's, else the dataset's feature names; by position when the dataset does not name its values), and
every value is written (an export that would drop or invent a value is an error); the camera filling slot `s` in the
source (its entry's camera for `s`; without an entry `observation.images.<s>`) goes to the target's key for `s`,
JPEG-encoded as Open-X stores images; each step's LeRobot task to the target's `instruction_key` (text); and the
RLDS step fields as Open-X has them: is_first, is_last, is_terminal, reward, discount. `--episodes_succeed` (default
true, as `vla-demos` keeps only successful episodes): each episode's last step is terminal with reward 1; false: no
step is terminal and every reward is 0.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from tfrecord.writer import TFRecordWriter
from tqdm import tqdm

from vla.data.dataset import (
    DatasetLayout,
    _decode_images,
    _default_layout,
    _feature_names,
    entry_layout,
    read_numeric_columns,
)
from vla.data.registry import Embodiment, Part, load_embodiment
from vla.data.rlds import StepFeature

FDICT = "tensorflow_datasets.core.features.features_dict.FeaturesDict"
# Open-X's per-step RLDS fields beside the entry's keys (tfds' rlds.rlds_base step spec)
STEP_FIELDS = {"is_first": "bool", "is_last": "bool", "is_terminal": "bool", "reward": "float32",
               "discount": "float32"}


@dataclass
class ExportRLDSConfig:
    root: str = ""  # the LeRobot dataset's root
    repo_id: str = ""
    # the source's registry entry (format lerobot; name or YAML path) naming its keys, values and camera slots;
    # "" = LeRobot's default keys, the dataset's feature names, cameras by name (observation.images.<slot>)
    source_embodiment: str = ""
    embodiment_config: str = ""  # the target entry (format rlds): the RLDS step key of every value and camera
    output_root: str = ""  # the dataset goes to <output_root>/<name>/<version>/ (must not exist yet)
    name: str = ""  # the tfds dataset name; "" = the target entry's name
    version: str = "0.1.0"
    shards: int = 1  # TFRecord files the episodes are spread over (at most the number of episodes)
    max_episodes: int = 0  # 0 = all
    jpeg_quality: int = 95  # tf.image.encode_jpeg's default, which tfds' Image feature uses
    episodes_succeed: bool = True  # every episode ends in success: its last step is terminal with reward 1


def features_json(features: dict[str, StepFeature]) -> dict:
    """features.json as tfds writes it for an RLDS dataset: the step features as FeaturesDicts nested by key path,
    `steps` a Dataset of them, and `episode_metadata/file_path` (the inverse of vla.data.rlds.read_step_features)."""
    steps: dict = {}
    for key, feature in features.items():
        node = steps
        for part in key.split("/")[:-1]:
            node = node.setdefault(part, {"pythonClassName": FDICT, "featuresDict": {"features": {}}})
            node = node["featuresDict"]["features"]
        node[key.split("/")[-1]] = _leaf(feature)
    return {"pythonClassName": FDICT, "featuresDict": {"features": {
        "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                  "sequence": {"feature": {"pythonClassName": FDICT, "featuresDict": {"features": steps}},
                               "length": "-1"}},
        "episode_metadata": {"pythonClassName": FDICT, "featuresDict": {"features": {"file_path": {
            "pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}}}}}}}


def _leaf(feature: StepFeature) -> dict:
    dims = {"dimensions": [str(d) for d in feature.shape]} if feature.shape else {}
    if feature.kind == "image":
        return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                "image": {"shape": dims, "dtype": feature.dtype, "encodingFormat": "jpeg"}}
    if feature.kind == "text":
        return {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}
    kind = "scalar.Scalar" if not feature.shape else "tensor_feature.Tensor"
    return {"pythonClassName": f"tensorflow_datasets.core.features.{kind}",
            "tensor": {"shape": dims, "dtype": feature.dtype, "encoding": "none"}}


def flat_feature(value) -> tuple[list, str]:
    """One step feature's T values as the `tfrecord` writer takes them: encoded images / strings (a list of bytes)
    as bytes, bools and integers as int64, the rest as float32, flattened over the steps (tfds' serializer)."""
    if isinstance(value, list):
        return value, "byte"
    value = np.asarray(value)
    if value.dtype.kind in "biu":
        return value.astype(np.int64).ravel().tolist(), "int"
    return value.astype(np.float32).ravel().tolist(), "float"


def write_rlds(root: Path, name: str, features: dict[str, StepFeature], episodes: Iterable[tuple[str, dict]],
               num_episodes: int, shards: int = 1, version: str = "0.1.0") -> Path:
    """A tfds RLDS folder <root>/<name>/<version>: dataset_info.json, features.json and `shards` TFRecord shards of
    tf.train.Example episodes with tfds' flattened keys. `episodes`: `num_episodes` pairs (file_path, steps), steps
    {step key: its T values ([T, ...] numbers or T bytes)}; they are spread over the shards in order, the first
    shards one episode longer when they do not divide evenly."""
    if not 1 <= shards <= num_episodes:
        raise ValueError(f"shards must be between 1 and the number of episodes ({num_episodes}); got {shards}")
    folder = Path(root) / name / version
    folder.mkdir(parents=True)
    lengths = [num_episodes // shards + (i < num_episodes % shards) for i in range(shards)]
    episodes = iter(episodes)
    paths = [folder / f"{name}-train.tfrecord-{i:05d}-of-{shards:05d}" for i in range(shards)]
    for path, length in zip(paths, lengths, strict=True):
        writer = TFRecordWriter(str(path))
        for _ in range(length):
            file_path, steps = next(episodes)
            datum = {f"steps/{key}": flat_feature(value) for key, value in steps.items()}
            writer.write(datum | {"episode_metadata/file_path": ([file_path.encode()], "byte")})
        writer.close()
    (folder / "features.json").write_text(json.dumps(features_json(features), indent=1))
    info = {"name": name, "version": version, "fileFormat": "tfrecord", "moduleName": "vla.data.export_rlds",
            "splits": [{"name": "train", "numBytes": str(sum(p.stat().st_size for p in paths)),
                        "shardLengths": [str(n) for n in lengths],
                        "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return folder


@dataclass
class _Source:
    """The LeRobot dataset being exported: its arrow table, the layout of its columns and the names of their
    values (`unnamed`: "action" / "state" when the dataset does not name its values, so they are matched by
    position)."""

    dataset: object
    where: str
    layout: DatasetLayout
    names: dict[str, list[str]]  # "action" / "state" -> value names
    unnamed: set[str]
    cameras: dict[str, str]  # slot -> LeRobot image key
    tasks: dict[int, str]  # task_index -> task


def export(cfg: ExportRLDSConfig) -> Path:
    """Write the RLDS dataset; returns its <name>/<version> folder."""
    for name in ("root", "repo_id", "embodiment_config", "output_root"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    target = load_embodiment(cfg.embodiment_config)
    if target.format != "rlds":
        raise ValueError(f"{target.source} describes a {target.format} dataset; --embodiment_config names the RLDS "
                         f"entry to write (format rlds)")
    source = _open_source(cfg)
    name = cfg.name or target.name
    folder = Path(cfg.output_root) / name / cfg.version
    if folder.exists():
        raise ValueError(f"{folder} exists; remove it or choose another --output_root, --name or --version")
    plans = {which: _plan(target, which, source) for which in ("action", "state")}
    features = _step_features(target, source)
    columns = read_numeric_columns(source.dataset, source.layout)
    bounds = _episode_bounds(columns, source.where)[:cfg.max_episodes or None]
    episodes = (_episode(source, columns, start, stop, target, plans, cfg) for start, stop in bounds)
    episodes = tqdm(episodes, total=len(bounds), desc=f"exporting {cfg.repo_id} to RLDS", unit="episode")
    write_rlds(Path(cfg.output_root), name, features, episodes, len(bounds), cfg.shards, cfg.version)
    print(f"wrote {len(bounds)} episodes ({bounds[-1][1] - bounds[0][0]} steps) to {folder} in {cfg.shards} "
          f"shard(s); read it with the entry {target.source}")
    return folder


def _open_source(cfg: ExportRLDSConfig) -> _Source:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(cfg.repo_id, root=cfg.root)
    meta, where = dataset.meta, f"dataset {cfg.repo_id} at {cfg.root}"
    if cfg.source_embodiment:
        entry = load_embodiment(cfg.source_embodiment)
        layout = entry_layout(entry, meta, where)
        names, unnamed = {"action": entry.action_names, "state": entry.state_names}, set()
    else:
        layout = _default_layout(meta, None)
        keys = {"action": layout.action_key, "state": layout.state_key}
        names = {which: _feature_names(meta.features, key) for which, key in keys.items()}
        positional = {which: [f"{key}_{i}" for i in range(meta.features[key]["shape"][0])]
                      for which, key in keys.items()}
        unnamed = {w for w in keys if names[w] == positional[w] or len(names[w]) != len(positional[w])}
        names = {w: positional[w] if w in unnamed else names[w] for w in keys}
    cameras = dict(zip(layout.camera_slots, layout.camera_keys, strict=True))
    videos = [k for k in cameras.values() if k is not None and meta.features[k]["dtype"] == "video"]
    if videos:
        raise ValueError(f"{where}: cameras {videos} are stored as video; export-rlds reads datasets whose cameras "
                         f"are stored as images (LeRobotDataset.create(use_videos=False), as vla-demos writes)")
    tasks = {int(row.task_index): str(task) for task, row in meta.tasks.iterrows()}
    return _Source(dataset, where, layout, names, unnamed, {s: k for s, k in cameras.items() if k}, tasks)


def _plan(target: Embodiment, which: str, source: _Source) -> dict[str, list[int]]:
    """For every RLDS key the target's `which` parts write: the source value (column of the source's action /
    state vector) of each of its values, in order; matched by name (by position when the source names none)."""
    parts: tuple[Part, ...] = target.action if which == "action" else target.state
    wanted, have = [n for p in parts for n in p.names], source.names[which]
    if len(wanted) != len(have):
        raise ValueError(f"{source.where}: its {which} has {len(have)} values {have}; {target.source} writes "
                         f"{len(wanted)} {wanted} to {target.keys(which)}: the widths must be equal (an export "
                         f"writes every value, and only those)")
    missing = [n for n in wanted if n not in have]
    if missing and which not in source.unnamed:
        part = next(p for p in parts if missing[0] in p.names)
        raise ValueError(f"{source.where}: its {which} has no value {missing[0]!r} (it has {have}), which "
                         f"{target.source} writes to key {part.key!r}; name the values alike in both entries")
    column = {n: i for i, n in enumerate(wanted)} if which in source.unnamed else {n: have.index(n) for n in wanted}
    plan = {}
    for key in target.keys(which):
        index = [-1] * target.width(key)
        for part in (p for p in parts if p.key == key):
            index[part.start:part.stop] = [column[n] for n in part.names]
        if -1 in index:
            raise ValueError(f"{target.source}: key {key!r} has {target.width(key)} values (key_widths) but its "
                             f"parts name only {sum(i >= 0 for i in index)}; an export cannot invent the rest")
        plan[key] = index
    return plan


def _step_features(target: Embodiment, source: _Source) -> dict[str, StepFeature]:
    """The step features to write: the target's action / state keys (float32), its cameras (JPEG images of the
    source camera's size), its instruction (text) and Open-X's RLDS step fields."""
    features = {key: StepFeature(key, "tensor", (target.width(key),), "float32")
                for key in target.keys("action") + target.keys("state")}
    meta = source.dataset.meta
    for slot in (s for s in target.cameras if not s.missing):
        if slot.name not in source.cameras:
            raise ValueError(f"{source.where}: no camera fills image slot {slot.name!r} (its slots with a camera: "
                             f"{sorted(source.cameras)}), which {target.source} writes to key {slot.key!r}; mark the "
                             f"slot null in the target entry, or map a camera to it in the source's")
        features[slot.key] = StepFeature(slot.key, "image", _image_shape(meta.features[source.cameras[slot.name]]),
                                         "uint8")
    if target.instruction_key:
        features[target.instruction_key] = StepFeature(target.instruction_key, "text", (), "string")
    clash = sorted(set(features) & set(STEP_FIELDS))
    if clash:
        raise ValueError(f"{target.source}: keys {clash} are RLDS's own step fields; give the values other keys")
    return features | {key: StepFeature(key, "tensor", (), dtype) for key, dtype in STEP_FIELDS.items()}


def _image_shape(feature: dict) -> tuple[int, int, int]:
    """(H, W, 3) of a LeRobot image feature, whichever order its names give."""
    shape, names = tuple(int(d) for d in feature["shape"]), feature.get("names") or []
    if "height" in names and "width" in names:
        return shape[names.index("height")], shape[names.index("width")], 3
    return shape[0], shape[1], 3


def _episode_bounds(columns: dict[str, np.ndarray], where: str) -> list[tuple[int, int]]:
    """(first row, last row + 1) of each episode in table order; each episode's rows must be contiguous and its
    frame_index 0..T-1."""
    episode, frame = columns["episode_index"], columns["frame_index"]
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
    bounds = list(zip(starts.tolist(), [*starts[1:].tolist(), len(episode)], strict=True))
    if len(bounds) != len(np.unique(episode)):
        raise ValueError(f"{where}: the frames of an episode are not contiguous in the table")
    for start, stop in bounds:
        if not np.array_equal(frame[start:stop], np.arange(stop - start)):
            raise ValueError(f"{where}: episode {episode[start]}'s frame_index is not 0..{stop - start - 1}")
    return bounds


def _episode(source: _Source, columns: dict[str, np.ndarray], start: int, stop: int, target: Embodiment,
             plans: dict[str, dict[str, list[int]]], cfg: ExportRLDSConfig) -> tuple[str, dict]:
    """(file_path, steps) of the episode in rows start..stop-1: {step key: its T values}."""
    steps: dict = {}
    for which, plan in plans.items():
        values = columns[which][start:stop]
        steps |= {key: values[:, index] for key, index in plan.items()}
    table = source.dataset.hf_dataset.data
    for slot in (s for s in target.cameras if not s.missing):
        frames = _decode_images(table.column(source.cameras[slot.name]).slice(start, stop - start))
        steps[slot.key] = [_jpeg(frame, cfg.jpeg_quality) for frame in frames]
    if target.instruction_key:
        steps[target.instruction_key] = [source.tasks[int(t)].encode() for t in columns["task_index"][start:stop]]
    last = np.arange(stop - start) == stop - start - 1
    steps |= {"is_first": np.arange(stop - start) == 0, "is_last": last,
              "is_terminal": last & cfg.episodes_succeed, "reward": (last & cfg.episodes_succeed).astype(np.float32),
              "discount": np.ones(stop - start, np.float32)}
    return f"{cfg.repo_id}/episode_{int(columns['episode_index'][start])}", steps


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()

