"""The training step before the first batch for token heads: fit the action tokenizer on the dataset.

The tokenizer is fit on the training set's action chunks exactly as the head will see them
(normalised by the policy's statistics, the embodiment's own dims), with a share of the episodes
(`head.tokenizer_holdout`) held out to measure its round-trip error. That report is printed and
written to <output_dir>/action_tokenizer_fit.json; the tokenizer goes into <output_dir>/action_tokenizer/
and, attached to the head, into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from vla.checkpoint import TOKENIZER_DIR
from vla.data.dataset import ChunkedDemos
from vla.data.normalize import Normalizer
from vla.tokenizers import ActionTokenizer, TokenizerConfig, build_tokenizer

FIT_REPORT = "action_tokenizer_fit.json"


def normalized_chunks(normalizer: Normalizer, demos: ChunkedDemos) -> np.ndarray:
    """Every frame's action chunk, normalised, in the embodiment's own dims: [N, H, D] float64."""
    actions = normalizer.normalize_action(demos.actions, demos.embodiment)  # (N, H, D_max)
    return actions[..., :normalizer.action_dim(demos.embodiment)].double().numpy()


def held_out_frames(episode_index: np.ndarray, fraction: float) -> np.ndarray:
    """bool [N]: the frames of round(fraction * episodes) episodes spread evenly over the dataset (at least one
    when fraction > 0), never all of them; all False with fraction 0 or a single episode."""
    episodes = np.unique(episode_index)
    if fraction <= 0 or len(episodes) < 2:
        return np.zeros(len(episode_index), dtype=bool)
    count = min(max(1, round(fraction * len(episodes))), len(episodes) - 1)
    held = episodes[(np.arange(count) * len(episodes)) // count]
    return np.isin(episode_index, held)


def fit_tokenizer(config: TokenizerConfig, chunks: np.ndarray, episode_index: np.ndarray, holdout: float,
                  embodiment: str) -> tuple[ActionTokenizer, dict]:
    """Fit a tokenizer on the chunks [N, H, D] outside the held-out episodes; returns it and its report: type,
    settings, vocabulary, chunks fit / held out, and the round trip (mean / max absolute error, tokens per chunk)
    on the held-out chunks (on the fit chunks, marked in_sample, when none are held out)."""
    held = held_out_frames(episode_index, holdout)
    tokenizer = build_tokenizer(config).fit(chunks[~held], embodiment=embodiment)
    evaluated = chunks[held] if held.any() else chunks
    report = {"type": config.type, "config": dataclasses.asdict(config), "embodiment": embodiment,
              "vocab_size": tokenizer.vocab_size, "fit_chunks": int((~held).sum()), "held_out_chunks": int(held.sum()),
              "held_out_episodes": int(len(np.unique(episode_index[held]))), "in_sample": not held.any(),
              "round_trip": tokenizer.round_trip_error(evaluated)}
    return tokenizer, report


def fit_action_tokenizer(policy, demos: ChunkedDemos, output_dir: str | Path, is_main: bool, wait) -> dict | None:
    """Fit (main process), save to output_dir/action_tokenizer and attach (every process, after `wait()`) the
    tokenizer of a token head; returns the report on the main process (None elsewhere)."""
    head_config = policy.config.head
    folder = Path(output_dir) / TOKENIZER_DIR
    report = None
    if is_main:
        chunks = normalized_chunks(policy.normalizer, demos)
        tokenizer, report = fit_tokenizer(head_config.tokenizer_config, chunks, demos.episode_index.numpy(),
                                          head_config.tokenizer_holdout, demos.embodiment)
        tokenizer.save(folder)
        (Path(output_dir) / FIT_REPORT).write_text(json.dumps(report, indent=1))
    wait()  # every process reads the one fit
    policy.head.set_action_tokenizer(ActionTokenizer.load(folder, embodiment=demos.embodiment))
    return report


def describe(report: dict) -> str:
    """One line for the training log."""
    rt = report["round_trip"]
    where = "on the fit chunks (no episode held out)" if report["in_sample"] else (
        f"on {report['held_out_chunks']} held-out chunks ({report['held_out_episodes']} episodes)")
    return (f"action tokenizer {report['type']}: vocab {report['vocab_size']}, fit on {report['fit_chunks']} chunks; "
            f"round trip {where}: mean |err| {rt['mean_abs_error']:.4f}, max {rt['max_abs_error']:.4f}, "
            f"{rt['tokens_per_chunk']:.1f} tokens per chunk (max {rt['max_tokens_per_chunk']})")
