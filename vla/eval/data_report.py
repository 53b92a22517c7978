"""The loader benchmark's page (`vla.eval.data_benchmark`): throughput, memory and data wait per arm."""

from __future__ import annotations

from pathlib import Path

TARGET_VS_LEROBOT = 2.0  # issue 15 item 6: our samples/s on video data at least this multiple of LeRobot's

DESCRIPTIONS = {
    "lerobot_video": "LeRobotDataset(delta_timestamps, video_backend=pyav) + DataLoader, video dataset",
    "ours_video": "vla-train's loader, data.reader=stream (LeRobotFrames, mixture sampler, per-sample shift + "
                  "normalisation) in the DataLoader workers, video dataset",
    "ours_image": "the same, image dataset (PNG in parquet)",
    "in_memory": "vla-train's loader, data.reader=memory (load_chunked_demos) in the training process, image "
                 "dataset",
}


def markdown(cfg, results: dict) -> str:
    prov = results["provenance"]
    commit = str(prov.get("commit"))[:10] + ("+" if prov.get("dirty") else "")
    rows = {r["arm"]: r for r in results["rows"]}
    demos = cfg.demos
    lines = [
        "# Data loader: our streaming frame source vs LeRobot's loader",
        "",
        f"Scripted Meta-World demos ({', '.join(demos.tasks)}; {demos.episodes_per_task} episodes each, "
        f"{demos.image_size} px, one camera), {results['frames']['video']} frames, recorded by `vla-demos` twice: as "
        f"video ({results['dataset_bytes']['video'] / 2**20:.1f} MiB) and as PNG frames "
        f"({results['dataset_bytes']['image'] / 2**20:.1f} MiB). Every arm yields shuffled batches of "
        f"{cfg.batch_size} frames with chunks of {cfg.chunk_size} actions ({cfg.n_obs_steps} observation step(s)); "
        f"DataLoader arms use {cfg.num_workers} workers. Throughput: {cfg.batches} batches after "
        f"{cfg.warmup_batches} warm-up batches, median over {cfg.rounds} interleaved rounds"
        f"{', each arm in a fresh process' if cfg.isolate else ' (all arms in one process)'}. Memory: peak over the "
        "arm's process and its workers, PSS (shared pages split between processes) and RSS (counted per process), "
        "including building the arm.",
        "",
        f"Data wait: the quickstart's step ({cfg.step_seconds} s at batch {cfg.step_batch}) consumes "
        f"{cfg.step_batch / cfg.step_seconds:.0f} samples/s; a loader of rate R leaves a step waiting "
        "max(0, 1 - step_s x R / batch) of its time. R is measured with the CPUs free of training, so where the "
        "same cores train this is a lower bound on the wait.",
        "",
        "| arm | what | samples/s | vs LeRobot | batch p50 / p90 (s) | build (s) | peak PSS (MiB) | peak RSS (MiB) "
        "| quickstart step waits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in rows.items():
        lines.append(f"| `{arm}` | {DESCRIPTIONS[arm]} | {row['samples_per_s']:.1f} | {row['vs_lerobot']:.2f}x | "
                     f"{row['batch_s_p50']:.3f} / {row['batch_s_p90']:.3f} | {row['build_s']:.1f} | "
                     f"{row['peak_pss_mb']:.0f} | {row['peak_rss_mb']:.0f} | {100 * row['wait_fraction']:.0f}% |")
    if "ours_video" in rows:
        ratio = rows["ours_video"]["vs_lerobot"]
        met = "met" if ratio >= TARGET_VS_LEROBOT else "**not met**"
        lines += ["", f"Target (issue 15): >= {TARGET_VS_LEROBOT}x LeRobot's samples/s on video data: {ratio:.2f}x, "
                      f"{met}."]
    lines += ["", "LeRobot's items carry float32 CHW images at the dataset's size; ours uint8 HWC at `image_size` "
              "(resized at decode), with `image_mask`, as the frame-source contract fixes."]
    for name, top in results.get("profile", {}).items():
        lines += ["", f"## Where a `{name}` item's time goes ({cfg.profile_items} random items, one process, "
                      "cProfile)", "", "| function | own ms / item | cumulative ms / item | share of own time |",
                  "|---|---|---|---|"]
        lines += [f"| `{f['function']}` | {f['own_ms_per_item']:.2f} | {f['cum_ms_per_item']:.2f} | "
                  f"{100 * f['own_share']:.0f}% |" for f in top]
    lines += ["", f"Made by `vla-eval data` at commit {commit}; per-round figures, the full config, command, library "
                  "versions and machine are in `data.json`."]
    return "\n".join(lines + [""])


def write_report(cfg, results: dict) -> Path:
    path = Path(cfg.report_dir) / "data.md"
    path.write_text(markdown(cfg, results))
    return path
