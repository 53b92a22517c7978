"""Load a LeRobot dataset once into memory as (observation, action chunk) training pairs.

Shapes: N = frames, C = cameras, H = chunk size (action horizon), D = action dim, S = state dim.

Without an embodiment registry entry the dataset's keys are LeRobot's defaults ("action", "observation.state",
every "observation.images.*" camera); with one (`vla.data.registry`), the entry names the keys, maps cameras to the
model's image slots and is checked against the dataset (widths, names, fps, cameras) before anything is decoded.

Action-free data (video without action labels: `vla-data import-videos`, `vla-demos --action_free`) has no `action`
feature (and may have no `observation.state`): it loads with D = 0 (`has_actions` False), every chunk [H, 0] flagged
as padding, and the state [S] (S may be 0). With `latent_labels`, every sample also carries the dataset's
latent-action codes (vla.latent.labels, written by `vla-latent label`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor
from tqdm import tqdm

from vla.data.embodiment import EMBODIMENT_FILE, EmbodimentInfo, read_action_kind, recorded_action_kind
from vla.data.registry import Embodiment
from vla.latent.labels import LatentLabels, read_labels


@dataclass
class ChunkedDemos:
    """Every frame of a dataset with the chunk of actions that starts at it, in memory.

    images: uint8 [N, C, H_img, W_img, 3], the cameras the robot has, in `camera_keys` order (the model's image
        slots `camera_slots`, which without a registry entry are the camera names: "observation.images.<slot>");
        a slot the registry entry marks missing has key None and no images here (samples fill it with zeros and
        mask it: `slot_mask`).
    state: float32 [N, S] (S = 0 for action-free data without a state).
    actions: float32 [N, H, D]; actions[i, k] is the action k steps after frame i. D = 0 for action-free data.
    action_is_pad: bool [N, H]; True where i + k is past the end of frame i's episode
        (those actions repeat the episode's last action, as lerobot pads them); all True for action-free data.
    episode_index: int64 [N].
    task_index: int64 [N], indexing `tasks` (the instructions).
    latent_labels: the dataset's latent-action labels (codes int64 [N, K]) when it was loaded with them; samples
        then carry "latent_codes" [K].
    """

    images: Tensor
    state: Tensor
    actions: Tensor
    action_is_pad: Tensor
    episode_index: Tensor
    task_index: Tensor
    tasks: list[str]
    embodiment: str
    camera_keys: list[str | None]
    state_names: list[str]
    action_names: list[str]
    fps: float
    action_kind: str  # joint_position | ee_delta
    camera_slots: list[str] = field(default_factory=list)
    entry: Embodiment | None = None  # the registry entry the dataset was read with, if any
    n_obs_steps: int = 1  # history frames per sample that `__getitem__` returns
    frame_index: Tensor | None = None  # int64 [N]: each frame's index within its episode (as the dataset records it)
    latent_labels: LatentLabels | None = None

    def __post_init__(self) -> None:
        if not self.camera_slots:
            self.camera_slots = [key.removeprefix("observation.images.") for key in self.camera_keys]

    @property
    def slot_mask(self) -> Tensor:
        """bool [n_slots]: True at the slots the robot has a camera for."""
        return torch.tensor([key is not None for key in self.camera_keys])

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    @property
    def has_actions(self) -> bool:
        """False for action-free data (D = 0)."""
        return self.actions.shape[-1] > 0

    def chunks(self) -> tuple[Tensor, Tensor]:
        """Every frame's action chunk (float32 [N, H, D]) and pad flags (bool [N, H])."""
        return self.actions, self.action_is_pad

    def numeric(self) -> dict[str, np.ndarray]:
        """Every frame's state float32 [N, S] and own action [N, D] (what normalisation statistics are computed on)."""
        return {"state": self.state.numpy(), "action": self.actions[:, 0].numpy()}

    @property
    def info(self) -> EmbodimentInfo:
        """What deploy checks a robot against: action / state names, action kind, fps."""
        return EmbodimentInfo(list(self.action_names), list(self.state_names), self.action_kind, self.fps)

    def __len__(self) -> int:
        return self.state.shape[0]

    @property
    def chunk_size(self) -> int:
        return self.actions.shape[1]

    def instructions(self, indices: Tensor) -> list[str]:
        """The instruction of each frame in `indices` (int64 [B])."""
        return [self.tasks[i] for i in self.task_index[indices].tolist()]

    def history(self, indices: Tensor, n_obs_steps: int) -> Tensor:
        """Frame indices [B, n_obs_steps] of the frames ending at `indices`, oldest first; frames before the start
        of the episode repeat its first frame (as a robot's history does at the start of an episode)."""
        past = (indices[:, None] + torch.arange(-n_obs_steps + 1, 1)).clamp(min=0)  # (B, n); episodes are contiguous
        same_episode = self.episode_index[past] == self.episode_index[indices][:, None]
        # the earliest frame of the window still in the episode (its first frame) fills the slots before it
        earliest = torch.where(same_episode, past, torch.full_like(past, torch.iinfo(past.dtype).max)).amin(1)
        return torch.where(same_episode, past, earliest[:, None])

    def observation_images(self, indices: Tensor, n_obs_steps: int = 1) -> Tensor:
        """uint8 [B, n_obs_steps * n_slots, H_img, W_img, 3]: each frame's history, time-major (slots of t-1, then
        t); missing slots are zeros (`observation_mask` says which)."""
        frames = self.history(indices, n_obs_steps)  # (B, n)
        present = self.images[frames]  # (B, n, C_present, H, W, 3)
        slots = self.slot_mask
        if bool(slots.all()):
            return present.flatten(1, 2)
        images = present.new_zeros(*present.shape[:2], len(slots), *present.shape[3:])
        images[:, :, slots] = present
        return images.flatten(1, 2)

    def observation_mask(self, batch_size: int, n_obs_steps: int = 1) -> Tensor:
        """bool [B, n_obs_steps * n_slots]: False at the slots the robot has no camera for."""
        return self.slot_mask.repeat(n_obs_steps)[None].expand(batch_size, -1).clone()

    def __getitem__(self, i: int) -> dict:
        """Frame i as a raw sample (robot units; vla.data.transforms turns it into a training sample): images uint8
        [n_obs_steps * n_slots, S, S, 3], image_mask bool [n_obs_steps * n_slots], state [S], actions [H, D],
        action_is_pad [H], instruction, embodiment, episode_index, frame_index; latent_codes int64 [K] when loaded
        with latent labels."""
        index = torch.tensor([int(i)])
        return {
            "images": self.observation_images(index, self.n_obs_steps)[0],
            "image_mask": self.observation_mask(1, self.n_obs_steps)[0],
            "state": self.state[i],
            "actions": self.actions[i],
            "action_is_pad": self.action_is_pad[i],
            "instruction": self.tasks[int(self.task_index[i])],
            "embodiment": self.embodiment,
            "episode_index": int(self.episode_index[i]),
            **({} if self.frame_index is None else {"frame_index": int(self.frame_index[i])}),
            **self.latent_codes(index[0]),
        }

    def sample(self, batch_size: int, generator: torch.Generator | None = None, n_obs_steps: int = 1) -> dict:
        """A uniformly random batch of frames (with replacement).

        Returns images uint8 [B, n_obs_steps * C, H_img, W_img, 3], state [B, S], actions [B, H, D],
        action_is_pad [B, H], episode_index [B], instruction and embodiment (lists of B str); latent_codes int64
        [B, K] when loaded with latent labels.
        """
        indices = torch.randint(len(self), (batch_size,), generator=generator)
        return {
            "images": self.observation_images(indices, n_obs_steps),
            "image_mask": self.observation_mask(batch_size, n_obs_steps),
            "state": self.state[indices],
            "actions": self.actions[indices],
            "action_is_pad": self.action_is_pad[indices],
            "episode_index": self.episode_index[indices],
            "instruction": self.instructions(indices),
            "embodiment": [self.embodiment] * batch_size,
            **self.latent_codes(indices),
        }


    def latent_codes(self, indices: Tensor) -> dict[str, Tensor]:
        """{"latent_codes": int64 [..., K]} of the frames at `indices` (a scalar or [B]), or {} without labels."""
        if self.latent_labels is None:
            return {}
        return {"latent_codes": torch.from_numpy(self.latent_labels.codes)[indices]}


def check_finite(name: str, values: Tensor, episode_index: Tensor, frame_index: Tensor) -> None:
    """Raise a ValueError naming the first frame where values [N, ...] has NaN or inf."""
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} has NaN or inf at episode {int(episode_index[i])}, frame {int(frame_index[i])} "
                         f"({int(bad.sum())} bad frames in all)")


def check_dim(name: str, actual: int, expected: int | None) -> None:
    """Raise a ValueError if a dataset dimension differs from the one a config expects."""
    if expected is not None and actual != expected:
        raise ValueError(f"dataset {name} dim {actual} != config {name} dim {expected}")


def _feature_names(features: dict, key: str) -> list[str]:
    names = features[key].get("names")
    if isinstance(names, dict):  # some datasets nest names, e.g. {"motors": [...]}
        names = next(iter(names.values()))
    return list(names) if names else [f"{key}_{i}" for i in range(features[key]["shape"][0])]


@dataclass(frozen=True)
class DatasetLayout:
    """Which columns of a LeRobot dataset the loader reads: the action and state keys (and which of their values:
    None = all, in order), and the image keys that fill the model's image slots, in slot order. action_key None:
    action-free data (no action column; state_key may then be None too: no state, S = 0)."""

    action_key: str | None = "action"
    state_key: str | None = "observation.state"
    action_index: tuple[int, ...] | None = None
    state_index: tuple[int, ...] | None = None
    camera_keys: tuple[str | None, ...] = ()  # None: a slot the robot has no camera for (masked)
    camera_slots: tuple[str, ...] = ()


def load_chunked_demos(root: str, repo_id: str, chunk_size: int, expected_action_dim: int | None = None,
                       expected_state_dim: int | None = None, embodiment: str = "",
                       action_kind: str = "", entry: Embodiment | None = None,
                       camera_slots: list[str] | None = None, image_size: int | None = None,
                       latent_labels: bool = False) -> ChunkedDemos:
    """Read a LeRobot dataset through LeRobotDataset with action delta_timestamps, into memory.

    `embodiment` names the robot the frames belong to (normalisation statistics are kept under it);
    empty: the registry entry's name, else the dataset's robot_type ("unknown" when it has none). `action_kind`:
    joint_position | ee_delta, or empty for the entry's or the kind recorded with the dataset
    (`vla.data.embodiment.read_action_kind`; action-free data has none). `entry`: the registry entry describing the
    dataset (its keys, names, kind, fps and cameras are then used and checked); `camera_slots`: the image slots to
    read, in order (default: every slot the entry fills, or without an entry every camera of the dataset); a slot the
    entry marks missing (null) is kept, masked. `image_size`: frames are resized to image_size x image_size as they
    are decoded (None: kept at the dataset's size). `expected_action_dim` / `expected_state_dim` are checked for
    data with actions (action-free data has none to check). `latent_labels`: read the dataset's latent-action labels
    (`vla.latent.labels.read_labels`; an error naming `vla-latent label` when it has none).

    Chunks and pad flags are exactly what LeRobotDataset(repo_id, root, delta_timestamps=
    {action_key: [i / fps for i in range(chunk_size)]})[i] gives; a few frames are checked against it.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive; got {chunk_size}")
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    described = describe_dataset(meta, root, entry, camera_slots, action_kind, embodiment)
    layout, info = described.layout, described.info
    if info.has_actions:
        check_dim("action", _width(meta, layout.action_key, layout.action_index), expected_action_dim)
        check_dim("state", _width(meta, layout.state_key, layout.state_index), expected_state_dim)
    _check_image_mode(meta, layout)
    deltas = {layout.action_key: [i / meta.fps for i in range(chunk_size)]} if info.has_actions else None
    dataset = LeRobotDataset(repo_id, root=root, delta_timestamps=deltas)
    labels = read_labels(root, num_frames=len(dataset.hf_dataset)) if latent_labels else None
    columns = _read_columns(dataset, layout, image_size)
    check_numeric_finite(columns, layout)
    if labels is not None:
        check_label_order(columns["index"].numpy(), f"dataset {repo_id} at {root}")
    start, end = episode_bounds(columns["episode_index"].numpy(), f"dataset {repo_id} at {root}")
    rows, pads = chunk_rows(np.arange(len(start)), end, chunk_size, info.has_actions)
    actions, action_is_pad = columns["action"][torch.from_numpy(rows)], torch.from_numpy(pads)
    if info.has_actions:
        _check_against_getitem(dataset, actions, action_is_pad, layout)
    return ChunkedDemos(
        images=columns["images"], state=columns["state"], actions=actions, action_is_pad=action_is_pad,
        episode_index=columns["episode_index"], task_index=columns["task_index"], tasks=list(meta.tasks.index),
        embodiment=described.embodiment, camera_keys=list(layout.camera_keys), state_names=info.state_names,
        action_names=info.action_names, fps=info.fps, action_kind=info.action_kind,
        camera_slots=list(layout.camera_slots), entry=entry, frame_index=columns["frame_index"],
        latent_labels=labels)


def _check_image_mode(meta: Any, layout: DatasetLayout) -> None:
    """The in-memory reader decodes image columns; a camera stored as video is read by the streaming reader."""
    videos = [key for key in layout.camera_keys if key is not None and key in meta.video_keys]
    if videos:
        raise ValueError(f"dataset {meta.repo_id} at {meta.root} stores camera(s) {videos} as video; the in-memory "
                         f"reader reads image-mode datasets: read it with the streaming reader "
                         f"(vla.data.frames.LeRobotFrames: vla-train --data.reader=stream, vla-latent --reader=stream)")


def check_label_order(index: np.ndarray, where: str) -> None:
    """Latent-action labels are rows in LeRobot's global frame index order; the table's rows must be in that order
    (row i = frame index i) for row i's label to be frame i's."""
    if not np.array_equal(index, np.arange(len(index))):
        raise ValueError(f"{where}: its frames are not stored in global index order (index column "
                         f"{index[:10].tolist()}...), so latent-action labels cannot be matched to rows; re-save it")


def is_action_free(root: str, repo_id: str, entry: Embodiment | None = None) -> bool:
    """Whether a LeRobot dataset, read with `entry` (or LeRobot's default keys), has no actions: from its metadata
    alone, before any frame is read."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    if entry is not None:
        return not entry.has_actions
    return "action" not in LeRobotDatasetMetadata(repo_id, root=root).features


@dataclass(frozen=True)
class DescribedDataset:
    """What a LeRobot dataset is, read through a registry entry or LeRobot's defaults: the columns to read, what its
    numbers mean, and the embodiment name normalisation statistics are kept under."""

    layout: DatasetLayout
    info: EmbodimentInfo
    embodiment: str


def describe_dataset(meta: Any, root: str, entry: Embodiment | None, camera_slots: list[str] | None = None,
                     action_kind: str = "", embodiment: str = "") -> DescribedDataset:
    """The layout, names, action kind and fps of the dataset `meta` describes (see `load_chunked_demos` for the
    arguments); with an entry, the dataset is checked against it first. Slots the entry marks missing get camera key
    None (the readers fill them with zeros and mask them). A dataset without an action column (or with an
    action-free entry, `action: []`) is action-free: no action names, action kind "" (an --data.action_kind given
    for it is an error)."""
    where = f"dataset {meta.repo_id} at {root}"
    layout = _default_layout(meta, camera_slots) if entry is None else entry_layout(entry, meta, where, camera_slots)
    if layout.action_key is None:
        if action_kind:
            raise ValueError(f"{where} has no actions (action-free data); action_kind={action_kind!r} describes "
                             f"actions: leave it empty (--data.action_kind, or the mixture entry's)")
        state_names = (list(entry.state_names) if entry is not None else
                       [] if layout.state_key is None else _feature_names(meta.features, layout.state_key))
        info = EmbodimentInfo([], state_names, "", float(meta.fps) if entry is None else entry.fps)
    elif entry is None:
        info = EmbodimentInfo(_feature_names(meta.features, layout.action_key),
                              _feature_names(meta.features, layout.state_key),
                              read_action_kind(root, action_kind), float(meta.fps))
    else:
        info = EmbodimentInfo(list(entry.action_names), list(entry.state_names),
                              _entry_action_kind(entry, root, action_kind), entry.fps)
    default_name = entry.name if entry is not None else meta.robot_type or "unknown"
    return DescribedDataset(layout, info, embodiment or default_name)


def _default_layout(meta: Any, camera_slots: list[str] | None) -> DatasetLayout:
    """LeRobot's default keys; cameras by name ("observation.images.<slot>"), all of them unless slots are given.
    Without an "action" column the dataset is action-free (action_key None), and its state is optional."""
    action_key = "action" if "action" in meta.features else None
    state_key = "observation.state" if action_key is not None or "observation.state" in meta.features else None
    keys = list(meta.camera_keys)
    if camera_slots is not None:
        keys = [f"observation.images.{slot}" for slot in camera_slots]
        absent = [k for k in keys if k not in meta.camera_keys]
        if absent:
            raise ValueError(f"dataset {meta.repo_id} has no camera {absent}; it has {list(meta.camera_keys)}")
    return DatasetLayout(action_key=action_key, state_key=state_key, camera_keys=tuple(keys),
                         camera_slots=tuple(k.removeprefix("observation.images.") for k in keys))


def entry_layout(entry: Embodiment, meta: Any, where: str, camera_slots: list[str] | None = None) -> DatasetLayout:
    """The columns `entry` says hold a LeRobot dataset's actions, state and `camera_slots` (default: every slot the
    entry fills), after checking the dataset against the entry: format, fps, widths, names and cameras; a slot the
    entry marks missing gets camera key None.
    Errors name the dataset (`where`), the key, what the entry expects and what the dataset has."""
    if entry.format != "lerobot":
        raise ValueError(f"{where}: {entry.source} describes a {entry.format} dataset; this loader reads LeRobot "
                         f"datasets: convert it with `vla-data convert-rlds` and read the result with the entry it "
                         f"writes (<output_root>/meta/vla_embodiment.yaml)")
    if abs(float(meta.fps) - entry.fps) > 1e-6:
        raise ValueError(f"{where}: fps {meta.fps} != {entry.fps} in {entry.source} (fps); the actions would be "
                         f"executed at the wrong rate")
    # an action-free entry (action: []) reads no action, and a state only if it lists one
    action_key = _single_key(entry, "action", where) if entry.has_actions else None
    state_key = _single_key(entry, "state", where) if entry.has_actions or entry.state else None
    for key in (k for k in (action_key, state_key) if k is not None):
        _check_key(entry, meta.features, key, where)
    slots = list(camera_slots) if camera_slots is not None else [s.name for s in entry.cameras if not s.missing]
    return DatasetLayout(action_key=action_key, state_key=state_key,
                         action_index=_index(entry.action, entry.width(action_key)) if action_key else None,
                         state_index=_index(entry.state, entry.width(state_key)) if state_key else None,
                         camera_keys=tuple(_camera_keys(entry, meta, slots, where)),
                         camera_slots=tuple(slots))


def _single_key(entry: Embodiment, which: str, where: str) -> str:
    keys = entry.keys(which)
    if len(keys) != 1:
        raise ValueError(f"{where}: {entry.source} reads the {which} from {keys or 'no key'}; this loader reads "
                         f"one {which} key per dataset")
    return keys[0]


def _check_key(entry: Embodiment, features: dict, key: str, where: str) -> None:
    """The dataset has `key`, as wide as the entry says, and (where it names every value) with the entry's names."""
    if key not in features:
        raise ValueError(f"{where}: no key {key!r} ({entry.source} reads it); the dataset has {sorted(features)}")
    width, expected = features[key]["shape"][0], entry.width(key)
    if width != expected:
        raise ValueError(f"{where}: key {key!r} has {width} values per frame; {entry.source} expects {expected}")
    names = _feature_names(features, key)
    if len(names) != width or names == [f"{key}_{i}" for i in range(width)]:
        return  # the dataset does not name each value (e.g. names: ["actions"]): nothing to compare
    for part in (p for p in entry.action + entry.state if p.key == key):
        if names[part.start:part.stop] != list(part.names):
            raise ValueError(f"{where}: key {key!r} names values {part.start}..{part.stop - 1} "
                             f"{names[part.start:part.stop]}; {entry.source} calls them {list(part.names)}")


def _index(parts: tuple, width: int) -> tuple[int, ...] | None:
    """Indices of the values the parts read, or None when they read the whole key in order."""
    index = tuple(i for p in parts for i in range(p.start, p.stop))
    return None if index == tuple(range(width)) else index


def _camera_keys(entry: Embodiment, meta: Any, slots: list[str], where: str) -> list[str | None]:
    """Image keys of `slots`, in order (None for a slot the entry marks missing); every camera of the dataset must be
    mapped by the entry."""
    mapped = {s.key for s in entry.cameras if not s.missing}
    unmapped = [k for k in meta.camera_keys if k not in mapped]
    if unmapped:
        raise ValueError(f"{where}: camera(s) {unmapped} are not mapped by {entry.source}: give each a slot under "
                         f"cameras")
    keys = []
    for name in slots:
        slot = entry.slot(name)
        if slot.missing:
            keys.append(None)  # the robot has no such camera: the slot is filled with zeros and masked
            continue
        if slot.key not in meta.camera_keys:
            raise ValueError(f"{where}: no camera {slot.key!r} for slot {name!r} ({entry.source}); the dataset has "
                             f"{list(meta.camera_keys)}")
        keys.append(slot.key)
    return keys


def _entry_action_kind(entry: Embodiment, root: str, configured: str) -> str:
    """The entry's action kind; --data.action_kind or the dataset's own record may not contradict it."""
    kind = entry.info().action_kind
    for source, other in (("--data.action_kind", configured),
                          (f"{root}/{EMBODIMENT_FILE}", recorded_action_kind(root))):
        if other and other != kind:
            raise ValueError(f"{source} says the actions are {other!r}; {entry.source} says {kind!r}")
    return kind


def _width(meta: Any, key: str | None, index: tuple[int, ...] | None) -> int:
    if key is None:  # action-free data: no such column
        return 0
    if key not in meta.features:
        raise ValueError(f"dataset {meta.repo_id} has no key {key!r}; it has {sorted(meta.features)}")
    return len(index) if index is not None else meta.features[key]["shape"][0]


def read_numeric_columns(dataset: Any, layout: DatasetLayout) -> dict[str, np.ndarray]:
    """The numeric columns of the dataset's arrow table, no image decoded: state float32 [N, S] and action [N, D]
    (the layout's keys and indices; [N, 0] where the layout has no such key: action-free data),
    index / episode_index / frame_index / task_index int64 [N]."""
    table = dataset.hf_dataset.data
    if table.num_rows == 0:
        raise ValueError(f"dataset {dataset.repo_id} at {dataset.root} has no frames")
    columns = {name: np.zeros((table.num_rows, 0), np.float32) if key is None else
               _select(_vector_column(table.column(key)), index)
               for name, key, index in (("state", layout.state_key, layout.state_index),
                                        ("action", layout.action_key, layout.action_index))}
    for key in ("index", "episode_index", "frame_index", "task_index"):
        columns[key] = table.column(key).to_numpy().astype(np.int64)
    return columns


def _read_columns(dataset: Any, layout: DatasetLayout, image_size: int | None = None) -> dict[str, Tensor]:
    """Whole columns of the dataset's arrow table as tensors; images of the cameras the robot has decoded to uint8
    [N, C_present, H, W, 3] (resized to image_size when given).

    Reading columns at once takes ~1 s for 7k frames. LeRobotDataset.__getitem__ costs ~5 ms a
    frame here (it decodes the image of every frame in the action chunk), far too slow to
    load through, let alone to train from directly on 2 CPU cores.
    """
    columns = {name: torch.from_numpy(values) for name, values in read_numeric_columns(dataset, layout).items()}
    table = dataset.hf_dataset.data
    present = [key for key in layout.camera_keys if key is not None]
    cams = [_decode_images(table.column(key), image_size)
            for key in tqdm(present, desc="decoding images", unit="camera")]
    columns["images"] = torch.from_numpy(np.stack(cams, axis=1))
    return columns


def _select(values: np.ndarray, index: tuple[int, ...] | None) -> np.ndarray:
    """values [N, W] -> [N, len(index)] (all of it when index is None)."""
    return values if index is None else np.ascontiguousarray(values[:, list(index)])


def _vector_column(column: Any) -> np.ndarray:
    """float32 [N, D] from an arrow fixed_size_list<float> column."""
    flat = column.combine_chunks()
    return flat.flatten().to_numpy().astype(np.float32).reshape(len(flat), -1)


def _decode_images(column: Any, image_size: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] from an arrow column of HF Image structs (embedded bytes or a path), each frame resized to
    image_size x image_size when given (`decode_image`)."""
    return np.stack([decode_image(cell, image_size) for cell in column.to_pylist()])


def decode_image(cell: dict, size: int | None = None) -> np.ndarray:
    """uint8 [H, W, 3] from one HF Image struct (embedded bytes or a path), resized to size x size if given
    (bicubic, as the backbone resizes)."""
    source = io.BytesIO(cell["bytes"]) if cell["bytes"] is not None else cell["path"]
    image = PIL.Image.open(source).convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), PIL.Image.Resampling.BICUBIC)
    return np.asarray(image)


def check_numeric_finite(columns: dict, layout: DatasetLayout) -> None:
    """NaN / inf in the state or action columns (as read by `read_numeric_columns`) is a ValueError naming the
    episode, frame and key."""
    where = [torch.as_tensor(columns[k]) for k in ("episode_index", "frame_index")]
    for name, key in (("state", layout.state_key), ("action", layout.action_key)):
        if key is not None:
            check_finite(key, torch.as_tensor(columns[name]), *where)


def episode_bounds(episode_index: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(first row, last row) of each row's episode, int64 [N] each; every episode's rows must be contiguous."""
    n = len(episode_index)
    change = np.flatnonzero(episode_index[1:] != episode_index[:-1]) + 1
    starts, stops = np.r_[0, change], np.r_[change, n]
    if len(np.unique(episode_index[starts])) != len(starts):
        raise ValueError(f"{where}: the frames of an episode are not contiguous (episode_index "
                         f"{episode_index[starts].tolist()[:20]} runs); re-save the dataset in episode order")
    lengths = stops - starts
    return np.repeat(starts, lengths), np.repeat(stops - 1, lengths)


def chunk_rows(rows: np.ndarray, last_row: np.ndarray, chunk_size: int,
               has_actions: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the action chunks starting at `rows` (int64 [B]) and their pad flags, ([B, H] int64, [B, H] bool).

    `last_row`: the last row of each row's episode, int64 [N] (`episode_bounds`). As lerobot's delta-timestamp query
    does, a step past the episode's end repeats its last action and is flagged as padding. Without actions
    (action-free data) every step is padding: no action of the chunk is real.
    """
    steps = rows[:, None] + np.arange(chunk_size)
    end = last_row[rows][:, None]
    return np.minimum(steps, end), (steps > end) | (not has_actions)


def _check_against_getitem(dataset: Any, actions: Tensor, action_is_pad: Tensor, layout: DatasetLayout,
                           n: int = 4) -> None:
    """Chunks built from the columns (`chunk_rows`) must equal what LeRobotDataset.__getitem__ gives, at a few frames
    (a guard against lerobot changing how it pads chunks)."""
    key = layout.action_key
    for i in torch.linspace(0, len(actions) - 1, n).long().tolist():
        item = dataset[i]
        expected = item[key] if layout.action_index is None else item[key][:, list(layout.action_index)]
        if not (torch.equal(expected, actions[i]) and torch.equal(item[f"{key}_is_pad"], action_is_pad[i])):
            raise RuntimeError(f"action chunk of frame {i} differs from LeRobotDataset.__getitem__; "
                               "lerobot's delta-timestamp padding changed")
