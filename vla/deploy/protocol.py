"""What crosses the wire between the robot PC and the policy server, and how it is checked.

Messages are msgpack maps; numpy arrays travel as msgpack extension type 1 holding
(dtype string, shape, raw bytes). No pickle anywhere: a message can carry numbers, strings,
lists, maps and plain numeric arrays, nothing that executes code when decoded. Only numpy and
msgpack are imported, so the robot-side client stays light.

Requests:  {"type": "infer", "observation": {images, state, instruction, embodiment,
                                             optional prefix [P, D] + prefix_weights [P] for real-time chunking}}
           {"type": "spec"} | {"type": "health"}
Replies:   {"type": "chunk", "actions": float32 [H, D], "latency_ms": float}
           {"type": "spec", "spec": {...}} | {"type": "health", "busy": bool, "served": int, "healthy": bool,
                                               "problem": str}
           {"type": "error", "message": str}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import msgpack
import numpy as np

if TYPE_CHECKING:
    from vla.robot_io.base import RobotSpec

NDARRAY_EXT = 1
ALLOWED_DTYPES = {"|u1", "<u2", "<i4", "<i8", "<f4", "<f8", "|b1"}


class ProtocolError(ValueError):
    """A message that cannot be accepted; the text says which field is wrong and why."""


@dataclass
class PolicySpec:
    """What a policy expects per control step, per embodiment.

    cameras: camera names in the order the policy stacks them; images are uint8 [T * N, S, S, 3] with
    S = image_size and T = n_obs_steps frames per camera, oldest first (all cameras of t-1, then of t).
    state_dims / action_dims: embodiment -> state width S / action width D in the robot's own units.
    horizon: actions per chunk H.
    """

    cameras: list[str]
    image_size: int
    horizon: int
    state_dims: dict[str, int]
    action_dims: dict[str, int]
    n_obs_steps: int = 1
    # per embodiment, from the training data: action names [D], action kind (joint_position | ee_delta) and the
    # fps its actions were recorded at; the deploy loop checks the arm against them
    action_names: dict[str, list[str]] = field(default_factory=dict)
    action_kinds: dict[str, str] = field(default_factory=dict)
    fps: dict[str, float] = field(default_factory=dict)

    @property
    def image_slots(self) -> int:
        return self.n_obs_steps * len(self.cameras)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PolicySpec:
        return cls(**data)

    @classmethod
    def for_robot(cls, robot: RobotSpec, cameras: list[str], image_size: int, horizon: int) -> PolicySpec:
        """The spec of a policy made for exactly this robot (a teleoperator, a scripted or test policy)."""
        name = robot.embodiment
        return cls(cameras=list(cameras), image_size=image_size, horizon=horizon,
                   state_dims={name: robot.state_dim}, action_dims={name: robot.action_dim},
                   action_names={name: list(robot.action_names)}, action_kinds={name: robot.action_kind},
                   fps={name: robot.action_rate})


@dataclass
class ObservationMessage:
    """One control step's observation for one robot. images: uint8 [N, S, S, 3]; state: float32 [S_e].

    prefix / prefix_weights: real-time chunking. The actions [P, D] (robot units) the previous
    chunk still holds for the steps from this observation on, and how strongly [P] in [0, 1] the
    new chunk must follow them: 1 for the steps that execute while it is computed, fading after.
    """

    images: np.ndarray
    state: np.ndarray
    instruction: str
    embodiment: str
    prefix: np.ndarray | None = None
    prefix_weights: np.ndarray | None = None

    def to_dict(self) -> dict:
        data = {"images": self.images, "state": self.state, "instruction": self.instruction,
                "embodiment": self.embodiment}
        if self.prefix is not None:
            data |= {"prefix": self.prefix, "prefix_weights": self.prefix_weights}
        return data


def blank_observation(spec: PolicySpec) -> ObservationMessage:
    """An all-zero observation of the right shapes, for warming a policy up before the first episode."""
    embodiment = sorted(spec.state_dims)[0]
    return ObservationMessage(images=np.zeros((spec.image_slots, spec.image_size, spec.image_size, 3), np.uint8),
                              state=np.zeros(spec.state_dims[embodiment], np.float32), instruction="warm up",
                              embodiment=embodiment)


def _encode_ext(obj):
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        if array.dtype.str not in ALLOWED_DTYPES:
            raise TypeError(f"cannot send a numpy array of dtype {array.dtype}")
        header = msgpack.packb([array.dtype.str, list(array.shape)])
        return msgpack.ExtType(NDARRAY_EXT, header + array.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def _decode_ext(code: int, data: bytes):
    if code != NDARRAY_EXT:
        raise ProtocolError(f"unknown msgpack extension type {code}")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
    unpacker.feed(data)
    dtype, shape = unpacker.unpack()
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(n, int) and 0 <= n < 2**31 for n in shape):
        raise ProtocolError(f"array shape must be at most 8 non-negative dimensions; got {shape!r}")
    body = data[unpacker.tell():]
    count = 1
    for n in shape:  # Python ints: no int64 wrap-around
        count *= n
    if count * np.dtype(dtype).itemsize != len(body):
        raise ProtocolError(f"array of shape {shape} and dtype {dtype} does not match its {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def pack(message: dict) -> bytes:
    return msgpack.packb(message, default=_encode_ext, use_bin_type=True)


def unpack(payload: bytes) -> dict:
    if not isinstance(payload, bytes | bytearray):
        raise ProtocolError("messages must be binary msgpack frames, not text")
    try:
        # small container limits: a request holds a handful of fields, and an 8 MiB message of empty maps
        # would otherwise unpack into hundreds of MiB of Python objects
        message = msgpack.unpackb(payload, ext_hook=_decode_ext, raw=False, strict_map_key=True,
                                  max_array_len=1024, max_map_len=64)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises several unrelated types for corrupt input
        raise ProtocolError(f"not a valid msgpack message: {error}") from error
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a map with a string 'type' field")
    return message


def validate_observation(data: object, spec: PolicySpec) -> ObservationMessage:
    """Check every field of an observation against the policy's spec; ProtocolError names the first bad one."""
    if not isinstance(data, dict):
        raise ProtocolError("'observation' must be a map with images, state, instruction, embodiment")
    missing = {"images", "state", "instruction", "embodiment"} - set(data)
    if missing:
        raise ProtocolError(f"observation is missing {sorted(missing)}")
    embodiment = data["embodiment"]
    if not isinstance(embodiment, str) or embodiment not in spec.state_dims:
        raise ProtocolError(f"unknown embodiment {embodiment!r}; this policy knows {sorted(spec.state_dims)}")
    instruction = data["instruction"]
    if not isinstance(instruction, str) or not instruction.strip() or len(instruction) > 1000:
        raise ProtocolError("instruction must be a non-empty string of at most 1000 characters")
    images = data["images"]
    expected = (spec.image_slots, spec.image_size, spec.image_size, 3)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape != expected:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ProtocolError(f"images must be uint8 {list(expected)} (cameras {spec.cameras} x {spec.n_obs_steps} "
                            f"frames); got {got}")
    state = data["state"]
    width = spec.state_dims[embodiment]
    if not isinstance(state, np.ndarray) or state.dtype.kind != "f" or state.shape != (width,):
        got = f"{state.dtype} {list(state.shape)}" if isinstance(state, np.ndarray) else type(state).__name__
        raise ProtocolError(f"state must be float [{width}] for {embodiment!r}; got {got}")
    if not np.isfinite(state).all():
        raise ProtocolError("state contains NaN or inf")
    check_float32_range("state", state)
    prefix, weights = validate_prefix(data.get("prefix"), data.get("prefix_weights"), spec, embodiment)
    return ObservationMessage(images, state.astype(np.float32), instruction, embodiment, prefix, weights)


def check_float32_range(name: str, values: np.ndarray) -> None:
    """The policy computes in float32: a float64 value beyond its range would become inf there."""
    limit = float(np.finfo(np.float32).max)
    if values.size and float(np.abs(values).max()) > limit:
        raise ProtocolError(f"{name} has values beyond the float32 range (|x| <= {limit:.3g}); got up to "
                            f"{float(np.abs(values).max()):.3g}")


def validate_prefix(prefix: object, weights: object, spec: PolicySpec,
                    embodiment: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Optional real-time-chunking prefix float [P <= H, D] with weights [P] in [0, 1]."""
    if prefix is None and weights is None:
        return None, None
    width = spec.action_dims[embodiment]
    if (not isinstance(prefix, np.ndarray) or prefix.dtype.kind != "f" or prefix.ndim != 2
            or prefix.shape[1] != width or not 0 < prefix.shape[0] <= spec.horizon):
        got = f"{prefix.dtype} {list(prefix.shape)}" if isinstance(prefix, np.ndarray) else type(prefix).__name__
        raise ProtocolError(f"prefix must be float [1..{spec.horizon}, {width}]; got {got}")
    if not isinstance(weights, np.ndarray) or weights.shape != prefix.shape[:1]:
        raise ProtocolError(f"prefix_weights must be float [{prefix.shape[0]}], one per prefix action")
    if not (np.isfinite(prefix).all() and ((weights >= 0) & (weights <= 1)).all()):
        raise ProtocolError("prefix must be finite and prefix_weights within [0, 1]")
    check_float32_range("prefix", prefix)
    return prefix.astype(np.float32), weights.astype(np.float32)
