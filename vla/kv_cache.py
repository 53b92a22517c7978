"""Keys/values of a fixed prefix followed by a suffix written in place: the sampling-time attention cache.

A denoiser attends to an observation's prefix (M tokens) and to its own T tokens. Concatenating
[prefix, suffix] keys anew at every denoising step copies the whole prefix at every step and layer.
`SuffixKV` allocates [B, heads, M + room, C] once per sampling call, writes the prefix once, and each
step writes only its suffix, at its place, overwriting the previous step's. A decoder appending one
token at a time writes one slot per step, and the buffer doubles its room when a decoder runs past it.

Written here rather than taken from transformers' `StaticCache`: that one returns every slot up to its
fixed length (attention then runs over the unused ones too) and cannot grow. Used only without
autograd: an in-place write into keys an earlier step's attention saved for backward would break the
backward pass, so with grad enabled callers concatenate as before (`buffers_reusable`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from vla.types import KV

_reuse = True  # switched off only to measure or test the copying path (`buffer_reuse(False)`)


@contextmanager
def buffer_reuse(enabled: bool) -> Iterator[None]:
    """Within the block, sampling reuses preallocated key/value buffers (the default) or, with False,
    concatenates the prefix anew at every step, as it did before (a reference for tests and benchmarks)."""
    global _reuse
    previous, _reuse = _reuse, enabled
    try:
        yield
    finally:
        _reuse = previous


def buffers_reusable() -> bool:
    """True when keys/values may be written in place: reuse is on and autograd is off."""
    return _reuse and not torch.is_grad_enabled()


class SuffixKV:
    """One attention layer's prefix keys/values [B, heads, M, C] and room for a suffix after them.

    Nothing is allocated until the first `write`, which allocates M + max(room, T) slots and copies the prefix
    in; later writes copy only their suffix tokens.
    """

    def __init__(self, keys: Tensor, values: Tensor, room: int = 0):
        self.prefix_length = keys.shape[2]
        self.room = room
        self._prefix: KV | None = (keys, values)
        self.keys = self.values = None

    def write(self, keys: Tensor, values: Tensor, start: int) -> KV:
        """Store suffix keys/values [B, heads, T, C] at suffix positions start .. start + T - 1 and return views
        [B, heads, M + start + T, C] of the prefix and the suffix up to them (slots after them are not returned)."""
        end = self.prefix_length + start + keys.shape[2]
        if self.keys is None or end > self.keys.shape[2]:
            self._allocate(end)
        self.keys[:, :, end - keys.shape[2]:end] = keys
        self.values[:, :, end - keys.shape[2]:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _allocate(self, end: int) -> None:
        """(Re)allocate at least `end` slots: the first allocation holds the prefix plus `room`, a later one
        doubles the suffix room, so a decoder appending token by token copies each key O(1) times."""
        if self.keys is None:
            keys, values = self._prefix
            capacity = max(end, self.prefix_length + self.room)
        else:
            keys, values = self.keys, self.values
            capacity = max(end, self.prefix_length + 2 * (self.keys.shape[2] - self.prefix_length))
        b, h, _, c = keys.shape
        self.keys, self.values = keys.new_empty(b, h, capacity, c), values.new_empty(b, h, capacity, c)
        self.keys[:, :, :keys.shape[2]] = keys
        self.values[:, :, :values.shape[2]] = values
        self._prefix = None  # the buffers hold it now


def suffix_kv(memory: list[KV]) -> list[KV] | list[SuffixKV]:
    """Each layer's memory as a `SuffixKV` when buffers may be reused (no autograd), else unchanged."""
    return [SuffixKV(k, v) for k, v in memory] if buffers_reusable() else memory


def attend_keys(memory: KV | SuffixKV, keys: Tensor, values: Tensor) -> KV:
    """Keys/values [B, heads, M + T, C] for T queries whose own keys/values [B, heads, T, C] follow `memory`."""
    if isinstance(memory, SuffixKV):
        return memory.write(keys, values, start=0)
    return torch.cat([memory[0], keys], dim=2), torch.cat([memory[1], values], dim=2)
