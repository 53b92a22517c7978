"""Meta-World wrapper: shapes, seeded placements, expert, errors."""

from __future__ import annotations

import numpy as np
import pytest
from camera_geometry import assert_seen_where_projected, pinhole_projection

from vla.sim import ACTION_NAMES, STATE_NAMES, TASKS, MetaWorldEnv
from vla.sim.metaworld_env import CAMERAS


@pytest.fixture(scope="module")
def push_env():
    env = MetaWorldEnv("push", seed=0, image_size=32, max_steps=60)
    yield env
    env.close()


def test_reset_and_step_shapes(push_env):
    obs = push_env.reset()
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (len(STATE_NAMES),) and obs["state"].dtype == np.float32
    assert obs["instruction"] == TASKS["push"].instruction
    obs, success, done = push_env.step(np.zeros(len(ACTION_NAMES)))
    assert obs["image"].shape == (32, 32, 3) and isinstance(success, bool) and isinstance(done, bool)
    assert push_env.expert_action().shape == (4,)


def test_expert_action_is_recorded_as_executed(push_env):
    """The scripted expert's raw output saturates far outside [-1, 1]; what the demos record (and the arm
    executes) is clipped to the action space."""
    raw, recorded = [], []
    push_env.reset(seed=0)
    for _ in range(20):
        raw.append(np.asarray(push_env._expert.get_action(push_env._full_obs)))
        recorded.append(push_env.expert_action())
        push_env.step(recorded[-1])
    raw, recorded = np.array(raw), np.array(recorded)
    assert np.abs(raw).max() > 1.5  # the expert does saturate here, so the clip is exercised
    np.testing.assert_allclose(recorded, np.clip(raw, -1, 1), atol=1e-6)


def test_state_has_no_object_position(push_env):
    obs = push_env.reset(seed=3)
    puck = push_env.object_positions()[:3]
    assert not np.any(np.isclose(obs["state"][:, None], puck[None, :2], atol=1e-6)), "puck xy leaked into the state"


def test_seeds_give_distinct_deterministic_placements(push_env):
    placements = {}
    for seed in (0, 1, 2, 100_000, 100_001):
        push_env.reset(seed=seed)
        placements[seed] = np.concatenate([push_env.object_positions()[:3], push_env.reset(seed=seed)["state"][4:]])
    values = np.stack(list(placements.values()))
    assert len(np.unique(values.round(6), axis=0)) == len(placements)
    push_env.reset(seed=1)
    assert np.allclose(push_env.object_positions()[:3], placements[1][:3])


def test_goal_slot_is_zero_where_goal_would_leak_the_object():
    env = MetaWorldEnv("button-press-topdown", seed=0, image_size=16)
    try:
        assert np.all(env.reset()["state"][4:] == 0)
    finally:
        env.close()


def test_expert_reaches_within_max_steps():
    env = MetaWorldEnv("reach", seed=0, image_size=16, max_steps=150)
    try:
        env.reset()
        done = success = False
        while not done:
            _, success, done = env.step(env.expert_action())
        assert success
    finally:
        env.close()


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match="known tasks.*push"):
        MetaWorldEnv("fly-to-the-moon", seed=0)


def test_bad_action_is_rejected(push_env):
    push_env.reset()
    with pytest.raises(ValueError, match="4 finite numbers"):
        push_env.step(np.array([0.0, np.nan, 0.0, 0.0]))


def test_zoomed_camera_variant_renders_a_closer_view():
    wide = MetaWorldEnv("push", seed=1, image_size=48, camera="corner")
    zoom = MetaWorldEnv("push", seed=1, image_size=48, camera="corner_zoom")
    a, b = wide.reset()["image"], zoom.reset()["image"]
    wide.close()
    zoom.close()
    assert a.shape == b.shape == (48, 48, 3)
    assert not np.array_equal(a, b)
    # the table (brown) fills more of the zoomed picture
    brown = lambda img: ((img[..., 0] > 80) & (img[..., 0] < 200) & (img[..., 2] < 90)).mean()  # noqa: E731
    assert brown(b) > brown(a)


def _puck_pixel(env: MetaWorldEnv, xyz) -> np.ndarray | None:
    """(u, v) centroid of the pixels the puck covers at `xyz` (the picture minus one with the puck far away)."""
    env._env._set_obj_xyz(np.asarray(xyz, dtype=np.float64))
    with_puck = env.render().astype(int)
    env._env._set_obj_xyz(np.array([0.0, 0.0, -5.0]))
    changed = np.abs(with_puck - env.render().astype(int)).max(-1) > 25
    if changed.sum() < 3:
        return None  # out of view or hidden behind the arm
    v, u = np.nonzero(changed)
    return np.array([u.mean(), v.mean()])


def _upright_projection(env: MetaWorldEnv, camera: str, xyz, size: int) -> np.ndarray:
    """Where a pinhole camera at the MuJoCo camera's pose, held upright, sees `xyz` (camera_geometry)."""
    import mujoco

    from vla.sim.metaworld_env import CAMERA_VARIANTS

    camera_id = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_VARIANTS.get(camera, (camera,))[0])
    return pinhole_projection(env._env.data.cam_xpos[camera_id], env._env.data.cam_xmat[camera_id].reshape(3, 3),
                              env.model.cam_fovy[camera_id], xyz, size)


@pytest.mark.parametrize("camera", CAMERAS)
def test_rendered_images_are_upright(camera):
    """Every camera's picture is the upright view from its pose: the puck, placed at points over the table and
    above it, appears where an upright pinhole camera would see it, and not where an upside-down or mirrored
    picture would put it."""
    size = 96
    env = MetaWorldEnv("push", seed=0, image_size=size, camera=camera)
    env.reset(seed=0)
    points = [(x, y, z) for x in (-0.1, 0.1) for y in (0.6, 0.75, 0.9) for z in (0.02, 0.15)]
    seen, expected = [], []
    for point in points:
        pixel = _puck_pixel(env, point)
        if pixel is not None:
            seen.append(pixel)
            expected.append(_upright_projection(env, camera, point, size))
    env.close()
    assert len(seen) >= 3, f"camera {camera!r} sees the puck at only {len(seen)} of {len(points)} points"
    assert_seen_where_projected(np.stack(seen), np.stack(expected), size, camera)
