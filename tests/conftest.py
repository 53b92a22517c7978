"""Shared pytest fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402

# --- Tiny Meta-World demo dataset (vla.sim.demos / vla.data) ---


@pytest.fixture(scope="session")
def tiny_demo_config(tmp_path_factory):
    """2 reach + 2 button-press episodes at 32 px, at most 60 steps each (a few seconds to record)."""
    from vla.sim.demos import DemoConfig

    root = tmp_path_factory.mktemp("demos")
    return DemoConfig(tasks=["reach", "button-press-topdown"], episodes_per_task=2, image_size=32, max_steps=60,
                      root=str(root), repo_id="test/tiny")


@pytest.fixture(scope="session")
def tiny_demos_path(tiny_demo_config):
    """Folder of the tiny LeRobot dataset, recorded once per test session."""
    from vla.sim.demos import generate_demos

    return generate_demos(tiny_demo_config)
