"""Fake devices that speak the real protocols, shared by the driver tests: a fake ur_rtde (`FakeRTDE`, through
`sys.modules`) and a fake Robotiq URCap socket server (`FakeRobotiqServer`, a real TCP server on localhost)."""

from __future__ import annotations

import socket
import threading
import time
import types

HOME = [0.0, -1.57, 1.57, -1.57, -1.57, 0.0]


class FakeRTDE:
    """Stands in for ur_rtde's rtde_control and rtde_receive modules. `calls` lists (method, args) of every
    control command; servoJ moves the fake joints to the target at once; `refuse` names commands that fail. Like
    the controller, once setWatchdog(hz) was called the control script ends when no kickWatchdog came for 1 / hz
    s (isProgramRunning turns False until reuploadScript); stopScript ends it too."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []
        self.hosts: list[str] = []
        self.q = list(HOME)
        self.tcp = [0.3, -0.2, 0.4, 0.0, 3.14, 0.0]
        self.protective = self.emergency = False
        self.safety_mode, self.connected = 1, True
        self.refuse: set[str] = set()
        self.watchdog_hz, self.last_kick, self.script_running = 0.0, 0.0, True

    def program_running(self) -> bool:
        if self.watchdog_hz and time.monotonic() - self.last_kick > 1.0 / self.watchdog_hz:
            self.script_running = False  # the watchdog expired: the controller ended the script
        return self.script_running

    def _control(self, name: str, args: tuple):
        self.calls.append((name, args))
        if name == "servoJ":
            self.q = list(args[0])
        elif name == "setWatchdog":
            self.watchdog_hz, self.last_kick = args[0], time.monotonic()
        elif name == "kickWatchdog" and self.program_running():
            self.last_kick = time.monotonic()
        elif name == "reuploadScript":
            self.script_running, self.last_kick = True, time.monotonic()
        elif name == "stopScript":
            self.script_running = False
        elif name == "isProgramRunning":
            return self.program_running() and name not in self.refuse
        return name not in self.refuse

    def modules(self) -> tuple[types.ModuleType, types.ModuleType]:
        ur = self

        class RTDEControlInterface:
            def __init__(self, host):
                ur.hosts.append(host)

            def __getattr__(self, name):
                return lambda *args: ur._control(name, args)

        class RTDEReceiveInterface:
            def __init__(self, host):
                ur.hosts.append(host)

            def getActualQ(self):  # noqa: N802 (the SDK's names)
                return list(ur.q)

            def getActualTCPPose(self):  # noqa: N802
                return list(ur.tcp)

            def isProtectiveStopped(self):  # noqa: N802
                return ur.protective

            def isEmergencyStopped(self):  # noqa: N802
                return ur.emergency

            def getSafetyMode(self):  # noqa: N802
                return ur.safety_mode

            def isConnected(self):  # noqa: N802
                return ur.connected

            def disconnect(self):
                ur.calls.append(("receive.disconnect", ()))

        control, receive = types.ModuleType("rtde_control"), types.ModuleType("rtde_receive")
        control.RTDEControlInterface, receive.RTDEReceiveInterface = RTDEControlInterface, RTDEReceiveInterface
        return control, receive

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeRobotiqServer:
    """Speaks the Robotiq Grippers URCap's ASCII protocol on 127.0.0.1 (an ephemeral port), as a 2F gripper would.

    SET answers "ack", GET answers "<VAR> <int>". With GTO 1 the fingers move `step` counts toward the requested
    position per `GET POS`; closing onto an object at `object_at` stops them there (OBJ 2). ACT 1 activates after
    two status reads. `vars["FLT"] = 14` injects a fault; `drop()` closes every open connection; `delay_s` delays
    every answer (a slow controller). `requests` lists every request line received.
    """

    def __init__(self, active: bool = True, object_at: int | None = None, step: int = 64, delay_s: float = 0.0):
        self.vars = {"ACT": int(active), "GTO": 0, "POS": 0, "PRE": 0, "SPE": 0, "FOR": 0, "STA": 3 if active else 0,
                     "OBJ": 3, "FLT": 0}
        self.object_at, self.step, self.delay_s = object_at, step, delay_s
        self.requests: list[str] = []
        self._activating = 0
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def positions_requested(self) -> list[int]:
        """Every POS value a SET request asked for, in order."""
        found = []
        for request in self.requests:
            words = request.split()
            if words[0] == "SET" and "POS" in words:
                found.append(int(words[words.index("POS") + 1]))
        return found

    def drop(self) -> None:
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:  # the client already closed it
                    pass
                connection.close()
            self._connections.clear()

    def close(self) -> None:
        self.drop()
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread, so the port really closes
        except OSError:
            pass
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = connection.recv(1024)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                answer = self._answer(line.decode().strip())
                time.sleep(self.delay_s)
                try:
                    connection.sendall(answer.encode())
                except OSError:
                    return

    def _answer(self, request: str) -> str:
        with self._lock:
            self.requests.append(request)
            words = request.split()
            if words[0] == "SET":
                for name, value in zip(words[1::2], words[2::2], strict=True):
                    self._set(name, int(value))
                return "ack"
            name = words[1]
            if name == "STA" and self._activating:
                self._activating -= 1
                if not self._activating:
                    self.vars["STA"] = 3
                return f"STA {1 if self._activating else self.vars['STA']}"
            if name == "POS":
                self._move()
            return f"{name} {self.vars[name]}"

    def _set(self, name: str, value: int) -> None:
        if name == "POS":
            self.vars["PRE"] = value
            self.vars["OBJ"] = 0
        elif name == "ACT":
            self.vars["ACT"] = value
            self.vars["STA"] = 0
            self._activating = 2 if value else 0
        else:
            self.vars[name] = value

    def _move(self) -> None:
        if not self.vars["GTO"] or self.vars["STA"] != 3:
            return
        position, goal = self.vars["POS"], self.vars["PRE"]
        position += max(-self.step, min(self.step, goal - position))
        if self.object_at is not None and goal > self.object_at and position >= self.object_at:
            position, self.vars["OBJ"] = self.object_at, 2  # closed onto an object
        elif position == goal:
            self.vars["OBJ"] = 3
        self.vars["POS"] = position
