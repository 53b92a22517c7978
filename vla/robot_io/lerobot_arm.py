"""Any LeRobot robot (SO-100/101 follower, Koch follower, OMX follower) as a joint-position `Robot`.

The LeRobot robot is built with `lerobot.robots.utils.make_robot_from_config` from its registered
config type (`robot: so101_follower`). State and action vectors follow the order of the robot's
`<motor>.pos` features, in LeRobot's units (degrees or -100..100 per `use_degrees`; gripper
0..100), so they line up with LeRobot datasets recorded on the same arm. LeRobot's own
`max_relative_target` clip still applies after our safety layer. The robot's own cameras
(`cameras: {front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}`, as in
lerobot-record's --robot.cameras) are parsed by LeRobot's camera registry, connected by the robot
and feed the control loop under their names. lerobot.robots imports torch, so it is imported only
when the arm is made.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.robot_io.base import Frame, Limits, RobotSpec, RobotState

log = logging.getLogger(__name__)
# modules that register the LeRobot robot configs we support (lerobot.robots does not import them)
LEROBOT_ROBOT_MODULES = ("so_follower", "koch_follower", "omx_follower")
LEROBOT_CAMERA_MODULES = ("opencv", "realsense")  # register LeRobot's camera config types
MOTOR_SDK_HINT = 'pip install "lerobot[feetech]" (SO-100/101) or "lerobot[dynamixel]" (Koch, OMX)'


@dataclass
class LeRobotArmConfig:
    """robot: the LeRobot robot config type (so100_follower, so101_follower, koch_follower, ...); port: its
    serial port; id: the name its calibration file is saved under. Limits are in the robot's units, one value
    per motor (gripper included); empty lists are not checked. None keeps LeRobot's default."""

    robot: str = "so101_follower"
    port: str = ""
    id: str = ""
    calibration_dir: str = ""  # "" = LeRobot's default (~/.cache/huggingface/lerobot/calibration/robots/<robot>)
    # the name the policy knows this arm by (its normalisation statistics); "" = the LeRobot config type, e.g.
    # so101_follower. Datasets written by lerobot-record say robot_type "so_follower" for SO-100 and SO-101
    # alike: train on them with --data.embodiment so101_follower so the names agree.
    embodiment: str = ""
    # the robot's own cameras, LeRobot camera configs by name: {front: {type: opencv, index_or_path: 0, ...}}
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    control_hz: float = 30.0
    max_relative_target: float | None = None  # LeRobot's per-step clip of a target's distance from the present
    disable_torque_on_disconnect: bool | None = None  # LeRobot's default: True (the arm goes limp on disconnect)
    use_degrees: bool | None = None
    action_low: list[float] = field(default_factory=list)
    action_high: list[float] = field(default_factory=list)
    joint_position_low: list[float] = field(default_factory=list)
    joint_position_high: list[float] = field(default_factory=list)
    joint_velocity: list[float] = field(default_factory=list)  # unit/s
    joint_acceleration: list[float] = field(default_factory=list)  # unit/s^2


def lerobot_robot_config(c: LeRobotArmConfig):
    """Build the LeRobot config of type `c.robot`, passing only the options that were set."""
    from lerobot.robots.config import RobotConfig

    for module in LEROBOT_ROBOT_MODULES:
        importlib.import_module(f"lerobot.robots.{module}")
    choices = sorted(RobotConfig.get_known_choices())
    if c.robot not in choices:
        raise ValueError(f"unknown LeRobot robot {c.robot!r}; known: {choices}")
    cls = RobotConfig.get_choice_class(c.robot)
    options = {"port": c.port, "id": c.id or None, "max_relative_target": c.max_relative_target,
               "disable_torque_on_disconnect": c.disable_torque_on_disconnect, "use_degrees": c.use_degrees,
               "calibration_dir": Path(c.calibration_dir) if c.calibration_dir else None,
               "cameras": lerobot_camera_configs(c.cameras) if c.cameras else None}
    names = {f.name for f in dataclasses.fields(cls)}
    unsupported = [k for k, v in options.items() if v is not None and v != "" and k not in names]
    if unsupported:
        raise ValueError(f"LeRobot robot {c.robot!r} has no option(s) {unsupported}")
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})


def lerobot_camera_configs(cameras: dict[str, dict[str, Any]]) -> dict:
    """{name: {type: opencv, ...}} -> {name: LeRobot CameraConfig}, each parsed (and checked) by LeRobot's own
    camera config class for that type."""
    import draccus
    from lerobot.cameras import CameraConfig

    for module in LEROBOT_CAMERA_MODULES:
        importlib.import_module(f"lerobot.cameras.{module}")
    choices = sorted(CameraConfig.get_known_choices())
    configs = {}
    for name, options in cameras.items():
        options = dict(options)
        kind = options.pop("type", None)
        if kind not in choices:
            raise ValueError(f"LeRobot camera {name!r}: type must be one of {choices}; got {kind!r}")
        try:
            configs[name] = draccus.decode(CameraConfig.get_choice_class(kind), options)
        except Exception as error:  # draccus and LeRobot's own checks raise several kinds
            raise ValueError(f"LeRobot camera {name!r} ({kind}): {error}") from error
    return configs


def motor_keys(features: dict) -> list[str]:
    return [key for key in features if key.endswith(".pos")]


def lerobot_spec(c: LeRobotArmConfig, state_keys: list[str], action_keys: list[str]) -> RobotSpec:
    def check(name: str) -> list[float] | None:
        values = getattr(c, name)
        if values and len(values) != len(action_keys):
            raise ValueError(f"{name} needs {len(action_keys)} values, one per motor {action_keys}; got {values}")
        return list(values) or None

    limits = Limits(**{f.name: check(f.name) for f in dataclasses.fields(Limits) if hasattr(c, f.name)})
    return RobotSpec(embodiment=c.embodiment or c.robot, action_kind="joint_position", action_names=action_keys,
                     state_names=state_keys, control_hz=c.control_hz, limits=limits)


class LeRobotArm:
    """`hold()` keeps sending the position measured when the hold began (re-measuring every tick would let an arm
    under gravity creep down); `stop()` holds where the arm is now, then disconnects the LeRobot robot (which
    disables torque only if its config says so) and may be called any number of times.

    robot: an already built LeRobot `Robot` (tests, or robots this config cannot describe); default: built
    from `config` with make_robot_from_config.
    """

    reset_moves_arm = False  # reset() only reconnects after a stop

    def __init__(self, config: LeRobotArmConfig, robot=None):
        if robot is None:
            from lerobot.robots.utils import make_robot_from_config

            try:
                robot = make_robot_from_config(lerobot_robot_config(config))
            except ImportError as error:  # the motor bus SDKs are LeRobot extras
                raise ImportError(f"LeRobot robot {config.robot!r} needs its motor SDK ({error}): "
                                  f"{MOTOR_SDK_HINT}") from error
        self.config = config
        self.robot = robot
        self.state_keys = motor_keys(robot.observation_features)  # observation/action features work disconnected
        self.action_keys = motor_keys(robot.action_features)
        self.spec = lerobot_spec(config, self.state_keys, self.action_keys)
        self.stopped = False
        self.last_sent: dict[str, float] | None = None  # what LeRobot actually sent (after its own clip)
        self._measured: dict[str, float] | None = None
        self._hold_pose: dict[str, float] | None = None  # the goal of the hold under way, None when not holding

    def connect(self) -> None:
        if not self.robot.is_connected:
            self.robot.connect(calibrate=False)  # calibration is interactive: never start it in a control loop
        if not self.robot.is_calibrated:
            self.robot.disconnect()
            raise RuntimeError(f"LeRobot robot {self.robot} is not calibrated (or its calibration file does not match "
                               f"the motors): run lerobot-calibrate --robot.type={self.config.robot} "
                               f"--robot.port={self.config.port} --robot.id={self.config.id}")
        if self.spec.limits.joint_position_low is None:
            log.warning("%s: no joint limits configured; only LeRobot's max_relative_target protects the arm",
                        self.robot)

    def reset(self) -> None:
        if self.stopped:
            self.stopped = False
            self.connect()
        self._measured = self._hold_pose = None

    def get_state(self) -> RobotState:
        self._measured = {key: float(value) for key, value in self._read_motors().items()}
        positions = np.array(list(self._measured.values()), dtype=np.float64)
        return RobotState(state=positions.astype(np.float32), timestamp=time.monotonic(), joint_positions=positions)

    def send_action(self, action: np.ndarray) -> None:
        """action [D]: target positions in the order of `spec.action_names`."""
        if self.stopped:
            raise RuntimeError(f"{self.robot} is stopped; call reset() to reconnect")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (len(self.action_keys),):
            raise ValueError(f"{self.robot} takes actions [{len(self.action_keys)}] ({self.action_keys}); "
                             f"got {list(action.shape)}")
        self._hold_pose = None
        self.last_sent = self.robot.send_action(dict(zip(self.action_keys, action.tolist(), strict=True)))

    def hold(self) -> None:
        if self.stopped:
            return
        if self._hold_pose is None:
            if self._measured is None:
                self.get_state()
            self._hold_pose = {key: self._measured[key] for key in self.action_keys}
        self.last_sent = self.robot.send_action(self._hold_pose)

    def stop(self) -> None:
        if self.stopped:
            return
        try:
            if self.robot.is_connected:
                self._measured = self._hold_pose = None  # hold where the arm is now, not where it was
                self.hold()
        finally:
            self.stopped = True
            if self.robot.is_connected:
                self.robot.disconnect()

    def disconnect(self) -> None:
        self.stop()

    def _read_motors(self) -> dict[str, float]:
        """The motors' present positions by `<motor>.pos` key. Read from the motor bus where the robot has one:
        LeRobot's get_observation also reads every camera and raises on a late frame, which would end the tick
        with an exception instead of the loop's own stale-frame handling (hold, then stop)."""
        bus = getattr(self.robot, "bus", None)
        if bus is not None:
            positions = {f"{motor}.pos": value for motor, value in bus.sync_read("Present_Position").items()}
        else:
            positions = self.robot.get_observation()
        return {key: positions[key] for key in self.state_keys}

    def cameras(self) -> dict[str, LeRobotCamera]:
        """The LeRobot robot's own cameras as `Camera`s (connected with the robot); empty if it has none."""
        return {name: LeRobotCamera(name, camera) for name, camera in getattr(self.robot, "cameras", {}).items()}


class LeRobotCamera:
    """A camera owned by a LeRobot robot: frames come from its background reader (`async_read`)."""

    def __init__(self, name: str, camera, timeout_ms: float = 1000.0):
        self.name, self.camera, self.timeout_ms = name, camera, timeout_ms

    def connect(self) -> None:
        pass  # the robot connects its cameras

    def read(self) -> Frame:
        return Frame(image=self.camera.async_read(timeout_ms=self.timeout_ms), timestamp=time.monotonic())

    def disconnect(self) -> None:
        pass
