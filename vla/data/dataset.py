"""Load a LeRobot dataset once into memory as (observation, action chunk) training pairs.

Shapes: N = frames, C = cameras, H = chunk size (action horizon), D = action dim, S = state dim.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor
from tqdm import tqdm

from vla.data.embodiment import EmbodimentInfo, read_action_kind


@dataclass
class ChunkedDemos:
    """Every frame of a dataset with the chunk of actions that starts at it, in memory.

    images: uint8 [N, C, H_img, W_img, 3], cameras in `camera_keys` order.
    state: float32 [N, S].
    actions: float32 [N, H, D]; actions[i, k] is the action k steps after frame i.
    action_is_pad: bool [N, H]; True where i + k is past the end of frame i's episode
        (those actions repeat the episode's last action, as lerobot pads them).
    episode_index: int64 [N].
    task_index: int64 [N], indexing `tasks` (the instructions).
    """

    images: Tensor
    state: Tensor
    actions: Tensor
    action_is_pad: Tensor
    episode_index: Tensor
    task_index: Tensor
    tasks: list[str]
    embodiment: str
    camera_keys: list[str]
    state_names: list[str]
    action_names: list[str]
    fps: float
    action_kind: str  # joint_position | ee_delta

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
        """uint8 [B, n_obs_steps * C, H_img, W_img, 3]: each frame's history, time-major (cameras of t-1, then t)."""
        frames = self.history(indices, n_obs_steps)  # (B, n)
        images = self.images[frames]  # (B, n, C, H, W, 3)
        return images.flatten(1, 2)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, n_obs_steps: int = 1) -> dict:
        """A uniformly random batch of frames (with replacement).

        Returns images uint8 [B, n_obs_steps * C, H_img, W_img, 3], state [B, S], actions [B, H, D],
        action_is_pad [B, H], episode_index [B], instruction and embodiment (lists of B str).
        """
        indices = torch.randint(len(self), (batch_size,), generator=generator)
        return {
            "images": self.observation_images(indices, n_obs_steps),
            "state": self.state[indices],
            "actions": self.actions[indices],
            "action_is_pad": self.action_is_pad[indices],
            "episode_index": self.episode_index[indices],
            "instruction": self.instructions(indices),
            "embodiment": [self.embodiment] * batch_size,
        }


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


def load_chunked_demos(root: str, repo_id: str, chunk_size: int, expected_action_dim: int | None = None,
                       expected_state_dim: int | None = None, embodiment: str = "",
                       action_kind: str = "") -> ChunkedDemos:
    """Read a LeRobot dataset through LeRobotDataset with action delta_timestamps, into memory.

    `embodiment` names the robot the frames belong to (normalisation statistics are kept under it);
    empty: the dataset's robot_type ("unknown" when it has none). `action_kind`: joint_position | ee_delta, or
    empty for the kind recorded with the dataset (`vla.data.embodiment.read_action_kind`).

    Chunks and pad flags are exactly what LeRobotDataset(repo_id, root, delta_timestamps=
    {"action": [i / fps for i in range(chunk_size)]})[i] gives; a few frames are checked against it.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive; got {chunk_size}")
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    action_kind = read_action_kind(root, action_kind)
    check_dim("action", meta.features["action"]["shape"][0], expected_action_dim)
    check_dim("state", meta.features["observation.state"]["shape"][0], expected_state_dim)
    dataset = LeRobotDataset(repo_id, root=root, delta_timestamps={"action": [i / meta.fps for i in range(chunk_size)]})
    columns = _read_columns(dataset, meta.camera_keys)
    check_finite("observation.state", columns["state"], columns["episode_index"], columns["frame_index"])
    check_finite("action", columns["action"], columns["episode_index"], columns["frame_index"])
    actions, action_is_pad = _action_chunks(dataset, columns)
    _check_against_getitem(dataset, actions, action_is_pad)
    return ChunkedDemos(
        images=columns["images"], state=columns["state"], actions=actions, action_is_pad=action_is_pad,
        episode_index=columns["episode_index"], task_index=columns["task_index"], tasks=list(meta.tasks.index),
        embodiment=embodiment or meta.robot_type or "unknown", camera_keys=list(meta.camera_keys),
        state_names=_feature_names(meta.features, "observation.state"),
        action_names=_feature_names(meta.features, "action"), fps=float(meta.fps), action_kind=action_kind)


def _read_columns(dataset: Any, camera_keys: list[str]) -> dict[str, Tensor]:
    """Whole columns of the dataset's arrow table as tensors; images decoded to uint8 [N, C, H, W, 3].

    Reading columns at once takes ~1 s for 7k frames. LeRobotDataset.__getitem__ costs ~5 ms a
    frame here (it decodes the image of every frame in the action chunk), far too slow to
    load through, let alone to train from directly on 2 CPU cores.
    """
    table = dataset.hf_dataset.data
    if table.num_rows == 0:
        raise ValueError(f"dataset {dataset.repo_id} at {dataset.root} has no frames")
    columns = {name: torch.from_numpy(_vector_column(table.column(key)))
               for name, key in (("state", "observation.state"), ("action", "action"))}
    for key in ("index", "episode_index", "frame_index", "task_index"):
        columns[key] = torch.from_numpy(table.column(key).to_numpy().astype(np.int64))
    cams = [_decode_images(table.column(key)) for key in tqdm(camera_keys, desc="decoding images", unit="camera")]
    columns["images"] = torch.from_numpy(np.stack(cams, axis=1))
    return columns


def _vector_column(column: Any) -> np.ndarray:
    """float32 [N, D] from an arrow fixed_size_list<float> column."""
    flat = column.combine_chunks()
    return flat.flatten().to_numpy().astype(np.float32).reshape(len(flat), -1)


def _decode_images(column: Any) -> np.ndarray:
    """uint8 [N, H, W, 3] from an arrow column of HF Image structs (embedded bytes or a path)."""
    frames = []
    for cell in column.to_pylist():
        source = io.BytesIO(cell["bytes"]) if cell["bytes"] is not None else cell["path"]
        frames.append(np.asarray(PIL.Image.open(source).convert("RGB")))
    return np.stack(frames)


def _action_chunks(dataset: Any, columns: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(actions [N, H, D], action_is_pad [N, H]) from lerobot's delta-timestamp query indices."""
    row_of = {int(index): row for row, index in enumerate(columns["index"].tolist())}
    episodes = columns["episode_index"].tolist()
    rows, pads = [], []
    for abs_index, episode in tqdm(zip(columns["index"].tolist(), episodes, strict=True), total=len(episodes),
                                   desc="action chunks", unit="frame", mininterval=1.0):
        query, padding = dataset._get_query_indices(abs_index, episode)
        rows.append([row_of[i] for i in query["action"]])
        pads.append(padding["action_is_pad"])
    return columns["action"][torch.tensor(rows)], torch.stack(pads).bool()


def _check_against_getitem(dataset: Any, actions: Tensor, action_is_pad: Tensor, n: int = 4) -> None:
    """Guard against lerobot changing its private query helpers: compare with __getitem__."""
    for i in torch.linspace(0, len(actions) - 1, n).long().tolist():
        item = dataset[i]
        if not (torch.equal(item["action"], actions[i]) and torch.equal(item["action_is_pad"], action_is_pad[i])):
            raise RuntimeError(f"action chunk of frame {i} differs from LeRobotDataset.__getitem__; "
                               "lerobot's delta-timestamp internals changed")
