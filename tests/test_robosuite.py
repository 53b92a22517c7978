"""robosuite as a second simulator (vla.sim.robosuite_env): task names, env shapes, upright cameras, seeded
placements, scripted experts on two arms, demos through the registry, training and closed-loop evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import mujoco
import numpy as np
import pytest
from camera_geometry import assert_seen_where_projected, pinhole_projection

from vla.data.registry import load_embodiment
from vla.sim.demos import EVAL_SEED_START, GENERATION_FILE, DemoConfig, generate_demos, rollout_expert
from vla.sim.envs import make_env, sim_spec
from vla.sim.robosuite_env import CAMERAS, RobosuiteEnv, parse_task

UR5E, PANDA = "robosuite/Lift/UR5e", "robosuite/Lift/Panda"
REGISTRY = {UR5E: "robosuite_ur5e_joint", PANDA: "robosuite_panda_osc"}


@pytest.fixture(scope="module")
def ur5e():
    env = RobosuiteEnv(UR5E, seed=0, image_size=32, max_steps=100)
    yield env
    env.close()


def test_task_names_pick_arm_and_controller():
    ur5e, panda = parse_task(UR5E), parse_task(PANDA)
    assert (ur5e.arm, ur5e.controller, ur5e.embodiment) == ("UR5e", "JOINT_POSITION", "robosuite_ur5e_joint")
    assert (panda.arm, panda.controller, panda.embodiment) == ("Panda", "OSC_POSE", "robosuite_panda_osc")
    assert parse_task("robosuite/Lift/Panda/JOINT_POSITION").embodiment == "robosuite_panda_joint"
    # the UR5e takes the names and kind of vla.robot_io.ur's servoJ mode, the real UR5e's
    from vla.robot_io.ur import JOINTS

    assert sim_spec(UR5E).action_names == (*JOINTS, "gripper") and sim_spec(UR5E).action_kind == "joint_position"
    assert sim_spec(PANDA).action_names == ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")


@pytest.mark.parametrize("name, message", [
    ("robosuite/Lift/Sawyer", "unknown robosuite arm 'Sawyer'.*'Panda', 'UR5e'"),
    ("robosuite/Stack/Panda", "unknown robosuite task 'Stack'.*'Lift'"),
    ("robosuite/Lift/UR5e/OSC_YAW", "unknown robosuite controller 'OSC_YAW'.*'JOINT_POSITION', 'OSC_POSE'"),
    ("robosuite/Lift", "robosuite/<Task>/<Arm>"),
])
def test_bad_task_names_say_what_is_known(name, message):
    with pytest.raises(ValueError, match=message):
        sim_spec(name)


@pytest.mark.parametrize("task", [UR5E, PANDA])
def test_registry_entries_describe_what_the_simulator_records(task):
    spec, entry = sim_spec(task), load_embodiment(REGISTRY[task])
    assert entry.name == spec.embodiment and entry.fps == spec.fps
    assert tuple(entry.action_names) == spec.action_names and tuple(entry.state_names) == spec.state_names
    assert entry.info().action_kind == spec.action_kind
    assert [entry.slot(s).key for s in ("primary", "wrist")] == [f"observation.images.{c}" for c in spec.cameras]


def test_reset_step_shapes_and_bad_actions(ur5e):
    obs = ur5e.reset(seed=0)
    assert obs["images"].shape == (2, 32, 32, 3) and obs["images"].dtype == np.uint8
    assert np.array_equal(obs["image"], obs["images"][0]) and obs["instruction"] == "lift the cube"
    assert obs["state"].shape == (7,) and obs["state"].dtype == np.float32
    action = ur5e.expert_action()
    assert action.shape == (7,) and action.dtype == np.float32
    obs, success, done = ur5e.step(action)
    assert obs["images"].shape == (2, 32, 32, 3) and success is False and done is False
    with pytest.raises(ValueError, match=r"7 finite numbers \['base', 'shoulder'"):
        ur5e.step(np.zeros(4))
    with pytest.raises(ValueError, match="7 finite numbers"):
        ur5e.step(np.array([0.0, np.nan, 0, 0, 0, 0, 0]))


def test_seeds_give_distinct_deterministic_placements_and_the_state_has_no_cube(ur5e):
    cubes = {}
    for seed in (0, 1, 2, EVAL_SEED_START):
        state = ur5e.reset(seed=seed)["state"]
        cubes[seed] = ur5e.object_positions()
        assert not np.any(np.isclose(state[:, None], cubes[seed][None, :3], atol=1e-6)), "cube leaked into the state"
    assert len(np.unique(np.stack(list(cubes.values())).round(6), axis=0)) == len(cubes)
    first = ur5e.reset(seed=1)["state"]
    assert np.array_equal(ur5e.object_positions(), cubes[1])
    assert np.array_equal(ur5e.reset(seed=1)["state"], first)
    state = np.random.get_state()[1].copy()
    ur5e.reset(seed=5)
    assert np.array_equal(np.random.get_state()[1], state), "reset left numpy's global RNG changed"


def test_make_env_takes_image_slots_and_privileged_state():
    """make_env dispatches on the task name; cameras may be the registry entry's image slots (in any order); the
    privileged state appends the cube position (diagnostics only)."""
    env = make_env(UR5E, seed=0, image_size=16, cameras=["wrist", "primary"], max_steps=5, privileged_state=True)
    try:
        assert isinstance(env, RobosuiteEnv) and env.cameras == ("robot0_eye_in_hand", "agentview")
        obs = env.reset(seed=3)
        assert obs["images"].shape == (2, 16, 16, 3)
        assert obs["state"].shape == (10,) and np.allclose(obs["state"][7:], env.object_positions()[:3], atol=1e-6)
        assert sim_spec(UR5E, privileged_state=True).state_names[-3:] == ("cube_x", "cube_y", "cube_z")
    finally:
        env.close()


def test_camera_errors_name_the_known_cameras(ur5e):
    with pytest.raises(ValueError, match="slot 'secondary'.*no camera"):
        make_env(UR5E, seed=0, cameras=["secondary"])
    with pytest.raises(ValueError, match="unknown robosuite camera 'top'.*agentview.*robot0_eye_in_hand"):
        ur5e._renderer.check_camera("top", "robosuite")  # what the constructor runs for each camera


def _cube_pixel(env: RobosuiteEnv, camera_index: int, xyz) -> np.ndarray | None:
    """(u, v) centroid of the pixels the cube covers at `xyz` (the picture minus one with the cube far away)."""

    def place(position) -> np.ndarray:
        env._env.sim.data.set_joint_qpos("cube_joint0", np.concatenate([position, [1.0, 0.0, 0.0, 0.0]]))
        mujoco.mj_forward(env.model, env.data)
        return env.render()[camera_index].astype(int)

    changed = np.abs(place(xyz) - place([0.0, 0.0, -5.0])).max(-1) > 25
    if changed.sum() < 3:
        return None  # out of view or hidden behind the gripper
    v, u = np.nonzero(changed)
    return np.array([u.mean(), v.mean()])


@pytest.mark.parametrize("task", [UR5E, PANDA])
def test_rendered_images_are_upright(task):
    """The cube, placed at points over the table, appears where a pinhole camera at each camera's pose sees it: for
    agentview held upright (world up is up in the picture); for the wrist camera in its own frame (it turns with
    the hand). Not upside down as robosuite's own renderer gives them, nor mirrored."""
    size = 96
    env = RobosuiteEnv(task, seed=0, image_size=size)
    try:
        env.reset(seed=0)
        hand = env.hand_pose()[0]
        points = {"agentview": [(x, y, z) for x in (-0.1, 0.1) for y in (-0.15, 0.15) for z in (0.83, 0.95)],
                  "robot0_eye_in_hand": [(hand[0] + dx, hand[1] + dy, 0.83) for dx in (-0.06, 0.06)
                                         for dy in (-0.06, 0.0, 0.06)]}
        for index, camera in enumerate(env.cameras):
            camera_id = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            pose = env.data.cam_xpos[camera_id], env.data.cam_xmat[camera_id].reshape(3, 3)
            seen, expected = [], []
            for point in points[camera]:
                pixel = _cube_pixel(env, index, point)
                if pixel is not None:
                    seen.append(pixel)
                    expected.append(pinhole_projection(*pose, env.model.cam_fovy[camera_id], point, size,
                                                       upright=camera == "agentview"))
            assert len(seen) >= 3, f"{camera!r} sees the cube at only {len(seen)} of {len(points[camera])} points"
            assert_seen_where_projected(np.stack(seen), np.stack(expected), size, camera)
    finally:
        env.close()


@pytest.mark.parametrize("task", [UR5E, PANDA])
def test_experts_lift_the_cube_on_fixed_seeds(task):
    """The scripted expert solves Lift on the first 5 evaluation seeds, well within 100 actions (measured on 100
    demo seeds: 100/100 for both arms, ~46 actions for the Panda, ~55 for the UR5e)."""
    env = make_env(task, seed=EVAL_SEED_START, cameras=(), max_steps=100)
    try:
        results = [rollout_expert(env, EVAL_SEED_START + i) for i in range(5)]
    finally:
        env.close()
    assert [success for _, success in results] == [True] * 5
    assert max(len(frames) for frames, _ in results) < 80


@pytest.fixture(scope="module")
def ur5e_demos(tmp_path_factory):
    cfg = DemoConfig(tasks=[UR5E], episodes_per_task=2, image_size=32, max_steps=100,
                     root=str(tmp_path_factory.mktemp("robosuite")), repo_id="test/robosuite_ur5e")
    return cfg, generate_demos(cfg)


def test_demos_load_through_the_registry_entry(ur5e_demos):
    from vla.data import load_chunked_demos

    cfg, path = ur5e_demos
    demos = load_chunked_demos(str(path), cfg.repo_id, chunk_size=4, entry=load_embodiment("robosuite_ur5e_joint"),
                               camera_slots=["primary", "wrist"])
    n = len(demos)
    assert demos.images.shape == (n, 2, 32, 32, 3) and demos.actions.shape == (n, 4, 7) and demos.state.shape == (n, 7)
    assert demos.embodiment == "robosuite_ur5e_joint" and demos.action_kind == "joint_position" and demos.fps == 20
    assert demos.camera_keys == ["observation.images.agentview", "observation.images.robot0_eye_in_hand"]
    assert demos.tasks == ["lift the cube"] and demos.episode_index.unique().numel() == 2
    # the recorded frames are what the simulator and its expert give at the recorded seed
    seed = json.loads((path / GENERATION_FILE).read_text())["seeds_used"][UR5E][0]
    env = RobosuiteEnv(UR5E, seed=seed, image_size=32, max_steps=100)
    try:
        obs = env.reset()
        for row in range(3):
            action = env.expert_action()
            assert np.array_equal(demos.images[row].numpy(), obs["images"])
            assert np.allclose(demos.state[row].numpy(), obs["state"]) and np.allclose(demos.actions[row, 0], action)
            obs, _, _ = env.step(action)
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"names values 0..2 \['base', 'shoulder', 'elbow'\].*\['dx', 'dy', 'dz'\]"):
        # another arm's entry is refused, naming both sides
        load_chunked_demos(str(path), cfg.repo_id, chunk_size=4, entry=load_embodiment("robosuite_panda_osc"))


def test_one_dataset_holds_one_embodiment(tmp_path):
    with pytest.raises(ValueError, match="one dataset holds one embodiment.*'metaworld_sawyer'.*robosuite_ur5e_joint"):
        DemoConfig(tasks=["reach", UR5E], root=str(tmp_path)).validate()
    with pytest.raises(ValueError, match="one dataset holds one embodiment"):
        DemoConfig(tasks=[UR5E, PANDA], root=str(tmp_path)).validate()
    with pytest.raises(ValueError, match="--camera='corner_zoom' names a Meta-World camera"):
        DemoConfig(tasks=[UR5E], camera="corner_zoom", root=str(tmp_path)).validate()
    assert DemoConfig(tasks=[UR5E]).cameras() == list(CAMERAS)


def test_eval_refuses_a_task_of_an_embodiment_the_checkpoint_lacks(ur5e):
    from vla.eval.rollout import check_embodiment

    policy = SimpleNamespace(embodiments=["metaworld_sawyer"])
    with pytest.raises(ValueError, match="'robosuite_ur5e_joint', but the checkpoint has statistics only for "
                                         r"\['metaworld_sawyer'\]"):
        check_embodiment(policy, ur5e)
    check_embodiment(SimpleNamespace(embodiments=["robosuite_ur5e_joint"]), ur5e)
    check_embodiment(SimpleNamespace(embodiments=None), ur5e)  # a LeRobot policy names none: not checked


@pytest.mark.slow
def test_tiny_policy_trains_on_robosuite_demos_and_runs_in_vla_eval(ur5e_demos, tiny_vlm_path, tmp_path):
    """A tiny policy trains a few steps on the UR5e demos through the registry entry (image slots primary + wrist,
    7-D joint actions) and `vla-eval` rolls it out closed loop on the robosuite task, writing its summary and video."""
    from vla.action_heads import DiTHeadConfig
    from vla.backbones.config import BackboneConfig
    from vla.config import DataConfig, ModelConfig, TrainConfig
    from vla.eval.cli import main as vla_eval
    from vla.training.train import TrainRunConfig, train

    cfg, path = ur5e_demos
    model = ModelConfig(backbone=BackboneConfig(family="paligemma", pretrained=str(tiny_vlm_path)),
                        head=DiTHeadConfig(horizon=4, hidden=32, depth=2, heads=2, noise_samples_per_cond=2),
                        image_size=32, cameras=["primary", "wrist"], max_action_dim=7, max_state_dim=7)
    data = DataConfig(root=str(path), repo_id=cfg.repo_id, embodiment_config="robosuite_ur5e_joint", image_shift=2)
    run = TrainRunConfig(model=model, data=data, train=TrainConfig(steps=4, batch_size=4, log_every=2, save_every=4,
                                                                   output_dir=str(tmp_path / "run")))
    checkpoint = train(run)
    norm = json.loads((checkpoint / "norm_stats.json").read_text())
    assert norm["embodiments"]["robosuite_ur5e_joint"]["action_kind"] == "joint_position"
    vla_eval(["--checkpoint", str(checkpoint), "--tasks", f"[{UR5E}]", "--episodes_per_task", "1",
              "--max_steps", "6", "--num_inference_steps", "2", "--videos_per_task", "1",
              "--output_dir", str(tmp_path / "eval")])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["tasks"][UR5E]["episodes"] == 1 and summary["tasks"][UR5E]["mean_episode_length"] == 6
    import imageio.v2 as imageio

    frames = imageio.mimread(tmp_path / "eval" / "rollouts.mp4")
    assert len(frames) == 7 and frames[0].shape == (4 * 32, 4 * 2 * 32, 3)  # 7 frames, both cameras side by side


def test_train_recipe_fits_the_registry_entry():
    """configs/train/robosuite_ur5e_dit.yaml reads the demos through the UR5e entry with its image slots and room for
    its action and state widths (test_config parses every recipe)."""
    from pathlib import Path

    from vla.config import parse
    from vla.training.train import TrainRunConfig

    recipe = Path(__file__).resolve().parents[1] / "configs/train/robosuite_ur5e_dit.yaml"
    cfg = parse(TrainRunConfig, [f"--config_path={recipe}"])
    entry = load_embodiment(cfg.data.embodiment_config)
    assert entry.name == "robosuite_ur5e_joint" and all(not entry.slot(s).missing for s in cfg.model.cameras)
    assert (cfg.model.max_action_dim, cfg.model.max_state_dim) == (entry.action_dim, entry.state_dim)
