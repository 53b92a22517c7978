"""Real 2-process training jobs on CPU (gloo), launched as users launch them:

    accelerate launch --config_file configs/accelerate/<backend>.yaml --num_processes 2 train.py --config_path ...

for DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP2. Each run uses gradient accumulation and an EMA; each must train (the loss
falls), keep its ranks in agreement, follow the same loss trajectory as DDP (the same seed and data give the same
numbers whatever the sharding), and write a consolidated checkpoint that load_policy reads and that predicts the live
model's actions. A stopped ZeRO-3 run resumes exactly; a checkpoint resumed with another number of processes is
refused on every rank (no rank left waiting).

Only the overrides a 2-core CPU needs are added: --num_processes 2 and, for ZeRO-3, a persistence threshold of 0
(DeepSpeed keeps parameters under 1e5 elements whole, which would be every parameter of the tiny model).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vla.checkpoint import load_policy
from vla.config import to_yaml
from vla.training.export import EXPORT_CHECK_FILE, probe_observation
from vla.training.logging import read_metrics
from vla.training.train import load_demos, train

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"ddp": "configs/accelerate/ddp.yaml", "zero2": "configs/accelerate/deepspeed_zero2.yaml",
           "zero3": "configs/accelerate/deepspeed_zero3.yaml", "fsdp": "configs/accelerate/fsdp.yaml"}
STEPS = 12

pytestmark = pytest.mark.slow


def deepspeed_missing() -> str | None:
    """Why DeepSpeed cannot run here, naming the missing piece, or None."""
    from torch.utils.cpp_extension import is_ninja_available

    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install 'vla[deepspeed]', DS_BUILD_OPS=0)"
    if not is_ninja_available():
        return "ninja is missing: DeepSpeed's CPU accelerator JIT-compiles its shm_comm op with ninja and g++"
    if subprocess.run(["which", "g++"], capture_output=True).returncode != 0:
        return "g++ is missing: DeepSpeed's CPU accelerator JIT-compiles its shm_comm op with ninja and g++"
    return None


def free_port() -> int:
    with socket.socket() as probe:  # not accelerate's default 29500, which another job may hold
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(config_file: Path | str, run_yaml: Path, *overrides: str, processes: int = 2,
           timeout: int = 400) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
               "--num_processes", str(processes), "--main_process_port", str(free_port()),
               "train.py", f"--config_path={run_yaml}", *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def zero3_for_tiny_model(folder: Path) -> Path:
    """configs/accelerate/deepspeed_zero3.yaml pointing at a copy of configs/deepspeed/zero3.json whose persistence
    threshold is 0, so that the tiny model's parameters are partitioned at all."""
    ds = json.loads((REPO / "configs/deepspeed/zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (folder / "zero3.json").write_text(json.dumps(ds))
    text = (REPO / CONFIGS["zero3"]).read_text()
    assert "configs/deepspeed/zero3.json" in text
    (folder / "zero3.yaml").write_text(text.replace("configs/deepspeed/zero3.json", str(folder / "zero3.json")))
    return folder / "zero3.yaml"


@pytest.fixture(scope="module")
def dist_config(tiny_run_config):
    optim = dataclasses.replace(tiny_run_config.train.optim, lr=3e-3, warmup_steps=2)
    train_cfg = dataclasses.replace(tiny_run_config.train, steps=STEPS, batch_size=4, grad_accum_steps=2,
                                    ema_decay=0.9, log_every=4, save_every=6, keep_last=2, optim=optim)
    return dataclasses.replace(tiny_run_config, train=train_cfg)


class Runs:
    """One launch per backend, made when first asked for and shared by the tests of this module."""

    def __init__(self, cfg, folder: Path):
        self.cfg, self.folder, self.done = cfg, folder, {}
        self.run_yaml = folder / "run.yaml"
        self.run_yaml.write_text(to_yaml(cfg))

    def config_file(self, backend: str) -> Path:
        return zero3_for_tiny_model(self.folder) if backend == "zero3" else REPO / CONFIGS[backend]

    def get(self, backend: str) -> Path:
        if backend not in self.done:
            if backend.startswith("zero") and deepspeed_missing():
                pytest.skip(deepspeed_missing())
            out = self.folder / backend
            result = launch(self.config_file(backend), self.run_yaml, f"--train.output_dir={out}")
            assert result.returncode == 0, f"{backend} run failed:\n{result.stderr[-6000:]}"
            self.done[backend] = out
        return self.done[backend]


@pytest.fixture(scope="module")
def runs(dist_config, tmp_path_factory):
    return Runs(dist_config, tmp_path_factory.mktemp("dist"))


@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3", "fsdp"])
def test_two_process_backend_trains_agrees_and_exports(runs, dist_config, backend):
    out = runs.get(backend)
    metrics = read_metrics(out / "metrics.csv")
    assert metrics["step"] == [4.0, 8.0, 12.0]
    assert metrics["loss"][-1] < 0.9 * metrics["loss"][0], metrics["loss"]  # it trains
    assert metrics["samples"] == [4 * 8 * 2 * s for s in (1, 2, 3)]  # batch 4 x 2 micro-batches x 2 processes
    # every backend computes the same numbers as DDP from the same seed and data
    reference = read_metrics(runs.get("ddp") / "metrics.csv")
    for key in ("loss", "grad_norm", "lr"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-4), key

    last = (out / "checkpoints" / "last").resolve()
    assert last.name == f"step_{STEPS:07d}"
    check = json.loads((last / EXPORT_CHECK_FILE).read_text())
    assert check["ranks"] == 2 and check["ranks_max_abs_diff"] == 0.0  # the ranks' live models agree exactly
    assert check["passed"] and check["weights"] == {"kind": "ema", "ema_decay": 0.9}
    # the consolidated folder, read as deploy reads it, predicts what the live (EMA) model predicted in the run
    policy = load_policy(last)
    obs = probe_observation(load_demos(dist_config.model, dist_config.data))
    actions = policy.predict(obs, generator=torch.Generator().manual_seed(0)).actions
    assert torch.allclose(actions, torch.tensor(check["probe_actions"]), atol=1e-5)
    meta = json.loads((last / "meta.json").read_text())["training"]
    assert meta["weights"]["kind"] == "ema" and meta["steps"] == STEPS and meta["grad_accum_steps"] == 2
    assert_state_layout(backend, last / "training_state")


def assert_state_layout(backend: str, state: Path) -> None:
    """Sharded backends keep every rank's partition (accelerator.save_state); the others one safetensors copy."""
    names = {p.name for p in state.rglob("*")}
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors", "state.json"} <= names
    if backend in ("ddp",):
        assert {"optimizer.safetensors", "model.safetensors", "ema.safetensors"} <= names
    elif backend == "zero2":  # optimiser partitioned, weights (and so the EMA) replicated
        assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
                "ema.safetensors"} <= names
    elif backend == "zero3":  # weights partitioned too: each rank's EMA covers its own partition
        assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
                "ema_rank0.safetensors", "ema_rank1.safetensors"} <= names
        half = load_file(str(state / "ema_rank0.safetensors"))["head.net.action_in.weight"]
        assert half.numel() == 32 * 4 // 2  # [32, 4] split over 2 ranks
    else:  # fsdp: torch.distributed.checkpoint files of both ranks
        assert {"__0_0.distcp", "__1_0.distcp", "ema_rank0.safetensors", "ema_rank1.safetensors"} <= names


def test_stopped_zero3_run_resumes_exactly(runs, tmp_path):
    """ZeRO-3 with accumulation and a partitioned EMA, stopped by the time limit after step 1 and resumed: the same
    losses, rates, gradient norms and exported EMA weights as the uninterrupted run."""
    reference = runs.get("zero3")
    out = tmp_path / "zero3"
    stopped = launch(runs.config_file("zero3"), runs.run_yaml, f"--train.output_dir={out}", "--train.time_limit_s=1e-9")
    assert stopped.returncode == 0, stopped.stderr[-6000:]
    assert (out / "checkpoints" / "last").resolve().name == "step_0000001"
    resumed = launch(runs.config_file("zero3"), runs.run_yaml, f"--train.output_dir={out}", "--train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    metrics, expected = read_metrics(out / "metrics.csv"), read_metrics(reference / "metrics.csv")
    for key in ("step", "loss", "lr", "grad_norm", "samples"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    mine = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
    theirs = load_file(str(reference / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-6) for k in theirs)


def test_resume_with_another_number_of_processes_is_refused_on_every_rank(runs, dist_config, tmp_path):
    out = tmp_path / "one_process"
    one = dataclasses.replace(dist_config.train, output_dir=str(out), steps=2, save_every=2, verify_export=False)
    train(dataclasses.replace(dist_config, train=one))
    result = launch(REPO / CONFIGS["ddp"], runs.run_yaml, f"--train.output_dir={out}", "--train.resume=true",
                    "--train.steps=2", "--train.save_every=2", "--train.verify_export=false", timeout=240)
    assert result.returncode != 0
    for rank in (0, 1):  # both ranks stop with the error; neither is left waiting for the other
        assert f"[rank{rank}]: ValueError: cannot resume" in result.stderr, result.stderr[-4000:]
    assert "num_processes: 1 in the checkpoint, 2 now" in result.stderr


def test_zero2_bf16_keeps_16bit_weights_and_exports_them(runs, tmp_path):
    """DeepSpeed with --train.mixed_precision=bf16 trains bf16 weights (fp32 masters in its optimiser); the checkpoint
    holds them and predicts, in the same precision, what the live model predicts."""
    if deepspeed_missing():
        pytest.skip(deepspeed_missing())
    out = tmp_path / "zero2_bf16"
    result = launch(runs.config_file("zero2"), runs.run_yaml, f"--train.output_dir={out}",
                    "--train.mixed_precision=bf16")
    assert result.returncode == 0, result.stderr[-6000:]
    loss = read_metrics(out / "metrics.csv")["loss"]
    assert loss[-1] < 0.9 * loss[0], loss
    last = (out / "checkpoints" / "last").resolve()
    check = json.loads((last / EXPORT_CHECK_FILE).read_text())
    assert check["passed"] and check["live_weights_dtype"] == "bfloat16" and check["max_abs_diff"] == 0.0
    assert {t.dtype for t in load_file(str(last / "model.safetensors")).values()} == {torch.bfloat16}
    assert load_policy(last).head.net.action_in.weight.dtype == torch.float32  # deploy loads them as fp32
