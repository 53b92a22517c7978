"""Shared pytest fixtures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import sys  # noqa: E402

import pytest  # noqa: E402
from fakes import FakeRobotiqServer, FakeRTDE  # noqa: E402

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


# --- Tiny VLM backbone and policy (vla.backbones / vla.policy) ---


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory, tiny_demo_config):
    """A tiny random PaliGemma (hidden 32) saved locally, loaded through from_pretrained like a real one."""
    from vla.backbones.tiny import build_tiny_vlm
    from vla.sim import get_task

    instructions = [get_task(t).instruction for t in tiny_demo_config.tasks]
    return build_tiny_vlm("paligemma", tmp_path_factory.mktemp("vlm") / "paligemma", instructions,
                          image_size=tiny_demo_config.image_size, patch_size=8, hidden_size=32, heads=2)


@pytest.fixture(scope="session")
def tiny_run_config(tiny_demos_path, tiny_vlm_path, tiny_demo_config):
    """A TrainRunConfig for a few CPU seconds of training on the tiny demos."""
    from vla.action_heads import DiTHeadConfig
    from vla.backbones.config import BackboneConfig
    from vla.config import DataConfig, ModelConfig, TrainConfig
    from vla.training.train import TrainRunConfig

    model = ModelConfig(backbone=BackboneConfig(family="paligemma", pretrained=str(tiny_vlm_path)),
                        head=DiTHeadConfig(horizon=4, hidden=32, depth=2, heads=2, noise_samples_per_cond=2),
                        image_size=tiny_demo_config.image_size, cameras=[tiny_demo_config.camera])
    data = DataConfig(root=str(tiny_demos_path), repo_id=tiny_demo_config.repo_id, image_shift=2)
    return TrainRunConfig(model=model, data=data, train=TrainConfig(steps=10, batch_size=8, log_every=5, save_every=5))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run_config, tmp_path_factory):
    """A checkpoint folder of the tiny policy after 10 training steps (32 px corner camera, reach + button)."""
    import dataclasses

    from vla.training.train import train

    out = tmp_path_factory.mktemp("train")
    return train(dataclasses.replace(tiny_run_config, train=dataclasses.replace(tiny_run_config.train,
                                                                                 output_dir=str(out))))


# --- Helpers ---


@pytest.fixture(scope="session")
def train_on_batch():
    """A function training `policy` on one fixed batch with AdamW and returning the losses; `after_backward(step)`
    runs between backward and the optimiser step (to look at gradients)."""
    import torch

    from vla.data.transforms import is_normalized, normalize_batch

    def train(policy, batch: dict, steps: int, lr: float = 1e-3, after_backward=None) -> list[float]:
        opt = torch.optim.AdamW(policy.parameters(), lr=lr)
        losses = []
        for step in range(steps):
            torch.manual_seed(step)
            loss = policy(batch if is_normalized(batch) else normalize_batch(policy.normalizer, batch))["loss"]
            opt.zero_grad()
            loss.backward()
            if after_backward is not None:
                after_backward(step)
            opt.step()
            losses.append(loss.item())
        return losses

    return train


# --- Fake device SDKs and servers (tests/fakes.py) ---


@pytest.fixture
def rtde(monkeypatch) -> FakeRTDE:
    """A fake ur_rtde in sys.modules: URRobot talks to it as to a controller."""
    ur = FakeRTDE()
    control, receive = ur.modules()
    monkeypatch.setitem(sys.modules, "rtde_control", control)
    monkeypatch.setitem(sys.modules, "rtde_receive", receive)
    return ur


@pytest.fixture
def robotiq_server():
    """A fake Robotiq URCap socket server on localhost (an active, open 2F gripper)."""
    server = FakeRobotiqServer()
    yield server
    server.close()
