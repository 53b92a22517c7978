"""Latency per chunk with the sampling-time key/value buffers (vla/kv_cache.py) against concatenating the prefix's
keys/values anew at every denoising step or decoded token (the code before them), in the same process.

    python benchmarks/kv_cache.py                                  # writes docs/results/kv_cache.{md,json}
    python benchmarks/kv_cache.py --calls 5 --out outputs/bench/kv_smoke

The heads run on one backbone built from a config (no weights can be downloaded here; latency does not depend on
the weight values): PaliGemma-style, `--hidden` wide, `--layers` LLM layers, `--image_size` px in `--patch` px
patches, untrained heads at the quickstart's sizes. Each head is timed on the same encoded observation (the
backbone's prefix pass is not included: it is the same in both modes), alternating the two modes call by call so
that drift on a noisy machine hits both. Reported: p50 / p90 ms per chunk at batch 1 and the ratio reused/copied.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vla.action_heads import ARHeadConfig, DitaHeadConfig, DiTHeadConfig, FlowHeadConfig, HybridHeadConfig
from vla.backbones import BackboneConfig
from vla.backbones.tiny import build_tiny_vlm
from vla.config import ModelConfig
from vla.data.normalize import Normalizer
from vla.kv_cache import buffer_reuse
from vla.policy import VLAPolicy
from vla.provenance import provenance
from vla.tokenizers import BinsTokenizerConfig, build_tokenizer
from vla.tokenizers.synthetic import synthetic_chunks

EMBODIMENT, HORIZON, ACTION_DIM, STATE_DIM = "bench", 8, 4, 7
INSTRUCTION = "push the puck to the goal"
HEADS = {  # name -> head config; the transformer heads at the quickstart's width and depth
    "dit": lambda: DiTHeadConfig(horizon=HORIZON, hidden=128, depth=4, heads=4),
    "dita": lambda: DitaHeadConfig(horizon=HORIZON, hidden=128, depth=4, heads=4),
    "dita shared": lambda: DitaHeadConfig(horizon=HORIZON, denoiser="shared"),
    "flow": lambda: FlowHeadConfig(horizon=HORIZON, hidden=128, depth=4, heads=4),
    "ar bins": lambda: ARHeadConfig(horizon=HORIZON, tokenizer=BinsTokenizerConfig()),
    "hybrid bins": lambda: HybridHeadConfig(horizon=HORIZON, tokenizer=BinsTokenizerConfig()),
}


def identity_normalizer() -> Normalizer:
    def stats(dim: int) -> dict:
        return {"mean": [0.0] * dim, "std": [1.0] * dim, "min": [-1.0] * dim, "max": [1.0] * dim,
                "q01": [-1.0] * dim, "q99": [1.0] * dim}
    return Normalizer({EMBODIMENT: {"action": stats(ACTION_DIM), "state": stats(STATE_DIM)}}, "quantile",
                      ACTION_DIM, STATE_DIM)


def build_policy(name: str, backbone_dir: Path, image_size: int) -> VLAPolicy:
    torch.manual_seed(0)
    config = ModelConfig(backbone=BackboneConfig("paligemma", pretrained=str(backbone_dir)), head=HEADS[name](),
                         max_action_dim=ACTION_DIM, max_state_dim=STATE_DIM, image_size=image_size,
                         cameras=["corner"])
    policy = VLAPolicy(config, identity_normalizer()).eval()
    if policy.head.config.uses_vocabulary:
        chunks = synthetic_chunks(400, HORIZON, ACTION_DIM, seed=0)
        policy.head.set_action_tokenizer(build_tokenizer(policy.head.config.tokenizer).fit(chunks, EMBODIMENT))
    return policy


def time_head(policy: VLAPolicy, image_size: int, calls: int) -> dict:
    """ms per chunk of head.sample on one encoded observation, the two modes alternating call by call."""
    images = torch.randint(0, 256, (1, 1, image_size, image_size, 3), dtype=torch.uint8)
    state = torch.zeros(1, STATE_DIM)
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        cond = policy.condition(images, state, [INSTRUCTION], [EMBODIMENT])
        for call in range(calls + 1):
            for reuse in (True, False):
                with buffer_reuse(reuse):
                    start = time.perf_counter()
                    policy.head.sample(cond, generator=torch.Generator().manual_seed(call))
                    elapsed = time.perf_counter() - start
                if call > 0:  # the first call of each mode warms up allocators and kernels
                    times[reuse].append(1000 * elapsed)
    row = {}
    for reuse, label in ((True, "reused"), (False, "copied")):
        row[f"{label}_p50_ms"] = float(np.percentile(times[reuse], 50))
        row[f"{label}_p90_ms"] = float(np.percentile(times[reuse], 90))
    row["ratio_p50"] = row["reused_p50_ms"] / row["copied_p50_ms"]
    row["prefix_tokens"] = int(cond.backbone.token_mask.shape[1])
    return row


def report(rows: dict[str, dict], args: argparse.Namespace, meta: dict) -> str:
    lines = [f"# Sampling-time key/value buffers: latency per chunk (commit {meta['commit'][:10]}"
             f"{', uncommitted changes' if meta['dirty'] else ''})", "",
             f"Command: `{meta['command']}`. Batch 1, {args.calls} calls per mode, alternating; the "
             f"backbone's prefix pass is excluded. Backbone: PaliGemma-style from a config ({args.hidden} wide, "
             f"{args.layers} LLM layers, {args.image_size} px in {args.patch} px patches); heads untrained. "
             "`reused`: keys/values written into buffers allocated once per call; `copied`: the prefix's "
             "concatenated anew at every step or token (the code before). Timings from one run on a shared machine: "
             "compare within a row.", "",
             "| head | prefix tokens | reused p50 / p90 ms | copied p50 / p90 ms | reused / copied (p50) |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['prefix_tokens']} | {r['reused_p50_ms']:.1f} / {r['reused_p90_ms']:.1f} | "
                     f"{r['copied_p50_ms']:.1f} / {r['copied_p90_ms']:.1f} | {r['ratio_p50']:.2f} |")
    lines += ["", "`dit` attends to no prefix keys (its condition tokens are in its own sequence): it is the control, "
              "its ratio shows the noise floor of the measurement."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--heads", nargs="*", default=list(HEADS))
    parser.add_argument("--out", default="docs/results/kv_cache")
    args = parser.parse_args(argv)
    meta = provenance(vars(args), command=[Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        backbone_dir = build_tiny_vlm("paligemma", Path(tmp) / "vlm", [INSTRUCTION], image_size=args.image_size,
                                      patch_size=args.patch, hidden_size=args.hidden, text_layers=args.layers,
                                      heads=4)
        for name in args.heads:
            rows[name] = time_head(build_policy(name, backbone_dir, args.image_size), args.image_size, args.calls)
            r = rows[name]
            print(f"{name:12s} reused {r['reused_p50_ms']:7.1f} ms  copied {r['copied_p50_ms']:7.1f} ms  "
                  f"ratio {r['ratio_p50']:.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"provenance": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(report(rows, args, meta))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
