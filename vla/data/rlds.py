"""Read an RLDS / Open X-Embodiment dataset as tfds writes it, without TensorFlow, through a registry entry.

A tfds dataset is a folder `<name>/<version>/` holding `dataset_info.json`, `features.json` (the feature tree) and
shards `<name>-<split>.tfrecord-00000-of-000NN`. Each TFRecord record is one episode, a `tf.train.Example` whose
step features are flattened over the episode's T steps under keys joined by "/" (tfds' example_serializer):
`steps/observation/image` holds T encoded JPEG/PNG images, `steps/action/world_vector` T x 3 floats, bools are
int64 (`steps/action/open_gripper`, `steps/is_first`), strings bytes (`steps/language_instruction`).

    dataset = RLDSDataset("data/bridge/0.1.0", load_embodiment("bridge"))
    for episode in dataset.episodes(max_episodes=10, skip_bad_episodes=True):
        episode.actions  # float32 [T, D]: the entry's action parts, concatenated in order
        episode.state    # float32 [T, S]
        episode.images   # {slot: uint8 [T, H, W, 3]} for every camera the entry maps
        episode.instruction

The dataset is checked against the entry before any episode is read (every key it names exists, action / state keys
are as wide as it says, every RGB camera of the dataset is mapped to a slot): those errors are the entry's to fix and
are never skipped. Each episode is then checked (CRC of the record, keys present, T x width values, finite actions
and state, decodable images); with `skip_bad_episodes` such an episode is left out, printed with its reason, and
counted. Every error is an `RLDSError` naming the dataset, shard, episode, step and key.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import re
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import numpy as np
import PIL.Image
from google.protobuf.message import DecodeError
from tfrecord import example_pb2

from vla.data.registry import Embodiment, Part

SHARD = re.compile(r"^(?P<name>.+)-(?P<split>[^-]+)\.tfrecord-(?P<index>\d+)-of-(?P<count>\d+)$")
_CRC_MASK_DELTA = 0xA282EAD8


class RLDSError(ValueError):
    """A dataset that cannot be read as its entry says. `skippable`: the fault is one episode's (bad record, key
    missing from it, NaN / inf, undecodable image), so `skip_bad_episodes` may leave that episode out; otherwise it
    is the dataset's or the entry's as a whole."""

    def __init__(self, message: str, dataset: str, shard: str = "", episode: int | None = None,
                 step: int | None = None, key: str = "", skippable: bool = True):
        where = [f"RLDS dataset {dataset}"]
        where += [f"shard {shard}"] if shard else []
        where += [f"episode {episode}"] if episode is not None else []
        where += [f"step {step}"] if step is not None else []
        where += [f"key {key!r}"] if key else []
        super().__init__(f"{', '.join(where)}: {message}")
        self.dataset, self.shard, self.episode, self.step, self.key = dataset, shard, episode, step, key
        self.skippable = skippable


@dataclass(frozen=True)
class StepFeature:
    """One leaf of the step feature tree in features.json: `key` is its path inside a step ("observation/image");
    kind image | tensor | text; shape the per-step shape ([] for a scalar); dtype as tfds names it."""

    key: str
    kind: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def width(self) -> int:
        """Values per step in the flattened record (one encoded image or string per step)."""
        return 1 if self.kind in ("image", "text") else math.prod(self.shape)

    @property
    def is_camera(self) -> bool:
        return self.kind == "image" and self.shape[-1:] == (3,)


@dataclass
class Episode:
    """One episode of T steps, read through an entry. index: its place in the dataset (0-based over the shards in
    order, skipped episodes included); record: its place in `shard`."""

    index: int
    shard: str
    record: int
    actions: np.ndarray  # float32 [T, D]
    state: np.ndarray  # float32 [T, S]
    images: dict[str, np.ndarray]  # slot -> uint8 [T, H, W, 3]
    instruction: str

    def __len__(self) -> int:
        return self.actions.shape[0]


@dataclass
class RLDSDataset:
    """An RLDS folder (`<name>/<version>/`) read through registry entry `entry` (format rlds). Construction checks
    the dataset's features against the entry; `episodes()` reads the episodes."""

    root: Path
    entry: Embodiment
    split: str = "train"
    name: str = field(init=False)
    shards: list[Path] = field(init=False)
    features: dict[str, StepFeature] = field(init=False)
    skipped: list[str] = field(init=False, default_factory=list)  # one line per episode the last read skipped

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.entry.format != "rlds":
            raise ValueError(f"{self.entry.source} describes a {self.entry.format} dataset; RLDSDataset reads "
                             f"entries of format rlds")
        self.name = _dataset_name(self.root)
        self.shards = _shards(self.root, self.split, self.name)
        self.features = read_step_features(self.root, self.name)
        self._check_entry()

    def error(self, message: str, **where) -> RLDSError:
        return RLDSError(message, dataset=f"{self.name} ({self.root})", **where)

    @property
    def camera_slots(self) -> list[str]:
        """The image slots the entry fills, in entry order."""
        return [s.name for s in self.entry.cameras if not s.missing]

    def episodes(self, max_episodes: int | None = None, skip_bad_episodes: bool = False) -> Iterator[Episode]:
        """The episodes in shard order, at most `max_episodes` of them read (None: all). A bad episode raises its
        RLDSError, or with `skip_bad_episodes` is printed, counted in `self.skipped` and left out (episodes skipped
        count towards max_episodes: it bounds what is read, not what is kept)."""
        self.skipped = []
        index = 0
        for shard in self.shards:
            for record, payload, crc_ok in read_records(shard, self.error, first_episode=index):
                if max_episodes is not None and index >= max_episodes:
                    self._report_skipped(index)
                    return
                try:
                    yield self._episode(payload, crc_ok, index, shard.name, record)
                except RLDSError as error:
                    if not (skip_bad_episodes and error.skippable):
                        raise
                    self.skipped.append(str(error))
                    print(f"skipping: {error}", file=sys.stderr)
                index += 1
        self._report_skipped(index)

    def _report_skipped(self, read: int) -> None:
        if self.skipped:
            print(f"skipped {len(self.skipped)} of {read} episodes of {self.name} (skip_bad_episodes)",
                  file=sys.stderr)

    def _check_entry(self) -> None:
        """Keys, kinds and widths of the entry against features.json, and every RGB camera mapped to a slot."""
        keys = {p.key for p in self.entry.action + self.entry.state}
        for key in sorted(keys):
            feature = self._feature(key)
            if feature.kind != "tensor" or feature.dtype in ("string", "str"):
                raise self.error(f"is a {feature.kind} feature of dtype {feature.dtype}; {self.entry.source} reads "
                                 f"numbers from it", key=key, skippable=False)
            if feature.width != self.entry.width(key):
                raise self.error(f"has {feature.width} values per step (shape {list(feature.shape)} in "
                                 f"features.json); {self.entry.source} expects {self.entry.width(key)}",
                                 key=key, skippable=False)
        if self.entry.instruction_key:
            self._feature(self.entry.instruction_key)
        mapped = {s.key for s in self.entry.cameras if not s.missing}
        for key in mapped:
            if not self._feature(key).is_camera:
                raise self.error(f"is not an RGB image (features.json: {self._feature(key)}); {self.entry.source} "
                                 f"maps it to a camera slot", key=key, skippable=False)
        unmapped = [k for k, f in self.features.items() if f.is_camera and k not in mapped]
        if unmapped:
            raise self.error(f"camera(s) {unmapped} are not mapped by {self.entry.source}: give each a slot under "
                             f"cameras (the model's image slots: {self.entry.slots})", key=unmapped[0],
                             skippable=False)

    def _feature(self, key: str) -> StepFeature:
        if key not in self.features:
            close = difflib.get_close_matches(key, list(self.features), n=3)
            hint = f" (did you mean {close}?)" if close else ""
            raise self.error(f"no such step feature in features.json, which {self.entry.source} reads{hint}; the "
                             f"steps hold {sorted(self.features)}", key=key, skippable=False)
        return self.features[key]

    def _episode(self, payload: bytes, crc_ok: bool, index: int, shard: str, record: int) -> Episode:
        def error(message: str, **where) -> RLDSError:
            return self.error(message, shard=shard, episode=index, **where)

        if not crc_ok:
            raise error(f"record {record} fails its CRC check (corrupted shard; download it again)")
        example = example_pb2.Example()
        try:
            example.ParseFromString(payload)
        except DecodeError as exc:
            raise error(f"record {record} is not a tf.train.Example ({exc})") from exc
        steps = _StepReader(example.features.feature, self.features, error)
        actions = steps.vectors(self.entry.action)
        state = steps.vectors(self.entry.state, length=len(actions))
        images = {s.name: steps.images(s.key, len(actions)) for s in self.entry.cameras if not s.missing}
        instruction = steps.instruction(self.entry.instruction_key, len(actions)) if self.entry.instruction_key else ""
        return Episode(index, shard, record, actions, state, images, instruction)


class _StepReader:
    """The step features of one episode's Example, checked as they are read; errors come from `error`."""

    def __init__(self, features, specs: dict[str, StepFeature], error):
        self.features, self.specs, self.error = features, specs, error

    def values(self, key: str) -> np.ndarray | list[bytes]:
        flat = f"steps/{key}"
        if flat not in self.features:
            raise self.error("missing from this episode's record (features.json declares it)", key=key)
        feature = self.features[flat]
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            return list(feature.bytes_list.value)
        if kind is None:
            return np.zeros(0, np.float32)
        return np.asarray(getattr(feature, kind).value, dtype=np.float64 if kind == "int64_list" else np.float32)

    def table(self, key: str, length: int | None) -> np.ndarray:
        """float32 [T, width] of numeric step feature `key`; T from the value count when `length` is None."""
        values, width = self.values(key), self.specs[key].width
        if isinstance(values, list):
            raise self.error("holds bytes, not numbers", key=key)
        steps = length if length is not None else len(values) // width
        if steps == 0 or len(values) != steps * width:
            raise self.error(f"holds {len(values)} values; expected {steps} steps x {width}", key=key)
        return values.reshape(steps, width).astype(np.float32)

    def vectors(self, parts: tuple[Part, ...], length: int | None = None) -> np.ndarray:
        """The parts' values concatenated, float32 [T, sum of widths]; NaN / inf is an error naming the step."""
        columns = []
        for part in parts:
            table = self.table(part.key, length)
            length = table.shape[0]
            values = table[:, part.start:part.stop]
            bad = ~np.isfinite(values).all(axis=1)
            if bad.any():
                raise self.error(f"NaN or inf in {list(part.names)} ({int(bad.sum())} bad steps in this episode)",
                                 step=int(bad.argmax()), key=part.key)
            columns.append(values)
        return np.concatenate(columns, axis=1) if columns else np.zeros((length or 0, 0), np.float32)

    def images(self, key: str, length: int) -> np.ndarray:
        """uint8 [T, H, W, 3] decoded from the T encoded images of `key`."""
        encoded = self.values(key)
        if not isinstance(encoded, list) or len(encoded) != length:
            raise self.error(f"holds {len(encoded)} images for {length} steps", key=key)
        frames = []
        for step, data in enumerate(encoded):
            try:
                frames.append(np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB")))
            except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError for some broken headers
                raise self.error(f"image does not decode ({exc})", step=step, key=key) from exc
        if len({f.shape for f in frames}) > 1:
            raise self.error(f"images of different sizes {sorted({f.shape for f in frames})}", key=key)
        return np.stack(frames)

    def instruction(self, key: str, length: int) -> str:
        """The first step's instruction: a string, or (language_table) zero-padded UTF-8 byte values."""
        values = self.values(key)
        if isinstance(values, list):
            return values[0].decode("utf-8") if values else ""
        codes = values.reshape(length, -1)[0].astype(np.int64)
        return bytes(int(c) for c in codes if c).decode("utf-8")


def read_records(path: Path, error, first_episode: int = 0) -> Iterator[tuple[int, bytes, bool]]:
    """(record index, payload, payload CRC ok) for each record of a TFRecord file (framing: uint64 length, masked
    crc32c of the length, payload, masked crc32c of the payload). A bad length CRC or a truncated file loses the
    framing of the rest of the shard: a non-skippable error (naming the episode as `first_episode` + record).
    Written by hand since the `tfrecord` package's reader reads the CRCs but never checks them, so it cannot tell
    a corrupted shard."""
    def lost(message: str, record: int) -> RLDSError:
        return error(f"{message}; the rest of the shard cannot be read (download it again)", shard=path.name,
                     episode=first_episode + record, skippable=False)

    with open(path, "rb") as file:
        record = 0
        while header := file.read(12):
            if len(header) < 12:
                raise lost(f"{len(header)} stray bytes after the last record", record)
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if masked_crc(length_bytes) != length_crc:
                raise lost(f"record {record}'s length fails its CRC check", record)
            (length,) = struct.unpack("<Q", length_bytes)
            payload, footer = file.read(length), file.read(4)
            if len(payload) < length or len(footer) < 4:
                raise lost(f"record {record} is truncated (the shard ends inside it)", record)
            yield record, payload, masked_crc(payload) == struct.unpack("<I", footer)[0]
            record += 1


def masked_crc(data: bytes) -> int:
    """TFRecord's masked crc32c."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def read_step_features(root: Path, name: str) -> dict[str, StepFeature]:
    """The leaves of the `steps` feature tree of `root`/features.json, by path inside a step."""
    path = root / "features.json"
    if not path.is_file():
        raise RLDSError(f"no features.json in {root} (tfds writes it beside the shards; point at the "
                        f"<name>/<version>/ folder)", dataset=name, skippable=False)
    top = json.loads(path.read_text()).get("featuresDict", {}).get("features", {})
    if "steps" not in top:
        raise RLDSError(f"{path} has no `steps` feature (features {sorted(top)}); not an RLDS dataset",
                        dataset=name, skippable=False)
    leaves: dict[str, StepFeature] = {}
    _walk(top["steps"].get("sequence", {}).get("feature", {}), "", leaves)
    return leaves


def _walk(node: dict, prefix: str, leaves: dict[str, StepFeature]) -> None:
    """Collect the leaves under a features.json node (FeaturesDict nodes nest by name)."""
    if "featuresDict" in node:
        for name, child in node["featuresDict"].get("features", {}).items():
            _walk(child, f"{prefix}/{name}" if prefix else name, leaves)
        return
    for kind in ("image", "tensor", "text"):
        if kind in node:
            spec = node[kind]
            shape = tuple(int(d) for d in spec.get("shape", {}).get("dimensions", []))
            leaves[prefix] = StepFeature(prefix, kind, shape, spec.get("dtype", "string" if kind == "text" else ""))
            return


def _dataset_name(root: Path) -> str:
    info = root / "dataset_info.json"
    if info.is_file():
        return json.loads(info.read_text()).get("name") or root.parent.name
    return root.parent.name


def _shards(root: Path, split: str, name: str) -> list[Path]:
    """The split's shards in order; every one of `-of-N` must be there."""
    if not root.is_dir():
        raise RLDSError(f"{root} is not a folder", dataset=name, skippable=False)
    matches = [(SHARD.match(p.name), p) for p in root.iterdir()]
    shards = sorted((int(m["index"]), int(m["count"]), p) for m, p in matches if m and m["split"] == split)
    if not shards:
        splits = sorted({m["split"] for m, _ in matches if m})
        raise RLDSError(f"no {split!r} shards (<name>-{split}.tfrecord-NNNNN-of-NNNNN) in {root}; splits there: "
                        f"{splits}", dataset=name, skippable=False)
    count = shards[0][1]
    absent = sorted(set(range(count)) - {i for i, _, _ in shards})
    if absent:
        raise RLDSError(f"shards {absent} of {count} are missing from {root}", dataset=name, skippable=False)
    return [p for _, _, p in shards]
