"""Weighted mixtures of frame sources: which frame each training sample is, on each rank, at each position.

A mixture draws every sample in two steps, as Octo / OpenVLA's Open-X mixtures do: a dataset by its weight, then
the next frame of that dataset's shuffled epoch. Everything is a pure function of (seed, rank, position), so:
- it is deterministic under a seed, with any number of DataLoader workers;
- it resumes mid-epoch exactly: the position after `step` optimiser steps is step * samples per step on this rank,
  so the training state needs no sampler state beyond the step;
- ranks never overlap within an epoch: each dataset's epoch permutation (the same on every rank) is split into
  disjoint rank shards, perm[rank::world_size].

`MixtureSampler` yields batches of keys (dataset, frame, augmentation seed); `MixtureDataset` turns a key into a
normalised sample (vla.data.transforms) inside a DataLoader worker; `make_loader` puts them together. A mixture may
hold action-free sources (video without action labels): they are drawn like any other, and their samples come out
with action_mask all False (vla.data.transforms.action_free_fields).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vla.data.normalize import Normalizer
from vla.data.transforms import as_tensors, augment_sample, collate, normalize_sample

BLOCK = 4096  # dataset choices are drawn in blocks of this many samples, each block from its own seed
Key = tuple[int, int, int]  # (source, frame index, augmentation seed)


class FrameSource(Protocol):
    """One dataset's frames as raw samples (vla.data.transforms): ChunkedDemos (in memory) or a streaming reader.
    has_actions: False for action-free data (samples' actions [H, 0]); latent_labels: the dataset's latent-action
    labels when read (samples then carry latent_codes [K]), else None."""

    embodiment: str
    episode_index: torch.Tensor | np.ndarray
    has_actions: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


def seed_of(*numbers: int) -> int:
    """A 63-bit seed mixed from integers (blake2b), so nearby inputs give unrelated streams."""
    digest = hashlib.blake2b(np.asarray(numbers, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class MixtureSampler(Sampler):
    """Infinite batches of keys for one rank, from sample position `start` on.

    sizes: frames per source; weights: sampling weight per source (normalised; 0 = never drawn). Sample p of this
    rank is source k = choice(p) (drawn by weight) and that source's c-th frame on this rank, c = how many earlier
    samples chose k: frame = shard_e[c mod len(shard)], shard_e = permutation_e(k)[rank::world_size], epoch
    e = c div len(shard).
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"a mixture needs one weight per dataset; got {len(sizes)} datasets, {len(weights)} "
                             f"weights")
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum; got {list(weights)}")
        small = [i for i, (n, w) in enumerate(zip(sizes, weights, strict=True)) if w > 0 and n < world_size]
        if small:
            raise ValueError(f"dataset(s) {small} have fewer frames than the {world_size} ranks that share them")
        self.sizes, self.batch_size, self.seed = list(sizes), batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.probs = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def choices(self, block: int) -> torch.Tensor:
        """int64 [BLOCK]: the source of each sample of a block of this rank's positions."""
        generator = torch.Generator().manual_seed(seed_of(self.seed, self.rank, block, 1))
        return torch.multinomial(self.probs, BLOCK, replacement=True, generator=generator)

    def shard(self, source: int, epoch: int) -> torch.Tensor:
        """This rank's frames of `source` in `epoch`, in order."""
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.sizes):
                self._perms.clear()
            generator = torch.Generator().manual_seed(seed_of(self.seed, source, epoch, 2))
            self._perms[key] = torch.randperm(self.sizes[source], generator=generator)[self.rank::self.world_size]
        return self._perms[key]

    def counts_before(self, position: int) -> list[int]:
        """How many of this rank's samples before `position` chose each source."""
        counts = torch.zeros(len(self.sizes), dtype=torch.long)
        for block in range(position // BLOCK):
            counts += torch.bincount(self.choices(block), minlength=len(self.sizes))
        rest = position % BLOCK
        if rest:
            counts += torch.bincount(self.choices(position // BLOCK)[:rest], minlength=len(self.sizes))
        return counts.tolist()

    def keys(self, start: int) -> Iterator[Key]:
        """Every key of this rank from position `start` on."""
        counts, position = self.counts_before(start), start
        while True:
            block = self.choices(position // BLOCK)
            for source in block[position % BLOCK:].tolist():
                shard = self.shard(source, counts[source] // len(self.shard(source, 0)))
                frame = int(shard[counts[source] % len(shard)])
                yield source, frame, seed_of(self.seed, self.rank, position, 3)
                counts[source] += 1
                position += 1

    def __iter__(self) -> Iterator[list[Key]]:
        keys = self.keys(self.start)
        while True:
            yield [next(keys) for _ in range(self.batch_size)]


class MixtureDataset(Dataset):
    """Keys -> normalised samples: the source's raw sample, augmented (seeded by the key), normalised and padded with
    its own embodiment's statistics (vla.data.transforms). Runs in DataLoader workers."""

    def __init__(self, sources: Sequence[FrameSource], normalizer: Normalizer, image_shift: int = 0,
                 color_jitter: float = 0.0):
        self.sources, self.normalizer = list(sources), normalizer
        self.image_shift, self.color_jitter = image_shift, color_jitter

    def __getitem__(self, key: Key) -> dict:
        source, frame, seed = key
        sample = as_tensors(self.sources[source][frame])
        sample = augment_sample(sample, self.image_shift, seed, self.color_jitter)
        return normalize_sample(self.normalizer, sample)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)


def make_loader(sources: Sequence[FrameSource], weights: Sequence[float], normalizer: Normalizer, batch_size: int,
                seed: int, rank: int = 0, world_size: int = 1, start: int = 0, image_shift: int = 0,
                num_workers: int = 0, color_jitter: float = 0.0) -> DataLoader:
    """An infinite DataLoader of normalised batches of this rank from sample position `start` (see the module
    docstring); num_workers 0 reads in the training process (the fast path for in-memory sources)."""
    sampler = MixtureSampler([len(s) for s in sources], weights, batch_size, seed, rank, world_size, start)
    # its own generator: a DataLoader iterator otherwise draws its workers' base seed from the global RNG, which
    # would shift the training noise of a resumed run by one draw
    generator = torch.Generator().manual_seed(seed_of(seed, rank, start, 4))
    return DataLoader(MixtureDataset(sources, normalizer, image_shift, color_jitter), batch_sampler=sampler,
                      collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=generator, prefetch_factor=2 if num_workers > 0 else None)
