"""Frame pairs (t, t + k) and their instruction, read from frame sources (`vla.data.dataset.ChunkedDemos`,
`vla.data.frames.LeRobotFrames`, anything with the frame-source interface of /work/notes/data-contract.md).

Only `len(source)`, `source.episode_index`, `source.camera_slots` and, per frame, `source[i]["images"]`,
`["image_mask"]` (when present) and `["instruction"]` are read: never an action (no `numeric()`, `chunks()` or
"actions"), so a latent action model learns from video alone. The partner of frame i is i + frame_gap in the same
episode, clamped to the episode's last frame (`vla.latent.labels.future_rows`, the rule the labels follow).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vla.latent.labels import future_rows
from vla.latent.text import has_words


def source_name(source: Any) -> str:
    """How errors name a frame source."""
    where = getattr(source, "where", None)
    return where or f"dataset of {getattr(source, 'embodiment', type(source).__name__)}"


def camera_index(source: Any, camera: str) -> int:
    """Index of image slot `camera` among the source's slots ("" = the first)."""
    slots = list(source.camera_slots)
    if not camera:
        return 0
    if camera not in slots:
        raise ValueError(f"{source_name(source)} has no image slot {camera!r}; it has {slots} (set --lam.camera)")
    return slots.index(camera)


def one_second(sources: list[Any]) -> int:
    """frame_gap of about one second: round(fps) of the sources (which must agree)."""
    rates = {source_name(s): float(s.info.fps) for s in sources}
    if len(set(rates.values())) > 1:
        raise ValueError(f"the datasets have different frame rates {rates}: one second is a different number of "
                         f"frames in each; give --lam.frame_gap (frames) explicitly")
    return max(1, round(next(iter(rates.values()))))


class FramePairs(Dataset):
    """Every frame of `sources` (concatenated in order) as a pair: {"frame_t", "frame_tk": uint8 [S, S, 3],
    "instruction": str}. `camera`: the image slot read ("" = each source's first); `image_size`: S, which every frame
    must have (frame sources resize to it as they read)."""

    def __init__(self, sources: list[Any], frame_gap: int, image_size: int, camera: str = ""):
        if not sources:
            raise ValueError("FramePairs needs at least one frame source")
        self.sources, self.frame_gap, self.image_size = list(sources), frame_gap, image_size
        self.slots = [camera_index(s, camera) for s in self.sources]
        self.futures = [future_rows(np.asarray(s.episode_index), frame_gap) for s in self.sources]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, j: int) -> tuple[int, int]:
        """(source number, row in it) of pair j."""
        s = int(np.searchsorted(self.offsets, j, side="right")) - 1
        return s, int(j - self.offsets[s])

    def frame(self, s: int, row: int) -> tuple[Tensor, str]:
        """(uint8 [S, S, 3] of the source's camera at the current step, its instruction)."""
        source = self.sources[s]
        sample = source[row]
        slots = len(source.camera_slots)
        slot = len(sample["images"]) - slots + self.slots[s]  # the current step's slots come last (time-major)
        mask = sample.get("image_mask")
        if mask is not None and not bool(mask[slot]):
            raise ValueError(f"{source_name(source)}: image slot {source.camera_slots[self.slots[s]]!r} is missing "
                             f"(masked) at frame {row}; read the pairs from a camera the robot has (--lam.camera)")
        image = torch.as_tensor(np.asarray(sample["images"][slot]))
        if image.dtype != torch.uint8 or tuple(image.shape) != (self.image_size, self.image_size, 3):
            raise ValueError(f"{source_name(source)}: frame {row} is {image.dtype} {list(image.shape)}; the latent "
                             f"action model reads uint8 [{self.image_size}, {self.image_size}, 3] frames (read the "
                             f"dataset with image_size={self.image_size})")
        return image, sample.get("instruction")

    def __getitem__(self, j: int) -> dict:
        s, row = self.locate(int(j))
        frame_t, instruction = self.frame(s, row)
        frame_tk, _ = self.frame(s, int(self.futures[s][row]))
        if not has_words(instruction):
            episode = int(np.asarray(self.sources[s].episode_index)[row])
            raise ValueError(f"{source_name(self.sources[s])}: episode {episode}, frame {row} has no instruction "
                             f"({instruction!r}); the latent action model needs each frame's task instruction")
        return {"frame_t": frame_t, "frame_tk": frame_tk, "instruction": instruction}


def collate_pairs(samples: list[dict]) -> dict:
    """{"frame_t", "frame_tk": uint8 [B, S, S, 3], "instruction": B str}."""
    return {"frame_t": torch.stack([s["frame_t"] for s in samples]),
            "frame_tk": torch.stack([s["frame_tk"] for s in samples]),
            "instruction": [s["instruction"] for s in samples]}
