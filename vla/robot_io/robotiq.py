"""A Robotiq 2F-85 / 2F-140 gripper through the Robotiq Grippers URCap's ASCII socket (port 63352 of the UR
controller the gripper is plugged into).

The protocol, as the URCap serves it and the public robotiq_gripper clients speak it: one request per line,
`SET <VAR> <int> [<VAR> <int> ...]` answered `ack`, `GET <VAR>` answered `<VAR> <int>`. Variables: ACT (1 =
activate; 0 resets), GTO (1 = go to the requested position), POS (0 open .. 255 closed), SPE and FOR (speed
and grip force, 0..255), STA (0 reset, 1 activating, 3 active), OBJ (0 moving, 1 stopped on an object while
opening, 2 stopped on an object while closing, 3 at the requested position), FLT (fault code, 0 = none).

The control loop never waits on the gripper: `command()` only stores the target, and a thread of the
gripper's own sends it (when it changed, at most `rate_hz` times a second) and reads the position, object
and fault status back; `state()` returns the latest. A fault code, a gripper that is no longer active, a
dropped connection or a status older than `readback_timeout_s` is reported as `state().fault`, which the
arm driver turns into a robot fault: the loop stops the arm as for a protective stop. After a stop the
gripper takes no new target until the next episode (`freeze`): it keeps its grip.

Written by hand because no library provides it: Robotiq ships no Python package for the URCap socket,
and the protocol is two kinds of one-line request.
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
    readback_timeout_s: float = 1.0  # no status for this long is a fault (a controller that answers too slowly)

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


class _Link:
    """One socket to the URCap and the stop flag of the thread that polls it. A reconnect makes a new link, so a
    thread left over from an old connection can never talk on the new socket."""

    def __init__(self, sock: socket.socket):
        self.socket = sock
        self.stop = threading.Event()

    def close(self) -> None:
        self.stop.set()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # unblocks a recv in the polling thread at once
        except OSError:
            pass
        self.socket.close()

    def set(self, **variables: int) -> None:
        request = "SET " + " ".join(f"{name} {int(value)}" for name, value in variables.items())
        answer = self.request(request)
        if answer != "ack":
            raise ValueError(f"the gripper answered {answer!r} to {request!r} (expected 'ack')")

    def get(self, variable: str) -> int:
        answer = self.request(f"GET {variable}")
        parts = answer.split()
        if len(parts) != 2 or parts[0] != variable or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"the gripper answered {answer!r} to 'GET {variable}'")
        return int(parts[1])

    def request(self, line: str) -> str:
        # one answer per request, read with one recv, as the public robotiq_gripper clients do: the URCap's "ack"
        # carries no line end to read up to
        self.socket.sendall(line.encode() + b"\n")
        answer = self.socket.recv(1024)
        if not answer:
            raise ConnectionError("the controller closed the connection")
        return answer.decode(errors="replace").strip()


class RobotiqGripper:
    """`connect()` opens the socket and makes sure the gripper is active (or refuses), then starts the gripper
    thread; `command(value)` never blocks; `state()` is the latest readback; `freeze()` (the arm stopped) ignores
    commands until `reset()`, which also reconnects after a dropped connection."""

    def __init__(self, config: RobotiqConfig, host: str):
        if not host:
            raise ValueError("the Robotiq gripper needs the UR controller's address (robotiq.host or robot.host)")
        self.config, self.host = config, host
        self._link: _Link | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # everything below, shared with the gripper thread
        self._target: int | None = None
        self._sent: int | None = None
        self._frozen = False
        self._state: GripperState | None = None
        self._read_at = 0.0  # time.monotonic() of the latest readback
        self._connection_fault: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.config.port}"

    def connect(self) -> None:
        """Open the socket, activate the gripper if needed (blocking, before the arm moves) and start the thread."""
        hint = (f"is the Robotiq Grippers URCap installed and running on the controller, the gripper plugged in, "
                f"and {self.config.port} the URCap's port ({DEFAULT_PORT})?")
        try:
            link = _Link(socket.create_connection((self.host, self.config.port), timeout=self.config.timeout_s))
        except OSError as error:
            raise ConnectionError(f"could not reach the Robotiq gripper at {self.address} ({error}): {hint}") from error
        try:
            status = link.get("STA")
        except (OSError, ValueError) as error:
            link.close()
            raise ConnectionError(f"{self.address} does not answer like the Robotiq URCap ({error}): {hint}") from error
        try:
            if status != ACTIVE:
                if not self.config.activate:
                    raise RuntimeError(f"the Robotiq gripper at {self.address} is not activated: activate it from the "
                                       f"teach pendant (Robotiq toolbar), or let deploy.py do it with "
                                       f"robotiq.activate true (never in a dry run)")
                self._activate(link)
            self._read_status(link)
        except BaseException:
            link.close()
            raise
        with self._lock:
            self._connection_fault, self._sent, self._target, self._frozen = None, None, None, False
        self._link = link
        self._thread = threading.Thread(target=self._run, args=(link,), name="robotiq", daemon=True)
        self._thread.start()
        log.info("Robotiq %s at %s active, position %d; action %g = open, %g = closed", self.config.model,
                 self.address, self._state.position, self.config.value_open, self.config.value_closed)

    def command(self, value: float) -> None:
        """Ask for the opening `value` (policy units); the gripper thread sends it. Never blocks."""
        with self._lock:
            if not self._frozen:
                self._target = self.config.to_position(float(value))

    def freeze(self) -> None:
        """The arm stopped: send no new target until reset() (a motion already under way completes)."""
        with self._lock:
            self._frozen = True
            self._target = self._sent

    def state(self) -> GripperState:
        with self._lock:
            if self._state is None:
                raise RuntimeError("the Robotiq gripper is not connected: call connect() first")
            fault = self._connection_fault or self._state.fault
            age = time.monotonic() - self._read_at
            if fault is None and age > self.config.readback_timeout_s:
                fault = (f"Robotiq gripper at {self.address}: no status for {age:.2f} s (limit "
                         f"robotiq.readback_timeout_s={self.config.readback_timeout_s})")
            return GripperState(self._state.value, self._state.position, self._state.object_detected, fault)

    def reset(self) -> None:
        """A new episode: accept commands again, and reconnect after a dropped connection; a fault the gripper
        itself still reports stays."""
        with self._lock:
            lost = self._connection_fault is not None
            self._frozen = False
        if lost or self._thread is None or not self._thread.is_alive():
            self.disconnect()
            self.connect()

    def disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)  # the closed socket ends its request at once
        self._thread = None

    def _activate(self, link: _Link) -> None:
        """Robotiq's activation sequence, as the public clients run it: reset (ACT 0, ATR 0) until the gripper
        reports ACT 0 and STA 0, which also clears old faults, then ACT 1 until STA 3 (active)."""
        log.info("Robotiq at %s: activating (the fingers open and close once)", self.address)
        deadline = time.monotonic() + self.config.activation_timeout_s
        link.set(ACT=0, ATR=0)
        while link.get("ACT") != 0 or link.get("STA") != 0:
            self._check_deadline(link, deadline, "reset")
            time.sleep(0.05)
        link.set(ACT=1)
        while link.get("STA") != ACTIVE:
            self._check_deadline(link, deadline, "activate")
            time.sleep(0.05)

    def _check_deadline(self, link: _Link, deadline: float, step: str) -> None:
        if time.monotonic() > deadline:
            status, fault = link.get("STA"), link.get("FLT")
            raise RuntimeError(f"the Robotiq gripper at {self.address} did not {step} within "
                               f"{self.config.activation_timeout_s} s (status {status}, fault {fault}: "
                               f"{FAULTS.get(fault, 'none')})")

    def _run(self, link: _Link) -> None:
        period = 1.0 / self.config.rate_hz
        while not link.stop.wait(period):
            try:
                with self._lock:
                    target, sent = self._target, self._sent
                if target is not None and target != sent:
                    link.set(POS=target, SPE=self.config.speed, FOR=self.config.force, GTO=1)
                    with self._lock:
                        self._sent = target
                self._read_status(link)
            except (OSError, ValueError) as error:
                if link.stop.is_set():
                    return  # closed by disconnect()
                with self._lock:
                    self._connection_fault = f"Robotiq gripper at {self.address}: connection lost ({error})"
                log.error("%s", self._connection_fault)
                return

    def _read_status(self, link: _Link) -> None:
        position, obj, fault, status = (link.get(v) for v in ("POS", "OBJ", "FLT", "STA"))
        problem = None
        if fault:
            problem = f"Robotiq gripper fault {fault:#04x}: {FAULTS.get(fault, 'unknown fault code')}"
        elif status != ACTIVE:
            problem = f"Robotiq gripper no longer active (status {status})"
        with self._lock:
            self._state = GripperState(self.config.to_value(position), position, obj in (1, 2), problem)
            self._read_at = time.monotonic()
