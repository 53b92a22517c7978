"""The training step before the first batch for token heads: fit (or load) the action tokenizer.

By default the tokenizer is fit on the training set's action chunks exactly as the head will see them
(normalised by the policy's statistics, the embodiment's own dims), with a share of the episodes
(`head.tokenizer_holdout`) held out to measure its round-trip error, as `vla-tokenizer fit` does
(its `split_episodes` and `evaluate`). With `head.tokenizer_path` a tokenizer fit beforehand by
`vla-tokenizer fit` (on more data, e.g. VQ-VLA's synthetic chunks) is loaded instead: it must be fit
on this embodiment and, when its folder records them, on chunks normalised with the same statistics.
Either way the report (round trip on the held-out episodes) is printed and written to
<output_dir>/action_tokenizer_fit.json; the tokenizer goes into <output_dir>/action_tokenizer/ and,
attached to the head, into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from vla.checkpoint import TOKENIZER_DIR
from vla.data.dataset import ChunkedDemos
from vla.data.normalize import Normalizer
from vla.provenance import provenance
from vla.tokenizers import ActionTokenizer, TokenizerConfig, build_tokenizer
from vla.tokenizers.base import META_FILE
from vla.tokenizers.cli import NORMALIZATION_FILE, evaluate, split_episodes

FIT_REPORT = "action_tokenizer_fit.json"


def normalized_chunks(normalizer: Normalizer, demos: ChunkedDemos) -> np.ndarray:
    """Every frame's action chunk, normalised, in the embodiment's own dims: [N, H, D] float64 (demos: any frame
    source with `chunks()`)."""
    actions = normalizer.normalize_action(demos.chunks()[0], demos.embodiment)  # (N, H, D_max)
    return actions[..., :normalizer.action_dim(demos.embodiment)].double().numpy()


def fit_tokenizer(config: TokenizerConfig, chunks: np.ndarray, episode_index: np.ndarray, holdout: float,
                  embodiment: str, seed: int = 0) -> tuple[ActionTokenizer, dict]:
    """Fit a tokenizer on the chunks [N, H, D] outside the held-out episodes; returns it and its report."""
    held = split_episodes(episode_index, holdout, seed)
    tokenizer = build_tokenizer(config).fit(chunks[~held], embodiment=embodiment)
    return tokenizer, report(tokenizer, chunks, episode_index, held, source="fit on the training set")


def report(tokenizer: ActionTokenizer, chunks: np.ndarray, episode_index: np.ndarray, held: np.ndarray,
           source: str) -> dict:
    """Type, settings, vocabulary, where the tokenizer comes from, and its round trip (plus its own diagnostics)
    on the held-out chunks [N, H, D] (on all of them, marked in_sample, when none are held out)."""
    evaluated = chunks[held] if held.any() else chunks
    return {"type": tokenizer.config.type, "config": dataclasses.asdict(tokenizer.config), "source": source,
            "embodiment": tokenizer.embodiment, "vocab_size": tokenizer.vocab_size,
            "fit_chunks": tokenizer.num_fit_chunks, "held_out_chunks": int(held.sum()),
            "held_out_episodes": int(len(np.unique(episode_index[held]))), "in_sample": not held.any(),
            "round_trip": evaluate(tokenizer, evaluated)}


def load_prefit(path: str | Path, normalizer: Normalizer, embodiment: str) -> ActionTokenizer:
    """A tokenizer written by `vla-tokenizer fit` (its output_dir, or the tokenizer folder itself); a ValueError
    when it was fit on another embodiment or on chunks normalised with other statistics than the policy's."""
    path = Path(path)
    folder = path if (path / META_FILE).is_file() else path / TOKENIZER_DIR
    tokenizer = ActionTokenizer.load(folder, embodiment=embodiment)
    stats_file = folder.parent / NORMALIZATION_FILE
    if stats_file.is_file():
        theirs = Normalizer.load(stats_file)
        same = (theirs.mode == normalizer.mode and
                theirs.stats.get(embodiment, {}).get("action") == normalizer.stats[embodiment]["action"] and
                theirs.modes.get(embodiment) == normalizer.modes.get(embodiment))
        if not same:
            raise ValueError(f"the tokenizer in {folder} was fit on chunks normalised with {stats_file} "
                             f"({theirs.mode}), which differs from this policy's {normalizer.mode} statistics of "
                             f"{embodiment!r}: its tokens would encode other actions; fit it on this dataset "
                             f"(vla-tokenizer fit with the same --dataset and --normalization) or leave "
                             f"head.tokenizer_path empty")
    return tokenizer


def fit_action_tokenizer(policy, demos: ChunkedDemos, output_dir: str | Path, is_main: bool, wait,
                         seed: int = 0) -> dict | None:
    """Fit or load (main process), save to output_dir/action_tokenizer and attach (every process, after `wait()`)
    the tokenizer of a token head; returns the report on the main process (None elsewhere)."""
    head_config = policy.config.head
    folder = Path(output_dir) / TOKENIZER_DIR
    result = None
    if is_main:
        chunks = normalized_chunks(policy.normalizer, demos)
        episodes = np.asarray(demos.episode_index)
        if head_config.tokenizer_path:
            tokenizer = load_prefit(head_config.tokenizer_path, policy.normalizer, demos.embodiment)
            held = split_episodes(episodes, head_config.tokenizer_holdout, seed)
            result = report(tokenizer, chunks, episodes, held, source=f"loaded from {head_config.tokenizer_path}")
        else:
            tokenizer, result = fit_tokenizer(head_config.tokenizer_config, chunks, episodes,
                                              head_config.tokenizer_holdout, demos.embodiment, seed)
        tokenizer.save(folder)
        # the round-trip error is a published figure (head report): it says which code made it
        (Path(output_dir) / FIT_REPORT).write_text(json.dumps({**result, "provenance": provenance(head_config)},
                                                              indent=1))
    wait()  # every process reads the one tokenizer
    policy.head.set_action_tokenizer(ActionTokenizer.load(folder, embodiment=demos.embodiment))
    return result


def describe(result: dict) -> str:
    """One line for the training log."""
    rt = result["round_trip"]
    where = "on its own fit chunks (no episode held out)" if result["in_sample"] else (
        f"on {result['held_out_chunks']} held-out chunks ({result['held_out_episodes']} episodes)")
    return (f"action tokenizer {result['type']} ({result['source']}): vocab {result['vocab_size']}, fit on "
            f"{result['fit_chunks']} chunks; round trip {where}: mean |err| {rt['mean_abs_error']:.4f}, max "
            f"{rt['max_abs_error']:.4f}, {rt['tokens_per_chunk']:.1f} tokens per chunk "
            f"(max {rt['max_tokens_per_chunk']})")
