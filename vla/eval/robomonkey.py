"""RoboMonkey-style test-time scaling of a trained checkpoint (issue 14 item 4; METHODS.md section 10).

    python benchmarks/robomonkey.py      # configs/bench/robomonkey.yaml -> docs/results/robomonkey.{md,json,png}
    vla-eval robomonkey --config_path=configs/bench/robomonkey_smoke.yaml     # plumbing check, about a minute

1. The verifier: `verifier` if given, else trained on the checkpoint's demos (`vla.test_time.verifier_training`,
   settings `verifier_train`) into <output_dir>/verifier, reused while its provenance matches.
2. Closed loop, per N in `samples`: the evaluation (`vla.eval.rollout.evaluate`, settings `eval`) with
   `eval.test_time = {verifier, samples: N, candidates}`: success with its 95% interval per task and latency per
   chunk (p50 / p99; everything SampleAndVerify does for one observation), plus the policy alone as the reference.
3. Offline, on `offline_frames` demo frames (evenly spaced): `max(offline_k)` samples per frame from one backbone
   pass; action RMSE to the expert chunk (normalised units, real steps and dims) of the oracle's pick among the first
   k samples, of the verifier's pick and of one sample, and the power-law fit log e = log a + b log k of the oracle
   curve (RoboMonkey's offline scaling metric).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vla.config import EvalConfig, SampleVerifyConfig, parse_with_recipe
from vla.eval.offline import demo_frames, demo_observation
from vla.provenance import blocking_reasons, provenance
from vla.test_time.sampling import sample_candidates
from vla.test_time.verifier import CONFIG, Verifier, observation_features
from vla.test_time.verifier_training import VerifierTrainConfig, chosen_rmse, rmse, train_verifier, training_data

DEFAULT_RECIPE = "configs/bench/robomonkey.yaml"


@dataclass
class RoboMonkeyConfig:
    checkpoint: str = "outputs/train/quickstart/checkpoints/last"
    verifier: str = ""  # a trained verifier folder; "" = train one into <output_dir>/verifier
    verifier_train: VerifierTrainConfig = field(default_factory=VerifierTrainConfig)  # its checkpoint: ours
    samples: list[int] = field(default_factory=lambda: [1, 4, 16])  # N per observation
    candidates: int = 16  # K Gaussian draws scored per observation (0 = score the N samples)
    temperature: float | None = None  # token heads
    eval: EvalConfig = field(default_factory=EvalConfig)  # tasks, episodes, seeds; its test_time is set per N
    offline_k: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    offline_frames: int = 256
    offline_batch: int = 8  # frames per sampling call (each with max(offline_k) samples)
    seed: int = 0
    output_dir: str = "outputs/bench/robomonkey"
    report_dir: str = "docs/results"

    def __post_init__(self) -> None:
        if not self.samples or min(self.samples) < 1:
            raise ValueError(f"samples must list counts >= 1; got {self.samples}")
        if not self.offline_k or min(self.offline_k) < 1:
            raise ValueError(f"offline_k must list counts >= 1; got {self.offline_k}")


def verifier_folder(cfg: RoboMonkeyConfig, policy, demos) -> Path:
    """cfg.verifier, or one trained for cfg.checkpoint in <output_dir>/verifier (reused while its provenance says
    the same commit and settings)."""
    if cfg.verifier:
        return Path(cfg.verifier)
    temperature = cfg.verifier_train.temperature if cfg.verifier_train.temperature is not None else cfg.temperature
    train_cfg = dataclasses.replace(cfg.verifier_train, checkpoint=cfg.checkpoint, temperature=temperature,
                                    output_dir=str(Path(cfg.output_dir) / "verifier"))
    path = Path(train_cfg.output_dir)
    if (path / CONFIG).is_file():
        reasons = blocking_reasons(Verifier.training_summary(path).get("provenance"), train_cfg, False,
                                   f"the verifier in {path}")
        if not reasons:
            return path
        print(f"retraining the verifier in {path}: {'; '.join(reasons)}")
    return train_verifier(train_cfg, policy=policy, demos=demos)


def closed_loop(cfg: RoboMonkeyConfig, policy, verifier: Path) -> list[dict]:
    """One evaluation per N (and the policy alone first): success, its interval per task, latency per chunk."""
    from vla.eval.rollout import evaluate

    runs = [("policy", None)] + [(f"N={n}", n) for n in cfg.samples]
    rows = []
    for name, n in runs:
        test_time = SampleVerifyConfig(verifier=str(verifier), samples=n, candidates=cfg.candidates,
                                   temperature=cfg.temperature) if n else SampleVerifyConfig()
        out = Path(cfg.output_dir) / "closed_loop" / (f"n{n}" if n else "policy")
        eval_cfg = dataclasses.replace(cfg.eval, test_time=test_time, output_dir=str(out))
        summary = evaluate(policy, eval_cfg, policy.config.image_size, policy.config.cameras)
        rows.append({"name": name, "samples": n, "candidates": cfg.candidates if n else None,
                     "success_rate": summary["mean_success_rate"],
                     "episodes": sum(t["episodes"] for t in summary["tasks"].values()),
                     "tasks": {t: {k: r[k] for k in ("success_rate", "successes", "episodes", "ci95")}
                               for t, r in summary["tasks"].items()},
                     "latency_ms": summary["chunk_latency_ms"], "summary": str(out / "summary.json")})
        print(f"{name:>8}: success {rows[-1]['success_rate']:.2f}, latency p50 {rows[-1]['latency_ms']['p50']:.1f} ms")
    return rows


@torch.no_grad()
def offline_scaling(cfg: RoboMonkeyConfig, policy, verifier: Verifier, demos) -> dict:
    """RMSE to the expert vs k (oracle pick, verifier pick, one sample) and the power-law fit of the oracle curve."""
    policy.eval()
    k_max = max(cfg.offline_k)
    frames = demo_frames(demos, cfg.offline_frames)
    expert_all = policy.normalizer.normalize_action(demos.actions, demos.embodiment).float()
    valid_all = (~demos.action_is_pad)[:, :, None] & policy.normalizer.action_mask(demos.embodiment)[None, None, :]
    generator = torch.Generator().manual_seed(cfg.seed)
    distances, scores = [], []
    for start in tqdm(range(0, len(frames), cfg.offline_batch), desc="offline samples", unit="batch"):
        index = frames[start:start + cfg.offline_batch]
        obs = demo_observation(demos, index, policy.config.n_obs_steps)
        drawn = sample_candidates(policy, obs, k_max, generator,
                                  **({"temperature": cfg.temperature} if cfg.temperature is not None else {}))
        normalized = drawn.normalized.cpu()
        distances.append(rmse(normalized, expert_all[index], valid_all[index]))  # (B, k_max)
        scores.append(verifier.score(observation_features(drawn.cond), drawn.normalized).cpu())
    distance, score = torch.cat(distances), torch.cat(scores)
    rows = []
    for k in sorted(cfg.offline_k):
        picked, closest = chosen_rmse(distance[:, :k], score[:, :k])
        rows.append({"k": k, "oracle_rmse": closest.mean().item(), "verifier_rmse": picked.mean().item(),
                     "single_rmse": distance[:, 0].mean().item()})
    return {"frames": len(frames), "rows": rows, "fit": power_law([r["k"] for r in rows],
                                                                  [r["oracle_rmse"] for r in rows])}


def power_law(k: list[int], error: list[float]) -> dict:
    """Least-squares fit of log e = log a + b log k; a, b and R^2 of the fit in log space."""
    x, y = np.log(np.asarray(k, dtype=float)), np.log(np.asarray(error, dtype=float))
    if len(x) < 2:
        return {"a": float(np.exp(y[0])), "b": 0.0, "r2": None}
    b, log_a = np.polyfit(x, y, 1)
    residual = y - (log_a + b * x)
    total = ((y - y.mean()) ** 2).sum()
    return {"a": float(np.exp(log_a)), "b": float(b), "r2": float(1 - (residual**2).sum() / total) if total else None}


def run_robomonkey(cfg: RoboMonkeyConfig, policy=None, demos=None) -> Path:
    """The whole benchmark; returns the markdown report's path (results JSON and PNG beside it)."""
    from vla.checkpoint import load_policy
    from vla.eval.robomonkey_report import write_report

    torch.manual_seed(cfg.seed)
    policy = (policy or load_policy(cfg.checkpoint)).eval()
    if demos is None:
        from vla.training.train import load_demos

        run = dataclasses.replace(cfg.verifier_train, checkpoint=cfg.checkpoint)
        demos = load_demos(policy.config, training_data(run))
    folder = verifier_folder(cfg, policy, demos)
    verifier = Verifier.load(folder, device=next(policy.parameters()).device)
    verifier.check_policy(policy, where=f"verifier {folder}")
    results = {"provenance": provenance(cfg), "checkpoint": cfg.checkpoint, "verifier": str(folder),
               "verifier_training": {k: v for k, v in Verifier.training_summary(folder).items()
                                     if k in ("steps", "first_loss", "last_loss", "train", "held_out", "frames",
                                              "settings")},
               "closed_loop": closed_loop(cfg, policy, folder),
               "offline": offline_scaling(cfg, policy, verifier, demos)}
    out = Path(cfg.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robomonkey.json").write_text(json.dumps(results, indent=1))
    return write_report(cfg, results, out)


def main(args: list[str] | None = None) -> None:
    """Parse flags on top of configs/bench/robomonkey.yaml (or another --config_path) and run."""
    print(f"report: {run_robomonkey(parse_with_recipe(RoboMonkeyConfig, DEFAULT_RECIPE, args))}")


if __name__ == "__main__":
    main()
