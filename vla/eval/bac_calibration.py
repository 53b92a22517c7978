"""Calibrate block-wise adaptive caching (BAC) schedules for a checkpoint on frames of a dataset.

    vla-eval calibrate-bac --checkpoint outputs/train/quickstart/checkpoints/last \
        --dataset outputs/datasets/local/metaworld-XXXXXXXX --steps='[10, 5]' --threshold 0.25
    vla-eval calibrate-bac ... --steps='[100, 10]' --tolerance 0.01   # threshold searched per step count
    vla-eval --checkpoint ... --num_inference_steps 10 --bac true

Writes <checkpoint>/bac_schedule.json. Sampling uses a schedule only when asked: `policy.predict(...,
num_steps=n, bac=True)`, `vla-eval --bac true`, `vla-deploy --bac true`, `vla-serve --bac true` cache with
the schedule for n steps; without it every path samples uncached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import draccus
import torch

from vla.action_heads.bac import SCHEDULE_FILE, calibrate_head, save_schedules
from vla.config import ModelConfig
from vla.types import Observation


@dataclass
class CalibrateConfig:
    checkpoint: str = ""  # checkpoint folder; the schedule is written into it
    dataset: str = ""  # LeRobot dataset folder the calibration frames come from
    repo_id: str = "local/metaworld"
    steps: list[int] = field(default_factory=lambda: [10])  # one schedule per sampling step count
    threshold: float | None = None  # recompute a block once its accumulated relative change exceeds this
    # instead of a threshold: the largest one whose cached samples stay within this mean absolute deviation
    # (normalised action units) of uncached sampling on the calibration frames, found per step count
    tolerance: float | None = None
    frames: int = 16  # calibration observations, spread evenly over the dataset
    recalibrate: bool = False  # replace schedules the checkpoint already has


def calibration_observations(dataset: str | Path, repo_id: str, frames: int, model: ModelConfig) -> Observation:
    """`frames` dataset frames spread evenly over the dataset, as one batch shaped for `model` (its
    observation history included)."""
    from vla.data.dataset import load_chunked_demos

    demos = load_chunked_demos(str(dataset), repo_id, chunk_size=model.head.horizon)
    index = torch.linspace(0, len(demos) - 1, frames).long()
    return Observation(images=demos.observation_images(index, model.n_obs_steps), state=demos.state[index],
                       instruction=demos.instructions(index), embodiment=[demos.embodiment] * len(index))


DEFAULT_THRESHOLD = 0.25


def calibrate_policy(policy, checkpoint: str | Path, obs: Observation, steps: list[int], threshold: float | None,
                     tolerance: float | None = None, recalibrate: bool = False) -> None:
    """Calibrate the step counts that have no schedule made with these settings (all of them with
    recalibrate) and save the schedules with the checkpoint. With a tolerance the threshold is searched."""
    schedules = policy.head.bac_schedules

    def current(n: int) -> bool:
        old = schedules.get(n)
        return old is not None and old.tolerance == tolerance and (tolerance is not None or old.threshold == threshold)

    todo = [n for n in steps if recalibrate or not current(n)]
    if not todo:
        return
    with torch.no_grad():
        cond = policy.condition(obs.images, obs.state, obs.instruction, obs.embodiment)
    valid = policy.normalizer.action_masks(obs.embodiment).to(cond.proprio.device)
    for n in todo:
        schedule = calibrate_head(policy.head, cond, n, threshold=threshold, tolerance=tolerance, valid=valid)
        print(f"BAC {policy.config.head.type}, {n} steps, threshold {schedule.threshold}: computes "
              f"{100 * schedule.computed_fraction():.0f}% of block evaluations, mean deviation {schedule.error:.4f}")
    save_schedules(schedules, Path(checkpoint) / SCHEDULE_FILE)


def main(args: list[str] | None = None) -> None:
    from vla.checkpoint import load_policy

    cfg = draccus.parse(CalibrateConfig, args=args)
    if not cfg.checkpoint or not cfg.dataset:
        raise SystemExit("vla-eval calibrate-bac needs --checkpoint PATH and --dataset PATH (a LeRobot dataset folder)")
    if cfg.threshold is not None and cfg.tolerance is not None:
        raise SystemExit("vla-eval calibrate-bac takes --threshold or --tolerance, not both")
    threshold = DEFAULT_THRESHOLD if cfg.threshold is None and cfg.tolerance is None else cfg.threshold
    policy = load_policy(cfg.checkpoint)
    obs = calibration_observations(cfg.dataset, cfg.repo_id, cfg.frames, policy.config)
    calibrate_policy(policy, cfg.checkpoint, obs, cfg.steps, threshold, cfg.tolerance, cfg.recalibrate)
    print(f"schedules: {Path(cfg.checkpoint) / SCHEDULE_FILE}")
