"""The embodiment registry: one YAML file per robot / dataset in `configs/embodiments/`, parsed into typed entries.

An entry says what a dataset's numbers are, so a new robot needs a YAML file and no code:

    name: so101_follower            # the embodiment id statistics and checkpoints are kept under
    format: lerobot                 # lerobot | rlds (how the dataset is stored)
    fps: 30                         # control rate the actions are meant to be executed at
    normalization: quantile         # default mode for every dimension: quantile | zscore
    action:                         # parts, concatenated in order into the action vector [D]
      - {key: action, names: [shoulder_pan.pos, ...], kind: joint_position, unit: deg}
      - {key: action, names: [gripper.pos], kind: gripper, unit: percent, normalization: none}
    state:                          # the same for the proprio state [S] ([] when the dataset has none)
      - {key: observation.state, names: [...], kind: joint_position, unit: deg}
    cameras:                        # the model's image slots -> the dataset's image key, null = the robot lacks it
      primary: observation.images.top
      secondary: null
      wrist: observation.images.wrist
    gripper: {dims: [gripper.pos], open: 100, closed: 0, command: absolute}

An action-free dataset (video without action labels, e.g. `vla-data import-videos`; format lerobot only) has
`action: []`; its entry then maps its cameras (and state, if any) alone, and has no action kind.

A part reads `names` consecutive values of a dataset key, from `start` (default: right after the previous part of
the same key, or 0). Parts of one key must cover it without gaps or overlaps, unless `key_widths` gives the key's
full width (then parts may skip values, e.g. a 15-D `robot_obs` of which 7 are used). A slot marked null is
missing: it is represented as such (`Slot.missing`), to be masked by the data pipeline, never filled with zeros.

`load_embodiment(name_or_path)` returns an `Embodiment`; every error is a ValueError naming the file and field.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vla.data.embodiment import EmbodimentInfo

REGISTRY_DIR = Path(__file__).resolve().parents[2] / "configs" / "embodiments"
FORMATS = ("lerobot", "rlds")
# What one dimension of an action or state vector is.
DIM_KINDS = {
    "ee_delta_xyz": "end-effector translation step",
    "ee_delta_rpy": "end-effector rotation step (roll, pitch, yaw)",
    "ee_delta_rotvec": "end-effector rotation step as a rotation vector (axis times angle; robosuite's OSC)",
    "ee_abs_xyz": "absolute end-effector position",
    "ee_abs_rpy": "absolute end-effector orientation as roll, pitch, yaw",
    "ee_abs_quat": "absolute end-effector orientation as a quaternion",
    "ee_vel_xyz": "end-effector linear velocity command",
    "ee_vel_rpy": "end-effector angular velocity command",
    "joint_position": "absolute joint position",
    "joint_delta": "joint position step",
    "joint_velocity": "joint velocity",
    "gripper": "gripper opening / closing (convention in the entry's `gripper`)",
    "base": "mobile-base motion",
    "other": "anything else (e.g. a goal position in the state)",
}
UNITS = ("m", "rad", "deg", "m/s", "rad/s", "normalized", "binary", "percent", "unitless", "unknown")
NORMALIZATIONS = ("quantile", "zscore", "none")  # none: the dimension is passed through (e.g. a 0/1 gripper)
GRIPPER_COMMANDS = ("absolute", "relative")  # relative: +-1 events that open / close, 0 = keep
# EmbodimentInfo.action_kind (what deploy checks an arm against) from the kinds of the arm's dimensions
_COARSE_KINDS = {"ee_delta": {"ee_delta_xyz", "ee_delta_rpy", "ee_delta_rotvec"}, "joint_position": {"joint_position"}}
_TOP_FIELDS = ("name", "format", "fps", "dataset", "robot", "instruction_key", "normalization", "action", "state",
               "cameras", "key_widths", "gripper")
_PART_FIELDS = ("key", "names", "kind", "unit", "start", "normalization")
_GRIPPER_FIELDS = ("dims", "open", "closed", "command")


@dataclass(frozen=True)
class Part:
    """`names` consecutive values of dataset key `key`, from index `start`; all of one kind and unit."""

    key: str
    start: int
    names: tuple[str, ...]
    kind: str
    unit: str
    normalization: str  # quantile | zscore | none (the entry's default where the part gives none)

    @property
    def stop(self) -> int:
        return self.start + len(self.names)


@dataclass(frozen=True)
class Slot:
    """One image slot of the model and the dataset image key that fills it; key None: the robot has no such
    camera, so the slot is missing (to be masked, never zero-filled)."""

    name: str
    key: str | None

    @property
    def missing(self) -> bool:
        return self.key is None


@dataclass(frozen=True)
class Gripper:
    """How the gripper dimensions `dims` of the action are read (one per gripper; a bimanual robot has two):
    `open` / `closed` are the fully open / closed values (a Robotiq driver's value_open / value_closed);
    `command` absolute (a target opening) or relative (+-1 events that close / open, 0 = keep)."""

    dims: tuple[str, ...]
    open: float
    closed: float
    command: str

    @property
    def range(self) -> tuple[float, float]:
        return min(self.open, self.closed), max(self.open, self.closed)

    def robotiq_values(self) -> dict[str, float]:
        """The `vla.robot_io.robotiq.RobotiqConfig` fields that make the gripper read this convention."""
        return {"value_open": self.open, "value_closed": self.closed}


@dataclass(frozen=True)
class Embodiment:
    """A parsed, validated registry entry (see the module docstring for the YAML it comes from)."""

    name: str
    source: str  # the file it was read from (for error messages)
    format: str
    fps: float
    normalization: str
    action: tuple[Part, ...]
    state: tuple[Part, ...]
    cameras: tuple[Slot, ...]
    key_widths: dict[str, int]
    gripper: Gripper | None
    dataset: str = ""  # where the data lives (hub repo id, tfds name); informational
    robot: str = ""
    instruction_key: str = ""  # RLDS: the step's instruction field; LeRobot keeps tasks in its metadata

    @property
    def action_names(self) -> list[str]:
        return [n for p in self.action for n in p.names]

    @property
    def state_names(self) -> list[str]:
        return [n for p in self.state for n in p.names]

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_kinds(self) -> list[str]:
        """The kind of every action dimension [D]."""
        return [p.kind for p in self.action for _ in p.names]

    @property
    def action_normalization(self) -> list[str]:
        """The normalisation mode of every action dimension [D]."""
        return [p.normalization for p in self.action for _ in p.names]

    @property
    def state_normalization(self) -> list[str]:
        return [p.normalization for p in self.state for _ in p.names]

    @property
    def has_actions(self) -> bool:
        """False for an action-free dataset's entry (`action: []`)."""
        return bool(self.action)

    @property
    def action_kind(self) -> str | None:
        """joint_position | ee_delta when the arm's dimensions (all but gripper and base) are all of that kind,
        else None (e.g. absolute poses or velocities, which deploy's robot check does not know yet)."""
        arm = {k for k in self.action_kinds if k not in ("gripper", "base")}
        return next((coarse for coarse, kinds in _COARSE_KINDS.items() if arm and arm <= kinds), None)

    @property
    def slots(self) -> list[str]:
        return [s.name for s in self.cameras]

    def slot(self, name: str) -> Slot:
        """The slot called `name`; a ValueError listing the entry's slots when it does not map it."""
        for slot in self.cameras:
            if slot.name == name:
                return slot
        raise ValueError(f"embodiment {self.name!r} ({self.source}) does not map image slot {name!r}; it maps "
                         f"{self.slots}. Add `{name}: null` under cameras if the robot has no such camera")

    def width(self, key: str) -> int:
        """How many values per frame dataset key `key` holds, by this entry."""
        if key in self.key_widths:
            return self.key_widths[key]
        return max(p.stop for p in self.action + self.state if p.key == key)

    def keys(self, which: str) -> list[str]:
        """The dataset keys the action (which="action") or state parts read, in order of first use."""
        parts = self.action if which == "action" else self.state
        return list(dict.fromkeys(p.key for p in parts))

    def info(self) -> EmbodimentInfo:
        """Action / state names, action kind and fps, as a checkpoint records them for deploy's checks (an
        action-free entry has no action names and kind "")."""
        if not self.has_actions:
            return EmbodimentInfo([], self.state_names, "", self.fps)
        if self.action_kind is None:
            raise ValueError(f"embodiment {self.name!r} ({self.source}): its arm dimensions are "
                             f"{sorted(set(self.action_kinds) - {'gripper', 'base'})}; a checkpoint can only record "
                             f"joint_position or ee_delta actions today (deploy checks an arm against one of them)")
        return EmbodimentInfo(self.action_names, self.state_names, self.action_kind, self.fps)


def registry_names() -> list[str]:
    """Names of the entries in configs/embodiments/."""
    return sorted(p.stem for p in REGISTRY_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A YAML path as is, or a registry name -> configs/embodiments/<name>.yaml; a ValueError suggesting the
    closest names when neither exists."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        if not path.is_file():
            raise ValueError(f"embodiment config {name_or_path} does not exist")
        return path
    candidate = REGISTRY_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        close = difflib.get_close_matches(name_or_path, registry_names(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"no embodiment {name_or_path!r} in {REGISTRY_DIR}{hint} (known: {registry_names()}); "
                         f"give a registry name or a path to a YAML file")
    return candidate


def load_embodiment(name_or_path: str) -> Embodiment:
    """Read and validate one entry (a registry name or a YAML path)."""
    path = resolve(name_or_path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    return parse_embodiment(raw, str(path))


def parse_embodiment(raw: Any, source: str) -> Embodiment:
    """Validate a YAML mapping into an Embodiment; errors name `source` and the field."""
    fields = _Fields(raw, source, "", _TOP_FIELDS)
    name = fields.string("name")
    fmt = fields.choice("format", FORMATS)
    fps = fields.number("fps")
    if not fps > 0:
        raise fields.error("fps", f"must be > 0; got {fps}")
    normalization = fields.choice("normalization", ("quantile", "zscore"), default="quantile")
    key_widths = _key_widths(fields)
    action = _parts(fields, "action", normalization, required=True)
    if not action and fmt != "lerobot":
        raise fields.error("action", "[] (an action-free dataset) is supported for lerobot datasets only")
    state = _parts(fields, "state", normalization, required=False)
    _check_widths(action + state, key_widths, source)
    _check_unique_names(action, "action", source)
    _check_unique_names(state, "state", source)
    cameras = _cameras(fields)
    gripper = _gripper(fields, action)
    return Embodiment(name=name, source=source, format=fmt, fps=fps, normalization=normalization, action=action,
                      state=state, cameras=cameras, key_widths=key_widths, gripper=gripper,
                      dataset=fields.string("dataset", default=""), robot=fields.string("robot", default=""),
                      instruction_key=fields.string("instruction_key", default=""))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with a repeated key (PyYAML silently keeps the last one), so two
    cameras given the same slot name are an error, not a lost camera."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Fields:
    """Typed access to one YAML mapping that names the file and field path in every error."""

    def __init__(self, raw: Any, source: str, where: str, known: tuple[str, ...]):
        self.source, self.where = source, where
        if not isinstance(raw, dict):
            raise self.error("", f"must be a mapping of fields; got {type(raw).__name__}")
        unknown = [k for k in raw if k not in known]
        if unknown:
            raise self.error(str(unknown[0]), f"unknown field (known: {list(known)})")
        self.raw = raw

    def error(self, field: str, message: str) -> ValueError:
        path = ".".join(p for p in (self.where, field) if p)
        return ValueError(f"{self.source}: {path or 'entry'}: {message}")

    def get(self, field: str, default: Any = ...) -> Any:
        if field not in self.raw or self.raw[field] is None and default is not ...:
            if default is ...:
                raise self.error(field, "missing")
            return default
        return self.raw[field]

    def string(self, field: str, default: Any = ...) -> str:
        value = self.get(field, default)
        if not isinstance(value, str) or (default is ... and not value):
            raise self.error(field, f"must be a non-empty string; got {value!r}")
        return value

    def number(self, field: str, default: Any = ...) -> float:
        value = self.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"must be a number; got {value!r}")
        return float(value)

    def choice(self, field: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(field, default)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(field, f"must be one of {list(choices)}; got {value!r}{hint}")
        return value


def _parts(fields: _Fields, which: str, default_norm: str, required: bool) -> tuple[Part, ...]:
    raw = fields.get(which, default=[] if not required else ...)
    if not isinstance(raw, list):
        empty = " ([] for an action-free dataset)" if which == "action" else ""
        raise fields.error(which, f"must be a list of parts ({{key, names, kind, unit}}){empty}; got {raw!r}")
    parts, next_start = [], {}
    for i, item in enumerate(raw):
        part = _Fields(item, fields.source, f"{which}[{i}]", _PART_FIELDS)
        key = part.string("key")
        names = part.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise part.error("names", f"must be a non-empty list of strings; got {names!r}")
        start = part.get("start", default=next_start.get(key, 0))
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise part.error("start", f"must be an integer >= 0; got {start!r}")
        parts.append(Part(key=key, start=start, names=tuple(names), kind=part.choice("kind", tuple(DIM_KINDS)),
                          unit=part.choice("unit", UNITS),
                          normalization=part.choice("normalization", NORMALIZATIONS, default=default_norm)))
        next_start[key] = parts[-1].stop
    return tuple(parts)


def _key_widths(fields: _Fields) -> dict[str, int]:
    raw = fields.get("key_widths", default={})
    if not isinstance(raw, dict):
        raise fields.error("key_widths", f"must map dataset keys to widths; got {raw!r}")
    for key, width in raw.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise fields.error(f"key_widths.{key}", f"must be an integer >= 1; got {width!r}")
    return dict(raw)


def _check_widths(parts: tuple[Part, ...], key_widths: dict[str, int], source: str) -> None:
    """Parts of one key must not overlap, must fit in its declared width, and (without one) leave no gap."""
    for key in dict.fromkeys(p.key for p in parts):
        spans = sorted((p.start, p.stop, p.names[0]) for p in parts if p.key == key)
        for (_, stop, first), (start, _, second) in zip(spans, spans[1:], strict=False):
            if start < stop:
                raise ValueError(f"{source}: parts of key {key!r} overlap: {first!r}.. ends at index {stop}, "
                                 f"{second!r}.. starts at {start}")
        if key in key_widths:
            if spans[-1][1] > key_widths[key]:
                raise ValueError(f"{source}: key_widths.{key}: is {key_widths[key]} but parts read up to index "
                                 f"{spans[-1][1]} (from {spans[-1][2]!r})")
            continue
        covered = [i for start, stop, _ in spans for i in range(start, stop)]
        if covered != list(range(spans[-1][1])):
            gaps = sorted(set(range(spans[-1][1])) - set(covered))
            raise ValueError(f"{source}: parts of key {key!r} leave indices {gaps} undescribed; describe them, or "
                             f"give the key's full width in key_widths if the entry uses only some of its values")


def _check_unique_names(parts: tuple[Part, ...], which: str, source: str) -> None:
    names = [n for p in parts for n in p.names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{source}: {which}: dimension names {repeated} appear more than once")


def _cameras(fields: _Fields) -> tuple[Slot, ...]:
    raw = fields.get("cameras")
    if not isinstance(raw, dict) or not raw:
        raise fields.error("cameras", f"must map the model's image slots to dataset image keys (null = the robot "
                                      f"has no such camera); got {raw!r}")
    slots, users = [], {}
    for name, key in raw.items():
        if not isinstance(name, str) or not name:
            raise fields.error("cameras", f"slot names must be non-empty strings; got {name!r}")
        if key is not None and (not isinstance(key, str) or not key):
            raise fields.error(f"cameras.{name}", f"must be a dataset image key or null; got {key!r}")
        if key is not None and key in users:
            raise fields.error(f"cameras.{name}", f"camera {key!r} already fills slot {users[key]!r}; a camera "
                                                  f"fills one slot")
        users.setdefault(key, name)
        slots.append(Slot(name, key))
    if all(s.missing for s in slots):
        raise fields.error("cameras", "every slot is null; a VLA dataset needs at least one camera")
    return tuple(slots)


def _gripper(fields: _Fields, action: tuple[Part, ...]) -> Gripper | None:
    grippers = [n for p in action if p.kind == "gripper" for n in p.names]
    raw = fields.get("gripper", default=None)
    if raw is None:
        if grippers:
            raise fields.error("gripper", f"missing; action dimension(s) {grippers} are of kind gripper, so say "
                                          f"which values mean open and closed ({{dims, open, closed, command}})")
        return None
    g = _Fields(raw, fields.source, "gripper", _GRIPPER_FIELDS)
    dims = g.get("dims")
    if not isinstance(dims, list) or sorted(dims) != sorted(grippers):
        raise g.error("dims", f"must list the action dimensions of kind gripper, {grippers}; got {dims!r}")
    gripper = Gripper(dims=tuple(dims), open=g.number("open"), closed=g.number("closed"),
                      command=g.choice("command", GRIPPER_COMMANDS, default="absolute"))
    if gripper.open == gripper.closed:
        raise g.error("closed", f"equals open ({gripper.open}); they must differ")
    return gripper
