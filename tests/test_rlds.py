"""RLDS / Open-X datasets without TensorFlow: small shards written here in the real Open-X layout (tfds' flattened
`steps/...` Example keys, features.json, dataset_info.json, sharded TFRecords) for BridgeData, RT-1 (fractal) and
Language-Table, read back through their registry entries, converted to LeRobot v3 and loaded by the training loader;
and every way the data can disagree with the entry or be damaged."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import yaml

from vla.data.dataset import load_chunked_demos
from vla.data.export_rlds import write_rlds
from vla.data.registry import load_embodiment
from vla.data.report import main as vla_data
from vla.data.rlds import RLDSDataset, RLDSError, StepFeature

H, W = 12, 16  # camera size in the tiny datasets (the real ones are 480 x 640 and 256 x 320)
STEPS = (5, 7, 6, 4)  # steps per episode
IMAGE, TEXT = ("image", (H, W, 3), "uint8"), ("text", (), "string")


def tensor(*shape: int, dtype: str = "float32") -> tuple:
    return ("tensor", shape, dtype)


# The step features of the tfds Open-X copies (tensorflow/datasets docs/catalog/bridge.md, fractal20220817_data.md),
# at a small image size and without the 512-D language embeddings.
LAYOUTS = {
    "bridge": {
        "action/open_gripper": tensor(dtype="bool"), "action/rotation_delta": tensor(3),
        "action/terminate_episode": tensor(), "action/world_vector": tensor(3),
        "is_first": tensor(dtype="bool"), "is_last": tensor(dtype="bool"), "is_terminal": tensor(dtype="bool"),
        "observation/image": IMAGE, "observation/natural_language_instruction": TEXT,
        "observation/state": tensor(7), "reward": tensor(),
    },
    "fractal20220817_data": {
        "action/base_displacement_vector": tensor(2), "action/base_displacement_vertical_rotation": tensor(1),
        "action/gripper_closedness_action": tensor(1), "action/rotation_delta": tensor(3),
        "action/terminate_episode": tensor(3, dtype="int32"), "action/world_vector": tensor(3),
        "is_first": tensor(dtype="bool"), "is_last": tensor(dtype="bool"), "is_terminal": tensor(dtype="bool"),
        "observation/base_pose_tool_reached": tensor(7), "observation/gripper_closed": tensor(1),
        "observation/image": IMAGE, "observation/natural_language_instruction": TEXT,
        "observation/vector_to_go": tensor(3), "reward": tensor(),
    },
    # the real-robot config: the instruction is int32[512] UTF-8 byte values, zero-padded
    "language_table": {
        "action": tensor(2), "is_first": tensor(dtype="bool"), "is_last": tensor(dtype="bool"),
        "is_terminal": tensor(dtype="bool"), "observation/effector_target_translation": tensor(2),
        "observation/effector_translation": tensor(2), "observation/instruction": tensor(512, dtype="int32"),
        "observation/rgb": IMAGE, "reward": tensor(),
    },
}
INSTRUCTIONS = ["put the spoon in the pot", "open the drawer", "pick up the carrot", "wipe the table"]


def episode_steps(layout: dict, episode: int, steps: int) -> dict:
    """Per-step values [T, ...] of every feature: numbers distinct per episode, step and dimension; each image one
    colour per step, JPEG-encoded as in Open-X."""
    values = {}
    for key, (kind, shape, dtype) in layout.items():
        if kind == "image":
            values[key] = [_jpeg((40 * episode + 9 * t) % 256, (17 * t) % 256, 200) for t in range(steps)]
        elif kind == "text":
            values[key] = [INSTRUCTIONS[episode % len(INSTRUCTIONS)].encode()] * steps
        elif key == "observation/instruction":
            codes = np.zeros(shape, np.int64)
            text = INSTRUCTIONS[episode % len(INSTRUCTIONS)].encode()
            codes[:len(text)] = list(text)
            values[key] = np.tile(codes, (steps, 1))
        elif dtype == "bool":
            values[key] = np.arange(steps) % 2 == episode % 2
        else:
            width = int(np.prod(shape))
            grid = 100.0 * episode + np.arange(steps)[:, None] + np.arange(width)[None, :] / 10
            values[key] = (grid + len(key) % 7).astype(np.float32).reshape((steps, *shape)).astype(dtype)
    values["is_first"] = np.arange(steps) == 0
    values["is_last"] = values["is_terminal"] = np.arange(steps) == steps - 1
    return values


def _jpeg(r: int, g: int, b: int) -> bytes:
    pixels = np.zeros((H, W, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = r, np.arange(W) * 8 + g % 100, b
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def step_features(layout: dict) -> dict[str, StepFeature]:
    return {key: StepFeature(key, kind, shape, dtype) for key, (kind, shape, dtype) in layout.items()}


def make_dataset(tmp_path: Path, name: str = "bridge", layout: dict | None = None, change=None) -> Path:
    """Four episodes of `name`'s layout over two shards; `change(episodes)` may damage them first."""
    layout = dict(LAYOUTS[name] if layout is None else layout)
    episodes = [episode_steps(layout, e, t) for e, t in enumerate(STEPS)]
    if change is not None:
        change(episodes)
    paths = [f"/raw/{name}/episode_{index}.npy" for index in range(len(episodes))]
    return write_rlds(tmp_path, name, step_features(layout), zip(paths, episodes, strict=True), len(episodes),
                      shards=2)


def expected_vectors(name: str, episode: int, which: str) -> np.ndarray:
    """What the entry's parts should read from episode `episode`: the layout's values, part by part."""
    entry, steps = load_embodiment(name), episode_steps(LAYOUTS[name], episode, STEPS[episode])
    parts = entry.action if which == "action" else entry.state
    columns = [np.asarray(steps[p.key], np.float32).reshape(STEPS[episode], -1)[:, p.start:p.stop] for p in parts]
    return np.concatenate(columns, axis=1)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_read_back_equal(tmp_path, name):
    entry = load_embodiment(name)
    dataset = RLDSDataset(make_dataset(tmp_path, name), entry)
    assert dataset.name == name and [p.name for p in dataset.shards] == [
        f"{name}-train.tfrecord-0000{i}-of-00002" for i in range(2)]
    episodes = list(dataset.episodes())
    assert [len(e) for e in episodes] == list(STEPS)
    assert [(e.index, e.shard[-15:], e.record) for e in episodes] == [
        (0, "-00000-of-00002", 0), (1, "-00000-of-00002", 1), (2, "-00001-of-00002", 0), (3, "-00001-of-00002", 1)]
    for e in episodes:
        assert e.actions.dtype == np.float32 and e.actions.shape == (STEPS[e.index], entry.action_dim)
        np.testing.assert_array_equal(e.actions, expected_vectors(name, e.index, "action"))
        np.testing.assert_array_equal(e.state, expected_vectors(name, e.index, "state"))
        assert e.instruction == INSTRUCTIONS[e.index]
        written = episode_steps(LAYOUTS[name], e.index, STEPS[e.index])[entry.slot("primary").key]
        decoded = np.stack([np.asarray(PIL.Image.open(io.BytesIO(b)).convert("RGB")) for b in written])
        assert list(e.images) == ["primary"] and e.images["primary"].dtype == np.uint8
        np.testing.assert_array_equal(e.images["primary"], decoded)
    assert len(list(dataset.episodes(max_episodes=3))) == 3
    if name == "bridge":  # open_gripper is a bool (int64 in the record): read as 0.0 / 1.0
        assert set(np.unique(episodes[1].actions[:, 6])) == {0.0, 1.0}


def convert(tmp_path: Path, rlds_dir: Path, entry: str, *flags: str) -> Path:
    output = tmp_path / "lerobot"
    vla_data(["convert-rlds", f"--rlds_dir={rlds_dir}", f"--embodiment_config={entry}", f"--output_root={output}",
              "--repo_id=local/converted", *flags])
    return output


@pytest.mark.parametrize("name", ["bridge", "fractal20220817_data"])
def test_convert_then_load_through_entry(tmp_path, name):
    entry = load_embodiment(name)
    root = convert(tmp_path, make_dataset(tmp_path, name), name, "--image_size=8", "--max_episodes=3")
    converted = load_embodiment(str(root / "meta" / "vla_embodiment.yaml"))
    assert (converted.format, converted.name, converted.fps) == ("lerobot", name, entry.fps)
    assert converted.action_names == entry.action_names and converted.state_names == entry.state_names
    assert converted.action_kinds == entry.action_kinds and converted.gripper == entry.gripper
    assert json.loads((root / "meta" / "vla_embodiment.json").read_text()) == {"action_kind": "ee_delta"}
    demos = load_chunked_demos(str(root), "local/converted", chunk_size=3, entry=converted)
    assert demos.actions.shape == (sum(STEPS[:3]), 3, entry.action_dim) and demos.state.shape[1] == entry.state_dim
    assert demos.images.shape == (sum(STEPS[:3]), 1, 8, 8, 3) and demos.camera_slots == ["primary"]
    assert (demos.embodiment, demos.fps, demos.action_kind) == (name, entry.fps, "ee_delta")
    first = demos.episode_index == 1
    np.testing.assert_array_equal(demos.actions[first][:, 0].numpy(), expected_vectors(name, 1, "action"))
    np.testing.assert_array_equal(demos.state[first].numpy(), expected_vectors(name, 1, "state"))
    assert demos.instructions(first.nonzero()[:1, 0]) == [INSTRUCTIONS[1]]


def bridge_change(fn):
    return lambda tmp_path: make_dataset(tmp_path, change=fn)


def _nan(key: str, episode: int, step: int, value: float):
    def change(episodes):
        episodes[episode][key] = episodes[episode][key].copy()
        episodes[episode][key][step, 0] = value
    return change


def _wide_world_vector(tmp_path):
    layout = LAYOUTS["bridge"] | {"action/world_vector": tensor(4)}
    return make_dataset(tmp_path, layout=layout)


def _flip_byte(where: str):
    """Damage shard 0: a byte in the second record's payload, or in the first record's length."""
    def damage(tmp_path):
        folder = make_dataset(tmp_path)
        shard = folder / "bridge-train.tfrecord-00000-of-00002"
        data = bytearray(shard.read_bytes())
        first = int.from_bytes(data[:8], "little")
        data[2 if where == "length" else 16 + first + 40] ^= 0xFF
        shard.write_bytes(bytes(data))
        return folder
    return damage


def _truncate(tmp_path):
    folder = make_dataset(tmp_path)
    shard = folder / "bridge-train.tfrecord-00001-of-00002"
    shard.write_bytes(shard.read_bytes()[:-100])
    return folder


BAD_DATA = [  # (id, make the dataset, skippable, error pattern)
    ("corrupted record", _flip_byte("payload"), True,
     r"bridge .*shard bridge-train.tfrecord-00000-of-00002, episode 1: record 1 fails its CRC check"),
    ("corrupted length", _flip_byte("length"), False, r"shard bridge-train\S+, episode 0: .*length fails its CRC"),
    ("truncated shard", _truncate, False, r"shard bridge-train.tfrecord-00001-of-00002, episode 3: record 1 is trunc"),
    ("key missing from an episode", bridge_change(lambda eps: eps[2].pop("action/rotation_delta")), True,
     r"shard \S+, episode 2, key 'action/rotation_delta': missing from this episode's record"),
    ("NaN action", bridge_change(_nan("action/world_vector", 1, 3, np.nan)), True,
     r"episode 1, step 3, key 'action/world_vector': NaN or inf in \['dx', 'dy', 'dz'\]"),
    ("inf state", bridge_change(_nan("observation/state", 2, 4, np.inf)), True,
     r"episode 2, step 4, key 'observation/state': NaN or inf in \['x', 'y', 'z'\]"),
    ("wrong value count", bridge_change(lambda eps: eps[0].update({"observation/state": eps[0]["observation/state"][
        :, :6]})), True, r"episode 0, key 'observation/state': holds 30 values; expected 5 steps x 7"),
    ("undecodable image", bridge_change(lambda eps: eps[3]["observation/image"].__setitem__(2, b"not a jpeg")), True,
     r"episode 3, step 2, key 'observation/image': image does not decode"),
]
BAD_ENTRY = [  # the dataset disagrees with the entry as a whole: never skipped
    ("action width", _wide_world_vector, r"key 'action/world_vector': has 4 values per step \(shape \[4\] in "
                                         r"features.json\); .*bridge.yaml expects 3"),
    ("key missing from the dataset", lambda tmp_path: make_dataset(
        tmp_path, layout={k: v for k, v in LAYOUTS["bridge"].items() if k != "action/rotation_delta"}),
     r"key 'action/rotation_delta': no such step feature in features.json"),
    ("unmapped camera", lambda tmp_path: make_dataset(tmp_path, layout=LAYOUTS["bridge"] | {
        "observation/wrist_image": IMAGE}), r"camera\(s\) \['observation/wrist_image'\] are not mapped by .*bridge"),
]


@pytest.mark.parametrize("make, skippable, pattern", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_bad_episode_errors_name_where(tmp_path, make, skippable, pattern):
    dataset = RLDSDataset(make(tmp_path), load_embodiment("bridge"))
    with pytest.raises(RLDSError, match=pattern) as error:
        list(dataset.episodes())
    assert error.value.skippable == skippable
    if not skippable:  # the framing is lost: skipping cannot help
        with pytest.raises(RLDSError, match=pattern):
            list(dataset.episodes(skip_bad_episodes=True))


@pytest.mark.parametrize("make, pattern", [c[1:] for c in BAD_ENTRY], ids=[c[0] for c in BAD_ENTRY])
def test_dataset_that_disagrees_with_its_entry(tmp_path, make, pattern):
    with pytest.raises(RLDSError, match=r"RLDS dataset bridge .*" + pattern) as error:
        RLDSDataset(make(tmp_path), load_embodiment("bridge"))
    assert not error.value.skippable


def test_skip_bad_episodes_counts_and_prints(tmp_path, capsys):
    def damage(episodes):
        _nan("action/world_vector", 1, 0, np.nan)(episodes)
        episodes[3]["observation/image"][0] = b"\xff\xd8 broken"

    folder = make_dataset(tmp_path, change=damage)
    dataset = RLDSDataset(folder, load_embodiment("bridge"))
    kept = [e.index for e in dataset.episodes(skip_bad_episodes=True)]
    assert kept == [0, 2] and len(dataset.skipped) == 2
    err = capsys.readouterr().err
    assert "skipping: RLDS dataset bridge" in err and "episode 1, step 0" in err and "episode 3, step 0" in err
    assert "skipped 2 of 4 episodes of bridge" in err
    root = convert(tmp_path, folder, "bridge", "--skip_bad_episodes=true", "--image_size=8")
    assert "wrote 2 episodes" in capsys.readouterr().out
    demos = load_chunked_demos(str(root), "local/converted", chunk_size=2,
                               entry=load_embodiment(str(root / "meta" / "vla_embodiment.yaml")))
    assert len(demos) == STEPS[0] + STEPS[2]


def test_convert_refuses_other_fps_and_bad_data_without_skip(tmp_path):
    folder = make_dataset(tmp_path, change=_nan("action/world_vector", 0, 1, np.inf))
    with pytest.raises(SystemExit, match=r"--fps 10.0 != 5.0 in .*bridge.yaml"):
        convert(tmp_path, folder, "bridge", "--fps=10")
    with pytest.raises(SystemExit, match=r"episode 0, step 1, key 'action/world_vector': NaN or inf"):
        convert(tmp_path, folder, "bridge")


def test_converted_dataset_checked_against_its_entry(tmp_path):
    """The LeRobot loader refuses the RLDS entry (pointing at the converter) and an entry of another fps."""
    root = convert(tmp_path, make_dataset(tmp_path), "bridge", "--image_size=8", "--max_episodes=1")
    with pytest.raises(ValueError, match=r"describes a rlds dataset; .*convert it with `vla-data convert-rlds`"):
        load_chunked_demos(str(root), "local/converted", chunk_size=2, entry=load_embodiment("bridge"))
    entry = yaml.safe_load((root / "meta" / "vla_embodiment.yaml").read_text()) | {"fps": 10}
    (tmp_path / "other_fps.yaml").write_text(yaml.safe_dump(entry))
    with pytest.raises(ValueError, match=r"fps 5 != 10.0 in .*other_fps.yaml"):
        load_chunked_demos(str(root), "local/converted", chunk_size=2,
                           entry=load_embodiment(str(tmp_path / "other_fps.yaml")))
