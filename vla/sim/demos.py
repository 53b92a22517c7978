"""Scripted simulator demonstrations written as a LeRobot dataset (lerobot 0.4.4 API).

    vla-demos --episodes_per_task=10 --tasks='[push]'
    python -m vla.sim.demos --image_size=96
    vla-demos --tasks='[robosuite/Lift/UR5e]' --repo_id=local/robosuite_ur5e   # robosuite (vla.sim.robosuite_env)
    vla-demos --tasks='[reach]' --video=true      # cameras as mp4 (LeRobot v3 video mode; vla.data.frames reads it)
    vla-demos --tasks='[reach]' --action_free=true   # renders and instructions only: no action, no state

One dataset holds one embodiment (one robot_type, action and state width): its tasks must all be of the same
simulator and arm (`vla.sim.envs.sim_spec`). A Meta-World dataset records `camera`; a robosuite one records both
of its cameras (agentview, robot0_eye_in_hand).

Frame t holds the observation before action t and that action. Only episodes where the
scripted expert succeeds are kept; a failed seed is skipped and the next seed is tried.
The dataset folder name carries a hash of the config, and `generation.json` is written beside
the data once the dataset is complete: the same config returns the cached dataset.

With `--action_free=true` the same expert episodes are written without the action and state features (video with
instructions, as action-free data is: latent-action pretraining, vla.latent), and without
`meta/vla_embodiment.json` (there are no actions, so no action kind).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
from tqdm import tqdm

from vla.data.embodiment import write_action_kind
from vla.data.features import lerobot_features
from vla.sim.envs import SimEnv, SimSpec, is_robosuite, make_env, sim_spec

# Evaluation uses seeds from here on; demos must stay below so no placement is shared.
EVAL_SEED_START = 100_000
# Bump when the recorded content changes, so older cached datasets are not reused.
DEMOS_FORMAT_VERSION = 3  # 3: actions recorded as executed (clipped to [-1, 1])
GENERATION_FILE = "generation.json"
# Give up on a task when the expert fails this many seeds in a row: something is broken.
MAX_CONSECUTIVE_FAILURES = 20


@dataclass
class DemoConfig:
    """What to record. `root` is only where to put it, so it is not part of the cache key."""

    tasks: list[str] = field(default_factory=lambda: ["reach", "push", "button-press-topdown"])
    episodes_per_task: int = 40
    seed_start: int = 0
    image_size: int = 64
    camera: str = "corner"  # Meta-World's camera; robosuite tasks record their own two (leave this as is)
    max_steps: int = 200
    steps_after_success: int = 10  # keep recording the expert this long after it first succeeds
    privileged_state: bool = False  # diagnostics only: add the object position to the state
    root: str = "outputs/datasets"
    repo_id: str = "local/metaworld"
    # PNG-writing threads (lerobot's AsyncImageWriter); 0 writes in the main thread.
    image_writer_threads: int = 2
    # Store the cameras as video (lerobot's use_videos: one AV1 mp4 per camera, LeRobot v3's default) instead of PNG
    # frames in the parquet files; read such a dataset with vla.data.frames.LeRobotFrames.
    video: bool = False
    # Write the renders and instructions only, without the action and state features (action-free data)
    action_free: bool = False

    def cache_key(self) -> dict[str, Any]:
        """The fields that determine the recorded content (`video` and `action_free` only when on, so the keys of
        datasets written before they existed stay as they were)."""
        key = dataclasses.asdict(self)
        off = tuple(name for name in ("video", "action_free") if not getattr(self, name))
        for name in ("root", "image_writer_threads") + off:
            key.pop(name)
        return {**key, "format_version": DEMOS_FORMAT_VERSION}

    def dataset_dir(self) -> Path:
        """root/<repo_id>-<8 hex digits of the config hash>."""
        digest = hashlib.sha256(json.dumps(self.cache_key(), sort_keys=True).encode()).hexdigest()[:8]
        return Path(self.root) / f"{self.repo_id}-{digest}"

    def validate(self) -> None:
        self.spec()
        if self.episodes_per_task <= 0:
            raise ValueError(f"episodes_per_task must be positive; got {self.episodes_per_task}")
        if not 0 <= self.seed_start < EVAL_SEED_START:
            raise ValueError(f"seed_start must be in [0, {EVAL_SEED_START}) (evaluation seeds start there); "
                             f"got {self.seed_start}")

    def spec(self) -> SimSpec:
        """What the dataset's frames are; a ValueError when the tasks are of different embodiments."""
        if not self.tasks:
            raise ValueError("DemoConfig.tasks is empty")
        specs = {task: sim_spec(task, self.privileged_state) for task in self.tasks}
        first = specs[self.tasks[0]]
        for task, spec in specs.items():
            if (spec.embodiment, spec.action_names, spec.state_names) != (
                    first.embodiment, first.action_names, first.state_names):
                raise ValueError(f"one dataset holds one embodiment: {self.tasks[0]!r} is {first.embodiment!r} but "
                                 f"{task!r} is {spec.embodiment!r}; record them as separate datasets "
                                 f"(different --repo_id)")
        if is_robosuite(self.tasks[0]) and self.camera != DemoConfig.camera:
            raise ValueError(f"--camera={self.camera!r} names a Meta-World camera; robosuite tasks record "
                             f"{list(first.cameras)}")
        return first

    def cameras(self) -> list[str]:
        """The cameras recorded: Meta-World's `camera`, or the robosuite task's own."""
        return list(self.spec().cameras) if is_robosuite(self.tasks[0]) else [self.camera]


def dataset_features(cfg: DemoConfig) -> dict[str, dict]:
    """LeRobot feature spec: one image per recorded camera, the robot state, the action (named); images only when
    action-free."""
    spec = cfg.spec()
    state, action = ([], []) if cfg.action_free else (list(spec.state_names), list(spec.action_names))
    return lerobot_features(cfg.cameras(), cfg.image_size, state, action, video=cfg.video)


def rollout_expert(env: SimEnv, seed: int, steps_after_success: int = 0) -> tuple[list[dict[str, Any]], bool]:
    """One expert episode at `seed`: (frames of images [C, H, W, 3] / state / action, success).

    The expert keeps acting for `steps_after_success` steps after first success: Meta-World's
    experts stop right at the success boundary, so without these frames a policy never sees the
    states just past it, and one that lands a little short hovers there without succeeding.
    """
    obs = env.reset(seed=seed)
    frames: list[dict[str, Any]] = []
    succeeded_at: int | None = None
    for step in range(env.max_steps):
        action = env.expert_action()
        frames.append({"images": obs["images"], "state": obs["state"], "action": action})
        obs, success, _ = env.step(action)
        if success and succeeded_at is None:
            succeeded_at = step
        if succeeded_at is not None and step - succeeded_at >= steps_after_success:
            break
    return frames, succeeded_at is not None


def load_cached(cfg: DemoConfig) -> Path | None:
    """The dataset folder if a complete one with this config exists, else None."""
    path = cfg.dataset_dir()
    marker = path / GENERATION_FILE
    if not marker.exists():
        return None
    if json.loads(marker.read_text())["config"] != cfg.cache_key():
        raise ValueError(f"{marker} was written by another config (hash collision?); delete {path}")
    return path


def generate_demos(cfg: DemoConfig) -> Path:
    """Record cfg.episodes_per_task successful expert episodes per task; return the dataset folder.

    Load it with LeRobotDataset(cfg.repo_id, root=<returned path>).
    """
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()  # one "Map" bar per saved episode otherwise
    cfg.validate()
    spec = cfg.spec()
    cached = load_cached(cfg)
    if cached is not None:
        print(f"Using cached demos at {cached} (same config)")
        return cached
    path = cfg.dataset_dir()
    if path.exists():  # an interrupted earlier run: no completion marker
        shutil.rmtree(path)
    dataset = LeRobotDataset.create(
        repo_id=cfg.repo_id, fps=spec.fps, features=dataset_features(cfg), root=path,
        robot_type=spec.embodiment, use_videos=cfg.video, image_writer_threads=cfg.image_writer_threads)
    seeds_used: dict[str, list[int]] = {}
    failed_seeds: dict[str, list[int]] = {}
    with tqdm(total=len(cfg.tasks) * cfg.episodes_per_task, desc="expert demos", unit="episode") as bar:
        for task in cfg.tasks:
            seeds_used[task], failed_seeds[task] = _record_task(dataset, cfg, task, bar)
    dataset.finalize()
    if not cfg.action_free:
        write_action_kind(path, spec.action_kind)
    generation = {"config": cfg.cache_key(), "embodiment": spec.embodiment, "fps": spec.fps,
                  "seeds_used": seeds_used, "failed_seeds": failed_seeds}
    (path / GENERATION_FILE).write_text(json.dumps(generation, indent=1))
    return path


def _record_task(dataset: Any, cfg: DemoConfig, task: str, bar: tqdm) -> tuple[list[int], list[int]]:
    """Add successful episodes of one task to the dataset; returns (seeds used, seeds failed)."""
    cameras = cfg.cameras()
    env = make_env(task, seed=cfg.seed_start, image_size=cfg.image_size, cameras=cameras, max_steps=cfg.max_steps,
                   privileged_state=cfg.privileged_state)
    used: list[int] = []
    failed: list[int] = []
    seed = cfg.seed_start
    try:
        while len(used) < cfg.episodes_per_task:
            if seed >= EVAL_SEED_START:
                raise ValueError(f"demo seeds for {task!r} would reach the evaluation seeds ({EVAL_SEED_START})")
            frames, success = rollout_expert(env, seed, cfg.steps_after_success)
            if success:
                for frame in frames:
                    images = {f"observation.images.{c}": image for c, image in zip(cameras, frame["images"],
                                                                                     strict=True)}
                    numeric = {} if cfg.action_free else {"observation.state": frame["state"],
                                                          "action": frame["action"]}
                    dataset.add_frame(images | numeric | {"task": env.instruction})
                dataset.save_episode()
                used.append(seed)
                bar.update(1)
            else:
                failed.append(seed)
                bar.set_postfix(failed=len(failed))
                if failed[-MAX_CONSECUTIVE_FAILURES:] == list(range(seed - MAX_CONSECUTIVE_FAILURES + 1, seed + 1)):
                    raise ValueError(f"the {task!r} expert failed {MAX_CONSECUTIVE_FAILURES} seeds in a row "
                                     f"(up to seed {seed}) within max_steps={cfg.max_steps}")
            seed += 1
    finally:
        env.close()
    return used, failed


def main() -> None:
    """Console entry point: parse a DemoConfig from the command line and record it."""
    cfg = draccus.parse(config_class=DemoConfig)
    path = generate_demos(cfg)
    print(f"Demos for {cfg.tasks}: {path}  (load with LeRobotDataset({cfg.repo_id!r}, root={str(path)!r}))")


if __name__ == "__main__":
    main()
