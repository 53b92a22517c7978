"""A new robot by one YAML file: a LeRobot SO-101 dataset (written with lerobot's own API) read through the repo's
loader with the model's image slots mapped by a registry entry, and every way the dataset can disagree with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vla.action_heads import DiTHeadConfig
from vla.config import DataConfig, ModelConfig
from vla.data import Normalizer
from vla.data.transforms import normalize_batch
from vla.policy import VLAPolicy
from vla.training.train import load_demos

JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos"]
NAMES = JOINTS + ["gripper.pos"]
EPISODES, FRAMES, FPS, SIZE, HORIZON = 3, 10, 30, 32, 4
TOP_RGB, WRIST_RGB = (200, 30, 30), (20, 40, 220)  # each camera one colour, to see which slot got which camera


def action_of(episode: int, frame: int) -> np.ndarray:
    """A distinct action per frame, so chunks can be checked value by value."""
    return (100.0 * episode + frame + np.arange(6) / 10).astype(np.float32)


@pytest.fixture(scope="module")
def so101_dataset(tmp_path_factory) -> Path:
    """3 episodes x 10 frames of a 6-D SO-101 at 30 fps, cameras `top` and `wrist` at 32 px, image mode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("so101") / "data"
    image = {"dtype": "image", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    vector = {"dtype": "float32", "shape": (6,), "names": NAMES}
    dataset = LeRobotDataset.create(
        repo_id="lab/so101_cubes", fps=FPS, root=root, robot_type="so101_follower", use_videos=False,
        features={"observation.images.top": image, "observation.images.wrist": image,
                  "observation.state": vector, "action": vector})
    for episode in range(EPISODES):
        for frame in range(FRAMES):
            dataset.add_frame({"observation.images.top": np.full((SIZE, SIZE, 3), TOP_RGB, np.uint8),
                               "observation.images.wrist": np.full((SIZE, SIZE, 3), WRIST_RGB, np.uint8),
                               "observation.state": action_of(episode, frame) - 0.5,
                               "action": action_of(episode, frame), "task": "put the cube in the bowl"})
        dataset.save_episode()
    dataset.finalize()
    return root


ENTRY = {
    "name": "my_so101",
    "format": "lerobot",
    "fps": FPS,
    "action": [{"key": "action", "names": JOINTS, "kind": "joint_position", "unit": "deg"},
               {"key": "action", "names": ["gripper.pos"], "kind": "gripper", "unit": "percent"}],
    "state": [{"key": "observation.state", "names": JOINTS, "kind": "joint_position", "unit": "deg"},
              {"key": "observation.state", "names": ["gripper.pos"], "kind": "gripper", "unit": "percent"}],
    "cameras": {"primary": "observation.images.top", "secondary": None, "wrist": "observation.images.wrist"},
    "gripper": {"dims": ["gripper.pos"], "open": 100.0, "closed": 0.0},
}


def write_entry(tmp_path: Path, change=None) -> str:
    entry = yaml.safe_load(yaml.safe_dump(ENTRY))  # a deep copy
    if change is not None:
        change(entry)
    path = tmp_path / "my_so101.yaml"
    path.write_text(yaml.safe_dump(entry, sort_keys=False))
    return str(path)


def configs(dataset: Path, entry: str, cameras=("primary", "wrist"), **data) -> tuple[ModelConfig, DataConfig]:
    model = ModelConfig(head=DiTHeadConfig(horizon=HORIZON), max_action_dim=8, max_state_dim=8, image_size=SIZE,
                        cameras=list(cameras))
    return model, DataConfig(root=str(dataset), repo_id="lab/so101_cubes", embodiment_config=entry, **data)


def test_new_robot_by_one_yaml(so101_dataset, tmp_path):
    """The issue's acceptance test: the YAML alone says what the dataset's numbers and cameras are."""
    demos = load_demos(*configs(so101_dataset, write_entry(tmp_path)))
    n = EPISODES * FRAMES
    assert demos.images.shape == (n, 2, SIZE, SIZE, 3) and demos.images.dtype == torch.uint8
    assert demos.camera_slots == ["primary", "wrist"]
    assert demos.camera_keys == ["observation.images.top", "observation.images.wrist"]
    assert (demos.images[:, 0] == torch.tensor(TOP_RGB, dtype=torch.uint8)).all()  # slot primary <- camera top
    assert (demos.images[:, 1] == torch.tensor(WRIST_RGB, dtype=torch.uint8)).all()
    assert demos.state.shape == (n, 6) and demos.actions.shape == (n, HORIZON, 6)
    assert demos.embodiment == "my_so101" and demos.entry.name == "my_so101"
    assert demos.action_names == NAMES and demos.state_names == NAMES
    assert demos.fps == 30.0 and demos.action_kind == "joint_position"
    assert demos.info.to_dict() == {"action_names": NAMES, "state_names": NAMES, "action_kind": "joint_position",
                                    "fps": 30.0}
    for row in (0, FRAMES - 2, FRAMES + 3):  # chunks follow the episode and are padded past its end
        episode, frame = divmod(row, FRAMES)
        for k in range(HORIZON):
            last = min(frame + k, FRAMES - 1)
            assert torch.allclose(demos.actions[row, k], torch.from_numpy(action_of(episode, last)))
            assert bool(demos.action_is_pad[row, k]) == (frame + k >= FRAMES)
    norm = Normalizer.from_demos(demos, "quantile", 8, 8)
    assert norm.info == {"my_so101": demos.info}
    assert demos.sample(5, torch.Generator().manual_seed(0))["images"].shape == (5, 2, SIZE, SIZE, 3)


def test_model_slots_choose_and_order_the_cameras(so101_dataset, tmp_path):
    demos = load_demos(*configs(so101_dataset, write_entry(tmp_path), cameras=["wrist"]))
    assert demos.images.shape[1] == 1 and (demos.images[:, 0] == torch.tensor(WRIST_RGB, dtype=torch.uint8)).all()


def test_entry_reads_part_of_a_key(so101_dataset, tmp_path):
    """A state of which the entry uses some values (key_widths gives the full width): only those are read."""
    def wrist_only(entry):
        entry["key_widths"] = {"observation.state": 6}
        entry["state"] = [{"key": "observation.state", "start": 3, "names": ["wrist_flex.pos", "wrist_roll.pos"],
                           "kind": "joint_position", "unit": "deg"}]

    demos = load_demos(*configs(so101_dataset, write_entry(tmp_path, wrist_only)))
    assert demos.state.shape == (EPISODES * FRAMES, 2) and demos.state_names == ["wrist_flex.pos", "wrist_roll.pos"]
    assert torch.allclose(demos.state[1], torch.from_numpy(action_of(0, 1)[3:5] - 0.5))


def extra_joint(entry):
    entry["action"][0]["names"] = JOINTS + ["elbow_roll.pos"]


def renamed(entry):
    entry["action"][0]["names"] = ["j1", "j2", "j3", "j4", "j5"]


MISMATCHES = [
    ("action width", extra_joint, {}, r"dataset lab/so101_cubes at .*: key 'action' has 6 values per frame; "
                                      r".*my_so101\.yaml expects 7"),
    ("fps", lambda e: e.update(fps=15), {}, r"dataset lab/so101_cubes at .*: fps 30 != 15\.0 in .*my_so101\.yaml"),
    ("names", renamed, {}, r"key 'action' names values 0\.\.4 \['shoulder_pan\.pos'.*calls them \['j1'"),
    ("unmapped camera", lambda e: e["cameras"].update(wrist=None), {},
     r"camera\(s\) \['observation\.images\.wrist'\] are not mapped by .*my_so101\.yaml"),
    ("camera key absent", lambda e: e["cameras"].update(secondary="observation.images.side"),
     {"cameras": ["primary", "secondary"]}, r"no camera 'observation\.images\.side' for slot 'secondary'"),
    ("unknown slot", None, {"cameras": ["primary", "front"]}, r"does not map image slot 'front'"),
    ("rlds entry", lambda e: e.update(format="rlds"), {}, r"describes a rlds dataset; this loader reads LeRobot"),
    ("state key absent", lambda e: [p.update(key="observation.joints") for p in e["state"]], {},
     r"no key 'observation\.joints'"),
    ("another normalisation mode", lambda e: e["action"][1].update(normalization="zscore"), {},
     r"my_so101\.yaml normalises \{'action gripper\.pos': 'zscore'\}, but this policy normalises with "
     r"model\.normalization='quantile' .*set those parts' normalization to 'quantile' or 'none', or "
     r"--model\.normalization to 'zscore'"),
    ("action kind", None, {"action_kind": "ee_delta"},
     r"--data\.action_kind says the actions are 'ee_delta'; .*my_so101\.yaml says 'joint_position'"),
]


@pytest.mark.parametrize(("what", "change", "override", "message"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_dataset_that_disagrees_with_its_entry_is_an_error(so101_dataset, tmp_path, what, change, override,
                                                            message):
    cameras = override.pop("cameras", ("primary", "wrist"))
    model, data = configs(so101_dataset, write_entry(tmp_path, change), cameras=cameras, **override)
    with pytest.raises(ValueError, match=message):
        load_demos(model, data)


def test_a_slot_the_robot_lacks_is_zeros_and_masked(so101_dataset, tmp_path):
    demos = load_demos(*configs(so101_dataset, write_entry(tmp_path), cameras=["primary", "secondary"]))
    assert demos.camera_keys == ["observation.images.top", None] and demos.images.shape[1] == 1  # nothing stored
    batch = demos.sample(3, torch.Generator().manual_seed(0))
    assert batch["images"].shape == (3, 2, SIZE, SIZE, 3) and (batch["images"][:, 1] == 0).all()
    assert batch["image_mask"].tolist() == [[True, False]] * 3
    assert demos[4]["image_mask"].tolist() == [True, False]


def test_metaworld_entry_reads_the_demos_as_the_default_path_does(tiny_demo_config, tiny_demos_path):
    """The registry entry for the robot this repo simulates gives the same frames as LeRobot's default keys."""
    model, data = configs(tiny_demos_path, "", cameras=[tiny_demo_config.camera])
    model = dataclasses.replace(model, image_size=tiny_demo_config.image_size)
    data = dataclasses.replace(data, repo_id=tiny_demo_config.repo_id)
    plain = load_demos(model, data)
    registry = load_demos(dataclasses.replace(model, cameras=["primary"]),
                          dataclasses.replace(data, embodiment_config="metaworld_sawyer"))
    assert registry.embodiment == plain.embodiment == "metaworld_sawyer"
    assert registry.info == plain.info
    for name in ("images", "state", "actions", "action_is_pad", "episode_index"):
        assert torch.equal(getattr(registry, name), getattr(plain, name)), name
    assert registry.camera_slots == ["primary"] and plain.camera_slots == [tiny_demo_config.camera]


def gripper_passed_through(entry):
    for part in entry["action"][1], entry["state"][1]:
        part["normalization"] = "none"


def test_a_gripper_passed_through_beyond_the_sample_clip_is_refused(so101_dataset, tmp_path):
    """`normalization: none` on the SO-101's gripper, in percent (here 0.5..209.5): the head clips sampled
    normalised actions to [-1, 1] (quantile), so the policy could never output most of them."""
    model, data = configs(so101_dataset, write_entry(tmp_path, gripper_passed_through))
    demos = load_demos(model, data)  # the entry's modes are the policy's or none: read
    normalizer = Normalizer.from_sources([demos], model.normalization, 8, 8)
    assert normalizer.modes == {"my_so101": {"action": ["quantile"] * 5 + ["none"],
                                             "state": ["quantile"] * 5 + ["none"]}}
    with pytest.raises(ValueError, match=r"'my_so101' passes action dimension 'gripper\.pos' through unnormalised "
                                         r".*span \[0\.5, 209\.5\], beyond the head's sample clip \[-1, 1\]"):
        VLAPolicy(model, normalizer)


def test_a_gripper_passed_through_within_the_clip_trains(so101_dataset, tmp_path, tiny_vlm_path, train_on_batch):
    """The same entry on a 0 / 1 gripper: its dims reach the policy unchanged, the arm's are normalised, and the
    loss on a batch falls."""
    from vla.backbones.config import BackboneConfig

    model, data = configs(so101_dataset, write_entry(tmp_path, gripper_passed_through))
    model = dataclasses.replace(model, backbone=BackboneConfig(family="paligemma", pretrained=str(tiny_vlm_path)),
                                head=DiTHeadConfig(horizon=HORIZON, hidden=32, depth=2, heads=2))
    demos = load_demos(model, data)
    demos.actions[..., 5] = demos.actions[..., 5].floor() % 2  # open / closed by frame
    demos.state[:, 5] = demos.state[:, 5].ceil() % 2
    torch.manual_seed(0)
    policy = VLAPolicy(model, Normalizer.from_sources([demos], model.normalization, 8, 8))
    raw = demos.sample(8, torch.Generator().manual_seed(0))
    batch = normalize_batch(policy.normalizer, raw)
    assert torch.equal(batch["actions"][..., 5], raw["actions"][..., 5])
    assert torch.equal(batch["state"][:, 5], raw["state"][:, 5])
    assert batch["actions"][..., :5].abs().max() <= 1 and not torch.equal(batch["actions"][..., 0],
                                                                          raw["actions"][..., 0])
    losses = train_on_batch(policy, batch, steps=30)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
