"""The head benchmark's report: one markdown page and one PNG (success, latency, BAC)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def head_rows(cfg, runs: dict) -> list[dict]:
    """Per head: success mean/std over seeds (overall and per task), parameters, and the timings (train s/step,
    latency p50/p99) of its first-seed run: a benchmark spread over sessions runs its seeds on different machines,
    and the seed-major order runs every head's first seed in one stretch, on one machine when it fits a session."""
    rows = []
    for head in cfg.heads:
        mine = [runs[(head, s)] for s in cfg.seeds]
        timed = mine[0]
        row = {"head": head, "success": mean_std([r["mean_success_rate"] for r in mine]),
               "tasks": {t: mean_std([r["tasks"][t]["success_rate"] for r in mine]) for t in cfg.eval.tasks},
               "s_per_step": timed["train_s_per_step"], "p50": timed["chunk_latency_ms"]["p50"],
               "p99": timed["chunk_latency_ms"]["p99"],
               "params": mine[0]["parameters"], "per_seed": [r["mean_success_rate"] for r in mine],
               "tokens": token_stats(mine)}
        rows.append(row)
    return rows


def timing_machines(cfg, runs: dict) -> str:
    """Which machine the timings (the first-seed runs) come from, and a warning when they come from several
    boots: then the timing columns compare machines as well as heads."""
    records = [(runs[(h, cfg.seeds[0])].get("provenance") or {}).get("machine") or {} for h in cfg.heads]
    boots = {r.get("boot_id") for r in records}
    model = records[0].get("cpu_model") or records[0].get("cpu") or "unknown CPU"
    if None in boots:
        return f"Timings: seed-{cfg.seeds[0]} runs; some of them do not record which machine made them, so the " \
               "timing columns may compare machines as well as heads."
    if len(boots) > 1:
        return f"Timings: seed-{cfg.seeds[0]} runs, made on {len(boots)} machines (boots): the timing columns " \
               "compare machines as well as heads."
    return f"Timings: seed-{cfg.seeds[0]} runs, all on one machine ({model}, {records[0].get('cpu_cores')} cores)."


def token_stats(runs: list[dict]) -> dict | None:
    """A token head's tokenizer over seeds: type, tokens per chunk and held-out round-trip error (normalised
    units), each the mean over seeds; None for a continuous head."""
    fits = [r["tokenizer"] for r in runs if "tokenizer" in r]
    if not fits:
        return None
    trips = [f["round_trip"] for f in fits]
    return {"type": fits[0]["type"], "tokens_per_chunk": float(np.mean([t["tokens_per_chunk"] for t in trips])),
            "round_trip_error": float(np.mean([t["mean_abs_error"] for t in trips]))}


def tokens_cell(tokens: dict | None) -> str:
    if tokens is None:
        return "-"
    return f"{tokens['type']}: {tokens['tokens_per_chunk']:.1f} / {tokens['round_trip_error']:.4f}"


BAC_COLOURS = {"off": "#4878a8", "threshold": "#d08a3c", "tolerance": "#6a9f58"}


def bac_label(row: dict) -> str:
    return "off" if row["mode"] == "off" else f"{row['mode']} {row['setting']:g}"


def sampling(row: dict, rows: list[dict]) -> str:
    """"12.3 (2.1x)": the row's sampling time and its speed-up over the uncached row of its head and steps."""
    if "sampling_ms" not in row:
        return "-"
    base = [r for r in rows if (r["head"], r["steps"], r["mode"]) == (row["head"], row["steps"], "off")]
    ratio = f" ({base[0]['sampling_ms'] / row['sampling_ms']:.1f}x)" if base and row["mode"] != "off" else ""
    return f"{row['sampling_ms']:.1f}{ratio}"


def pct(ms: tuple[float, float]) -> str:
    return f"{100 * ms[0]:.0f} ± {100 * ms[1]:.0f}%"


def best_in_bold(column: list[tuple[float, float]]) -> list[str]:
    """`pct` of every (mean, std) in a table column, the highest mean as shown (and any tied with it) in bold."""
    shown = [float(f"{100 * mean:.0f}") for mean, _ in column]  # compared as shown: 0.2 and 0.19999... tie
    best = max((s for s in shown if s == s), default=None)  # s == s: NaN is never the best
    return [f"**{pct(ms)}**" if s == best else pct(ms) for ms, s in zip(column, shown, strict=True)]


def table_cells(rows: list[dict], tasks: list[str]) -> list[tuple[str, str]]:
    """Per row: (its mean success cell, its per-task cells joined), each column's best in bold."""
    means = best_in_bold([r["success"] for r in rows])
    columns = [best_in_bold([r["tasks"][t] for r in rows]) for t in tasks]
    return [(mean, " | ".join(column[i] for column in columns)) for i, mean in enumerate(means)]


def origin(runs: dict) -> str:
    """Which commits (and vla/ code trees) made the runs (from their provenance), for the report's header."""
    records = [run.get("provenance") or {} for run in runs.values()]
    commits = sorted({str(r.get("commit"))[:10] for r in records})
    trees = sorted({str(r.get("code"))[:10] for r in records if r.get("code")})
    same_code = f" (one code tree under vla/, {trees[0]})" if len(commits) > 1 and len(trees) == 1 else ""
    return f"Made by `vla-eval heads` at commit {', '.join(commits)}{same_code}; the raw figures, with the full " \
           "config, command, library versions and machine, are in `heads_results.json`."


def leaders(rows: list[dict], tasks: list[str]) -> list[str]:
    """Per task and overall: the head with the best mean success, and the heads whose mean lies within the
    spread (the larger of the two sample stds) of it, which the seeds cannot tell apart from the leader."""
    lines = []
    for name, score in [("overall", lambda r: r["success"]), *[(t, lambda r, t=t: r["tasks"][t]) for t in tasks]]:
        best = max(rows, key=lambda r: score(r)[0])
        close = [r["head"] for r in rows if r is not best
                 and score(best)[0] - score(r)[0] <= max(score(best)[1], score(r)[1])]
        tie = f"; within the spread: {', '.join(f'`{h}`' for h in close)}" if close else "; no other within the spread"
        lines.append(f"- {name}: `{best['head']}` {pct(score(best))}{tie}")
    return lines


def markdown(cfg, rows: list[dict], bac_rows: list[dict], runs: dict | None = None) -> str:
    tasks = cfg.eval.tasks
    lines = [
        "# Action heads: " + " vs ".join(cfg.heads) + ", and block-wise adaptive caching",
        "",
        f"Same demos ({cfg.demos.episodes_per_task} scripted episodes per task, {cfg.demos.image_size} px corner "
        f"camera), same tiny PaliGemma backbone (trained from scratch), same head size (hidden {cfg.head.hidden}, "
        f"depth {cfg.head.depth}, horizon {cfg.head.horizon}, {cfg.head.noise_samples_per_cond} noise draws per "
        f"backbone pass), same budget ({cfg.train.steps} steps of batch {cfg.train.batch_size}) and seeds "
        f"{cfg.seeds}. Closed loop on Meta-World seeds never used for demos: {cfg.eval.episodes_per_task} episodes "
        f"per task, {cfg.eval.num_inference_steps} denoising steps, {cfg.eval.schedule.execute_steps} actions executed "
        "per chunk. Success is mean ± sample std over seeds; latency is one `policy.predict` per chunk (backbone + "
        "sampling, batch 1, CPU) in closed loop; train s/step is the median over 50-step windows. Timings come "
        f"from each head's seed-{cfg.seeds[0]} run (seeds may run in different sessions, on different machines) "
        "and vary between runs by some 10%; the successes do not depend on them (fixed step counts).",
        "",
        *([origin(runs), timing_machines(cfg, runs), ""] if runs else []),
        "| head | success | " + " | ".join(tasks) + " | per seed | train s/step | latency p50 / p99 (ms) | "
        "head params | total params | tokens / chunk, round-trip error |",
        "|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|---|",
    ]
    for r, (success, per_task) in zip(rows, table_cells(rows, tasks), strict=True):
        seeds = ", ".join(f"{100 * s:.0f}" for s in r["per_seed"])
        lines.append(f"| `{r['head']}` | {success} | {per_task} | {seeds} | "
                     f"{r['s_per_step']:.3f} | {r['p50']:.1f} / {r['p99']:.1f} | "
                     f"{r['params']['head'] / 1e6:.2f} M | {r['params']['total'] / 1e6:.2f} M | "
                     f"{tokens_cell(r['tokens'])} |")
    if len(cfg.seeds) > 1:
        lines += ["", "Best head per task (mean over seeds), and the heads the seeds cannot separate from it:",
                  *leaders(rows, tasks)]
    variants = [name for name in cfg.heads if name in cfg.variants]
    if variants:
        lines += ["", "Variants (same sizes, on top of a registered head):"]
        for name in variants:
            v = cfg.variants[name]
            settings = [f"{k}={val}" for k, val in v.options.items()]
            if v.n_obs_steps != 1:
                settings.append(f"model.n_obs_steps={v.n_obs_steps}")
            note = " (the backbone's LLM layers denoise: hidden / depth / heads above do not apply)" \
                if v.options.get("denoiser") == "shared" else ""
            lines.append(f"- `{name}`: `{v.head}` with {', '.join(settings) or 'default settings'}{note}")
    if any(r["tokens"] for r in rows):
        lines += ["", "Token heads: the backbone's LLM predicts their tokens (hidden / depth / heads above do not "
                  "apply); their action tokenizer is fit on the training chunks before training, minus "
                  "held-out episodes; the last column gives its mean tokens per chunk and mean absolute round-trip "
                  "error on those held-out chunks (normalised action units), averaged over seeds. Their latency is "
                  "decoding (one token per step over the KV cache) instead of denoising steps."]
    if bac_rows:
        tolerance = f"; tolerance {cfg.bac.tolerance}" if cfg.bac.tolerance is not None else ""
        lines += [
            "",
            f"## BAC: steps x caching (seed {cfg.seeds[0]} checkpoints, calibrated on {cfg.bac.calibration_frames} "
            f"demo frames; fixed threshold {cfg.bac.threshold}{tolerance})",
            "",
            "Same checkpoint, same episode seeds and sampling noise for every row. `threshold`: one fixed "
            "accumulated-change threshold for every step count; `tolerance`: per step count, the largest threshold "
            "whose cached samples stay within that mean absolute deviation of uncached sampling on the calibration "
            "frames. \"Deviation\" is that measured difference (normalised action units, over the real action "
            "dims); \"blocks computed\" is the share of block evaluations the schedule keeps. \"Sampling\" is the "
            "head's sampling time for one observation, every caching mode of a step count timed interleaved in the "
            "same process (the fair speed comparison); \"closed loop\" is backbone + sampling per chunk during the "
            "evaluation, whose rows may come from different runs of the benchmark.",
            "",
            "| head | steps | caching | threshold | success | sampling ms (speed-up) | closed loop p50 / p99 (ms) | "
            "blocks computed | deviation |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for b in bac_rows:
            threshold = "-" if b["threshold"] is None else f"{b['threshold']:g}"
            lines.append(f"| `{b['head']}` | {b['steps']} | {bac_label(b)} | {threshold} | {100 * b['success']:.0f}% "
                         f"| {sampling(b, bac_rows)} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | "
                         f"{100 * b['computed_fraction']:.0f}% | {b['deviation']:.4f} |")
    lines += ["", "![success and latency](heads.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict], bac_rows: list[dict], path: Path) -> None:
    panels = 3 if bac_rows else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), gridspec_kw={"width_ratios": [1, 1, 2.5][:panels]})
    names = [r["head"] for r in rows]
    ax = axes[0]
    ax.bar(names, [100 * r["success"][0] for r in rows], yerr=[100 * r["success"][1] for r in rows], capsize=6,
           color="#4878a8")
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["per_seed"]), [100 * s for s in r["per_seed"]], color="k", s=12, zorder=3)
    ax.set_ylim(0, 105)
    ax.tick_params(axis="x", labelrotation=25)
    ax.set_ylabel("closed-loop success (%)")
    ax.set_title("success, mean ± std over seeds (dots: seeds)", fontsize=10)
    ax = axes[1]
    ax.bar(names, [r["p50"] for r in rows], color="#6a9f58", label="p50")
    ax.scatter(names, [r["p99"] for r in rows], color="k", marker="_", s=300, zorder=3, label="p99")
    ax.set_ylabel("latency per chunk (ms)")
    ax.set_title("inference per chunk, batch 1, CPU (first seed)", fontsize=10)
    ax.tick_params(axis="x", labelrotation=25)
    ax.legend()
    if bac_rows:
        ax = axes[2]
        labels = [f"{b['head']} {b['steps']} {b['mode'][:3]}" for b in bac_rows]
        colours = [BAC_COLOURS[b["mode"]] for b in bac_rows]
        fair = all("sampling_ms" in b for b in bac_rows)  # same-run sampling times when measured
        bars = ax.bar(range(len(bac_rows)), [b["sampling_ms" if fair else "p50_ms"] for b in bac_rows], color=colours)
        for bar, b in zip(bars, bac_rows, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{100 * b['success']:.0f}%",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(bac_rows)), labels, fontsize=7, rotation=90)
        ax.set_yscale("log")
        ax.set_ylabel("head sampling, 1 observation (ms, log)" if fair else "latency per chunk p50 (ms, log)")
        ax.set_title("steps x BAC (blue: no cache, orange: fixed threshold, green: tolerance; label: success)",
                     fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg, runs: dict, bac_rows: list[dict]) -> Path:
    out = Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = head_rows(cfg, runs)
    (out / "heads.md").write_text(markdown(cfg, rows, bac_rows, runs))
    plot(rows, bac_rows, out / "heads.png")
    return out / "heads.md"
