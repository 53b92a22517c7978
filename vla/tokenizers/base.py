"""The action-tokenizer interface and its registry.

An action tokenizer turns normalised action chunks [B, H, D] into lists of integer ids in
0..vocab_size-1 and back. It is fit once on a dataset's normalised training chunks [N, H, D]
(`fit`), records what it was fit for (horizon H, action dim D, embodiment) and refuses chunks of
another shape. A new tokenizer is one module: a config dataclass registered with
`@register_tokenizer` whose `tokenizer_class` is an `ActionTokenizer` subclass.

Saved as a folder (`save` / `ActionTokenizer.load`): `action_tokenizer.json` (type, config, what it
was fit for, small fitted state) plus any files the subclass writes. No pickle.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import draccus
import numpy as np

from vla.registry import choice_class
from vla.versioned import read_versioned_json

META_FILE = "action_tokenizer.json"
FORMAT_VERSION = 1


@dataclass
class TokenizerConfig(draccus.ChoiceRegistry, ABC):
    """Base of every tokenizer config; `type` in YAML picks the subclass."""

    @classmethod
    def default_choice_name(cls) -> str:
        return "bins"

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    @property
    @abstractmethod
    def max_vocab_size(self) -> int:
        """An upper bound on the fitted `vocab_size`, known before fitting (a token head sizes its vocabulary
        from it, so a checkpoint's model structure never depends on the fit)."""

    @property
    def fixed_length(self) -> bool:
        """Every chunk encodes to exactly `max_tokens_per_chunk` ids (else a token head ends a sequence itself)."""
        return False


def register_tokenizer(name: str):
    """Class decorator registering a TokenizerConfig subclass under `name`."""
    return TokenizerConfig.register_subclass(name)


def tokenizer_config_class(name: str) -> type[TokenizerConfig]:
    """Look up a registered tokenizer config by name, suggesting the closest on a typo."""
    return choice_class(TokenizerConfig, name, "action tokenizer")


def build_tokenizer(config: TokenizerConfig | str) -> ActionTokenizer:
    """An unfit tokenizer for a config (or a registered name, with that config's defaults)."""
    if isinstance(config, str):
        config = tokenizer_config_class(config)()
    tokenizer_class = getattr(type(config), "tokenizer_class", None)
    if tokenizer_class is None:
        raise TypeError(f"{type(config).__name__} has no `tokenizer_class`; set it to its ActionTokenizer subclass")
    return tokenizer_class(config)


class ActionTokenizer(ABC):
    """Normalised action chunks [B, H, D] <-> token ids (lists of ints in 0..vocab_size-1).

    Subclasses implement `_fit`, `_encode`, `_decode`, `vocab_size`, `_state` / `_load_state` and,
    if their fitted state is more than `_state()` holds, `files` and `_save_files`.
    """

    files: ClassVar[tuple[str, ...]] = ()  # files `_save_files` writes besides META_FILE

    def __init__(self, config: TokenizerConfig):
        self.config = config
        self.horizon: int | None = None  # H the tokenizer was fit for
        self.action_dim: int | None = None  # D the tokenizer was fit for
        self.embodiment = ""  # embodiment name the fit data came from ("" = not given)
        self.num_fit_chunks = 0

    # --- public interface ---

    @property
    def is_fit(self) -> bool:
        return self.horizon is not None

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct token ids; ids lie in 0..vocab_size-1."""

    @property
    def max_tokens_per_chunk(self) -> int:
        """An upper bound on len(encode(chunk)[0]) (H * D unless a subclass knows better)."""
        self._require_fit("max_tokens_per_chunk")
        return self.horizon * self.action_dim

    def fit(self, chunks: np.ndarray, embodiment: str = "") -> ActionTokenizer:
        """Fit on normalised training chunks [N, H, D]; later chunks must have this H and D. Returns self."""
        chunks = _as_chunks(chunks, "fit")
        if len(chunks) == 0:
            raise ValueError("fit needs at least one action chunk; got an array of shape "
                             f"{tuple(chunks.shape)}")
        self.horizon, self.action_dim = int(chunks.shape[1]), int(chunks.shape[2])
        self.embodiment = embodiment
        self.num_fit_chunks = len(chunks)
        self._fit(chunks)
        return self

    def encode(self, chunks: np.ndarray) -> list[list[int]]:
        """Normalised chunks [B, H, D] -> B lists of token ids (fixed or variable length per tokenizer)."""
        return self._encode(self._check_chunks(chunks, "encode"))

    def decode(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        """B lists of token ids -> normalised chunks [B, H, D] float32.

        Never raises on malformed ids (as from an unconstrained model): each tokenizer maps them to
        the nearest valid chunk (out-of-range ids clipped or dropped, missing values filled, extra ones
        dropped; see the subclass)."""
        self._require_fit("decode")
        seqs = [[int(t) for t in seq] for seq in tokens]
        if not seqs:
            return np.zeros((0, self.horizon, self.action_dim), np.float32)
        return self._decode(seqs).astype(np.float32)

    def round_trip_error(self, chunks: np.ndarray) -> dict[str, float]:
        """Encode then decode held-out chunks [N, H, D]: mean / max absolute error and tokens per chunk."""
        chunks = self._check_chunks(chunks, "round_trip_error")
        tokens = self.encode(chunks)
        err = np.abs(self.decode(tokens).astype(np.float64) - chunks)
        lengths = np.array([len(t) for t in tokens])
        return {"mean_abs_error": float(err.mean()), "max_abs_error": float(err.max()),
                "tokens_per_chunk": float(lengths.mean()), "max_tokens_per_chunk": int(lengths.max()),
                "chunks": len(chunks)}

    def diagnostics(self, chunks: np.ndarray) -> dict[str, Any]:
        """Tokenizer-specific statistics on held-out chunks [N, H, D] for reports (none by default; the vq
        tokenizer gives codebook usage and perplexity per level)."""
        self._check_chunks(chunks, "diagnostics")
        return {}

    def check_embodiment(self, embodiment: str) -> None:
        """Raise unless the tokenizer was fit on this embodiment's data."""
        if embodiment != self.embodiment:
            fit_for = f"'{self.embodiment}'" if self.embodiment else "no named embodiment"
            raise ValueError(f"the {self.config.type} action tokenizer was fit on {fit_for}, not '{embodiment}'; "
                             f"fit a tokenizer on this embodiment's action chunks")

    def save(self, folder: str | Path) -> Path:
        """Write META_FILE (+ the subclass's files) into folder; returns the folder."""
        self._require_fit("save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "type": self.config.type,
                "config": dataclasses.asdict(self.config), "horizon": self.horizon,
                "action_dim": self.action_dim, "embodiment": self.embodiment,
                "num_fit_chunks": self.num_fit_chunks, "vocab_size": self.vocab_size, "state": self._state()}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        self._save_files(folder)
        return folder

    @staticmethod
    def load(folder: str | Path, embodiment: str | None = None) -> ActionTokenizer:
        """Load a saved tokenizer of any registered type; with `embodiment`, refuse one fit on another."""
        folder = Path(folder)
        meta = read_versioned_json(_required_file(folder, META_FILE), FORMAT_VERSION)
        config_class = tokenizer_config_class(meta["type"])
        try:
            config = config_class(**meta["config"])
        except TypeError as e:
            raise ValueError(f"{folder / META_FILE}: config does not match {config_class.__name__}: {e}") from e
        tokenizer = build_tokenizer(config)
        tokenizer.horizon, tokenizer.action_dim = int(meta["horizon"]), int(meta["action_dim"])
        tokenizer.embodiment = meta["embodiment"]
        tokenizer.num_fit_chunks = int(meta["num_fit_chunks"])
        for name in tokenizer.files:
            _required_file(folder, name)
        tokenizer._load_state(meta["state"], folder)
        if embodiment is not None:
            tokenizer.check_embodiment(embodiment)
        return tokenizer

    # --- for subclasses ---

    @abstractmethod
    def _fit(self, chunks: np.ndarray) -> None:
        """chunks: [N, H, D] float64, finite; self.horizon / action_dim are already set."""

    @abstractmethod
    def _encode(self, chunks: np.ndarray) -> list[list[int]]:
        """chunks: [B, H, D] float64 of the fit shape -> B lists of ids."""

    @abstractmethod
    def _decode(self, tokens: list[list[int]]) -> np.ndarray:
        """B lists of ints (possibly malformed) -> [B, H, D]."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """Small JSON-serialisable fitted state stored in META_FILE."""

    def _save_files(self, folder: Path) -> None:
        """Write the files named in `files` (none by default)."""
        assert not self.files, f"{type(self).__name__} names files {self.files} but does not write them"

    @abstractmethod
    def _load_state(self, state: dict[str, Any], folder: Path) -> None:
        """Restore what `_state` and `_save_files` stored (their files exist)."""

    # --- checks ---

    def _require_fit(self, what: str) -> None:
        if not self.is_fit:
            raise RuntimeError(f"{what} needs a fit {self.config.type} tokenizer; "
                               f"call fit(chunks) or load(folder) first")

    def _check_chunks(self, chunks: np.ndarray, what: str) -> np.ndarray:
        """Validate [B, H, D] against the fit shape; returns float64."""
        self._require_fit(what)
        chunks = _as_chunks(chunks, what)
        _, horizon, dim = chunks.shape
        if dim != self.action_dim:
            raise ValueError(f"{what}: the {self.config.type} tokenizer was fit for action dim D={self.action_dim}; "
                             f"got chunks of shape {tuple(chunks.shape)} (D={dim})")
        if horizon != self.horizon:
            raise ValueError(f"{what}: the {self.config.type} tokenizer was fit for horizon H={self.horizon}; "
                             f"got chunks of shape {tuple(chunks.shape)} (H={horizon})")
        return chunks


def _as_chunks(chunks: np.ndarray, what: str) -> np.ndarray:
    """[B, H, D] finite float64 or a ValueError naming the problem."""
    chunks = np.asarray(chunks, dtype=np.float64)
    if chunks.ndim != 3:
        raise ValueError(f"{what}: action chunks must be [B, H, D]; got shape {tuple(chunks.shape)}")
    bad = int((~np.isfinite(chunks)).sum())
    if bad:
        raise ValueError(f"{what}: action chunks contain {bad} non-finite values (NaN/inf)")
    return chunks


def _required_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"action tokenizer folder {folder} has no {name}; "
                                f"it was not saved there (ActionTokenizer.save writes it) or was removed")
    return path
