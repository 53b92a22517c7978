"""Diagnostics of a latent action model on one dataset (`vla-latent report`).

Over every frame i of the dataset (pair i -> i + k, as labelled):
- codebook usage per stage: perplexity exp(H) of the code histogram (all K positions pooled, and per position) and
  codes used, out of C;
- reconstruction: MSE of each stage's predicted features of frame t + k against the copy-frame-t baseline (the MSE of
  the features of t as the prediction); a model whose codes say nothing cannot beat it by much;
- when the dataset has actions (read for this diagnostic only; the model never sees them): do the codes carry motion?
  The true motion over the pair is the action displacement from frame i to i + k (displacement kinds, ee_delta: the
  sum of actions i..i+k-1; absolute kinds, joint_position: action i+k - action i), each dimension standardised. Per
  code position, the share of its variance explained by the code (between-code variance / total, eta squared) next
  to the same share with the codes shuffled across frames (what C groups explain by chance), and the mean
  displacement per code (plotted).
Writes latent_report.json (with provenance), latent_report.md and latent_report.png.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from vla.data.normalize import has_actions
from vla.latent.labels import future_rows
from vla.latent.lam import LatentActionModel
from vla.latent.training import code_usage

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ABSOLUTE_KINDS = {"joint_position"}  # action kinds that are targets: their change is the motion


def collect(model: LatentActionModel, source: Any, batch_size: int, num_workers: int = 0,
            progress: bool = True) -> dict[str, np.ndarray]:
    """Per frame: codes of each stage int64 [N, K]; per-pair MSE of each stage's prediction and of the copy
    baseline [N]."""
    from vla.latent.inference import run_over

    parts: dict[str, list] = {k: [] for k in ("codes1", "codes2", "mse1", "mse2", "copy")}
    for out in run_over(model, source, batch_size, num_workers, progress):
        parts["codes1"].append(out.stage1.codes.long().cpu())
        parts["codes2"].append(out.stage2.codes.long().cpu())
        for name, prediction in (("mse1", out.stage1.prediction), ("mse2", out.stage2.prediction),
                                 ("copy", out.f_t)):
            parts[name].append(F.mse_loss(prediction, out.f_tk, reduction="none").mean((1, 2)).cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def displacement(actions: np.ndarray, episode_index: np.ndarray, frame_gap: int, kind: str) -> np.ndarray:
    """float64 [N, D]: the true motion from each frame i to i + k (clamped to its episode): the sum of actions
    i..i+k-1 for displacement kinds, action(i + k) - action(i) for absolute ones (ABSOLUTE_KINDS)."""
    actions = np.asarray(actions, dtype=np.float64)
    future = future_rows(episode_index, frame_gap)
    rows = np.arange(len(actions))
    if kind in ABSOLUTE_KINDS:
        return actions[future] - actions[rows]
    cumulative = np.concatenate([np.zeros((1, actions.shape[1])), np.cumsum(actions, axis=0)])
    return cumulative[future] - cumulative[rows]


def explained_share(values: np.ndarray, groups: np.ndarray) -> float:
    """Between-group variance / total variance of values [N, D] (summed over dims) for integer groups [N]."""
    centred = values - values.mean(0)
    total = float((centred ** 2).sum())
    if total == 0:
        return 0.0
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), values.shape[1]))
    np.add.at(sums, inverse, centred)
    return float(((sums ** 2).sum(1) / counts).sum() / total)


def motion_analysis(codes: np.ndarray, motion: np.ndarray, codebook_size: int, seed: int = 0) -> dict[str, Any]:
    """How much of the standardised motion [N, D] the codes [N, K] explain: per position (and over the whole
    K-code tuple) eta squared, the same with codes shuffled across frames, and the mean motion per code."""
    std = motion.std(0)
    keep = std > 0
    z = (motion[:, keep] - motion[:, keep].mean(0)) / std[keep] if keep.any() else np.zeros((len(motion), 0))
    shuffle = np.random.default_rng(seed).permutation(len(codes))
    tuples = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    per_position = []
    for j in range(codes.shape[1]):
        means = np.full((codebook_size, motion.shape[1]), np.nan)
        for c in np.unique(codes[:, j]):
            means[c] = motion[codes[:, j] == c].mean(0)
        per_position.append({"explained": explained_share(z, codes[:, j]),
                             "explained_shuffled": explained_share(z, codes[shuffle, j]),
                             "mean_motion_per_code": means})
    return {"explained": float(np.mean([p["explained"] for p in per_position])),
            "explained_shuffled": float(np.mean([p["explained_shuffled"] for p in per_position])),
            "explained_tuple": explained_share(z, tuples),
            "explained_tuple_shuffled": explained_share(z, tuples[shuffle]),
            "per_position": per_position}


def build_report(model: LatentActionModel, source: Any, batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """The diagnostics of the module docstring, as a JSON-able dict (plus "_plots" data for `plot`)."""
    c, k = model.config.codebook_size, model.frame_gap
    runs = collect(model, source, batch_size, num_workers, progress)
    report: dict[str, Any] = {"frames": int(len(runs["copy"])), "frame_gap": k, "codebook_size": c,
                              "tokens_per_frame": model.config.tokens_per_frame, "fingerprint": model.fingerprint()}
    for stage in (1, 2):
        codes = runs[f"codes{stage}"]
        report[f"stage{stage}"] = {**code_usage(codes, c),
                                   "perplexity_per_position": [code_usage(codes[:, j], c)["perplexity"]
                                                               for j in range(codes.shape[1])],
                                   "recon_mse": float(runs[f"mse{stage}"].mean())}
    copy = float(runs["copy"].mean())
    report["copy_mse"] = copy
    report["stage2_mse_over_copy"] = report["stage2"]["recon_mse"] / copy if copy > 0 else float("nan")
    report["_plots"] = {"codes1": runs["codes1"], "codes2": runs["codes2"]}
    actions = source_actions(source)
    if actions is not None:
        motion = displacement(actions, np.asarray(source.episode_index), k, source.info.action_kind)
        report["action_names"] = list(source.info.action_names)
        report["action_kind"] = source.info.action_kind
        for stage in (1, 2):
            analysis = motion_analysis(runs[f"codes{stage}"], motion, c)
            report["_plots"][f"motion{stage}"] = [p.pop("mean_motion_per_code") for p in analysis["per_position"]]
            report[f"stage{stage}"]["motion"] = analysis
    return report


def source_actions(source: Any) -> np.ndarray | None:
    """The dataset's own actions [N, D] (for the motion diagnostic), or None when it has none."""
    if not has_actions(source):
        return None
    actions = np.asarray(source.numeric()["action"])
    return actions if actions.ndim == 2 and actions.shape[1] > 0 else None


def plot(report: dict[str, Any], path) -> None:
    """Code usage per stage (histograms) and, with actions, the mean motion per code of each stage-2 position
    (codes x action dimensions, in the dataset's units)."""
    plots, c = report["_plots"], report["codebook_size"]
    motion = plots.get("motion2")
    k = report["tokens_per_frame"]
    rows, columns = (2 if motion is not None else 1), max(k, 2)
    fig = plt.figure(figsize=(3.2 * columns, 3.0 * rows))
    grid = fig.add_gridspec(rows, 2 * columns)  # half-columns: two equal histograms on top, k motion maps below
    for s, ax in zip((1, 2), (fig.add_subplot(grid[0, :columns]), fig.add_subplot(grid[0, columns:])), strict=True):
        codes = plots[f"codes{s}"]
        for j in range(k):
            ax.bar(np.arange(c) + (j - k / 2 + 0.5) * 0.8 / k, np.bincount(codes[:, j], minlength=c) / len(codes),
                   width=0.8 / k, label=f"token {j}")
        ax.set_title(f"stage {s}: perplexity {report[f'stage{s}']['perplexity']:.1f} / {c}", fontsize=9)
        ax.set_xlabel("code")
        ax.set_ylabel("share of frames")
        ax.legend(fontsize=6)
    if motion is not None:
        names = report["action_names"]
        for j in range(k):
            ax = fig.add_subplot(grid[1, 2 * j:2 * j + 2])
            image = ax.imshow(motion[j], aspect="auto", cmap="coolwarm",
                              vmin=-np.nanmax(np.abs(motion[j])), vmax=np.nanmax(np.abs(motion[j])))
            share = report["stage2"]["motion"]["per_position"][j]
            ax.set_title(f"token {j}: explains {100 * share['explained']:.0f}% (shuffled "
                         f"{100 * share['explained_shuffled']:.0f}%)", fontsize=8)
            ax.set_xticks(range(len(names)), names, rotation=60, fontsize=6)
            ax.set_yticks(range(c), [str(i) for i in range(c)], fontsize=6)
            ax.set_ylabel("stage-2 code")
            ax.set_xlabel(f"mean action change over the next {report['frame_gap']} frames", fontsize=7)
            fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict[str, Any], title: str) -> str:
    c = report["codebook_size"]
    lines = [f"# Latent action model on {title}", "",
             f"{report['frames']} frames, pairs (t, t + {report['frame_gap']}); C = {c} codes, "
             f"K = {report['tokens_per_frame']} tokens per pair; model {report['fingerprint'][:12]}", "",
             "| | perplexity (of C) | codes used | perplexity per token | reconstruction MSE |",
             "|---|---|---|---|---|"]
    for s in (1, 2):
        r = report[f"stage{s}"]
        per = ", ".join(f"{p:.1f}" for p in r["perplexity_per_position"])
        lines.append(f"| stage {s} | {r['perplexity']:.2f} | {r['codes_used']} | {per} | {r['recon_mse']:.5f} |")
    lines.append(f"| copy frame t | | | | {report['copy_mse']:.5f} |")
    lines += ["", f"Stage-2 reconstruction / copy baseline: {report['stage2_mse_over_copy']:.3f} (below 1: the codes "
              f"explain part of the change)."]
    if "motion" in report["stage2"]:
        lines += ["", f"## Do the codes carry motion? ({report['action_kind']} actions, read for this diagnostic only)",
                  "", "Share of the standardised action displacement over the pair explained by the code (between-code "
                  "variance / total), next to the same with the codes shuffled across frames:", "",
                  "| | per token (mean) | shuffled | whole K-code tuple | shuffled |", "|---|---|---|---|---|"]
        for s in (1, 2):
            m = report[f"stage{s}"]["motion"]
            lines.append(f"| stage {s} | {m['explained']:.3f} | {m['explained_shuffled']:.3f} | "
                         f"{m['explained_tuple']:.3f} | {m['explained_tuple_shuffled']:.3f} |")
    lines += ["", "![codes](latent_report.png)", ""]
    return "\n".join(lines)
