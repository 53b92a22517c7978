"""`vla-eval`: closed-loop evaluation of a checkpoint, and the evaluation sub-commands.

    vla-eval --checkpoint outputs/train/quickstart/checkpoints/last --episodes_per_task 20
    vla-eval --checkpoint CKPT --tasks '[robosuite/Lift/UR5e]'   # a robosuite task (vla.sim.robosuite_env)
    vla-eval suite --checkpoint CKPT [--suite metaworld8|mt50]   # task suite with report (vla.eval.suite)
    vla-eval heads ...            # head benchmark (vla.eval.heads_benchmark)
    vla-eval fewshot ...          # few-shot benchmark on ML10 (vla.eval.fewshot_benchmark)
    vla-eval latent ...           # latent-action pretraining from video, then 10 demos (vla.eval.latent_benchmark)
    vla-eval vs-lerobot ...       # our heads vs LeRobot's ACT / Diffusion Policy / SmolVLA (vla.eval.vs_lerobot)
    vla-eval cost ...             # latency, step time and FLOPs at equal parameters (vla.eval.cost)
    vla-eval mixture ...          # one policy on a robot mixture, each closed loop (vla.eval.mixture_benchmark)
    vla-eval data ...             # loader samples/s and memory vs LeRobot's loader (vla.eval.data_benchmark)
    vla-eval calibrate-bac ...    # BAC schedules for a checkpoint (vla.eval.bac_calibration)
    vla-eval train-verifier ...   # action verifier for test-time sampling (vla.test_time.verifier_training)
    vla-eval robomonkey ...       # success / latency vs samples per observation (vla.eval.robomonkey)
    vla-eval --checkpoint CKPT --test_time.verifier VERIFIER --test_time.samples 16   # sample, verify, execute best
"""

from __future__ import annotations

import sys
from pathlib import Path

import draccus

from vla.config import EvalConfig

SUBCOMMANDS = {"suite": "vla.eval.suite", "heads": "vla.eval.heads_benchmark",
               "fewshot": "vla.eval.fewshot_benchmark", "calibrate-bac": "vla.eval.bac_calibration",
               "vs-lerobot": "vla.eval.vs_lerobot", "cost": "vla.eval.cost",
               "mixture": "vla.eval.mixture_benchmark", "data": "vla.eval.data_benchmark",
               "train-verifier": "vla.test_time.verifier_training", "robomonkey": "vla.eval.robomonkey",
               "latent": "vla.eval.latent_benchmark"}


def main(args: list[str] | None = None) -> None:
    import importlib

    args = sys.argv[1:] if args is None else args
    if args[:1] and args[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[args[0]]).main(args[1:])
    evaluate_checkpoint(draccus.parse(EvalConfig, args=args))


def evaluate_checkpoint(cfg: EvalConfig) -> dict:
    """Load cfg.checkpoint, roll it out, print and return the summary (also written to cfg.output_dir)."""
    from vla.checkpoint import load_policy
    from vla.eval.report import print_summary
    from vla.eval.rollout import evaluate

    if not cfg.checkpoint:
        raise SystemExit("vla-eval needs --checkpoint PATH (a checkpoint folder written by vla-train)")
    policy = load_policy(cfg.checkpoint)
    if not cfg.output_dir:
        cfg.output_dir = str(Path(cfg.checkpoint).resolve().parent.parent / "eval")
    summary = evaluate(policy, cfg, policy.config.image_size, policy.config.cameras)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
