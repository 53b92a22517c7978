"""`vla-data export-rlds`: a tiny LeRobot dataset in the robosuite Panda (OSC) layout of `vla-demos
--tasks '[robosuite/Lift/Panda]'`, written with lerobot's API, exported to RLDS through robosuite_panda_osc_rlds, read
back by the TF-free RLDS reader (same actions, state and instructions, images within JPEG error), converted back
with `vla-data convert-rlds` and loaded: the same training chunks as the source, under the simulator's embodiment;
errors naming dataset, key and entry; and the same round trip on two episodes recorded by vla-demos (~10 s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tfrecord import example_pb2

from vla.data.dataset import load_chunked_demos
from vla.data.features import lerobot_features
from vla.data.registry import load_embodiment
from vla.data.report import main as vla_data
from vla.data.rlds import RLDSDataset, read_records, read_step_features
from vla.sim.envs import resolve_cameras
from vla.sim.robosuite_env import CAMERAS, robosuite_spec

SOURCE, TARGET = "robosuite_panda_osc", "robosuite_panda_osc_rlds"
STEPS, SIZE = (5, 7, 6), 24  # steps per episode, camera size
TASKS = ("lift the cube", "lift the red cube", "lift the cube")  # per episode
REPO = "test/panda"


def frame(episode: int, step: int, camera: int) -> np.ndarray:
    """A smooth image (so that JPEG changes it little), different per episode, step and camera."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    channels = [(4 * x + 30 * episode + 5 * step) % 256, (4 * y + 60 * camera) % 256, 2 * (x + y) + 40]
    return np.stack(channels, axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def panda_demos(tmp_path_factory) -> Path:
    """Three episodes with robosuite Panda's keys, names, cameras, fps and robot_type (as vla-demos writes them)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    spec, root = robosuite_spec("robosuite/Lift/Panda"), tmp_path_factory.mktemp("panda") / "demos"
    dataset = LeRobotDataset.create(repo_id=REPO, fps=spec.fps, root=root, robot_type=spec.embodiment,
                                    use_videos=False, features=lerobot_features(
                                        list(spec.cameras), SIZE, list(spec.state_names), list(spec.action_names)))
    rng = np.random.default_rng(0)
    for episode, steps in enumerate(STEPS):
        for t in range(steps):
            images = {f"observation.images.{c}": frame(episode, t, i) for i, c in enumerate(spec.cameras)}
            dataset.add_frame(images | {"action": rng.uniform(-1, 1, 7).astype(np.float32),
                                        "observation.state": rng.normal(size=8).astype(np.float32),
                                        "task": TASKS[episode]})
        dataset.save_episode()
    dataset.finalize()
    return root


def export(panda_demos: Path, output: Path, *flags: str) -> Path:
    vla_data(["export-rlds", f"--root={panda_demos}", f"--repo_id={REPO}", f"--output_root={output}", *flags])
    return output / TARGET / "0.1.0"


@pytest.fixture(scope="module")
def exported(panda_demos, tmp_path_factory) -> Path:
    return export(panda_demos, tmp_path_factory.mktemp("rlds"), f"--source_embodiment={SOURCE}",
                  f"--embodiment_config={TARGET}", "--shards=2")


@pytest.fixture(scope="module")
def source_demos(panda_demos):
    return load_chunked_demos(str(panda_demos), REPO, chunk_size=4, entry=load_embodiment(SOURCE))


def test_rlds_layout_and_step_fields(exported):
    info = json.loads((exported / "dataset_info.json").read_text())
    assert info["name"] == TARGET and info["splits"][0]["shardLengths"] == ["2", "1"]
    shards = sorted(p.name for p in exported.glob("*.tfrecord-*"))
    assert shards == [f"{TARGET}-train.tfrecord-0000{i}-of-00002" for i in range(2)]
    assert int(info["splits"][0]["numBytes"]) == sum((exported / s).stat().st_size for s in shards)
    features = read_step_features(exported, TARGET)
    assert {k: (f.kind, f.shape, f.dtype) for k, f in features.items()} == {
        "action": ("tensor", (7,), "float32"), "observation/state": ("tensor", (8,), "float32"),
        "observation/image": ("image", (SIZE, SIZE, 3), "uint8"),
        "observation/wrist_image": ("image", (SIZE, SIZE, 3), "uint8"), "language_instruction": ("text", (), "string"),
        "is_first": ("tensor", (), "bool"), "is_last": ("tensor", (), "bool"), "is_terminal": ("tensor", (), "bool"),
        "reward": ("tensor", (), "float32"), "discount": ("tensor", (), "float32")}
    _, payload, crc_ok = next(read_records(exported / shards[1], error=None))
    example = example_pb2.Example()
    example.ParseFromString(payload)
    feature = example.features.feature
    assert crc_ok and feature["episode_metadata/file_path"].bytes_list.value == [f"{REPO}/episode_2".encode()]
    steps = STEPS[2]
    assert list(feature["steps/is_first"].int64_list.value) == [1] + [0] * (steps - 1)
    assert list(feature["steps/is_last"].int64_list.value) == [0] * (steps - 1) + [1]
    assert list(feature["steps/is_terminal"].int64_list.value) == [0] * (steps - 1) + [1]
    assert list(feature["steps/reward"].float_list.value) == [0.0] * (steps - 1) + [1.0]
    assert list(feature["steps/discount"].float_list.value) == [1.0] * steps
    assert feature["steps/observation/image"].bytes_list.value[0][:2] == b"\xff\xd8"  # JPEG


def test_read_back_equal(exported, source_demos):
    entry = load_embodiment(TARGET)
    episodes = list(RLDSDataset(exported, entry).episodes())
    assert [len(e) for e in episodes] == list(STEPS) and [e.instruction for e in episodes] == list(TASKS)
    for e in episodes:
        rows = (source_demos.episode_index == e.index).numpy()
        np.testing.assert_array_equal(e.actions, source_demos.actions[rows][:, 0].numpy())
        np.testing.assert_array_equal(e.state, source_demos.state[rows].numpy())
        assert list(e.images) == ["primary", "wrist"]
        for i, slot in enumerate(e.images):
            written = np.stack([frame(e.index, t, i) for t in range(len(e))]).astype(int)
            error = np.abs(e.images[slot].astype(int) - written)
            assert error.mean() < 2 and error.max() < 24, (slot, error.mean(), error.max())  # JPEG at quality 95


def test_convert_back_gives_the_source_chunks_under_the_simulators_embodiment(exported, source_demos, tmp_path):
    root = tmp_path / "converted"
    vla_data(["convert-rlds", f"--rlds_dir={exported}", f"--embodiment_config={TARGET}", f"--output_root={root}",
              "--repo_id=local/converted", f"--embodiment_name={SOURCE}"])
    entry, simulator = load_embodiment(str(root / "meta" / "vla_embodiment.yaml")), load_embodiment(SOURCE)
    assert (entry.name, entry.fps, entry.slots) == (SOURCE, simulator.fps, simulator.slots)
    assert entry.action_names == simulator.action_names and entry.state_names == simulator.state_names
    assert entry.action_kinds == simulator.action_kinds and entry.gripper == simulator.gripper
    assert entry.info() == simulator.info()
    # what vla.eval.rollout feeds model.cameras [primary, wrist] from on robosuite/Lift/Panda
    assert resolve_cameras(robosuite_spec("robosuite/Lift/Panda").embodiment, ["primary", "wrist"]) == CAMERAS
    demos = load_chunked_demos(str(root), "local/converted", chunk_size=4, entry=entry)
    assert (demos.embodiment, demos.action_kind, demos.fps) == (SOURCE, source_demos.action_kind, source_demos.fps)
    assert demos.camera_slots == source_demos.camera_slots == ["primary", "wrist"]
    for name in ("actions", "action_is_pad", "state", "episode_index"):
        np.testing.assert_array_equal(getattr(demos, name).numpy(), getattr(source_demos, name).numpy(), err_msg=name)
    assert demos.instructions(range(len(demos))) == source_demos.instructions(range(len(source_demos)))
    error = (demos.images.int() - source_demos.images.int()).abs().float()
    assert demos.images.shape == source_demos.images.shape and error.mean() < 2


def write_target(tmp_path: Path, change) -> str:
    raw = yaml.safe_load(Path(load_embodiment(TARGET).source).read_text()) | {"name": "my_rlds"}
    change(raw)
    path = tmp_path / "my_rlds.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _rename_action(raw):
    raw["action"][0]["names"] = ["x", "y", "z"]


def _short_state(raw):
    raw["state"] = raw["state"][:1]


BAD = [  # (id, flags beyond root / repo_id / output_root, error pattern)
    ("action value the source lacks", lambda t: [f"--source_embodiment={SOURCE}", f"--embodiment_config="
                                                 f"{write_target(t, _rename_action)}"],
     r"dataset test/panda at .*: its action has no value 'x' \(it has \['dx', .*\]\), which .*my_rlds.yaml writes "
     r"to key 'action'"),
    ("state width", lambda t: [f"--source_embodiment={SOURCE}", f"--embodiment_config="
                                                                f"{write_target(t, _short_state)}"],
     r"dataset test/panda at .*: its state has 8 values .*; .*my_rlds.yaml writes 7 .* widths must be equal"),
    ("camera slot without a source camera", lambda t: [f"--embodiment_config={TARGET}"],  # cameras by name
     r"dataset test/panda at .*: no camera fills image slot 'primary' \(its slots with a camera: \['agentview', "
     r"'robot0_eye_in_hand'\]\), which .*robosuite_panda_osc_rlds.yaml writes to key 'observation/image'"),
    ("target of format lerobot", lambda t: [f"--embodiment_config={SOURCE}"],
     r".*/robosuite_panda_osc.yaml describes a lerobot dataset; --embodiment_config names the RLDS entry"),
]


@pytest.mark.parametrize("flags, pattern", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_errors_name_dataset_key_and_entry(panda_demos, tmp_path, flags, pattern):
    with pytest.raises(SystemExit, match=r"vla-data export-rlds: " + pattern):
        export(panda_demos, tmp_path / "out", *flags(tmp_path))
    assert not (tmp_path / "out").exists()


def test_refuses_an_existing_folder_and_too_many_shards(panda_demos, exported):
    flags = [f"--source_embodiment={SOURCE}", f"--embodiment_config={TARGET}"]
    with pytest.raises(SystemExit, match=r"robosuite_panda_osc_rlds/0.1.0 exists; remove it"):
        export(panda_demos, exported.parents[1], *flags)
    with pytest.raises(SystemExit, match=r"shards must be between 1 and the number of episodes \(3\); got 4"):
        export(panda_demos, exported.parents[1], *flags, "--version=0.2.0", "--shards=4")
    export(panda_demos, exported.parents[1], *flags, "--version=0.3.0", "--max_episodes=2")
    first_two = exported.parent / "0.3.0"
    assert json.loads((first_two / "dataset_info.json").read_text())["splits"][0]["shardLengths"] == ["2"]
    assert [len(e) for e in RLDSDataset(first_two, load_embodiment(TARGET)).episodes()] == list(STEPS[:2])


def test_tfds_reads_it(exported):
    """tensorflow_datasets (not installed here: it needs TensorFlow) reads the folder as a tfds dataset."""
    tfds = pytest.importorskip("tensorflow_datasets")
    episodes = list(tfds.builder_from_directory(str(exported)).as_dataset(split="train").as_numpy_iterator())
    assert [len(e["steps"]["action"]) for e in episodes] == list(STEPS)


def test_recorded_robosuite_demos_round_trip(tmp_path):
    """The resolution run's path on real simulator data: vla-demos robosuite/Lift/Panda -> export-rlds ->
    convert-rlds --embodiment_name -> the recorded chunks (rendered frames: JPEG error stays small on average)."""
    from vla.sim.demos import DemoConfig, generate_demos

    cfg = DemoConfig(tasks=["robosuite/Lift/Panda"], episodes_per_task=2, image_size=32, max_steps=100,
                     root=str(tmp_path / "demos"), repo_id="test/robosuite_panda")
    demos = generate_demos(cfg)
    rlds = tmp_path / "rlds"
    vla_data(["export-rlds", f"--root={demos}", f"--repo_id={cfg.repo_id}", f"--source_embodiment={SOURCE}",
              f"--embodiment_config={TARGET}", f"--output_root={rlds}", "--shards=2"])
    converted = tmp_path / "converted"
    vla_data(["convert-rlds", f"--rlds_dir={rlds / TARGET / '0.1.0'}", f"--embodiment_config={TARGET}",
              f"--output_root={converted}", "--repo_id=local/panda_rlds", f"--embodiment_name={SOURCE}"])
    source = load_chunked_demos(str(demos), cfg.repo_id, chunk_size=8, entry=load_embodiment(SOURCE))
    result = load_chunked_demos(str(converted), "local/panda_rlds", chunk_size=8,
                                entry=load_embodiment(str(converted / "meta" / "vla_embodiment.yaml")))
    assert result.embodiment == source.embodiment == SOURCE and len(result) == len(source) > 0
    for name in ("actions", "action_is_pad", "state", "episode_index"):
        np.testing.assert_array_equal(getattr(result, name).numpy(), getattr(source, name).numpy(), err_msg=name)
    assert result.instructions(range(len(result))) == ["lift the cube"] * len(source)
    assert (result.images.int() - source.images.int()).abs().float().mean() < 3


def test_without_source_entry_cameras_by_slot_and_unnamed_values_by_position(tmp_path):
    """No --source_embodiment: LeRobot's default keys, cameras named as the slots, values matched by position when
    the dataset names none (names ["actions"], as LIBERO's LeRobot copy has)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = lerobot_features(["primary", "wrist"], SIZE, ["s"] * 8, ["a"] * 7)
    features["action"]["names"], features["observation.state"]["names"] = ["actions"], ["state"]
    dataset = LeRobotDataset.create(repo_id="test/unnamed", fps=20, root=tmp_path / "unnamed", use_videos=False,
                                    features=features)
    actions = np.arange(21, dtype=np.float32).reshape(3, 7) / 21
    for t in range(3):
        dataset.add_frame({"observation.images.primary": frame(0, t, 0), "observation.images.wrist": frame(0, t, 1),
                           "action": actions[t], "observation.state": np.full(8, t, np.float32), "task": "lift"})
    dataset.save_episode()
    dataset.finalize()
    vla_data(["export-rlds", f"--root={tmp_path / 'unnamed'}", "--repo_id=test/unnamed", "--name=unnamed",
              f"--embodiment_config={TARGET}", f"--output_root={tmp_path / 'rlds'}", "--episodes_succeed=false"])
    (episode,) = RLDSDataset(tmp_path / "rlds" / "unnamed" / "0.1.0", load_embodiment(TARGET)).episodes()
    np.testing.assert_array_equal(episode.actions, actions)
    np.testing.assert_array_equal(episode.state, np.repeat(np.arange(3, dtype=np.float32)[:, None], 8, axis=1))
    assert episode.instruction == "lift" and episode.images["wrist"].shape == (3, SIZE, SIZE, 3)
