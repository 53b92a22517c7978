"""A Universal Robots arm (e-Series, CB3) over RTDE with ur_rtde.

Three ways to command it (`command`):
- "servoj": action = 6 target joint positions (rad) [+ gripper], sent with servoJ for dt = 1 / control_hz;
- "speedl": action = [dx, dy, dz] tool displacement per step (units of ee_delta_scale metres) [+ gripper],
  sent as a constant tool speed with speedL;
- "movel": the same displacement, sent as an asynchronous moveL to current TCP pose + displacement.
The state is always the 6 actual joint positions (rad) [+ gripper]; the TCP position feeds the
safety layer's workspace box. A protective / emergency stop, any safety mode other than normal
or reduced, a lost RTDE connection or a command the controller refused becomes `RobotState.fault`.

`gripper: robotiq` adds a Robotiq 2F gripper (vla.robot_io.robotiq, through the URCap on the same
controller): the last action dimension is its opening, sent without blocking the loop, and the
last state dimension is the measured opening; a gripper fault or a lost gripper connection is a
robot fault. On stop() the gripper keeps its grip (opening would drop what it holds). ur_rtde is
an optional extra, imported when the arm is made.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from vla.robot_io.base import Limits, RobotSpec, RobotState
from vla.robot_io.robotiq import RobotiqConfig, RobotiqGripper

log = logging.getLogger(__name__)
INSTALL_HINT = 'pip install -e ".[robot]"'
COMMANDS = ("servoj", "speedl", "movel")
GRIPPERS = ("none", "robotiq")
JOINTS = ["base", "shoulder", "elbow", "wrist_1", "wrist_2", "wrist_3"]
HEALTHY_SAFETY_MODES = {1: "normal", 2: "reduced"}
SAFETY_MODES = {3: "protective stop", 4: "recovery", 5: "safeguard stop", 6: "system emergency stop",
                7: "robot emergency stop", 8: "violation", 9: "fault", 10: "validate joint id", 11: "undefined",
                12: "automatic mode safeguard stop", 13: "three-position enabling stop"}


def import_ur_rtde():
    """(rtde_control, rtde_receive), or an ImportError that says how to install them."""
    try:
        return importlib.import_module("rtde_control"), importlib.import_module("rtde_receive")
    except ImportError as error:
        raise ImportError(f"the UR arm needs ur_rtde (rtde_control, rtde_receive), which is not installed "
                          f"({error}): {INSTALL_HINT}") from error


@dataclass
class URConfig:
    """A UR arm. Units: rad, rad/s, rad/s^2 for joints; m, m/s, m/s^2 for the tool; limits default to a UR5e
    on a table (tool kept 2 cm above the base plane, inside 0.85 m reach) at conservative speeds."""

    host: str = ""  # the controller's IP address
    embodiment: str = "ur5e"
    command: str = "servoj"  # servoj | speedl | movel
    control_hz: float = 30.0
    gripper: str = "none"  # none | robotiq: the action and state end with the gripper's opening
    robotiq: RobotiqConfig = field(default_factory=RobotiqConfig)  # used with gripper: robotiq
    home: list[float] = field(default_factory=list)  # 6 joint positions reset() moves to; empty: stay
    home_speed: float = 0.5  # rad/s of the leading joint on the way home
    home_acceleration: float = 0.5
    servo_lookahead_s: float = 0.1  # servoJ smoothing, [0.03, 0.2]
    servo_gain: float = 300.0  # servoJ proportional gain, [100, 2000]
    # the controller itself stops the arm when this PC sends nothing for 1 / watchdog_hz s (a crashed or frozen
    # process, a pulled cable); every command and hold kicks it. 0 disables (not recommended)
    watchdog_hz: float = 10.0
    ee_delta_scale: float = 0.005  # metres of tool motion per unit of a Cartesian action
    tool_acceleration: float = 0.5  # speedL / moveL
    tool_speed: float = 0.1  # moveL
    stop_deceleration: float = 2.0  # servoStop / speedStop / stopL (m/s^2 of the tool)
    joint_position_low: list[float] = field(default_factory=lambda: [-2 * math.pi] * 2 + [-math.pi]
                                            + [-2 * math.pi] * 3)
    joint_position_high: list[float] = field(default_factory=lambda: [2 * math.pi] * 2 + [math.pi]
                                             + [2 * math.pi] * 3)
    joint_velocity: list[float] = field(default_factory=lambda: [1.0] * 6)
    joint_acceleration: list[float] = field(default_factory=lambda: [4.0] * 6)
    workspace_low: list[float] = field(default_factory=lambda: [-0.85, -0.85, 0.02])
    workspace_high: list[float] = field(default_factory=lambda: [0.85, 0.85, 0.85])

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(f"ur command must be one of {COMMANDS}; got {self.command!r}")
        if self.gripper not in GRIPPERS:
            raise ValueError(f"ur gripper must be one of {GRIPPERS}; got {self.gripper!r}")
        if self.home and len(self.home) != 6:
            raise ValueError(f"ur home must be 6 joint positions (rad) or empty; got {len(self.home)}: {self.home}")
        if not 0.03 <= self.servo_lookahead_s <= 0.2 or not 100 <= self.servo_gain <= 2000:
            raise ValueError(f"servoJ needs lookahead in [0.03, 0.2] s and gain in [100, 2000]; got "
                             f"servo_lookahead_s={self.servo_lookahead_s}, servo_gain={self.servo_gain}")
        for name in ("joint_position_low", "joint_position_high", "joint_velocity", "joint_acceleration"):
            if len(getattr(self, name)) != 6:
                raise ValueError(f"ur {name} needs 6 values (one per joint); got {getattr(self, name)}")
        if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
            raise ValueError(f"ur workspace_low / workspace_high need xyz; got {self.workspace_low}, "
                             f"{self.workspace_high}")


def ur_spec(c: URConfig) -> RobotSpec:
    gripper = ["gripper"] if c.gripper != "none" else []
    gripper_low, gripper_high = c.robotiq.value_range
    limits = Limits(joint_position_low=c.joint_position_low, joint_position_high=c.joint_position_high,
                    joint_velocity=c.joint_velocity, joint_acceleration=c.joint_acceleration,
                    workspace_low=c.workspace_low, workspace_high=c.workspace_high)
    if c.command == "servoj":
        limits.action_low = c.joint_position_low + [gripper_low] * len(gripper)
        limits.action_high = c.joint_position_high + [gripper_high] * len(gripper)
        return RobotSpec(embodiment=c.embodiment, action_kind="joint_position", action_names=JOINTS + gripper,
                         state_names=JOINTS + gripper, control_hz=c.control_hz, limits=limits)
    limits.action_low = [-1.0] * 3 + [gripper_low] * len(gripper)
    limits.action_high = [1.0] * 3 + [gripper_high] * len(gripper)
    return RobotSpec(embodiment=c.embodiment, action_kind="ee_delta", action_names=["dx", "dy", "dz"] + gripper,
                     state_names=JOINTS + gripper, control_hz=c.control_hz, limits=limits,
                     ee_delta_scale=c.ee_delta_scale)


class URRobot:
    """`hold()` decelerates the current motion to rest and keeps the control script running; `stop()`
    does the same and then ends the script (`stopScript`), and may be called any number of times."""

    def __init__(self, config: URConfig):
        if not config.host:
            raise ValueError("give the UR controller's address: --robot.host 192.168.1.10")
        self.config = config
        self.spec = ur_spec(config)
        self.dt = 1.0 / config.control_hz
        self._rtde_control, self._rtde_receive = import_ur_rtde()
        self.control = None  # rtde_control.RTDEControlInterface once connected
        self.receive = None  # rtde_receive.RTDEReceiveInterface once connected
        self.gripper = (RobotiqGripper(config.robotiq, config.robotiq.host or config.host)
                        if config.gripper == "robotiq" else None)
        self.stopped = False
        self._moving = False  # a motion command went out since the last stop
        self._command_fault: str | None = None

    @property
    def reset_moves_arm(self) -> bool:
        return bool(self.config.home)

    def connect(self) -> None:
        host = self.config.host
        try:
            self.receive = self._rtde_receive.RTDEReceiveInterface(host)
            self.control = self._rtde_control.RTDEControlInterface(host)
        except RuntimeError as error:
            raise RuntimeError(f"could not open RTDE to the UR controller at {host} ({error}); is the arm on, "
                               f"in remote control, and reachable?") from error
        if self.config.watchdog_hz > 0:
            self._check(self.control.setWatchdog(self.config.watchdog_hz), "setWatchdog")
        if self.gripper is not None:
            try:
                self.gripper.connect()  # activation (or a clear refusal) happens here, before the arm moves
            except Exception:
                self.disconnect()
                raise
        log.info("UR at %s connected; commanding with %s at %.0f Hz", host, self.config.command, self.config.control_hz)

    def reset(self) -> None:
        """`restart()`, then move to `home` (blocking) if one is configured."""
        self.restart()
        if self.config.home:
            control = self._control()
            log.info("UR: moving home to %s", self.config.home)
            self._check(control.moveJ(list(self.config.home), self.config.home_speed, self.config.home_acceleration),
                        "moveJ home")

    def restart(self) -> None:
        """Everything a new episode needs that does not move the arm: the control script running again after a
        stop (ours, or the controller's watchdog), command faults cleared, the gripper taking commands again."""
        control = self._control()
        if self._moving and not self.stopped:
            self._decelerate()  # moveJ must not start while servoing
        if self.stopped or not control.isProgramRunning():  # stopped by us, or by the controller's watchdog
            control.reuploadScript()
            self.stopped = False
        self._command_fault = None
        if self.gripper is not None:
            self.gripper.reset()
        self._kick()

    def get_state(self) -> RobotState:
        receive = self._receive()
        q = np.asarray(receive.getActualQ(), dtype=np.float64)
        tcp = np.asarray(receive.getActualTCPPose()[:3], dtype=np.float64)
        fault = self._fault(receive)
        if self.gripper is None:
            return RobotState(state=q.astype(np.float32), timestamp=time.monotonic(), joint_positions=q,
                              tcp_position=tcp, fault=fault)
        gripper = self.gripper.state()
        return RobotState(state=np.append(q, gripper.value).astype(np.float32), timestamp=time.monotonic(),
                          joint_positions=q, tcp_position=tcp, fault=fault or gripper.fault,
                          gripper_object_detected=gripper.object_detected)

    def send_action(self, action: np.ndarray) -> None:
        """action [D] as in `spec`: joint targets (rad) for servoj, a tool displacement for speedl / movel."""
        if self.stopped:
            raise RuntimeError("the UR arm is stopped; call reset() to restart its control script")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.spec.action_dim,):
            raise ValueError(f"UR action must be [{self.spec.action_dim}] ({self.spec.action_names}); "
                             f"got {list(action.shape)}")
        getattr(self, f"_{self.config.command}")(action)
        if self.gripper is not None:
            self.gripper.command(float(action[-1]))
        self._moving = True
        self._kick()

    def hold(self) -> None:
        if self._moving and not self.stopped:
            self._decelerate()
        if not self.stopped:
            self._kick()

    def _kick(self) -> None:
        if self.config.watchdog_hz > 0:
            self.control.kickWatchdog()

    def stop(self) -> None:
        if self.stopped or self.control is None:
            return
        self.stopped = True
        if self.gripper is not None:
            self.gripper.freeze()  # no new gripper target: it keeps what it holds
        try:
            self._decelerate()
        finally:
            self.control.stopScript()
            log.info("UR: motion stopped and control script ended")

    def disconnect(self) -> None:
        try:
            self.stop()
        finally:
            if self.gripper is not None:
                self.gripper.disconnect()
            for interface in (self.control, self.receive):
                if interface is not None:
                    interface.disconnect()
            self.control = self.receive = None

    def _servoj(self, action: np.ndarray) -> None:
        c = self.config
        q = action[:6].tolist()
        # speed and acceleration are unused by servoJ; time = one control period
        self._check(self.control.servoJ(q, 0.0, 0.0, self.dt, c.servo_lookahead_s, c.servo_gain), "servoJ")

    def _speedl(self, action: np.ndarray) -> None:
        velocity = action[:3] * self.config.ee_delta_scale * self.config.control_hz  # m/s
        xd = velocity.tolist() + [0.0, 0.0, 0.0]
        # speedL returns at once and the tool keeps this speed until the next command: the loop's hold()
        # (speedStop) on a late policy or a stale frame is what bounds the motion
        self._check(self.control.speedL(xd, self.config.tool_acceleration, 0.0), "speedL")

    def _movel(self, action: np.ndarray) -> None:
        pose = list(self._receive().getActualTCPPose())
        for i in range(3):
            pose[i] += float(action[i]) * self.config.ee_delta_scale
        c = self.config
        self._check(self.control.moveL(pose, c.tool_speed, c.tool_acceleration, True), "moveL")

    def _decelerate(self) -> None:
        control, a = self._control(), self.config.stop_deceleration
        if self.config.command == "servoj":
            control.servoStop(a)
        elif self.config.command == "speedl":
            control.speedStop(a)
        else:
            control.stopL(a)
        self._moving = False

    def _check(self, accepted: bool, what: str) -> None:
        if accepted is False:  # ur_rtde returns False when the controller did not take the command
            self._command_fault = f"the controller refused {what}"
            log.error("UR: %s", self._command_fault)

    def _fault(self, receive) -> str | None:
        if not receive.isConnected():
            return "RTDE connection to the controller lost"
        if receive.isEmergencyStopped():
            return "emergency stop"
        if receive.isProtectiveStopped():
            return "protective stop"
        mode = receive.getSafetyMode()
        if mode not in HEALTHY_SAFETY_MODES:
            return f"safety mode {mode} ({SAFETY_MODES.get(mode, 'unknown')})"
        if not self.stopped and self.control is not None and not self.control.isProgramRunning():
            return "the RTDE control script is not running (controller watchdog expired?); reset() restarts it"
        return self._command_fault

    def _control(self):
        if self.control is None:
            raise RuntimeError("the UR arm is not connected: call connect() first")
        return self.control

    def _receive(self):
        if self.receive is None:
            raise RuntimeError("the UR arm is not connected: call connect() first")
        return self.receive
