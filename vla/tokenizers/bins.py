"""Uniform per-dimension bins (RT-2, Brohan et al. 2023; OpenVLA, Kim et al. 2024).

Each action dimension's [q_low, q_high] range (1st-99th percentile of the fit chunks by default)
is cut into `n_bins` equal bins; a value outside the range is clipped into the first or last bin,
and a bin decodes to its centre. One token per (step, dim), step-major (all D tokens of step 0,
then step 1, ...), so H * D tokens per chunk, and a token id is the bin index (vocab = n_bins).
OpenVLA bins the fixed range [-1, 1] of q01/q99-normalised actions; fitting the range per
dimension gives the same bins for such data and stays tight for data normalised otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla.tokenizers.base import ActionTokenizer, TokenizerConfig, register_tokenizer

MAX_BINS = 65536


@dataclass
class BinsTokenizerConfig(TokenizerConfig):
    n_bins: int = 256  # bins per dimension = vocab size
    low_quantile: float = 0.01  # each dimension's range is [this, high_quantile] quantile of the fit data
    high_quantile: float = 0.99

    def __post_init__(self) -> None:
        if not 2 <= self.n_bins <= MAX_BINS:
            raise ValueError(f"tokenizer.n_bins must be in [2, {MAX_BINS}]; got {self.n_bins}")
        if not 0.0 <= self.low_quantile < self.high_quantile <= 1.0:
            raise ValueError(f"tokenizer quantiles need 0 <= low_quantile < high_quantile <= 1; got "
                             f"low_quantile={self.low_quantile}, high_quantile={self.high_quantile}")

    @property
    def max_vocab_size(self) -> int:
        return self.n_bins

    @property
    def fixed_length(self) -> bool:
        return True  # H * D ids per chunk


class BinsTokenizer(ActionTokenizer):
    """Chunks [B, H, D] <-> H * D bin indices per chunk."""

    config: BinsTokenizerConfig

    def __init__(self, config: BinsTokenizerConfig):
        super().__init__(config)
        self.low: np.ndarray | None = None  # [D] lower range edge per dimension
        self.high: np.ndarray | None = None  # [D] upper range edge

    @property
    def vocab_size(self) -> int:
        return self.config.n_bins

    @property
    def bin_width(self) -> np.ndarray:
        """[D] width of one bin per dimension (0 for a dimension constant in the fit data)."""
        self._require_fit("bin_width")
        return (self.high - self.low) / self.config.n_bins

    def _fit(self, chunks: np.ndarray) -> None:
        values = chunks.reshape(-1, self.action_dim)  # (N*H, D)
        self.low = np.quantile(values, self.config.low_quantile, axis=0)
        self.high = np.quantile(values, self.config.high_quantile, axis=0)

    def _encode(self, chunks: np.ndarray) -> list[list[int]]:
        width = self.bin_width  # (D,)
        offset = chunks - self.low  # (B, H, D)
        scaled = np.divide(offset, width, out=np.zeros_like(offset), where=width > 0)
        index = np.clip(np.floor(scaled), 0, self.config.n_bins - 1).astype(np.int64)
        return index.reshape(len(chunks), -1).tolist()  # (B, H*D), step-major

    def _decode(self, tokens: list[list[int]]) -> np.ndarray:
        """Ids are clipped to [0, n_bins); a short sequence is filled with each dimension's range centre."""
        size = self.horizon * self.action_dim
        index = np.full((len(tokens), size), -1, dtype=np.int64)  # -1: missing
        for row, seq in zip(index, tokens, strict=True):
            seq = seq[:size]
            row[:len(seq)] = np.clip(seq, 0, self.config.n_bins - 1)
        index = index.reshape(len(tokens), self.horizon, self.action_dim)  # (B, H, D)
        centres = self.low + (index + 0.5) * self.bin_width
        return np.where(index >= 0, centres, (self.low + self.high) / 2)

    def _state(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist()}  # JSON floats round-trip exactly

    def _load_state(self, state: dict[str, Any], folder: Path) -> None:
        self.low, self.high = np.array(state["low"], np.float64), np.array(state["high"], np.float64)
        if self.low.shape != (self.action_dim,) or self.high.shape != (self.action_dim,):
            raise ValueError(f"{folder}: bins low/high must have {self.action_dim} entries (the action dim); "
                             f"got {self.low.shape} and {self.high.shape}")


BinsTokenizerConfig.tokenizer_class = BinsTokenizer
register_tokenizer("bins")(BinsTokenizerConfig)
