"""Fitting the latent action model on frame pairs from frame sources: stage 1, then stage 2 (`vla.latent.lam`).

Each stage: `stage{1,2}_steps` AdamW steps (cosine to lr / 10, gradient clipping) on batches of `batch_size` pairs
drawn with replacement, each dataset by its weight (a dataset's frames equally likely within it), in a seeded
order; loss = MSE(predicted, true features of frame t + k) + commitment. The history has, every `log_every` steps,
the mean loss, reconstruction MSE, commitment, the copy-frame-t baseline's MSE on the same pairs, and the perplexity
and number of codes used over the window. Pairs are read by `vla.latent.pairs.FramePairs`, which reads no action.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from vla.latent.lam import LAMConfig, LatentActionModel
from vla.latent.pairs import FramePairs, collate_pairs, one_second, source_name

log = logging.getLogger(__name__)


def code_usage(codes: np.ndarray | torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Of integer codes (any shape, all positions pooled): perplexity exp(H(p)) of their histogram (1 = one code,
    codebook_size = uniform) and the number of distinct codes used."""
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=codebook_size).astype(np.float64)
    if counts.sum() == 0:
        return {"perplexity": 0.0, "codes_used": 0}
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": float(math.exp(-(p * np.log(p)).sum())), "codes_used": int((counts > 0).sum())}


def pair_loader(pairs: FramePairs, weights: list[float], config: LAMConfig, steps: int, seed: int) -> DataLoader:
    """steps batches of config.batch_size pairs, drawn with replacement by dataset weight, in a seeded order."""
    sizes = np.diff(pairs.offsets)
    if len(weights) != len(sizes) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"dataset weights must be one non-negative number per dataset, not all 0; got {weights} "
                         f"for {len(sizes)} datasets")
    per_frame = np.concatenate([np.full(n, w / n) for w, n in zip(weights, sizes, strict=True)])
    sampler = WeightedRandomSampler(torch.from_numpy(per_frame), num_samples=steps * config.batch_size,
                                    replacement=True, generator=torch.Generator().manual_seed(seed))
    return DataLoader(pairs, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                      collate_fn=collate_pairs, drop_last=True)


def train_stage(model: LatentActionModel, stage: int, loader: DataLoader, steps: int,
                progress: bool = True) -> list[dict[str, Any]]:
    """Train stage 1 or 2 of `model` (the other stage untouched) on `loader`'s batches; returns the history."""
    config = model.config
    trained = model.stage1 if stage == 1 else model.stage2
    model.eval()
    trained.train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=config.lr / 10)
    history, window, codes = [], defaultdict(list), []
    bar = tqdm(loader, total=steps, desc=f"LAM stage {stage}", unit="step", disable=not progress)
    for step, batch in enumerate(bar, start=1):
        out = model(batch["frame_t"], batch["frame_tk"], batch["instruction"], stage2=stage == 2)
        result = out.stage1 if stage == 1 else out.stage2
        recon = F.mse_loss(result.prediction, out.f_tk)
        loss = recon + result.commitment
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        for name, value in (("loss", loss), ("recon_mse", recon), ("commitment", result.commitment),
                            ("copy_mse", F.mse_loss(out.f_t, out.f_tk))):
            window[name].append(value.item())
        codes.append(result.codes.detach().cpu())
        if step % config.log_every == 0 or step == steps:
            entry = {"stage": stage, "step": step, **{k: float(np.mean(v)) for k, v in window.items()},
                     **code_usage(torch.cat(codes), config.codebook_size)}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", ppl=f"{entry['perplexity']:.1f}")
            window, codes = defaultdict(list), []
    trained.eval()
    return history


def fit_lam(config: LAMConfig, sources: list[Any], weights: list[float] | None = None,
            progress: bool = True) -> LatentActionModel:
    """A latent action model fit on the frame pairs of `sources` (frame sources; each drawn by its weight, default
    equal): stage 1, then stage 2 started from stage 1's weights. Seeded: the same config and data give the same
    weights on CPU (the global RNG is restored afterwards)."""
    frame_gap = config.frame_gap or one_second(sources)
    pairs = FramePairs(sources, frame_gap, config.image_size, config.camera)
    weights = [1.0] * len(sources) if weights is None else list(weights)
    log.info("fitting a latent action model on %d pairs (t, t + %d) of %d dataset(s)", len(pairs), frame_gap,
             len(sources))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LatentActionModel(config, frame_gap).to(config.device)
        history = train_stage(model, 1, pair_loader(pairs, weights, config, config.stage1_steps, config.seed),
                              config.stage1_steps, progress)
        model.init_stage2_from_stage1()
        history += train_stage(model, 2, pair_loader(pairs, weights, config, config.stage2_steps, config.seed + 1),
                               config.stage2_steps, progress)
    model.info = {"history": history,
                  "data": [{"dataset": source_name(s), "frames": len(s), "weight": w}
                           for s, w in zip(sources, weights, strict=True)]}
    return model.eval()
