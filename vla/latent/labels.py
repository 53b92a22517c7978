"""Latent-action labels beside a dataset: the latent action model's codes for every frame, as training targets.

`vla-latent label` writes into a LeRobot dataset's folder (its `root`):
    latent_actions/codes.safetensors  "codes": int64 [N, K]; row i is the dataset's frame i (LeRobot's global `index`
                                      order), K latent tokens in 0..codebook_size-1 for the change from frame i to
                                      frame i + frame_gap of the same episode (clamped to the episode's last frame)
    latent_actions/labels.json        what wrote them: the latent action model (where it came from and a fingerprint
                                      of its weights), codebook_size, tokens_per_frame (K), frame_gap, num_frames
Frame sources read them (`read_labels`) when the policy's head trains on latent actions, and every dataset of a
run must be labelled by the same model (`check_same_model`): codes of two models mean different things.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vla.versioned import read_versioned_json

LABELS_DIR = "latent_actions"
CODES_FILE = "codes.safetensors"
META_FILE = "labels.json"
FORMAT_VERSION = 1


@dataclass
class LatentLabels:
    """codes: int64 [N, K], one row per frame of the dataset. lam: where the latent action model came from (a folder
    or hub id); lam_fingerprint: sha256 of its weights; frame_gap: k, frames between the pair a code describes."""

    codes: np.ndarray
    lam: str
    lam_fingerprint: str
    codebook_size: int
    frame_gap: int

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes)
        if self.codes.ndim != 2 or not np.issubdtype(self.codes.dtype, np.integer):
            raise ValueError(f"latent codes must be integers [N, K]; got {self.codes.dtype} {list(self.codes.shape)}")
        self.codes = self.codes.astype(np.int64)
        if self.codes.size and (self.codes.min() < 0 or self.codes.max() >= self.codebook_size):
            raise ValueError(f"latent codes must lie in 0..{self.codebook_size - 1} (codebook_size); got "
                             f"{self.codes.min()}..{self.codes.max()}")
        if self.frame_gap < 1:
            raise ValueError(f"frame_gap must be >= 1; got {self.frame_gap}")

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[0])

    @property
    def tokens_per_frame(self) -> int:
        return int(self.codes.shape[1])

    def meta(self) -> dict:
        fields = {k: v for k, v in asdict(self).items() if k != "codes"}
        return {"format_version": FORMAT_VERSION, **fields, "tokens_per_frame": self.tokens_per_frame,
                "num_frames": self.num_frames}


def future_rows(episode_index: np.ndarray, frame_gap: int) -> np.ndarray:
    """int64 [N]: the row each frame's code looks ahead to, i + frame_gap clamped to the last row of frame i's episode
    (the frames of an episode are contiguous, as every frame source checks)."""
    if frame_gap < 1:
        raise ValueError(f"frame_gap must be >= 1; got {frame_gap}")
    episode_index = np.asarray(episode_index)
    n = len(episode_index)
    starts = np.r_[0, np.flatnonzero(episode_index[1:] != episode_index[:-1]) + 1]
    stops = np.r_[starts[1:], n]
    last = np.repeat(stops - 1, stops - starts)
    return np.minimum(np.arange(n, dtype=np.int64) + frame_gap, last).astype(np.int64)


def labels_dir(root: str | Path) -> Path:
    return Path(root) / LABELS_DIR


def has_labels(root: str | Path) -> bool:
    return (labels_dir(root) / META_FILE).is_file()


def write_labels(root: str | Path, labels: LatentLabels) -> Path:
    """Write (or replace) a dataset's labels; returns their folder. The codes are written before the metadata, so a
    crash in between leaves no labels.json naming codes that are not there."""
    folder = labels_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    save_file({"codes": torch.from_numpy(labels.codes)}, str(folder / CODES_FILE))
    (folder / META_FILE).write_text(json.dumps(labels.meta(), indent=2))
    return folder


def read_labels(root: str | Path, num_frames: int | None = None) -> LatentLabels:
    """A dataset's labels; a FileNotFoundError naming the command when it has none, a ValueError when they do not
    cover `num_frames` frames (the dataset changed after labelling)."""
    folder = labels_dir(root)
    if not (folder / META_FILE).is_file() or not (folder / CODES_FILE).is_file():
        raise FileNotFoundError(f"the dataset at {root} has no latent-action labels ({folder / META_FILE}): write them "
                                f"with `vla-latent label --lam <latent action model> --root {root}`")
    meta = read_versioned_json(folder / META_FILE, FORMAT_VERSION)
    codes = load_file(str(folder / CODES_FILE))["codes"].numpy()
    labels = LatentLabels(codes, meta["lam"], meta["lam_fingerprint"], int(meta["codebook_size"]),
                          int(meta["frame_gap"]))
    if num_frames is not None and labels.num_frames != num_frames:
        raise ValueError(f"the latent-action labels in {folder} cover {labels.num_frames} frames; the dataset has "
                         f"{num_frames}: it changed after labelling, label it again with `vla-latent label`")
    return labels


def check_same_model(labels: dict[str, LatentLabels]) -> LatentLabels:
    """One dataset's labels (any), after checking every dataset (name -> labels) was labelled by the same model."""
    fingerprints = {name: (lab.lam, lab.lam_fingerprint[:12]) for name, lab in labels.items()}
    if len({fp for _, fp in fingerprints.values()}) > 1:
        raise ValueError(f"the datasets were labelled by different latent action models {fingerprints}; relabel them "
                         f"with one model (`vla-latent label`)")
    return next(iter(labels.values()))
