"""The cost benchmark's page (`vla.eval.cost`): one table per baseline, our heads at its parameter count."""

from __future__ import annotations

from pathlib import Path

# issue 14 item 3: our latency per chunk at most this fraction of Diffusion Policy's at equal parameters, and within
# this multiple of the FLOP floor
TARGET_VS_DIFFUSION = 0.5
TARGET_X_FLOOR = 3.0


def check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def target_cells(row: dict, baseline_type: str) -> str:
    """"≤ 0.5x DP?" and "≤ 3x floor?" for one of our rows."""
    vs_dp = check(row["latency_ratio"] <= TARGET_VS_DIFFUSION) if baseline_type == "diffusion" else "-"
    return f"{vs_dp} | {check(row['x_floor'] <= TARGET_X_FLOOR)}"


def steps_text(row: dict) -> str:
    return "1 pass" if row["steps"] is None else str(row["steps"])


def markdown(cfg, results: dict) -> str:
    rows = results["rows"]
    commit = str(results["provenance"].get("commit"))[:10] + ("+" if results["provenance"].get("dirty") else "")
    lines = [
        "# Cost at equal size: our heads vs LeRobot's Diffusion Policy and ACT",
        "",
        f"The action generator alone, given the encoded observation (random: only cost is measured). Ours: "
        f"`head.sample` with {cfg.num_inference_steps} steps over {cfg.cond_tokens} backbone tokens of width "
        f"{cfg.cond_width} + the state; depth {cfg.head.depth}, {cfg.head.heads} attention heads, width searched "
        f"(multiples of {cfg.width_step}) for the parameter count closest to each baseline's. LeRobot's: their own "
        f"modules, fed the state and a {cfg.image_feature_dim}-wide vector in place of the image features (Diffusion "
        "Policy: exactly its UNet's real conditioning; ACT: its encoder sees 3 tokens instead of 2 + its feature map "
        f"cells, which slightly understates ACT's cost). Every chunk is {cfg.head.horizon} actions. Latency: one "
        f"chunk at batch 1, median (p50) and p99 over {cfg.reps} rounds; training step: forward + backward + AdamW at "
        f"batch {cfg.batch_size} (ours with {cfg.head.noise_samples_per_cond} noise draws per observation, as we "
        f"train), median over {cfg.train_reps}. All models of a table are timed interleaved in the same process; "
        "ratios are to that table's baseline.",
        "",
        f"FLOPs: one chunk at batch 1 (`torch.utils.flop_counter`; matmuls, convolutions, attention). Floor: those "
        f"FLOPs at this CPU's measured fp32 matmul throughput, {results['matmul_gflops']:.1f} GFLOP/s "
        f"({cfg.matmul_size}^2 products, {results['threads']} threads). Targets (issue 14): latency <= "
        f"{TARGET_VS_DIFFUSION}x Diffusion Policy's at equal parameters, and <= {TARGET_X_FLOOR}x the floor.",
        "",
        f"Made by `vla-eval cost` at commit {commit}; the figures with the full config, command, library versions and "
        "machine are in `cost.json`.",
    ]
    for baseline in dict.fromkeys(r["baseline"] for r in rows):
        group = [r for r in rows if r["baseline"] == baseline]
        base = group[0]
        lines += [
            "", f"## vs `{baseline}` (LeRobot `{base['type']}`, {base['params'] / 1e6:.2f} M parameters)", "",
            "| model | params | width | steps | latency p50 / p99 (ms) | vs baseline | train step (ms) | vs baseline "
            "| MFLOP / chunk | floor (ms) | x floor | <= 0.5x DP | <= 3x floor |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            name = f"`{r['name']}`" + (" (LeRobot)" if r["kind"] == "lerobot" else "")
            targets = "- | -" if r["kind"] == "lerobot" else target_cells(r, base["type"])
            lines.append(
                f"| {name} | {r['params'] / 1e6:.2f} M | {r['hidden'] or '-'} | {steps_text(r)} | "
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['latency_ratio']:.2f}x | {r['train_step_ms']:.1f} | "
                f"{r['train_step_ratio']:.2f}x | {r['flops'] / 1e6:.1f} | {r['floor_ms']:.2f} | {r['x_floor']:.1f}x | "
                f"{targets} |")
    return "\n".join(lines + [""])


def write_report(cfg, results: dict) -> Path:
    path = Path(cfg.report_dir) / "cost.md"
    path.write_text(markdown(cfg, results))
    return path
