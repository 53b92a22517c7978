"""The embodiment registry: every entry in configs/embodiments/ validates; each kind of bad entry is a clear error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vla.data.registry import REGISTRY_DIR, load_embodiment, registry_names

# The Open-X datasets and this repo's robots that issue 15 asks the registry to describe.
REQUIRED = ["fractal20220817_data", "bridge", "kuka", "taco_play", "jaco_play", "berkeley_autolab_ur5",
            "language_table", "droid", "aloha", "libero", "metaworld_sawyer", "so101_follower"]

VALID = {
    "name": "my_arm",
    "format": "lerobot",
    "fps": 30,
    "action": [
        {"key": "action", "names": ["j1", "j2", "j3"], "kind": "joint_position", "unit": "rad"},
        {"key": "action", "names": ["grip"], "kind": "gripper", "unit": "normalized", "normalization": "none"},
    ],
    "state": [{"key": "observation.state", "names": ["j1", "j2", "j3"], "kind": "joint_position", "unit": "rad"}],
    "cameras": {"primary": "observation.images.top", "wrist": None},
    "gripper": {"dims": ["grip"], "open": 1.0, "closed": 0.0},
}


def write(tmp_path: Path, entry: dict | str, name: str = "my_arm.yaml") -> Path:
    path = tmp_path / name
    path.write_text(entry if isinstance(entry, str) else yaml.safe_dump(entry, sort_keys=False))
    return path


def test_registry_has_the_required_entries():
    assert set(REQUIRED) <= set(registry_names())


@pytest.mark.parametrize("name", registry_names())
def test_every_entry_parses_and_validates(name):
    entry = load_embodiment(name)
    text = (REGISTRY_DIR / f"{name}.yaml").read_text()
    assert entry.name == name, "an entry's name is its file name"
    assert text.startswith("#") and "Sources:" in text.split("\nname:")[0], "cite the sources in the top comment"
    assert entry.action_dim == len(entry.action_kinds) == len(entry.action_normalization) > 0
    assert any(not slot.missing for slot in entry.cameras)
    if entry.gripper is not None:
        assert set(entry.gripper.dims) <= set(entry.action_names)


def test_valid_entry_round_trip(tmp_path):
    entry = load_embodiment(str(write(tmp_path, VALID)))
    assert entry.action_names == ["j1", "j2", "j3", "grip"] and entry.state_names == ["j1", "j2", "j3"]
    assert entry.action_kinds == ["joint_position"] * 3 + ["gripper"]
    assert entry.action_normalization == ["quantile"] * 3 + ["none"]  # the entry's default where a part gives none
    assert [(p.start, p.stop) for p in entry.action] == [(0, 3), (3, 4)]  # consecutive parts of one key
    assert entry.action_kind == "joint_position" and entry.fps == 30.0
    assert entry.slot("primary").key == "observation.images.top"
    assert entry.slot("wrist").missing  # a camera the robot lacks is marked, not dropped
    info = entry.info()
    assert (info.action_names, info.action_kind, info.fps) == (entry.action_names, "joint_position", 30.0)
    with pytest.raises(ValueError, match="does not map image slot 'secondary'.*`secondary: null`"):
        entry.slot("secondary")


def test_gripper_convention_supplies_the_robotiq_driver():
    from vla.robot_io.robotiq import RobotiqConfig

    gripper = load_embodiment("fractal20220817_data").gripper
    robotiq = RobotiqConfig(**gripper.robotiq_values())
    assert (robotiq.value_open, robotiq.value_closed) == (-1.0, 1.0) and gripper.range == (-1.0, 1.0)


def test_unknown_name_suggests_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"no embodiment 'so101_folower'.*did you mean \['so101_follower'\]"):
        load_embodiment("so101_folower")
    with pytest.raises(ValueError, match="does not exist"):
        load_embodiment(str(tmp_path / "absent.yaml"))


def mutate(change) -> dict:
    entry = copy.deepcopy(VALID)
    change(entry)
    return entry


BAD = [
    ("unknown kind", lambda e: e["action"][0].update(kind="joint_angle"),
     r"action\[0\]\.kind: must be one of .* got 'joint_angle'"),
    ("unknown unit", lambda e: e["action"][0].update(unit="degrees"),
     r"action\[0\]\.unit: must be one of .*'degrees' \(did you mean 'deg'\?\)"),
    ("unknown field", lambda e: e.update(fsp=30), r"fsp: unknown field"),
    ("missing field", lambda e: e.pop("fps"), r"fps: missing"),
    ("bad fps", lambda e: e.update(fps=0), r"fps: must be > 0"),
    ("bad format", lambda e: e.update(format="hdf5"), r"format: must be one of \['lerobot', 'rlds'\]"),
    ("bad normalization", lambda e: e["action"][1].update(normalization="minmax"),
     r"action\[1\]\.normalization: must be one of \['quantile', 'zscore', 'none'\]"),
    ("empty action of rlds", lambda e: e.update(action=[], format="rlds"),
     r"action: \[\] \(an action-free dataset\) is supported for lerobot datasets only"),
    ("action not a list", lambda e: e.update(action="j1"), r"action: must be a list of parts"),
    ("names not a list", lambda e: e["action"][0].update(names="j1"), r"action\[0\]\.names: must be a non-empty list"),
    ("gap in a key", lambda e: e["action"][1].update(start=4),
     r"parts of key 'action' leave indices \[3\] undescribed"),
    ("overlapping parts", lambda e: e["action"][1].update(start=2), r"parts of key 'action' overlap"),
    ("wider than key_widths", lambda e: e.update(key_widths={"action": 3}),
     r"key_widths\.action: is 3 but parts read up to index 4"),
    ("repeated dimension name", lambda e: e["action"][1].update(names=["j1"], kind="joint_position"),
     r"action: dimension names \['j1'\] appear more than once"),
    ("one camera in two slots", lambda e: e["cameras"].update(wrist="observation.images.top"),
     r"cameras\.wrist: camera 'observation.images.top' already fills slot 'primary'"),
    ("no camera at all", lambda e: e.update(cameras={"primary": None}), r"cameras: every slot is null"),
    ("gripper dim without convention", lambda e: e.pop("gripper"),
     r"gripper: missing; action dimension\(s\) \['grip'\] are of kind gripper"),
    ("gripper names a joint", lambda e: e["gripper"].update(dims=["j1"]),
     r"gripper\.dims: must list the action dimensions of kind gripper, \['grip'\]"),
    ("gripper open == closed", lambda e: e["gripper"].update(closed=1.0), r"gripper\.closed: equals open"),
]


@pytest.mark.parametrize(("what", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_entries_name_the_file_and_field(tmp_path, what, change, message):
    path = write(tmp_path, mutate(change))
    with pytest.raises(ValueError, match=message) as error:
        load_embodiment(str(path))
    assert str(error.value).startswith(str(path)), f"{what}: the error must name the file"


def test_duplicate_camera_slot_is_an_error_not_a_lost_camera(tmp_path):
    text = yaml.safe_dump(VALID, sort_keys=False).replace(
        "  wrist: null", "  wrist: observation.images.wrist\n  primary: observation.images.side")
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=rf"{path}: not valid YAML: .*duplicate key 'primary'"):
        load_embodiment(str(path))


def test_key_widths_allow_using_part_of_a_key(tmp_path):
    entry = mutate(lambda e: e.update(
        key_widths={"observation.state": 15},
        state=[{"key": "observation.state", "start": 6, "names": ["x", "y"], "kind": "ee_abs_xyz", "unit": "m"}]))
    parsed = load_embodiment(str(write(tmp_path, entry)))
    assert parsed.width("observation.state") == 15 and parsed.width("action") == 4
    assert [(p.start, p.stop) for p in parsed.state] == [(6, 8)]


def test_kinds_that_deploy_cannot_check_are_refused_when_recorded(tmp_path):
    entry = load_embodiment("droid")  # cartesian velocity commands
    assert entry.action_kind is None
    with pytest.raises(ValueError, match="can only record joint_position or ee_delta actions"):
        entry.info()
