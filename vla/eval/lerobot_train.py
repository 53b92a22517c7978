"""LeRobot's own training (`lerobot.scripts.lerobot_train`) on one of our LeRobot datasets, in a subprocess.

    summary = train_lerobot(LeRobotRun(spec=LeRobotPolicySpec(type="act", options={"dim_model": 128}),
                                       dataset_root=..., repo_id="local/metaworld", steps=2000, batch_size=32,
                                       seed=0, output_dir="outputs/bench/vs_lerobot/act_s0/lerobot"))

The command line is LeRobot's (`--policy.type=act --policy.<option>=<value> --dataset.root=... --steps=...`), with
LeRobot's own defaults and optimiser presets for everything not set: the policy's `options`, the device, no hub
push, no wandb, and no pretrained weights (`NO_PRETRAINED`: none can be fetched here, and our backbones are trained
from scratch too). A run resumes from LeRobot's last checkpoint when interrupted; a finished one is never retrained
(its `train.json` is returned). `train.json` records LeRobot's time per step (its logged `updt_s` + `data_s`, median
over the log windows after the first; also `updt_s` alone, without data loading), samples per second, the training
process's peak resident memory and the
checkpoint (`<output_dir>/checkpoints/last/pretrained_model`, loadable with `vla.eval.lerobot_policy`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Options forced on every LeRobot policy of a type, so none starts from pretrained weights: ACT defaults to
# ImageNet ResNet-18 weights (Diffusion Policy's default is already none); SmolVLA would load SmolVLM2-500M.
NO_PRETRAINED = {"act": {"pretrained_backbone_weights": None}, "diffusion": {"pretrained_backbone_weights": None},
                 "smolvla": {"load_vlm_weights": False}}
# One LeRobot log line per window: "step:200 smpl:6K ... updt_s:0.123 data_s:0.010" (lerobot.utils.logging_utils)
STEP_TIME = re.compile(r"updt_s:([0-9.]+) data_s:([0-9.]+)")
SUMMARY_FILE = "train.json"
SEGMENTS_FILE = "train_segments.json"  # one Measured per call of LeRobot's script
LOG_FILE = "train.log"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class LeRobotPolicySpec:
    """A LeRobot policy: its registered type and `--policy.<key>=<value>` options on top of LeRobot's defaults."""

    type: str = ""  # act | diffusion | smolvla | ... (lerobot's PreTrainedConfig registry)
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Fail now (not after hours of other runs) on an unknown type or option, or on pretrained weights."""
        import lerobot.policies  # noqa: F401  (registers every policy config)
        from lerobot.configs.policies import PreTrainedConfig

        if not self.type:
            raise ValueError("a LeRobot policy needs its type (act | diffusion | smolvla | ...)")
        try:
            config_class = PreTrainedConfig.get_choice_class(self.type)
        except KeyError as err:
            known = ", ".join(sorted(PreTrainedConfig.get_known_choices()))
            raise ValueError(f"unknown LeRobot policy type {self.type!r}; LeRobot has {known}") from err
        fields = set(config_class.__dataclass_fields__)
        unknown = sorted(set(self.options) - fields)
        if unknown:
            raise ValueError(f"{unknown} are not options of LeRobot's {config_class.__name__}")
        for key, value in NO_PRETRAINED.get(self.type, {}).items():
            if key in self.options and self.options[key] != value:
                raise ValueError(f"{self.type}: {key}={self.options[key]!r} would load pretrained weights, which "
                                 f"cannot be fetched here and which our policies do not have; leave it out")

    def policy_options(self) -> dict[str, Any]:
        return {**self.options, **NO_PRETRAINED.get(self.type, {})}


@dataclass
class LeRobotRun:
    """One LeRobot training run. `output_dir` is LeRobot's own; train.json and train.log go in its parent."""

    spec: LeRobotPolicySpec
    dataset_root: str
    repo_id: str
    steps: int
    batch_size: int
    seed: int
    output_dir: str
    device: str = "cpu"
    num_workers: int = 0  # LeRobot's data-loader processes (decoding the PNG frames); 0: in the training process
    log_freq: int = 50
    save_freq: int = 500
    image_transforms: bool = True  # LeRobot's own image augmentation (colour jitter, sharpness, small affine)


def cli_value(value: Any) -> str:
    """A config value as LeRobot's draccus command line reads it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(cli_value(v) for v in value) + "]"
    return str(value)


def train_args(run: LeRobotRun) -> list[str]:
    """LeRobot's command line for a fresh run."""
    fixed = {"dataset.repo_id": run.repo_id, "dataset.root": str(Path(run.dataset_root).resolve()),
             "policy.type": run.spec.type, "policy.device": run.device, "policy.push_to_hub": False,
             "batch_size": run.batch_size, "steps": run.steps, "seed": run.seed, "num_workers": run.num_workers,
             "log_freq": run.log_freq, "save_freq": run.save_freq, "wandb.enable": False,
             "dataset.image_transforms.enable": run.image_transforms,
             "output_dir": str(Path(run.output_dir).resolve())}
    policy = {f"policy.{key}": value for key, value in run.spec.policy_options().items()}
    return [f"--{key}={cli_value(value)}" for key, value in (fixed | policy).items()]


def last_checkpoint(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints" / "last" / "pretrained_model"


def child_env() -> dict[str, str]:
    """The environment of a training subprocess: this one, offline (nothing can be downloaded here)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
            "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Measured:
    returncode: int
    peak_rss_mb: float  # the child's peak resident set size (getrusage ru_maxrss)
    wall_s: float


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies, so that a killed benchmark leaves no training
    writing into a run folder that the next call resumes (Linux prctl PR_SET_PDEATHSIG; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_measured(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> Measured:
    """Run cmd with stdout and stderr appended to log_path; its own peak memory comes from wait4's rusage (one
    child's, unlike RUSAGE_CHILDREN's maximum over every child this process ever waited for)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or child_env(),
                                preexec_fn=die_with_parent)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen so it does not wait again
    return Measured(proc.returncode, usage.ru_maxrss / 1024, time.time() - start)  # ru_maxrss is in KiB on Linux


def step_seconds(log_text: str) -> list[tuple[float, float]]:
    """LeRobot's logged (update, data loading) seconds per step, averaged over each log window, in order."""
    return [(float(update), float(data)) for update, data in STEP_TIME.findall(log_text)]


def median_after_first(values: list[float]) -> float:
    """The median over the log windows after the first (which holds start-up costs), as for our runs."""
    return float(np.median(values[1:] or values))


def train_lerobot(run: LeRobotRun) -> dict:
    """Train (or resume, or reuse) one LeRobot run; returns its train.json record."""
    out = Path(run.output_dir)
    summary_path, log_path = out.parent / SUMMARY_FILE, out.parent / LOG_FILE
    segments_path = out.parent / SEGMENTS_FILE  # calls that ran to their end (a killed one records nothing)
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    last = last_checkpoint(out)
    resumed_at = 0
    if last.is_dir():  # an interrupted run: LeRobot resumes weights, optimiser, scheduler and RNG states
        resumed_at = json.loads((last.parent / "training_state" / "training_step.json").read_text())["step"]
        args = ["--resume=true", f"--config_path={last / 'train_config.json'}", f"--steps={run.steps}"]
    else:
        shutil.rmtree(out, ignore_errors=True)  # LeRobot refuses an existing output_dir unless resuming
        log_path.unlink(missing_ok=True)
        segments_path.unlink(missing_ok=True)
        args = train_args(run)
    if resumed_at < run.steps:  # else stopped after its last checkpoint, before train.json: nothing left to train
        train_segment(args, log_path, segments_path, run.spec.type)
    keep_last_checkpoint(out)
    segments = read_segments(segments_path)
    seconds = step_seconds(log_path.read_text(errors="replace"))  # every segment's windows (resumed or not)
    if not seconds:
        raise RuntimeError(f"no LeRobot step times (updt_s / data_s) in {log_path}: was log_freq > steps?")
    s_per_step = median_after_first([update + data for update, data in seconds])
    update_s = median_after_first([update for update, _ in seconds])  # forward, backward, optimiser
    summary = {"policy": run.spec.type, "steps": run.steps, "batch_size": run.batch_size, "seed": run.seed,
               "s_per_step": s_per_step, "samples_per_s": run.batch_size / s_per_step,
               "update_s_per_step": update_s, "samples_per_s_update": run.batch_size / update_s,
               "log_windows": len(seconds),
               "peak_rss_mb": max((m["peak_rss_mb"] for m in segments), default=None),
               "wall_s": sum(m["wall_s"] for m in segments), "segments": len(segments), "resumed_at_step": resumed_at,
               "checkpoint": str(last)}
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def train_segment(args: list[str], log_path: Path, segments_path: Path, policy_type: str) -> None:
    """One call of LeRobot's training script (fresh or resumed), its output appended to log_path and its
    Measured appended to segments_path (a run stopped and resumed has several)."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    measured = run_measured([sys.executable, "-m", "lerobot.scripts.lerobot_train", *args], log_path)
    if measured.returncode != 0:
        tail = "\n".join(log_path.read_bytes()[offset:].decode(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"LeRobot training of {policy_type} failed (exit {measured.returncode}); the last lines "
                           f"of {log_path}:\n{tail}")
    segments_path.write_text(json.dumps([*read_segments(segments_path), dataclasses.asdict(measured)], indent=1))


def read_segments(path: Path) -> list[dict]:
    """The Measured records of a run's finished calls of LeRobot's script ([] before the first)."""
    return json.loads(path.read_text()) if path.exists() else []


def keep_last_checkpoint(output_dir: Path) -> None:
    """Delete every checkpoint but the one `last` points to (each holds the optimiser state: hundreds of MB)."""
    folder = output_dir / "checkpoints"
    keep = (folder / "last").resolve()
    for step in folder.iterdir():
        if step.name != "last" and step.resolve() != keep:
            shutil.rmtree(step)
