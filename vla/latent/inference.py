"""Running a fit latent action model over every frame of a frame source, in dataset order: the labels
(`vla-latent label`) and what the report measures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vla.latent.labels import LatentLabels
from vla.latent.lam import LAMOutput, LatentActionModel
from vla.latent.pairs import FramePairs, collate_pairs


def run_over(model: LatentActionModel, source: Any, batch_size: int = 64, num_workers: int = 0,
             progress: bool = True) -> Iterator[LAMOutput]:
    """The model (eval mode, both stages) on the pairs (i, i + frame_gap clamped to the episode) of every frame i of
    `source`, in order, batch_size pairs at a time."""
    pairs = FramePairs([source], model.frame_gap, model.config.image_size, model.config.camera)
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_pairs)
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="latent actions", unit="batch", disable=not progress):
            yield model(batch["frame_t"], batch["frame_tk"], batch["instruction"])


def label_source(model: LatentActionModel, source: Any, lam: str, batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True) -> LatentLabels:
    """The labels of every frame of `source`: stage-2 codes int64 [N, K] (row i = frame i), from the model that
    `lam` names (its folder or hub id, recorded with its fingerprint)."""
    codes = [out.stage2.codes.long().cpu() for out in run_over(model, source, batch_size, num_workers, progress)]
    return LatentLabels(torch.cat(codes).numpy().astype(np.int64), lam=lam, lam_fingerprint=model.fingerprint(),
                        codebook_size=model.config.codebook_size, frame_gap=model.frame_gap)
