"""FAST: DCT + BPE action tokens (Pertsch et al. 2025, "FAST: Efficient Action Tokenization for
Vision-Language-Action Models", arXiv 2501.09747; reference: HF `physical-intelligence/fast`,
processing_action_tokenizer.py).

Encode a normalised chunk [H, D]: DCT-II along time per dimension (orthonormal), multiply by
`scale`, round to integers, flatten coefficient-major ([H, D] row-major: every dimension's 0th,
lowest-frequency coefficient first, then every 1st, ...), map each integer to one character and
split the string with a byte-pair encoding trained on the fit data. Smooth chunks have few
non-zero high-frequency coefficients, which BPE merges into few tokens.

Decode reverses it: ids -> characters -> integers, padded with zeros or truncated to H * D
coefficients (as the reference does for malformed output), / scale, inverse DCT.
Defaults are the paper's (scale 10, vocab 1024, min_frequency 2).

Deviations from the reference: a plain `tokenizers.models.BPE` (no byte-level pre-tokenizer)
over the characters; coefficients beyond the fit range are clipped to it at encode (the
reference clips only the low end, so a larger one would become a character outside the
alphabet); malformed ids are dropped rather than zeroing the whole chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, models, trainers

from vla.tokenizers.base import ActionTokenizer, TokenizerConfig, register_tokenizer

log = logging.getLogger(__name__)

BPE_FILE = "fast_bpe.json"
# coefficients become characters chr(0..vocab-1); staying below 0xD800 keeps them clear of the
# UTF-16 surrogates, which cannot be passed to the Rust tokenizer
MAX_VOCAB = 0xD800


@dataclass
class FastTokenizerConfig(TokenizerConfig):
    scale: float = 10.0  # DCT coefficients are multiplied by this before rounding (larger = finer, more tokens)
    vocab_size: int = 1024  # BPE vocabulary (upper bound: training stops early when no pair repeats)
    min_frequency: int = 2  # BPE merges a pair only if it occurs this often in the fit data

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"tokenizer.scale must be > 0; got {self.scale}")
        if not 2 <= self.vocab_size < MAX_VOCAB:
            raise ValueError(f"tokenizer.vocab_size must be in [2, {MAX_VOCAB}); got {self.vocab_size}")
        if self.min_frequency < 1:
            raise ValueError(f"tokenizer.min_frequency must be >= 1; got {self.min_frequency}")

    @property
    def max_vocab_size(self) -> int:
        return self.vocab_size  # BPE training may stop below it


class FastTokenizer(ActionTokenizer):
    """Chunks [B, H, D] <-> variable-length BPE ids over rounded, scaled DCT coefficients."""

    config: FastTokenizerConfig
    files = (BPE_FILE,)

    def __init__(self, config: FastTokenizerConfig):
        super().__init__(config)
        self.min_coeff = 0  # smallest rounded coefficient in the fit data: character 0
        self.max_coeff = 0  # largest: character max_coeff - min_coeff
        self.bpe: Tokenizer | None = None

    @property
    def vocab_size(self) -> int:
        """The trained vocabulary (at most config.vocab_size)."""
        self._require_fit("vocab_size")
        return self.bpe.get_vocab_size()

    def coefficients(self, chunks: np.ndarray) -> np.ndarray:
        """Normalised chunks [B, H, D] -> rounded, scaled DCT coefficients [B, H*D] int64, coefficient-major."""
        # imported here: scipy is not a core dependency (the sim extra brings it), and vla.config imports this
        # module (the ar head's tokenizer choices), so every import of vla.config would otherwise need it
        from scipy.fft import dct

        coeffs = dct(chunks, axis=1, norm="ortho") * self.config.scale  # (B, H, D): row h = frequency h
        return np.rint(coeffs).astype(np.int64).reshape(len(chunks), -1)

    def _fit(self, chunks: np.ndarray) -> None:
        coeffs = self.coefficients(chunks)  # (N, H*D)
        self.min_coeff, self.max_coeff = int(coeffs.min()), int(coeffs.max())
        alphabet = self.max_coeff - self.min_coeff + 1
        if alphabet > self.config.vocab_size:
            raise ValueError(f"FAST vocab_size={self.config.vocab_size} is smaller than the {alphabet} distinct "
                             f"rounded DCT coefficients ({self.min_coeff}..{self.max_coeff}) at scale "
                             f"{self.config.scale}; raise tokenizer.vocab_size to at least {alphabet} or lower "
                             f"tokenizer.scale")
        if alphabet + 100 > self.config.vocab_size:
            log.warning("FAST: the coefficient alphabet (%d) leaves under 100 BPE merges in vocab_size %d",
                        alphabet, self.config.vocab_size)
        self.bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=self.config.vocab_size, min_frequency=self.config.min_frequency,
                                      special_tokens=[], initial_alphabet=[chr(i) for i in range(alphabet)],
                                      max_token_length=self.horizon * self.action_dim, show_progress=False)
        self.bpe.train_from_iterator(self._strings(coeffs), trainer=trainer)

    def _strings(self, coeffs: np.ndarray) -> list[str]:
        """[B, H*D] ints -> B strings, one character per coefficient (clipped to the fit range)."""
        chars = np.clip(coeffs, self.min_coeff, self.max_coeff) - self.min_coeff
        return ["".join(map(chr, row)) for row in chars.tolist()]

    def _encode(self, chunks: np.ndarray) -> list[list[int]]:
        return [enc.ids for enc in self.bpe.encode_batch(self._strings(self.coefficients(chunks)))]

    def _decode(self, tokens: list[list[int]]) -> np.ndarray:
        """Ids outside the vocabulary are dropped; coefficients are zero-padded / truncated to H * D."""
        size, vocab = self.horizon * self.action_dim, self.vocab_size
        coeffs = np.zeros((len(tokens), size))
        for row, seq in zip(coeffs, tokens, strict=True):
            text = "".join(self.bpe.id_to_token(i) for i in seq if 0 <= i < vocab)
            values = np.array([ord(c) for c in text[:size]], dtype=np.float64) + self.min_coeff
            row[:len(values)] = values
        coeffs = coeffs.reshape(len(tokens), self.horizon, self.action_dim) / self.config.scale  # (B, H, D)
        from scipy.fft import idct

        return idct(coeffs, axis=1, norm="ortho")

    def _state(self) -> dict[str, Any]:
        return {"min_coeff": self.min_coeff, "max_coeff": self.max_coeff}

    def _save_files(self, folder: Path) -> None:
        self.bpe.save(str(folder / BPE_FILE))  # tokenizers' own JSON

    def _load_state(self, state: dict[str, Any], folder: Path) -> None:
        self.min_coeff, self.max_coeff = int(state["min_coeff"]), int(state["max_coeff"])
        self.bpe = Tokenizer.from_file(str(folder / BPE_FILE))


FastTokenizerConfig.tokenizer_class = FastTokenizer
register_tokenizer("fast")(FastTokenizerConfig)
