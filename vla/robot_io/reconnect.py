"""Reconnect with back-off: the part every real camera shares.

When a read fails (a timeout, an unplugged cable, the end of a video file) the camera logs the
cause, closes the device, reopens it with exponential back-off and raises a clear error from
`read()` until it is back. The deploy loop's FrameGrabber keeps the last good frame meanwhile,
and its watchdog holds the arm once that frame is older than `safety.max_frame_age_s`.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

from vla.robot_io.base import Frame

log = logging.getLogger(__name__)


class ReconnectingCamera(ABC):
    """Base class: subclasses implement `_open()`, `_grab() -> Frame` and `_close()`.

    backoff_s: wait before the second reopen attempt; it doubles per failed attempt up to max_backoff_s
    (the first attempt after a failure is immediate).
    """

    def __init__(self, name: str, backoff_s: float = 0.5, max_backoff_s: float = 8.0):
        self.name = name
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.reconnects = 0  # successful reopens since connect()
        self._connected = False  # between connect() and disconnect()
        self._up = False  # the device is open and delivering
        self._cause = ""  # why it went down
        self._delay = 0.0
        self._next_try = 0.0

    def connect(self) -> None:
        self._open()
        self._connected = self._up = True
        self._delay, self.reconnects = 0.0, 0

    def read(self) -> Frame:
        if not self._connected:
            raise RuntimeError(f"camera {self.name!r} is not connected: call connect() first")
        if not self._up:
            self._reopen()
        try:
            return self._grab()
        except Exception as error:
            self._lost(error)
            raise RuntimeError(f"camera {self.name!r} lost ({error}); reconnecting") from error

    def disconnect(self) -> None:
        self._connected = False
        if self._up:
            self._up = False
            self._close_quietly()

    def _lost(self, error: Exception) -> None:
        log.warning("camera %r: %s; restarting it", self.name, error)
        self._up, self._cause = False, str(error)
        self._delay, self._next_try = 0.0, time.monotonic()
        self._close_quietly()

    def _reopen(self) -> None:
        """Reopen the device if the back-off allows; raise while it is still down."""
        wait = self._next_try - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.1))  # the caller is a grabber thread: pace its retries
            raise RuntimeError(f"camera {self.name!r} is reconnecting after: {self._cause}")
        try:
            self._open()
        except Exception as error:
            self._delay = min(max(2 * self._delay, self.backoff_s), self.max_backoff_s)
            self._next_try = time.monotonic() + self._delay
            log.warning("camera %r: reopening failed (%s); next try in %.1f s", self.name, error, self._delay)
            raise RuntimeError(f"camera {self.name!r} is reconnecting after: {self._cause}") from error
        self._up, self._delay = True, 0.0
        self.reconnects += 1
        log.info("camera %r: reconnected", self.name)

    def _close_quietly(self) -> None:
        try:
            self._close()
        except Exception as error:  # a device that vanished often fails to close too
            log.debug("camera %r: close failed: %s", self.name, error)

    @abstractmethod
    def _open(self) -> None:
        """Open the device (raise if it is not there)."""

    @abstractmethod
    def _grab(self) -> Frame:
        """The next frame from the open device (raise on a device error)."""

    @abstractmethod
    def _close(self) -> None:
        """Release the device."""
