"""`python deploy.py` / `vla-deploy`: run a policy on a robot, in-process or through a policy server.

    python deploy.py --checkpoint outputs/train/quickstart/checkpoints/last --robot.type sim --robot.task reach
    python deploy.py --server ws://gpu-box:8765 --robot.type ur --robot.host 192.168.1.10 \\
        --cameras '[{type: realsense, name: corner, serial: "123456"}]' --instruction "push the puck"

Bring-up (docs/bringup.md): `--dry_run true` runs everything but sends no motion command to the arm,
`--speed_scale 0.25` runs with every speed limit at a quarter.

Writes <output_dir>/summary.json (per episode: steps, success, holds, jitter, latency), and per
episode a per-step timing CSV, the actions sent (or, in a dry run, that would have been sent) as a
CSV, and a timing plot (held ticks in red). Ctrl-C, SIGTERM or q / space / Esc in the terminal is
the e-stop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from vla.deploy.loop import ControlLoop, LoopConfig, check_compatible, write_action_log, write_step_log
from vla.deploy.realtime import EStop
from vla.deploy.report import plot_timing
from vla.deploy.session import device_session
from vla.robot_io.config import CameraConfig, RobotConfig

log = logging.getLogger("vla.deploy")


@dataclass
class DeployConfig:
    checkpoint: str = ""  # run this checkpoint (a folder or a hub id) in-process ...
    revision: str = ""  # with a hub id: the branch, tag or commit to load ("" = main)
    server: str = ""  # ... or ask the policy server at ws://HOST:PORT
    token_env: str = "VLA_SERVER_TOKEN"  # environment variable holding the server's shared token
    robot: RobotConfig = field(default_factory=lambda: RobotConfig.get_choice_class("sim")())
    cameras: list[CameraConfig] = field(default_factory=list)  # the simulator brings its own
    instruction: str = ""  # default: the simulated task's instruction
    episodes: int = 1
    num_inference_steps: int = 0  # diffusion / flow steps; 0 = the checkpoint's default
    bac: bool = False  # block caching with the checkpoint's schedule (vla-eval calibrate-bac); off unless asked
    seed: int = 0
    loop: LoopConfig = field(default_factory=LoopConfig)
    output_dir: str = "outputs/deploy"
    record_root: str = ""  # also write every episode (frames, state, executed actions) to a LeRobot dataset here
    record_repo_id: str = "local/rollouts"
    dry_run: bool = False  # run the whole loop, safety layer included, and send no motion command to the arm
    speed_scale: float = 1.0  # (0, 1]: every speed limit (joints, tool step, the driver's own speeds) times this

    def __post_init__(self) -> None:
        if bool(self.checkpoint) == bool(self.server):
            raise ValueError("give exactly one of --checkpoint PATH (in-process) or --server ws://HOST:PORT")
        if self.revision and not self.checkpoint:
            raise ValueError("--revision selects the version of --checkpoint (a hub id); a policy server loads its own")
        if self.dry_run and self.record_root:
            raise ValueError("--dry_run with --record_root would record actions the arm never executed; drop one")
        if not 0 < self.speed_scale <= 1:
            raise ValueError(f"--speed_scale must be in (0, 1] (it only ever slows the arm down); got "
                             f"{self.speed_scale}")


def make_policy(cfg: DeployConfig):
    if cfg.server:
        from vla.deploy.client import RemotePolicy

        token = os.environ.get(cfg.token_env, "")
        if not token:
            raise SystemExit(f"set the policy server's shared token in ${cfg.token_env}")
        return RemotePolicy(cfg.server, token)  # the server sets its own number of sampling steps
    from vla.deploy.runner import LocalPolicy

    return LocalPolicy.from_checkpoint(cfg.checkpoint, revision=cfg.revision or None,
                                       num_steps=cfg.num_inference_steps or None, seed=cfg.seed, bac=cfg.bac)


def deploy(cfg: DeployConfig, policy=None, estop: EStop | None = None) -> dict:
    """Connect, run the episodes, stop the arm on every way out; returns the summary."""
    out = Path(cfg.output_dir)
    policy = policy or make_policy(cfg)
    estop = estop or EStop()
    episodes, hz = [], None
    robot_config = cfg.robot
    if cfg.loop.control_hz:  # one rate: the robot's spec (safety limits) and driver timing are built from it
        robot_config = dataclasses.replace(cfg.robot, control_hz=cfg.loop.control_hz)
    def check(robot) -> None:  # refuse a robot the policy does not fit before anything connects
        check_compatible(policy.spec, robot, None, cfg.loop.allow_rate_mismatch)

    with device_session(robot_config, cfg.cameras, estop, cfg.dry_run, cfg.speed_scale, check) as session:
        robot = session.robot
        instruction = cfg.instruction or getattr(robot, "instruction", "")
        if not instruction:
            raise ValueError("give --instruction (what the robot should do)")
        recorder = None
        if cfg.record_root:
            from vla.deploy.record import EpisodeRecorder

            recorder = EpisodeRecorder(cfg.record_root, cfg.record_repo_id, robot.spec, policy.spec.cameras,
                                       policy.spec.image_size, robot.spec.action_rate)
            session.on_exit.append(recorder.finalize)
        loop = ControlLoop(robot, session.cameras, policy, cfg.loop, instruction, estop, recorder=recorder)
        session.on_exit.insert(0, loop.close)
        loop.start()
        hz = loop.hz
        for i in range(cfg.episodes):
            report = loop.run_episode()
            if recorder is not None:
                recorder.end_episode(keep=True)
            write_step_log(report, out / f"steps_episode_{i}.csv")
            write_action_log(report, robot.spec.action_names, out / f"actions_episode_{i}.csv")
            plot_timing(report.rows, loop.period, out / f"timing_episode_{i}.png",
                        f"episode {i}: {report.steps} steps at {loop.hz:g} Hz, success={report.success}")
            episodes.append(report.summary(loop.period))
            log.info("episode %d: %s", i, json.dumps(episodes[-1]))
            if report.stopped:
                break
    summary = {"control_hz": hz, "async_inference": cfg.loop.async_inference, "dry_run": cfg.dry_run,
               "speed_scale": cfg.speed_scale, "episodes": episodes}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = draccus.parse(DeployConfig, args=args)
    summary = deploy(cfg)
    for i, episode in enumerate(summary["episodes"]):
        jitter, latency = episode["period_jitter_ms"], episode["inference_ms"]
        print(f"episode {i}: {episode['steps']} steps, success={episode['success']}, stopped={episode['stopped']}, "
              f"held {sum(episode['held_ticks'].values())} ticks | jitter p50 {jitter['p50']:.2f} ms "
              f"p99 {jitter['p99']:.2f} ms | inference p50 {latency['p50']:.1f} ms")
    if summary["dry_run"]:
        print(f"dry run: no action was sent; the actions that would have been are in {cfg.output_dir}/"
              f"actions_episode_<i>.csv")
    stopped = [e["stopped"] for e in summary["episodes"] if e["stopped"] and not e["stopped"].startswith("e-stop")]
    if stopped:
        raise SystemExit(f"the arm was stopped: {stopped[0]}")  # non-zero exit for supervisors; e-stop exits 0


if __name__ == "__main__":
    main()
