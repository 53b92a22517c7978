"""Closed-loop evaluation in simulation (Meta-World, robosuite: vla.sim.envs) on seeds never used for demonstrations.

Library code: `evaluate(policy, cfg, ...)`; the command line (`vla-eval`) is vla.eval.cli.
Writes <output_dir>/summary.json (success rate with its 95% Wilson interval and mean episode length per task,
inference latency), success.png (bar chart) and rollouts.mp4 (the first episodes of each task).
`run_tasks` is the rollout loop alone, for callers that write their own outputs (the suite, vla.eval.suite).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from tqdm import tqdm

from vla.config import EvalConfig
from vla.deploy.chunking import ActionSchedule
from vla.deploy.loop import percentiles_ms
from vla.eval.report import plot_success
from vla.eval.stats import wilson_interval
from vla.provenance import provenance
from vla.sim.envs import SimEnv, camera_slot_mask, make_env, sim_spec
from vla.test_time import with_test_time
from vla.types import Observation


@dataclasses.dataclass
class Episode:
    task: str
    seed: int
    success: bool
    length: int
    frames: list[np.ndarray]


def observation_batch(obs: dict, embodiment: str, history: deque | None = None,
                      slot_mask: Sequence[bool] | None = None) -> Observation:
    """One simulator observation as a batch of one: images [1, n * C, H, W, 3] (the cameras of the last n frames,
    time-major, oldest first; just this one without a history), state [1, S]. history: obs["images"] [C', H, W, 3]
    of the last n steps. slot_mask [C]: the policy's image slots the robot has a camera for (None: all); the env
    renders only those (C' of them), the others are zeros, masked (image_mask)."""
    frames = list(history) if history else [obs["images"]]
    mask = None
    if slot_mask is not None and not all(slot_mask):
        present = np.asarray(slot_mask)
        filled = []
        for frame in frames:
            full = np.zeros((len(present), *frame.shape[1:]), dtype=frame.dtype)
            full[present] = frame
            filled.append(full)
        frames = filled
        mask = torch.from_numpy(np.tile(present, len(frames)))[None]
    image = torch.from_numpy(np.concatenate(frames))[None]
    state = torch.from_numpy(np.asarray(obs["state"], dtype=np.float32))[None]
    return Observation(images=image, state=state, instruction=[obs["instruction"]], embodiment=[embodiment],
                       image_mask=mask)


def video_frame(obs: dict) -> np.ndarray:
    """uint8 [H, C * W, 3]: the observation's cameras side by side."""
    return np.concatenate(list(obs["images"]), axis=1)


def run_episode(policy, env: SimEnv, seed: int, cfg: EvalConfig, latencies: list[float],
                record: bool, slot_mask: Sequence[bool] | None = None) -> Episode:
    schedule = ActionSchedule(cfg.schedule, policy.config.head.horizon)
    generator = torch.Generator().manual_seed(seed)
    if hasattr(policy, "reset"):  # a policy with state across steps (LeRobot's action queues, vla.eval.lerobot_policy)
        policy.reset()
    obs = env.reset(seed=seed)
    history = deque([obs["images"]] * policy.config.n_obs_steps, maxlen=policy.config.n_obs_steps)
    frames = [video_frame(obs)] if record else []
    success, steps = False, 0
    done = False
    while not done:
        if schedule.needs_chunk(steps):
            start = time.perf_counter()
            chunk = policy.predict(observation_batch(obs, env.embodiment, history, slot_mask), generator=generator,
                                   num_steps=cfg.num_inference_steps or None, bac=cfg.bac)
            latencies.append(time.perf_counter() - start)
            schedule.add(chunk.actions[0, :, chunk.mask[0]].numpy(), start_step=steps)
        obs, success, done = env.step(schedule.action(steps))
        history.append(obs["images"])
        steps += 1
        if record:
            frames.append(video_frame(obs))
    return Episode(env.task, seed, success, steps, frames)


def evaluate(policy, cfg: EvalConfig, image_size: int, cameras: str | Sequence[str]) -> dict:
    """Roll the policy out on every task; return the summary dict (also written to cfg.output_dir).
    cameras: the policy's cameras (model.cameras: simulator camera names or registry image slots), in order.
    With cfg.test_time enabled the policy runs inside SampleAndVerify (vla.test_time)."""
    policy = with_test_time(policy, cfg.test_time)
    sampling = policy.sampling_settings(cfg.num_inference_steps, cfg.bac)  # fails now if bac has no schedule
    episodes, latencies = run_tasks(policy, cfg, image_size, cameras)
    return write_summary(episodes, latencies, cfg, sampling)


def write_summary(episodes: list[Episode], latencies: list[float], cfg: EvalConfig, sampling: dict) -> dict:
    """`summarize` plus provenance, written to cfg.output_dir as summary.json, success.png and rollouts.mp4."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(episodes, latencies, cfg, sampling) | {"provenance": provenance(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_success(summary, out / "success.png")
    write_video([e for e in episodes if e.frames], out / "rollouts.mp4")
    return summary


def run_tasks(policy, cfg: EvalConfig, image_size: int,
              cameras: str | Sequence[str]) -> tuple[list[Episode], list[float]]:
    """cfg.episodes_per_task episodes of every task in cfg.tasks (Meta-World or robosuite names, vla.sim.envs), on
    seeds cfg.seed_start, +1, ...; the first cfg.videos_per_task of each task keep their frames (cameras side by
    side). Returns (episodes, seconds per predicted chunk). cfg.test_time enabled: the policy runs inside
    SampleAndVerify (vla.test_time: N samples, verifier's pick)."""
    policy = with_test_time(policy, cfg.test_time)
    policy.eval()
    cameras = [cameras] if isinstance(cameras, str) else list(cameras)
    episodes: list[Episode] = []
    latencies: list[float] = []
    with tqdm(total=len(cfg.tasks) * cfg.episodes_per_task, desc="eval", unit="episode") as progress:
        for task in cfg.tasks:
            slot_mask = camera_slot_mask(sim_spec(task).embodiment, cameras)
            env = make_env(task, seed=cfg.seed_start, image_size=image_size,
                           cameras=[c for c, real in zip(cameras, slot_mask, strict=True) if real],
                           max_steps=cfg.max_steps, privileged_state=cfg.privileged_state)
            try:
                check_embodiment(policy, env)
                for i in range(cfg.episodes_per_task):
                    episodes.append(run_episode(policy, env, cfg.seed_start + i, cfg, latencies,
                                                record=i < cfg.videos_per_task, slot_mask=slot_mask))
                    progress.update(1)
                    progress.set_postfix(task=task, success=np.mean([e.success for e in episodes if e.task == task]))
            finally:
                env.close()
    return episodes, latencies


def check_embodiment(policy, env: SimEnv) -> None:
    """A ValueError naming both sides unless the checkpoint was trained on the task's embodiment (not checked for a
    policy that records none: `embodiments` None, as LeRobot's)."""
    trained = policy.embodiments
    if trained is not None and env.embodiment not in trained:
        raise ValueError(f"task {env.task!r} is embodiment {env.embodiment!r}, but the checkpoint has statistics only "
                         f"for {trained}: evaluate it on tasks of the embodiments it was trained on")


def summarize(episodes: list[Episode], latencies: list[float], cfg: EvalConfig, sampling: dict) -> dict:
    """Per-task results plus the exact settings sampled with; sampling: `VLAPolicy.sampling_settings` (steps
    actually used, BAC and its threshold, n_obs_steps)."""
    tasks = {}
    for task in cfg.tasks:
        mine = [e for e in episodes if e.task == task]
        successes = int(sum(e.success for e in mine))
        tasks[task] = {
            "success_rate": successes / len(mine),
            "successes": successes,
            "episodes": len(mine),
            "ci95": list(wilson_interval(successes, len(mine))),  # Wilson score interval of the success rate
            "mean_episode_length": float(np.mean([e.length for e in mine])),
            "seeds": [e.seed for e in mine],
        }
    return {
        "tasks": tasks,
        "mean_success_rate": float(np.mean([t["success_rate"] for t in tasks.values()])),
        # the first call is left out (lazy initialisation, allocator warm-up): a policy that calls its model a few
        # times per episode (LeRobot's ACT, SmolVLA) would otherwise have it as its p99
        "chunk_latency_ms": percentiles_ms(latencies[1:] or latencies),
        "first_call_ms": 1000 * latencies[0] if latencies else None,
        # each episode's simulator and sampling noise are seeded with its own seed (tasks.*.seeds), from seed_start
        "settings": {**sampling, "seed_start": cfg.seed_start, "episodes_per_task": cfg.episodes_per_task,
                     "schedule": dataclasses.asdict(cfg.schedule), "max_steps": cfg.max_steps},
    }


def write_video(episodes: list[Episode], path: Path, scale: int = 4, fps: int = 30) -> None:
    """Episodes one after another, each frame upscaled `scale`x; a green/red bar marks success."""
    if not episodes:
        return
    with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
        for episode in episodes:
            colour = np.array([0, 200, 0] if episode.success else [200, 0, 0], dtype=np.uint8)
            for frame in episode.frames:
                big = frame.repeat(scale, axis=0).repeat(scale, axis=1).copy()
                big[:6] = colour
                writer.append_data(big)
