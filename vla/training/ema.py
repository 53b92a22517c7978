"""Exponential moving average (EMA) of the trainable weights, kept where each rank keeps its weights.

    ema_t = d_t * ema_{t-1} + (1 - d_t) * w_t,   d_t = min(decay, (1 + t) / (10 + t))   after optimiser step t

The warmup of d_t (as diffusers' EMAModel and TensorFlow's ExponentialMovingAverage with num_updates) lets the average
follow the fast early changes instead of staying near the random initialisation for ~1 / (1 - decay) steps.

Written here rather than taken from a library because of where the weights live: torch.optim.swa_utils.AveragedModel
deep-copies the whole module (frozen backbone included, and wrapped modules under DDP / DeepSpeed / FSDP), and
diffusers' EMAModel keeps a whole copy of every parameter on every rank and all-gathers each ZeRO-3 parameter at
every step. This one averages each rank's own piece of every trainable parameter in fp32: the whole tensor for a
single process, DDP and ZeRO-1/2, the rank's partition under ZeRO-3 (`ds_tensor`) and its shard under FSDP2 (the
DTensor's local tensor), so it costs no communication per step and is sharded exactly like the weights.
`swapped_in` puts the averages into the weights (then the usual gathering - `full_weights`,
`accelerator.get_state_dict` - sees EMA weights) and restores the trained ones after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.tensor import DTensor


def local_piece(param: nn.Parameter) -> Tensor:
    """The part of `param` this rank holds and the gathering reads: ZeRO-3's partition, FSDP2's local shard, or the
    whole tensor."""
    if hasattr(param, "ds_tensor") and not getattr(param, "ds_persist", False):
        return param.ds_tensor  # a persistent ZeRO-3 parameter (below the persistence threshold) is whole in .data
    if isinstance(param, DTensor):
        return param.to_local()  # under no_grad the DTensor's own local tensor, so writes go to the weight
    return param.data


def is_partitioned(param: nn.Parameter) -> bool:
    return hasattr(param, "ds_tensor") or isinstance(param, DTensor)


class WeightEMA:
    """fp32 EMA of the trainable parameters of `model` (a module prepared by accelerate, unwrapped).

    `update(step)` after every optimiser step; `state_dict()` / `load_state_dict()` for exact resume (this rank's
    pieces; `sharded` says whether they differ between ranks)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 turns the EMA off); got {decay}")
        self.decay = decay
        self.names, self.params = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.names.append(name)
                self.params.append(param)
        with torch.no_grad():
            self.shadow = [local_piece(p).detach().float().clone() for p in self.params]
        self.sharded = any(is_partitioned(p) for p in self.params)

    def decay_at(self, step: int) -> float:
        """d_t after optimiser step `step` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        torch._foreach_lerp_(self.shadow, [local_piece(p).float() for p in self.params], weight)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA values in the weights for the duration (every rank must enter together under sharded backends,
        as the gathering inside does); the trained values are restored exactly after."""
        with torch.no_grad():
            pieces = [local_piece(p) for p in self.params]
            trained = [piece.clone() for piece in pieces]
            for piece, average in zip(pieces, self.shadow, strict=True):
                piece.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for piece, value in zip(pieces, trained, strict=True):
                    piece.copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        return {name: average for name, average in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.names):
            missing, extra = sorted(set(self.names) - set(state)), sorted(set(state) - set(self.names))
            raise ValueError(f"the saved EMA does not match the trainable parameters: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        for name, average in zip(self.names, self.shadow, strict=True):
            if state[name].shape != average.shape:
                raise ValueError(f"the saved EMA of {name} has shape {tuple(state[name].shape)}, this rank holds "
                                 f"{tuple(average.shape)} (another number of processes or sharding?)")
            average.copy_(state[name])

    def file(self, folder: str | Path, rank: int) -> Path:
        """ema.safetensors (the same on every rank), or ema_rank<r>.safetensors under ZeRO-3 / FSDP."""
        return Path(folder) / (f"ema_rank{rank}.safetensors" if self.sharded else "ema.safetensors")

    def save(self, folder: str | Path, rank: int) -> None:
        """Every rank calls it; replicated averages are written once, by rank 0."""
        if self.sharded or rank == 0:
            Path(folder).mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(self.file(folder, rank)))

    def load(self, folder: str | Path, rank: int) -> None:
        path = self.file(folder, rank)
        if not path.exists():
            raise FileNotFoundError(f"{folder} has no EMA state for rank {rank} ({path.name}): it was written by a "
                                    f"run without train.ema_decay or with another number of processes")
        self.load_state_dict(load_file(str(path)))
