"""Cost at equal size: our heads against LeRobot's Diffusion Policy and ACT at matched parameter counts (issue 14).

    python benchmarks/cost.py                 # configs/bench/cost.yaml -> docs/results/cost.{md,json}
    vla-eval cost --config_path=configs/bench/cost_smoke.yaml

What is compared is the action generator: what runs per chunk once the observation is encoded. Every model gets the
same conditioning, random (only cost is measured), built in one process:
- ours: `head.sample(cond)` / `head.loss(cond, ...)`, cond = `cond_tokens` backbone tokens of width `cond_width`
  (what the tiny VLM hands a head) + the state;
- LeRobot's policies, with their own modules and code paths, fed `observation.environment_state` of width
  `image_feature_dim` in place of the camera (Diffusion Policy concatenates its image encoder's features, 2 x 32
  keypoints = 64 by default, with the state into the UNet's global conditioning, so the UNet does exactly its real
  work; ACT's encoder then sees 3 tokens (latent, state, this vector) instead of 2 + its ResNet feature map cells,
  which slightly understates ACT's encoder cost). Latency per chunk: Diffusion Policy's `generate_actions` (UNet x
  its sampling steps), ACT's `predict_action_chunk`. Training step: `policy.forward(batch)` (their losses).
Matching: for each baseline, our head's width (`hidden`, multiples of `width_step`; depth and heads as configured)
is the one whose parameter count is closest to the baseline's (all of the policy's parameters; it has no image
encoder here). Both counts are reported. Every chunk has `head.horizon` actions (the baselines' horizon /
chunk_size are set to it).

Timings are interleaved (each round calls every model of a group once), so load on the machine hits them alike;
ratios are against the baseline timed in the same rounds. FLOPs of one chunk at batch 1 come from
`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention: 2 per multiply-add); the floor is
those FLOPs at this CPU's measured fp32 matmul throughput (best of `matmul_reps` n x n products), and "x floor" is
the measured latency over it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vla.action_heads import build_head
from vla.config import parse_with_recipe
from vla.eval.heads_benchmark import HeadSizeConfig, HeadVariant
from vla.eval.lerobot_train import LeRobotPolicySpec
from vla.provenance import provenance
from vla.types import BackboneOutput, Cond

DEFAULT_RECIPE = "configs/bench/cost.yaml"
STATE_KEY, ENV_KEY, ACTION_KEY = "observation.state", "observation.environment_state", "action"
# the baseline option that sets its chunk length, per LeRobot type
CHUNK_OPTIONS = {"diffusion": ("horizon",), "act": ("chunk_size", "n_action_steps")}


def default_baselines() -> dict[str, LeRobotPolicySpec]:
    return {"diffusion": LeRobotPolicySpec(type="diffusion", options={"down_dims": [128, 256, 512]}),
            "act": LeRobotPolicySpec(type="act", options={"dim_model": 256, "dim_feedforward": 1024})}


@dataclass
class CostConfig:
    heads: list[str] = field(default_factory=lambda: ["dit", "dita", "flow"])
    variants: dict[str, HeadVariant] = field(default_factory=dict)
    head: HeadSizeConfig = field(default_factory=lambda: HeadSizeConfig(horizon=16))  # hidden is searched
    width_step: int = 32  # our head's hidden is searched over multiples of this (and of head.heads)
    max_hidden: int = 4096
    baselines: dict[str, LeRobotPolicySpec] = field(default_factory=default_baselines)
    num_inference_steps: int = 10  # ours; the baselines sample with their own settings
    cond_tokens: int = 160  # what our tiny VLM hands a head at 96 px: 144 image tokens + text + cognition
    cond_width: int = 128
    image_feature_dim: int = 64  # the baselines' stand-in for their image features (DP: 2 x 32 keypoints)
    state_dim: int = 7
    action_dim: int = 4
    batch_size: int = 32  # training step
    reps: int = 30  # timed rounds for latency (after `warmup`)
    train_reps: int = 10
    warmup: int = 3
    matmul_size: int = 1024
    matmul_reps: int = 20
    seed: int = 0
    report_dir: str = "docs/results"

    def __post_init__(self) -> None:
        for name in self.heads:
            self.variant(name).build_head_config(self.head)
        if self.width_step % self.head.heads:
            raise ValueError(f"width_step={self.width_step} must be a multiple of head.heads={self.head.heads}")
        for name, spec in self.baselines.items():
            if spec.type not in CHUNK_OPTIONS:
                raise ValueError(f"baselines.{name}: type {spec.type!r} is not timed here; use one of "
                                 f"{sorted(CHUNK_OPTIONS)}")
            spec.validate()
            for key in CHUNK_OPTIONS[spec.type]:
                if spec.options.get(key, self.head.horizon) != self.head.horizon:
                    raise ValueError(f"baselines.{name}: {key}={spec.options[key]} differs from head.horizon="
                                     f"{self.head.horizon}; every model predicts chunks of the same length")

    def variant(self, name: str) -> HeadVariant:
        return self.variants.get(name) or HeadVariant(head=name)


# ---- models ----------------------------------------------------------------------------------------


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_ours(cfg: CostConfig, name: str, hidden: int) -> torch.nn.Module:
    sizes = dataclasses.replace(cfg.head, hidden=hidden)
    config = cfg.variant(name).build_head_config(sizes)
    return build_head(config, cond_dim=cfg.cond_width, action_dim=cfg.action_dim, state_dim=cfg.state_dim)


def match_width(cfg: CostConfig, name: str, target: int) -> int:
    """The hidden width (a multiple of width_step, at most max_hidden) whose head has the parameter count closest to
    `target`. Bisection: the count grows with the width."""
    lo, hi = 1, cfg.max_hidden // cfg.width_step
    while lo < hi:
        mid = (lo + hi) // 2
        if count(build_ours(cfg, name, mid * cfg.width_step)) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [k for k in (lo - 1, lo) if k >= 1]
    return cfg.width_step * min(candidates, key=lambda k: abs(count(build_ours(cfg, name, k * cfg.width_step))
                                                             - target))


def build_baseline(cfg: CostConfig, spec: LeRobotPolicySpec):
    """The LeRobot policy with the state and the image-feature stand-in as inputs, chunks of head.horizon."""
    import lerobot.policies  # noqa: F401  (registers every policy config)
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class

    features = {"input_features": {STATE_KEY: PolicyFeature(FeatureType.STATE, (cfg.state_dim,)),
                                   ENV_KEY: PolicyFeature(FeatureType.ENV, (cfg.image_feature_dim,))},
                "output_features": {ACTION_KEY: PolicyFeature(FeatureType.ACTION, (cfg.action_dim,))}}
    chunk = {key: cfg.head.horizon for key in CHUNK_OPTIONS[spec.type]}
    config = PreTrainedConfig.get_choice_class(spec.type)(
        device="cpu", **features, **(spec.policy_options() | chunk))
    return get_policy_class(spec.type)(config)


# ---- inputs ----------------------------------------------------------------------------------------


def our_cond(cfg: CostConfig, batch: int, generator: torch.Generator) -> Cond:
    tokens = torch.randn(batch, cfg.cond_tokens, cfg.cond_width, generator=generator)
    backbone = BackboneOutput(tokens=tokens, token_mask=torch.ones(batch, cfg.cond_tokens, dtype=torch.bool),
                              cognition=tokens[:, -1])
    return Cond(backbone=backbone, proprio=torch.randn(batch, cfg.state_dim, generator=generator))


def baseline_batch(cfg: CostConfig, policy, batch: int, generator: torch.Generator, train: bool) -> dict:
    """A normalised LeRobot batch: [B, n_obs, .] observations for Diffusion Policy, [B, .] for ACT."""
    n_obs = policy.config.n_obs_steps if policy.config.type == "diffusion" else None
    shape = (batch, n_obs) if n_obs else (batch,)
    out = {STATE_KEY: torch.randn(*shape, cfg.state_dim, generator=generator),
           ENV_KEY: torch.randn(*shape, cfg.image_feature_dim, generator=generator)}
    if train:
        out[ACTION_KEY] = torch.randn(batch, cfg.head.horizon, cfg.action_dim, generator=generator)
        out["action_is_pad"] = torch.zeros(batch, cfg.head.horizon, dtype=torch.bool)
    return out


@dataclass
class Timed:
    """A model in a timing group: how to sample one chunk at batch 1 and how to run one training step."""

    name: str
    kind: str  # ours | lerobot
    type: str
    params: int
    chunk: Callable[[], object]
    train_step: Callable[[], object]
    steps: int | None  # sampling steps per chunk (None: one forward pass)
    hidden: int | None = None


def timed_ours(cfg: CostConfig, name: str, hidden: int, generator: torch.Generator) -> Timed:
    head = build_ours(cfg, name, hidden)
    one = our_cond(cfg, 1, generator)
    cond = our_cond(cfg, cfg.batch_size, generator)
    actions = torch.randn(cfg.batch_size, cfg.head.horizon, cfg.action_dim, generator=generator)
    valid = torch.ones_like(actions, dtype=torch.bool)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)

    def chunk():
        head.eval()
        with torch.no_grad():
            return head.sample(one, generator=torch.Generator().manual_seed(0), num_steps=cfg.num_inference_steps)

    return Timed(name, "ours", cfg.variant(name).head, count(head), chunk,
                 lambda: train_step(head, optimizer, lambda: head.loss(cond, actions, valid)["loss"]),
                 cfg.num_inference_steps, hidden)


def timed_baseline(cfg: CostConfig, name: str, spec: LeRobotPolicySpec, generator: torch.Generator) -> Timed:
    policy = build_baseline(cfg, spec)
    one = baseline_batch(cfg, policy, 1, generator, train=False)
    batch = baseline_batch(cfg, policy, cfg.batch_size, generator, train=True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    if spec.type == "diffusion":
        steps = policy.diffusion.num_inference_steps
        sample = policy.diffusion.generate_actions
    else:
        steps = None
        sample = policy.predict_action_chunk

    def chunk():
        policy.eval()
        with torch.no_grad():
            return sample(one)

    return Timed(name, "lerobot", spec.type, count(policy), chunk,
                 lambda: train_step(policy, optimizer, lambda: policy.forward(batch)[0]), steps)


def train_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Callable[[], torch.Tensor]) -> None:
    module.train()
    optimizer.zero_grad(set_to_none=True)
    loss().backward()
    optimizer.step()


# ---- measurement -----------------------------------------------------------------------------------


def interleaved(fns: list[Callable[[], object]], reps: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each fn, timed round-robin (one call of each per round) after `warmup` rounds."""
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + reps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[i].append(time.perf_counter() - start)
    return times


def flops(fn: Callable[[], object]) -> int:
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return int(mode.get_total_flops())


def matmul_gflops(n: int, reps: int) -> float:
    """This CPU's fp32 matmul throughput (GFLOP/s): the best of `reps` n x n products, at torch's thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def group(cfg: CostConfig, name: str, spec: LeRobotPolicySpec) -> list[Timed]:
    """A baseline and our heads matched to its parameter count."""
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    baseline = timed_baseline(cfg, name, spec, generator)
    ours = [timed_ours(cfg, head, match_width(cfg, head, baseline.params), generator) for head in cfg.heads]
    return [baseline, *ours]


def measure_group(cfg: CostConfig, models: list[Timed], gflops: float) -> list[dict]:
    """Latency and training-step times (interleaved), FLOPs and floor of every model; ratios to the baseline."""
    latency = interleaved([m.chunk for m in models], cfg.reps, cfg.warmup)
    step = interleaved([m.train_step for m in models], cfg.train_reps, 1)
    rows = []
    for model, lat, st in zip(models, latency, step, strict=True):
        chunk_flops = flops(model.chunk)
        floor_ms = 1000 * chunk_flops / (gflops * 1e9)
        p50 = 1000 * float(np.median(lat))
        rows.append({"name": model.name, "kind": model.kind, "type": model.type, "params": model.params,
                     "hidden": model.hidden, "steps": model.steps, "p50_ms": p50,
                     "p99_ms": 1000 * float(np.percentile(lat, 99)), "train_step_ms": 1000 * float(np.median(st)),
                     "flops": chunk_flops, "floor_ms": floor_ms, "x_floor": p50 / floor_ms})
    base = rows[0]
    for row in rows:
        row["baseline"] = base["name"]
        row["latency_ratio"] = row["p50_ms"] / base["p50_ms"]
        row["train_step_ratio"] = row["train_step_ms"] / base["train_step_ms"]
    return rows


def run_cost(cfg: CostConfig) -> Path:
    from vla.eval.cost_report import write_report

    gflops = matmul_gflops(cfg.matmul_size, cfg.matmul_reps)
    print(f"matmul {cfg.matmul_size}^2 fp32: {gflops:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    rows = []
    for name, spec in cfg.baselines.items():
        rows += measure_group(cfg, group(cfg, name, spec), gflops)
        for row in rows[-(len(cfg.heads) + 1):]:
            print(f"{name}: {row['name']:>10} {row['params'] / 1e6:6.2f}M  p50 {row['p50_ms']:8.1f} ms "
                  f"({row['latency_ratio']:.2f}x)  step {row['train_step_ms']:8.1f} ms ({row['train_step_ratio']:.2f}x)"
                  f"  {row['x_floor']:.1f}x floor")
    results = {"provenance": provenance(cfg), "matmul_gflops": gflops, "threads": torch.get_num_threads(),
               "rows": rows}
    out = Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(results, indent=1))
    return write_report(cfg, results)


def main(args: list[str] | None = None) -> None:
    """Parse flags on top of configs/bench/cost.yaml (or another --config_path) and run."""
    print(f"report: {run_cost(parse_with_recipe(CostConfig, DEFAULT_RECIPE, args))}")

if __name__ == "__main__":
    main()
