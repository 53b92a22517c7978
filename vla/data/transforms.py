"""Per-sample input transforms: what turns one frame of a dataset into what the policy trains on.

They run in the data pipeline (DataLoader workers), not in the policy, so one batch can mix embodiments of
different action and state widths (openpi's transforms do the same): each sample is normalised with its own
embodiment's statistics and zero-padded to the model's max dims, with masks saying what is real.

A raw sample (a frame source's `__getitem__`, see vla.data.frames / vla.data.dataset.ChunkedDemos):
    images uint8 [T * N, S, S, 3], image_mask bool [T * N], state float32 [S_e], actions float32 [H, D_e],
    action_is_pad bool [H], instruction str, embodiment str (T = history frames, N = image slots).
A normalised sample, as `VLAPolicy.forward` takes it once collated:
    images (augmented), image_mask, state [S_max] normalised, actions [H, D_max] normalised,
    action_mask bool [D_max] (True at the embodiment's own dims), action_is_pad, instruction, embodiment.
Action-free samples (D_e = 0: video without action labels) need no statistics: actions zeros [H, D_max], action_mask
all False, action_is_pad all True, state zeros [S_max]. Other fields pass through untouched, e.g. latent_codes
int64 [K] (vla.latent.labels), which collate stacks to [B, K].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vla.data.augment import color_jitter, random_shift
from vla.data.normalize import Normalizer

TENSOR_KEYS = ("images", "image_mask", "state", "actions", "action_mask", "action_is_pad", "latent_codes")


def as_tensors(sample: dict) -> dict:
    """A raw sample whose arrays may be numpy (a streaming reader's) with torch tensors instead."""
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in sample.items()}


def normalize_sample(normalizer: Normalizer, sample: dict) -> dict:
    """One raw sample -> a normalised, padded sample (see the module docstring). An embodiment the normaliser has
    no statistics for, or a width that differs from its statistics', is a ValueError naming it (action-free samples
    need none)."""
    images = sample["images"]
    mask = sample.get("image_mask")
    mask = torch.ones(images.shape[0], dtype=torch.bool) if mask is None else mask
    if sample["actions"].shape[-1] == 0:
        return {**sample, "image_mask": mask, **action_free_fields(normalizer, sample["actions"].shape[0])}
    embodiment = sample["embodiment"]
    return {
        **sample,
        "image_mask": mask,
        "state": normalizer.normalize_state_of(sample["state"].float(), embodiment),
        "actions": normalizer.normalize_action(sample["actions"].float(), embodiment),
        "action_mask": normalizer.action_mask(embodiment),
    }


def action_free_fields(normalizer: Normalizer, horizon: int) -> dict[str, Tensor]:
    """What an action-free sample of `horizon` steps trains with in the normaliser's padded space: actions zeros
    [H, D_max], action_mask all False [D_max], action_is_pad all True [H], state zeros [S_max] (its state, if any,
    has no statistics: no normalised state exists for it)."""
    return {"actions": torch.zeros(horizon, normalizer.max_action_dim),
            "action_mask": torch.zeros(normalizer.max_action_dim, dtype=torch.bool),
            "action_is_pad": torch.ones(horizon, dtype=torch.bool),
            "state": torch.zeros(normalizer.max_state_dim)}


def augment_sample(sample: dict, image_shift: int, seed: int, jitter: float = 0.0) -> dict:
    """Random shift (DrQ) of every image of one sample by up to `image_shift` pixels, then colour jitter of the given
    strength (0 = off), each image its own draw; the draws are a function of `seed` (the sample's key)."""
    images = sample["images"]
    if image_shift > 0:
        images = random_shift(images[None], image_shift, torch.Generator().manual_seed(seed))[0]
    if jitter > 0:
        images = color_jitter(images, jitter, seed)
    return {**sample, "images": images}


def collate(samples: list[dict]) -> dict:
    """Stack tensors ([B, ...]); other fields become lists of B values."""
    first = samples[0]
    return {key: torch.stack([s[key] for s in samples]) if torch.is_tensor(first[key]) else [s[key] for s in samples]
            for key in first}


def normalize_batch(normalizer: Normalizer, batch: dict) -> dict:
    """A raw batch (robot units, one embodiment width per sample: `ChunkedDemos.sample`) -> the normalised batch
    `VLAPolicy.forward` takes, through `normalize_sample` row by row (for tests and in-process callers; training
    transforms samples in its DataLoader)."""
    rows = len(batch["instruction"])
    samples = [{k: (v[i] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
               for i in range(rows)]
    return collate([normalize_sample(normalizer, s) for s in samples])


def is_normalized(batch: dict) -> bool:
    """Whether a batch went through `normalize_sample` (it then carries each sample's action_mask)."""
    return "action_mask" in batch


def check_normalized(batch: dict) -> Tensor:
    """The batch's actions [B, H, D_max], after checking it is a normalised batch."""
    if not is_normalized(batch):
        raise ValueError("the policy trains on normalised, padded batches (vla.data.transforms): this batch is in "
                         "robot units (no action_mask); pass it through "
                         "vla.data.transforms.normalize_batch(policy.normalizer, batch) first")
    return batch["actions"]
