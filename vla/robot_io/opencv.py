"""A USB / V4L2 camera (or a video file) through LeRobot's `OpenCVCamera`, with reconnects
(`vla.robot_io.reconnect.ReconnectingCamera`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vla.robot_io.base import Frame
from vla.robot_io.reconnect import ReconnectingCamera

log = logging.getLogger(__name__)


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
