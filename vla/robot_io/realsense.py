"""An Intel RealSense camera (D400 series) through pyrealsense2: colour plus depth aligned to colour.

The device is chosen by serial number (empty: the first one found). A `wait_for_frames`
timeout or an unplugged camera restarts the pipeline with back-off (see `ReconnectingCamera`);
`read()` raises until frames flow again, so the deploy loop holds the arm on stale frames.
pyrealsense2 is an optional extra, imported when the camera is made.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from vla.robot_io.base import Frame
from vla.robot_io.reconnect import ReconnectingCamera

log = logging.getLogger(__name__)
INSTALL_HINT = 'pip install -e ".[robot]"'


def import_pyrealsense2():
    try:
        return importlib.import_module("pyrealsense2")
    except ImportError as error:
        raise ImportError(f"the RealSense camera needs pyrealsense2, which is not installed ({error}): "
                          f"{INSTALL_HINT}") from error


@dataclass
class RealSenseConfig:
    """serial: the camera's serial number ("" = the first camera found); width x height at fps for both
    streams; depth: also stream depth, aligned to the colour image, into `Frame.depth` (uint16 mm)."""

    name: str = "main"
    serial: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    depth: bool = False
    timeout_ms: int = 1000  # wait_for_frames longer than this: the camera is lost, restart the pipeline

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.fps) <= 0:
            raise ValueError(f"RealSense width, height and fps must be positive; got {self.width}x{self.height} "
                             f"at {self.fps} fps")


class RealSenseCamera(ReconnectingCamera):
    """Frames: image uint8 [H, W, 3] RGB, depth uint16 [H, W] millimetres (or None), timestamp time.monotonic()."""

    def __init__(self, config: RealSenseConfig):
        super().__init__(config.name)
        self.config = config
        self.rs = import_pyrealsense2()
        self._pipeline = None
        self._align = None
        self._mm_per_unit = 1.0  # depth unit of the device in millimetres (D400: 1 mm, D405: 0.1 mm)

    def connect(self) -> None:
        try:
            super().connect()
        except RuntimeError as error:
            raise RuntimeError(f"RealSense {self._which()} could not start ({error}); "
                               f"connected cameras: {self.connected_serials() or 'none'}") from error

    def connected_serials(self) -> list[str]:
        rs = self.rs
        try:
            return [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        except RuntimeError:  # only used to explain another error: never mask it
            return []

    def _open(self) -> None:
        rs, c = self.rs, self.config
        config = rs.config()
        if c.serial:
            config.enable_device(c.serial)
        config.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
        if c.depth:
            config.enable_stream(rs.stream.depth, c.width, c.height, rs.format.z16, c.fps)
        pipeline = rs.pipeline()
        profile = pipeline.start(config)
        if c.depth:
            self._mm_per_unit = profile.get_device().first_depth_sensor().get_depth_scale() * 1000.0
            self._align = rs.align(rs.stream.color)
        self._pipeline = pipeline
        log.info("RealSense %s started: %dx%d at %d fps%s", self._which(), c.width, c.height, c.fps,
                 " with aligned depth" if c.depth else "")

    def _grab(self) -> Frame:
        frames = self._pipeline.wait_for_frames(self.config.timeout_ms)
        timestamp = time.monotonic()
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if not color:
            raise RuntimeError("frameset without a colour frame")
        image = np.asanyarray(color.get_data()).copy()  # the SDK reuses its buffer
        return Frame(image=image, timestamp=timestamp, depth=self._depth_mm(frames) if self._align else None)

    def _depth_mm(self, frames) -> np.ndarray:
        depth = frames.get_depth_frame()
        if not depth:
            raise RuntimeError("frameset without a depth frame")
        raw = np.asanyarray(depth.get_data())
        if abs(self._mm_per_unit - 1.0) < 1e-6:
            return raw.copy()
        return np.clip(np.rint(raw * self._mm_per_unit), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    def _close(self) -> None:
        pipeline, self._pipeline, self._align = self._pipeline, None, None
        if pipeline is not None:
            pipeline.stop()

    def _which(self) -> str:
        return f"camera {self.name!r} (serial {self.config.serial or 'any'})"
