"""A streaming frame source over one LeRobot v3 dataset, video or image mode (issue 15 item 2).

`LeRobotFrames(root, repo_id, chunk_size, image_size=...)[i]` is frame i with the chunk of actions that starts at it,
in the form /work/notes/data-contract.md fixes for every frame source (see `__getitem__`). Only the numeric columns
(state, action, episode / frame / task indices, timestamps) are read when it is built, once, into memory; images are
decoded when a sample is asked for, in the process that asks (a DataLoader worker), resized to `image_size` as they
are decoded, and never cached, so memory does not grow with the dataset's frames. The object pickles without any
open file or decoder: each worker opens its own.

Chunks and pads are built from the in-memory action column by `vla.data.dataset.chunk_rows`, the function
`load_chunked_demos` uses, and equal what LeRobotDataset(..., delta_timestamps={action: [k / fps for k < H]})[i]
gives. Camera slots a registry entry marks missing (`Slot.missing`) come out all zeros with `image_mask` False.
Action-free data (no action column: video without action labels) loads with `has_actions` False, chunks [H, 0] all
flagged as padding; with `latent_labels` every sample carries the dataset's latent-action codes (vla.latent.labels).

Video frames are decoded with PyAV, which lerobot's own "pyav" backend wraps. lerobot's `decode_video_frames` is not
used: its pyav path opens the file again for every call (through torchvision's deprecated VideoReader) and returns
full-size float32 frames, and its torchcodec path cannot load in this environment (no system FFmpeg libraries).
Here each worker keeps its files open (at most `max_open_files`) and converts a frame straight to a resized RGB uint8
array in FFmpeg's scaler. A frame is found as lerobot finds it: seek to the key frame at or before the episode's
`from_timestamp` + the frame's `timestamp`, decode forward, keep the frame within `tolerance_s`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.data.dataset import (
    check_label_order,
    check_numeric_finite,
    chunk_rows,
    decode_image,
    describe_dataset,
    episode_bounds,
    read_numeric_columns,
)
from vla.data.embodiment import EmbodimentInfo
from vla.data.registry import Embodiment
from vla.latent.labels import LatentLabels, read_labels


class FrameDecodeError(RuntimeError):
    """A frame that cannot be read: the message names the dataset, episode, frame, key and file."""


@dataclass(frozen=True)
class VideoIndex:
    """Where one camera's frames are: per episode (in `episodes` order), the video file and the episode's start time
    in it. paths: the distinct files; file_of: int64 [E] index into paths; from_timestamp: float64 [E] seconds."""

    episodes: np.ndarray  # int64 [E], sorted episode indices
    paths: tuple[str, ...]
    file_of: np.ndarray
    from_timestamp: np.ndarray

    def locate(self, episode: int) -> tuple[str, float]:
        """(video file, start time of `episode` in it)."""
        k = int(np.searchsorted(self.episodes, episode))
        return self.paths[int(self.file_of[k])], float(self.from_timestamp[k])


def video_index(meta: Any, key: str) -> VideoIndex:
    """The VideoIndex of camera `key` from the dataset's episode metadata (no video opened)."""
    episodes = meta.episodes.with_format(None)
    columns = {c: episodes[c] for c in ("episode_index", f"videos/{key}/chunk_index", f"videos/{key}/file_index",
                                        f"videos/{key}/from_timestamp")}
    order = np.argsort(columns["episode_index"])
    files = [meta.video_path.format(video_key=key, chunk_index=c, file_index=f)
             for c, f in zip(columns[f"videos/{key}/chunk_index"], columns[f"videos/{key}/file_index"], strict=True)]
    paths = tuple(dict.fromkeys(str(Path(meta.root) / f) for f in files))
    file_of = np.array([paths.index(str(Path(meta.root) / f)) for f in files], dtype=np.int64)
    return VideoIndex(np.asarray(columns["episode_index"], dtype=np.int64)[order], paths, file_of[order],
                      np.asarray(columns[f"videos/{key}/from_timestamp"], dtype=np.float64)[order])


class VideoReaders:
    """Open PyAV containers of one process, by path; the least recently used is closed beyond `max_open`."""

    def __init__(self, max_open: int):
        self.max_open = max_open
        self._open: OrderedDict[str, Any] = OrderedDict()

    def frames(self, path: str, timestamps: list[float], size: int, tolerance_s: float) -> np.ndarray:
        """uint8 [len(timestamps), size, size, 3]: the frame of `path` within tolerance_s of each timestamp
        (seconds). Raises LookupError naming the first timestamp no frame matches."""
        container = self._container(path)
        stream = container.streams.video[0]
        wanted = sorted(set(timestamps))
        container.seek(int(wanted[0] / stream.time_base), stream=stream, backward=True, any_frame=False)
        found: dict[float, np.ndarray] = {}
        last_time = None
        for frame in container.decode(stream):
            last_time = frame.time
            for t in wanted:
                if t not in found and abs(frame.time - t) < tolerance_s:
                    found[t] = frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BICUBIC")
            if frame.time >= wanted[-1] - tolerance_s:
                break
        for t in wanted:
            if t not in found:
                raise LookupError(f"no frame within {tolerance_s} s of t={t:.4f} s (last decoded: {last_time})")
        return np.stack([found[t] for t in timestamps])

    def _container(self, path: str) -> Any:
        import av

        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        container = av.open(path)
        # one decoding thread per worker: the DataLoader's workers are the parallelism
        container.streams.video[0].codec_context.thread_count = 1
        self._open[path] = container
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return container

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


class LeRobotFrames:
    """Map-style frame source over one LeRobot v3 dataset (video or image mode); see the module docstring.

    root / repo_id: the dataset. chunk_size: H actions per sample. image_size: every image comes out
    image_size x image_size. n_obs_steps: frames of history per sample. camera_slots: the model's image slots, in
    order (default: every slot the entry fills, or without an entry every camera of the dataset by name); with an
    entry, a slot it marks missing is allowed and masked. embodiment / action_kind: as `load_chunked_demos`.
    tolerance_s: how far a decoded video frame may be from the asked time (lerobot's default). max_open_files: video
    files each process keeps open. latent_labels: read the dataset's latent-action labels (`read_labels`; attribute
    `latent_labels`), so every sample carries "latent_codes" int64 [K].
    """

    def __init__(self, root: str | Path, repo_id: str, chunk_size: int, image_size: int, n_obs_steps: int = 1,
                 camera_slots: list[str] | None = None, entry: Embodiment | None = None, embodiment: str = "",
                 action_kind: str = "", tolerance_s: float = 1e-4, max_open_files: int = 8,
                 latent_labels: bool = False):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

        for name, value in (("chunk_size", chunk_size), ("image_size", image_size), ("n_obs_steps", n_obs_steps),
                            ("max_open_files", max_open_files)):
            if value <= 0:
                raise ValueError(f"LeRobotFrames: {name} must be positive; got {value}")
        self.root, self.repo_id = str(root), repo_id
        self.where = f"dataset {repo_id} at {root}"
        meta = LeRobotDatasetMetadata(repo_id, root=self.root)
        described = describe_dataset(meta, self.root, entry, camera_slots, action_kind, embodiment)
        self.layout = described.layout
        self.embodiment: str = described.embodiment
        self.entry = entry
        self.info: EmbodimentInfo = described.info
        self.has_actions: bool = described.info.has_actions
        self.tasks: list[str] = list(meta.tasks.index)
        self.camera_slots: list[str] = list(self.layout.camera_slots)
        self.chunk_size, self.n_obs_steps, self.image_size = chunk_size, n_obs_steps, image_size
        self.tolerance_s, self.max_open_files = tolerance_s, max_open_files

        keys = [k for k in self.layout.camera_keys if k is not None]
        videos = {k: video_index(meta, k) for k in meta.video_keys}
        self._check_video_files(videos)  # before LeRobotDataset, which would try to download a missing file
        self._videos = {k: videos[k] for k in keys if k in videos}
        dataset = LeRobotDataset(repo_id, root=self.root)
        columns = read_numeric_columns(dataset, self.layout)
        check_numeric_finite(columns, self.layout)
        self._state, self._action = columns["state"], columns["action"]
        self.episode_index: np.ndarray = columns["episode_index"]
        self._frame_index, self._task_index = columns["frame_index"], columns["task_index"]
        self._first_row, self._last_row = episode_bounds(self.episode_index, self.where)
        self.latent_labels: LatentLabels | None = None
        if latent_labels:
            self.latent_labels = read_labels(self.root, num_frames=len(self))
            check_label_order(columns["index"], self.where)
        table = dataset.hf_dataset.data
        self._timestamp = table.column("timestamp").to_numpy().astype(np.float64)
        # image-mode columns: the arrow table is memory-mapped from lerobot's cache, and pickles as its file path
        self._images = table if len(self._videos) < len(keys) else None
        self._readers: tuple[int, VideoReaders] | None = None  # (pid, readers) opened in the process that reads

    def __len__(self) -> int:
        return len(self.episode_index)

    def numeric(self) -> dict[str, np.ndarray]:
        """The whole numeric columns, no image decoded: "state" float32 [N, S], "action" float32 [N, D]."""
        return {"state": self._state, "action": self._action}

    def chunks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every frame's action chunk from the numeric columns (no image decoded): (float32 [N, H, D], bool
        [N, H]), as `ChunkedDemos.chunks`."""
        rows, pads = chunk_rows(np.arange(len(self)), self._last_row, self.chunk_size, self.has_actions)
        return torch.from_numpy(self._action[rows]), torch.from_numpy(pads)

    def history(self, i: int) -> np.ndarray:
        """Rows [n_obs_steps] of the frames ending at row i, oldest first; before the episode start its first
        frame repeats."""
        return np.maximum(np.arange(i - self.n_obs_steps + 1, i + 1), self._first_row[i])

    def __getitem__(self, i: int) -> dict:
        """Frame i: "images" uint8 [n_obs_steps * n_slots, image_size, image_size, 3] time-major (slots of t-1, then
        t); "image_mask" bool [n_obs_steps * n_slots] (False at missing slots, whose images are zeros); "state"
        float32 [S]; "actions" float32 [H, D] (the chunk starting at frame i, robot units); "action_is_pad" bool [H];
        "instruction", "embodiment" str; "episode_index", "frame_index" int; with latent labels "latent_codes" torch
        int64 [K]."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.where}: frame {i} out of range [0, {len(self)})")
        rows, pads = chunk_rows(np.array([i]), self._last_row, self.chunk_size, self.has_actions)
        images, mask = self.images(self.history(i))
        sample = {"images": images, "image_mask": mask, "state": self._state[i].copy(),
                  "actions": self._action[rows[0]], "action_is_pad": pads[0],
                  "instruction": self.tasks[int(self._task_index[i])], "embodiment": self.embodiment,
                  "episode_index": int(self.episode_index[i]), "frame_index": int(self._frame_index[i])}
        if self.latent_labels is not None:
            sample["latent_codes"] = torch.from_numpy(self.latent_labels.codes[i].copy())
        return sample

    def images(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [T * n_slots, S, S, 3] time-major, bool [T * n_slots]) for the frames at `rows` (int64 [T])."""
        n_slots, size = len(self.camera_slots), self.image_size
        images = np.zeros((len(rows), n_slots, size, size, 3), dtype=np.uint8)
        mask = np.zeros((len(rows), n_slots), dtype=bool)
        for s, key in enumerate(self.layout.camera_keys):
            if key is None:
                continue
            images[:, s] = self._video_frames(key, rows) if key in self._videos else self._image_frames(key, rows)
            mask[:, s] = True
        return images.reshape(-1, size, size, 3), mask.reshape(-1)

    def _video_frames(self, key: str, rows: np.ndarray) -> np.ndarray:
        episode = int(self.episode_index[rows[-1]])  # the history never leaves the episode
        path, start = self._videos[key].locate(episode)
        times = [start + float(self._timestamp[r]) for r in rows]
        try:
            return self._video_readers().frames(path, times, self.image_size, self.tolerance_s)
        except Exception as error:  # noqa: BLE001  (PyAV raises many types; all mean this frame cannot be read)
            raise self._error(key, rows, f"video {path}", error) from error

    def _image_frames(self, key: str, rows: np.ndarray) -> np.ndarray:
        column = self._images.column(key)
        try:
            return np.stack([decode_image(column[int(r)].as_py(), self.image_size) for r in rows])
        except Exception as error:  # noqa: BLE001  (PIL raises many types for a damaged image)
            raise self._error(key, rows, "the image column", error) from error

    def _error(self, key: str, rows: np.ndarray, source: str, error: Exception) -> FrameDecodeError:
        frames = sorted({int(self._frame_index[r]) for r in rows})
        return FrameDecodeError(f"{self.where}: cannot read {key!r} of episode {int(self.episode_index[rows[-1]])}, "
                                f"frame {frames[0] if len(frames) == 1 else frames} from {source}: "
                                f"{type(error).__name__}: {error}")

    def _video_readers(self) -> VideoReaders:
        # keyed by process: a forked worker must not share the parent's open decoders
        if self._readers is None or self._readers[0] != os.getpid():
            self._readers = (os.getpid(), VideoReaders(self.max_open_files))
        return self._readers[1]

    def _check_video_files(self, videos: dict[str, VideoIndex]) -> None:
        for key, index in videos.items():
            for f, path in enumerate(index.paths):
                if not Path(path).is_file():
                    episodes = index.episodes[index.file_of == f].tolist()
                    raise FileNotFoundError(f"{self.where}: video file {path} of {key!r} is missing (episodes "
                                            f"{episodes[:10]}{' ...' if len(episodes) > 10 else ''})")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_readers": None}
