"""Threads and clocks the control loop is built from: a drift-free rate timer, camera frame
grabbers that never block the loop, an inference worker that runs the policy off the loop
thread, and the e-stop. Numpy and the standard library only.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from vla.robot_io.base import Camera, Frame, check_frame

log = logging.getLogger(__name__)


class RateTimer:
    """Ticks at a fixed rate on an absolute schedule (tick k at t0 + k * period), so sleep errors
    do not accumulate into drift. After an overrun longer than one period the schedule restarts
    from now instead of firing the missed ticks back to back."""

    def __init__(self, hz: float):
        if hz <= 0:
            raise ValueError(f"control rate must be positive; got {hz} Hz")
        self.period = 1.0 / hz
        self.next_tick: float | None = None
        self.overruns = 0

    def wait(self) -> float:
        """Sleep until the next tick; returns how late (s) this tick started."""
        now = time.perf_counter()
        self.next_tick = now if self.next_tick is None else self.next_tick + self.period
        delay = self.next_tick - now
        if delay < -self.period:
            self.overruns += 1
            self.next_tick = now
            return 0.0
        if delay > 0.002:
            time.sleep(delay - 0.001)  # OS sleep overshoots by up to ~1 ms; spin the rest
        while time.perf_counter() < self.next_tick:
            pass
        return time.perf_counter() - self.next_tick


class FrameGrabber:
    """Reads one camera in a daemon thread and keeps the latest good frame.

    A camera that stalls (read blocks) or returns garbage never blocks the loop: the loop only
    sees the last good frame, whose growing age makes the watchdog hold the arm.
    """

    def __init__(self, camera: Camera, poll_hz: float = 100.0):
        self.camera = camera
        self.poll_period = 1.0 / poll_hz
        self.latest: Frame | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)

    def start(self) -> FrameGrabber:
        self._thread.start()
        return self

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.camera.read()
                check_frame(frame, self.camera.name)
                if self.latest is None or frame.timestamp > self.latest.timestamp:
                    self.latest, self.error = frame, None
            except Exception as error:  # a device error must not kill the thread: report it and retry
                if str(error) != self.error:
                    log.error("camera %r: %s", self.camera.name, error)
                self.error = str(error)
                time.sleep(0.05)
            time.sleep(self.poll_period)


@dataclass
class Result:
    """An inference answer: the episode and step whose observation it used, and the chunk [H, D] or the error."""

    episode: int
    step: int
    actions: np.ndarray | None
    error: str | None
    latency_s: float


class InferenceWorker:
    """Runs `infer(request)` in a daemon thread, one request at a time.

    The loop submits an observation stamped with its control step and polls for the answer,
    so inference of the next chunk overlaps the execution of the current one. A policy that
    hangs only leaves `busy_for()` growing; the loop decides when that is too long.
    """

    def __init__(self, infer):
        self.infer = infer
        self._request: tuple[int, int, object] | None = None
        self._result: Result | None = None
        self._started_at: float | None = None
        self._closed = False
        self._idle = threading.Event()  # set while no request is running
        self._idle.set()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._started_at is not None

    def busy_for(self) -> float:
        started = self._started_at
        return 0.0 if started is None else time.perf_counter() - started

    def submit(self, episode: int, step: int, request) -> bool:
        """Queue a request unless one is running; returns whether it was queued."""
        with self._wake:
            if self.busy:
                return False
            self._started_at = time.perf_counter()
            self._idle.clear()
            self._request = (episode, step, request)
            self._wake.notify()
            return True

    def close(self, timeout: float = 1.0) -> None:
        """Let the thread finish (a hung policy keeps it; it is a daemon and dies with the process)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    def poll(self) -> Result | None:
        with self._wake:
            result, self._result = self._result, None
            return result

    def wait_idle(self, timeout: float) -> None:
        """Block until the running request answers (collect it with poll) or `timeout` seconds pass."""
        self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._request is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                episode, step, request = self._request
                self._request = None
            start = time.perf_counter()
            try:
                actions, error = np.asarray(self.infer(request), dtype=np.float32), None
            except Exception as exc:  # reported to the loop, which holds the arm and logs it
                actions, error = None, f"{type(exc).__name__}: {exc}"
            with self._wake:
                self._result = Result(episode, step, actions, error, time.perf_counter() - start)
                self._started_at = None
                self._idle.set()


class EStop:
    """Emergency stop: SIGINT / SIGTERM, or q / space / Esc typed in the terminal.

    Once triggered it stays triggered; the loop stops the arm and exits cleanly.
    """

    KEYS = {"q", "Q", " ", "\x1b"}

    def __init__(self):
        self.event = threading.Event()
        self.reason = ""
        self._previous_handlers: dict = {}

    @property
    def triggered(self) -> bool:
        return self.event.is_set()

    def trigger(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            log.critical("E-STOP: %s", reason)
            self.event.set()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only allows signal handlers in the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def watch_keyboard(self) -> threading.Thread | None:
        """Read keys from a terminal in a daemon thread (None when stdin is not a TTY)."""
        if sys.stdin is None or not sys.stdin.isatty():
            return None
        thread = threading.Thread(target=self._read_keys, name="estop-keys", daemon=True)
        thread.start()
        return thread

    def _on_signal(self, signum, _frame) -> None:
        self.trigger(f"signal {signal.Signals(signum).name}")

    def _read_keys(self) -> None:
        import select
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while not self.event.is_set():
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready and os.read(fd, 1).decode(errors="ignore") in self.KEYS:
                    self.trigger("key pressed")
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
