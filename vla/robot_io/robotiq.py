"""A Robotiq 2F-85 / 2F-140 gripper through the Robotiq Grippers URCap's ASCII socket (port 63352 of the UR
controller the gripper is plugged into).

The protocol, as the URCap serves it and the public robotiq_gripper clients speak it: one request per line,
`SET <VAR> <int> [<VAR> <int> ...]` answered `ack`, `GET <VAR>` answered `<VAR> <int>`. Variables: ACT (1 =
activate; 0 resets), GTO (1 = go to the requested position), POS (0 open .. 255 closed), SPE and FOR (speed
and grip force, 0..255), STA (0 reset, 1 activating, 3 active), OBJ (0 moving, 1 stopped on an object while
opening, 2 stopped on an object while closing, 3 at the requested position), FLT (fault code, 0 = none).

The control loop never waits on the gripper: `command()` only stores the target, and a thread of the
gripper's own sends it (when it changed, at most `rate_hz` times a second) and reads the position, object
and fault status back; `state()` returns the latest. A fault code, a gripper that is no longer active or a
dropped connection is reported as `state().fault`, which the arm driver turns into a robot fault: the loop
stops the arm as for a protective stop. Nothing is written by hand that a library provides: Robotiq ships
no Python package for the URCap socket, and the protocol is four line-based requests.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)
DEFAULT_PORT = 63352
MODELS = {"2f-85": 85, "2f-140": 140}  # stroke in mm
ACTIVE = 3
# gFLT codes, Robotiq 2F-85/2F-140 instruction manual, section "Gripper status"
FAULTS = {
    5: "action delayed: the activation must finish first",
    7: "the gripper must be activated before it moves",
    8: "maximum operating temperature exceeded (>= 85 C); let it cool below 80 C",
    9: "no communication for at least 1 s",
    10: "under minimum operating voltage",
    11: "automatic release in progress",
    12: "internal fault (contact Robotiq support)",
    13: "activation fault: check for interference",
    14: "overcurrent triggered",
    15: "automatic release completed",
}


@dataclass
class RobotiqConfig:
    """How the policy's gripper value maps onto the gripper. The value runs from `value_open` (fully open) to
    `value_closed` (fully closed): a policy trained with 0 = closed and 1 = open sets value_open: 1,
    value_closed: 0. Positions are Robotiq counts (0..255); after the URCap's auto-calibration a 2F-85 opens
    fully near 3 and closes near 230, which `position_open` / `position_closed` can mirror."""

    host: str = ""  # "" = the UR controller's address (the URCap serves the socket)
    port: int = DEFAULT_PORT
    model: str = "2f-85"  # 2f-85 | 2f-140
    value_open: float = 0.0
    value_closed: float = 1.0
    position_open: int = 0
    position_closed: int = 255
    speed: int = 255  # 0..255
    force: int = 100  # 0..255
    rate_hz: float = 20.0  # how often the gripper thread sends a changed target and reads the status back
    activate: bool = True  # activate an inactive gripper on connect (its fingers open and close once); off: refuse
    activation_timeout_s: float = 6.0
    timeout_s: float = 1.0  # per request

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"robotiq.model must be one of {sorted(MODELS)}; got {self.model!r}")
        if self.value_open == self.value_closed:
            raise ValueError(f"robotiq.value_open and value_closed must differ; both are {self.value_open}")
        for name in ("position_open", "position_closed", "speed", "force"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"robotiq.{name} must be in 0..255; got {getattr(self, name)}")
        if self.position_open >= self.position_closed:
            raise ValueError(f"robotiq.position_open ({self.position_open}) must be below position_closed "
                             f"({self.position_closed}): Robotiq counts run from open (0) to closed (255)")
        if self.rate_hz <= 0:
            raise ValueError(f"robotiq.rate_hz must be positive; got {self.rate_hz}")

    @property
    def value_range(self) -> tuple[float, float]:
        return min(self.value_open, self.value_closed), max(self.value_open, self.value_closed)

    def to_position(self, value: float) -> int:
        """The policy's gripper value -> Robotiq position count (clipped to the configured stroke)."""
        closed = min(max((value - self.value_open) / (self.value_closed - self.value_open), 0.0), 1.0)
        return round(self.position_open + closed * (self.position_closed - self.position_open))

    def to_value(self, position: int) -> float:
        """A measured Robotiq position count -> the policy's gripper value."""
        closed = (position - self.position_open) / (self.position_closed - self.position_open)
        closed = min(max(closed, 0.0), 1.0)
        return self.value_open + closed * (self.value_closed - self.value_open)


@dataclass
class GripperState:
    value: float  # measured opening in the policy's units
    position: int  # measured Robotiq count
    object_detected: bool  # the fingers stopped on an object (OBJ 1 or 2)
    fault: str | None = None


class RobotiqGripper:
    """`connect()` opens the socket and makes sure the gripper is active (or refuses), then starts the gripper
    thread; `command(value)` never blocks; `state()` is the latest readback; `reset()` reconnects after a
    dropped connection and clears a fault the gripper no longer reports."""

    def __init__(self, config: RobotiqConfig, host: str):
        if not host:
            raise ValueError("the Robotiq gripper needs the UR controller's address (robotiq.host or robot.host)")
        self.config, self.host = config, host
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()  # the latest target and readback
        self._target: int | None = None
        self._sent: int | None = None
        self._state: GripperState | None = None
        self._connection_fault: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.config.port}"

    def connect(self) -> None:
        """Open the socket, activate the gripper if needed (blocking, before the arm moves) and start the thread."""
        try:
            self._socket = socket.create_connection((self.host, self.config.port), timeout=self.config.timeout_s)
        except OSError as error:
            raise ConnectionError(f"could not reach the Robotiq gripper at {self.address} ({error}): is the Robotiq "
                                  f"Grippers URCap installed and running on the controller, the gripper plugged in, "
                                  f"and the port {DEFAULT_PORT}?") from error
        self._socket.settimeout(self.config.timeout_s)
        if self._get("STA") != ACTIVE:
            if not self.config.activate:
                self.disconnect()
                raise RuntimeError(f"the Robotiq gripper at {self.address} is not activated: activate it from the "
                                   f"teach pendant (Robotiq toolbar) or set robotiq.activate true")
            self._activate()
        self._read_status()
        self._connection_fault = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="robotiq", daemon=True)
        self._thread.start()
        log.info("Robotiq %s at %s active; position %d", self.config.model, self.address, self._state.position)

    def command(self, value: float) -> None:
        """Ask for the opening `value` (policy units); the gripper thread sends it. Never blocks."""
        with self._lock:
            self._target = self.config.to_position(float(value))

    def state(self) -> GripperState:
        with self._lock:
            if self._state is None:
                raise RuntimeError("the Robotiq gripper is not connected: call connect() first")
            fault = self._connection_fault or self._state.fault
            return GripperState(self._state.value, self._state.position, self._state.object_detected, fault)

    def reset(self) -> None:
        """Reconnect after a dropped connection (a new episode); a fault the gripper still reports stays."""
        if self._thread is None or not self._thread.is_alive():
            self.disconnect()
            self.connect()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.config.timeout_s + 1.0 / self.config.rate_hz)
        self._thread = None
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None

    def _activate(self) -> None:
        log.info("Robotiq at %s: activating (the fingers open and close once)", self.address)
        self._set(ACT=0)  # a reset first, as Robotiq's own activation sequence does: it also clears old faults
        self._set(ACT=1)
        deadline = time.monotonic() + self.config.activation_timeout_s
        while (status := self._get("STA")) != ACTIVE:
            if time.monotonic() > deadline:
                fault = self._get("FLT")
                raise RuntimeError(f"the Robotiq gripper at {self.address} did not activate within "
                                   f"{self.config.activation_timeout_s} s (status {status}, fault {fault}: "
                                   f"{FAULTS.get(fault, 'none')})")
            time.sleep(0.05)

    def _run(self) -> None:
        period = 1.0 / self.config.rate_hz
        while not self._stop.wait(period):
            try:
                with self._lock:
                    target = self._target
                if target is not None and target != self._sent:
                    self._set(POS=target, SPE=self.config.speed, FOR=self.config.force, GTO=1)
                    self._sent = target
                self._read_status()
            except (OSError, ValueError) as error:
                with self._lock:
                    self._connection_fault = f"Robotiq gripper at {self.address}: connection lost ({error})"
                log.error("%s", self._connection_fault)
                return

    def _read_status(self) -> None:
        position, obj, fault, status = (self._get(v) for v in ("POS", "OBJ", "FLT", "STA"))
        problem = None
        if fault:
            problem = f"Robotiq gripper fault {fault:#04x}: {FAULTS.get(fault, 'unknown fault code')}"
        elif status != ACTIVE:
            problem = f"Robotiq gripper no longer active (status {status})"
        with self._lock:
            self._state = GripperState(self.config.to_value(position), position, obj in (1, 2), problem)

    def _set(self, **variables: int) -> None:
        request = "SET " + " ".join(f"{name} {int(value)}" for name, value in variables.items())
        answer = self._request(request)
        if answer != "ack":
            raise ValueError(f"the gripper answered {answer!r} to {request!r} (expected 'ack')")

    def _get(self, variable: str) -> int:
        answer = self._request(f"GET {variable}")
        parts = answer.split()
        if len(parts) != 2 or parts[0] != variable or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"the gripper answered {answer!r} to 'GET {variable}'")
        return int(parts[1])

    def _request(self, line: str) -> str:
        if self._socket is None:
            raise OSError("not connected")
        self._socket.sendall(line.encode() + b"\n")
        answer = self._socket.recv(1024)
        if not answer:
            raise ConnectionError("the controller closed the connection")
        return answer.decode(errors="replace").strip()
