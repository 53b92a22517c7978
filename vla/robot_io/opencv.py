"""A USB / V4L2 camera (or a video file) through LeRobot's `OpenCVCamera`, with reconnects.

`ReconnectingCamera` is the part every real camera shares: when a read fails (a timeout, an
unplugged cable, the end of a video file) it logs the cause, closes the device, reopens it
with exponential back-off and raises a clear error from `read()` until it is back. The deploy
loop's FrameGrabber keeps the last good frame meanwhile, and its watchdog holds the arm once
that frame is older than `safety.max_frame_age_s`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vla.robot_io.base import Frame

log = logging.getLogger(__name__)


class ReconnectingCamera:
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

    def _open(self) -> None:
        raise NotImplementedError

    def _grab(self) -> Frame:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


@dataclass
class OpenCVConfig:
    """index_or_path: a device index ("0"), a device path ("/dev/video4") or a video file.
    width / height / fps: 0 keeps the device's own (required for a video file, which cannot be set)."""

    name: str = "main"
    index_or_path: str = "0"
    width: int = 0
    height: int = 0
    fps: int = 0
    read_timeout_ms: int = 1000  # a read waiting longer than this counts as a lost camera
    warmup_s: int = 1  # LeRobot reads frames this long in connect() before returning

    def __post_init__(self) -> None:
        if bool(self.width) != bool(self.height):
            raise ValueError(f"give both width and height or neither; got width={self.width}, height={self.height}")


class OpenCVCamera(ReconnectingCamera):
    """RGB uint8 [H, W, 3] frames from `lerobot.cameras.opencv.OpenCVCamera`.

    LeRobot grabs frames in its own thread; `read` waits for the next one (`async_read`) and
    stamps it with its capture time converted to `time.monotonic()`.
    """

    def __init__(self, config: OpenCVConfig):
        super().__init__(config.name)
        self.config = config
        self._camera = None

    def _open(self) -> None:
        from lerobot.cameras.opencv import OpenCVCamera as LeRobotOpenCVCamera
        from lerobot.cameras.opencv import OpenCVCameraConfig

        c = self.config
        target = int(c.index_or_path) if c.index_or_path.isdigit() else Path(c.index_or_path)
        camera = LeRobotOpenCVCamera(OpenCVCameraConfig(
            index_or_path=target, width=c.width or None, height=c.height or None, fps=c.fps or None,
            warmup_s=c.warmup_s))
        camera.connect()
        self._camera = camera

    def _grab(self) -> Frame:
        camera = self._camera
        image = camera.async_read(timeout_ms=self.config.read_timeout_ms)
        captured = camera.latest_timestamp  # perf_counter seconds of the newest frame (maybe this one)
        now = time.monotonic()
        timestamp = now - (time.perf_counter() - captured) if captured is not None else now
        return Frame(image=image, timestamp=min(timestamp, now))

    def _close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            camera.disconnect()
