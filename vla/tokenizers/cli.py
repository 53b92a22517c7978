"""`vla-tokenizer fit`: fit an action tokenizer on a LeRobot dataset's normalised action chunks.

    vla-tokenizer fit --dataset.root outputs/datasets --dataset.repo_id local/metaworld-1a2b3c4d \\
        --tokenizer.type vq --tokenizer.steps 3000 --horizon 8 --synthetic_chunks 10000 \\
        --output_dir outputs/tokenizers/vq

The dataset's chunks are read and normalised as vla-train reads them (`load_chunked_demos`, then
`Normalizer.from_demos` in `--normalization` mode, statistics over the whole dataset), so the tokenizer
sees what a token head will encode. A share of the dataset's episodes (`--holdout`) is kept out of the
fit to measure the round trip. More action data can join the fit: other datasets (`--extra_datasets`,
each normalised by its own statistics; a narrower action space is zero-padded as in the policy's padded
space) and synthetic smooth trajectories (`--synthetic_chunks`, `vla.tokenizers.synthetic`).

Writes output_dir/action_tokenizer/ (the tokenizer folder, `ActionTokenizer.load`), output_dir/
normalization.json (the statistics the chunks were normalised with) and output_dir/tokenizer_report.json
(round-trip error on held-out and fit chunks, tokens per chunk, for vq codebook usage / perplexity per
level, with provenance).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import numpy as np

from vla.config import NORMALIZATION_MODES, DataConfig
from vla.tokenizers.base import ActionTokenizer, TokenizerConfig, build_tokenizer
from vla.tokenizers.synthetic import synthetic_chunks
from vla.tokenizers.vq import VQTokenizerConfig

log = logging.getLogger(__name__)

TOKENIZER_DIR = "action_tokenizer"
REPORT_FILE = "tokenizer_report.json"
NORMALIZATION_FILE = "normalization.json"


@dataclass
class ExtraDataset:
    """Another LeRobot dataset whose action chunks join the fit (not the held-out set)."""

    root: str = ""
    repo_id: str = ""
    embodiment_config: str = ""  # its embodiment registry entry, as data.embodiment_config; "" = LeRobot's keys


@dataclass
class TokenizerFitConfig:
    dataset: DataConfig = field(default_factory=DataConfig)  # the dataset the tokenizer is for (as vla-train's data)
    tokenizer: TokenizerConfig = field(default_factory=VQTokenizerConfig)  # --tokenizer.type bins | fast | vq
    horizon: int = 8  # chunk length H: the token head's head.horizon
    normalization: str = "quantile"  # as the policy's model.normalization
    extra_datasets: list[ExtraDataset] = field(default_factory=list)
    synthetic_chunks: int = 0  # synthetic smooth chunks added to the fit (VQ-VLA scales its tokenizer this way)
    holdout: float = 0.1  # share of the dataset's episodes kept out of the fit for the round-trip error
    seed: int = 0  # held-out episodes and synthetic chunks (the tokenizer has its own seed where it has one)
    output_dir: str = "outputs/tokenizers"

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1; got {self.horizon}")
        if self.normalization not in NORMALIZATION_MODES:
            raise ValueError(f"normalization must be one of {NORMALIZATION_MODES}; got {self.normalization!r}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1); got {self.holdout}")
        if self.synthetic_chunks < 0:
            raise ValueError(f"synthetic_chunks must be >= 0; got {self.synthetic_chunks}")


def normalized_chunks(data: DataConfig, horizon: int, mode: str):
    """(chunks [N, H, D] float64 normalised as vla-train does, episode_index [N], the ChunkedDemos, the Normalizer)."""
    from vla.data.dataset import load_chunked_demos
    from vla.data.normalize import Normalizer, entry_modes
    from vla.data.registry import load_embodiment

    entry = load_embodiment(data.embodiment_config) if data.embodiment_config else None
    if entry is not None:
        entry_modes(entry, mode)
    demos = load_chunked_demos(data.root, data.repo_id, chunk_size=horizon, expected_action_dim=data.action_dim,
                               expected_state_dim=data.state_dim, embodiment=data.embodiment,
                               action_kind=data.action_kind, entry=entry)
    normalizer = Normalizer.from_demos(demos, mode)
    chunks = normalizer.normalize_action(demos.actions, demos.embodiment)  # (N, H, D): unpadded here
    return chunks.double().numpy(), demos.episode_index.numpy(), demos, normalizer


def split_episodes(episode_index: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    """bool [N]: True for frames of the held-out episodes (round(holdout * episodes), at least one when
    holdout > 0 and there are two or more episodes)."""
    episodes = np.unique(episode_index)
    count = max(1, round(holdout * len(episodes))) if holdout > 0 and len(episodes) > 1 else 0
    held = np.random.default_rng(seed).choice(episodes, size=count, replace=False)
    return np.isin(episode_index, held)


def extra_chunks(extra: ExtraDataset, horizon: int, width: int, mode: str) -> np.ndarray:
    """An extra dataset's normalised chunks [N, H, width], zero-padded when its action space is narrower."""
    data = DataConfig(root=extra.root, repo_id=extra.repo_id, embodiment_config=extra.embodiment_config)
    chunks, *_ = normalized_chunks(data, horizon, mode)
    if chunks.shape[-1] > width:
        raise ValueError(f"extra dataset {extra.repo_id} has {chunks.shape[-1]} action dims, more than the "
                         f"{width} of --dataset.repo_id; a tokenizer is fit for one width")
    return np.pad(chunks, ((0, 0), (0, 0), (0, width - chunks.shape[-1])))


def fit_tokenizer(cfg: TokenizerFitConfig) -> dict[str, Any]:
    """Fit cfg.tokenizer as the module docstring says; returns the report (also written to cfg.output_dir)."""
    from vla.provenance import provenance

    chunks, episodes, demos, normalizer = normalized_chunks(cfg.dataset, cfg.horizon, cfg.normalization)
    held = split_episodes(episodes, cfg.holdout, cfg.seed)
    width = chunks.shape[-1]
    parts = {"dataset": chunks[~held]}
    for extra in cfg.extra_datasets:
        parts[f"extra:{extra.repo_id}"] = extra_chunks(extra, cfg.horizon, width, cfg.normalization)
    if cfg.synthetic_chunks:
        parts["synthetic"] = synthetic_chunks(cfg.synthetic_chunks, cfg.horizon, width, seed=cfg.seed)
    log.info("fitting the %s tokenizer on %s chunks of H=%d, D=%d", cfg.tokenizer.type,
             {k: len(v) for k, v in parts.items()}, cfg.horizon, width)
    tokenizer = build_tokenizer(cfg.tokenizer).fit(np.concatenate(list(parts.values())), embodiment=demos.embodiment)

    out = Path(cfg.output_dir)
    tokenizer.save(out / TOKENIZER_DIR)
    normalizer.save(out / NORMALIZATION_FILE)
    report = {"tokenizer": cfg.tokenizer.type, "tokenizer_dir": str(out / TOKENIZER_DIR),
              "embodiment": demos.embodiment, "horizon": cfg.horizon, "action_dim": width,
              "vocab_size": tokenizer.vocab_size, "max_tokens_per_chunk": tokenizer.max_tokens_per_chunk,
              "fit_chunks": {k: len(v) for k, v in parts.items()},
              "held_out_episodes": int(len(np.unique(episodes[held]))),
              "held_out": evaluate(tokenizer, chunks[held]), "fit": evaluate(tokenizer, chunks[~held]),
              "provenance": provenance(cfg)}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def evaluate(tokenizer: ActionTokenizer, chunks: np.ndarray) -> dict[str, Any] | None:
    """Round trip and the tokenizer's own statistics on chunks [N, H, D] (None when there are none)."""
    if len(chunks) == 0:
        return None
    return tokenizer.round_trip_error(chunks) | tokenizer.diagnostics(chunks)


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    if args[:1] != ["fit"]:
        raise SystemExit("usage: vla-tokenizer fit --dataset.root DIR --dataset.repo_id ID [--tokenizer.type "
                         "bins|fast|vq ...] [--output_dir DIR]   (vla-tokenizer fit --help lists every option)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = fit_tokenizer(draccus.parse(TokenizerFitConfig, args=args[1:]))
    summary = {k: report[k] for k in ("tokenizer", "embodiment", "horizon", "action_dim", "vocab_size",
                                      "max_tokens_per_chunk", "fit_chunks", "held_out")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {report['tokenizer_dir']} and {Path(report['tokenizer_dir']).parent / REPORT_FILE}")


if __name__ == "__main__":
    main()
