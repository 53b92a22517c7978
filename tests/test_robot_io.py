"""Real device drivers (RealSense, OpenCV, UR, LeRobot arms) against named fake SDKs: no hardware needed.

The fake SDK modules (`FakeRealSenseSDK`, `FakeRTDE`) stand in for pyrealsense2 and ur_rtde through
`sys.modules`; they record every call so the tests can assert what a driver told the device. The
OpenCV camera reads a real video file through LeRobot's real OpenCVCamera.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from dataclasses import dataclass, field

import cv2
import draccus
import numpy as np
import pytest
from fakes import HOME  # tests/fakes.py

from vla.deploy.loop import ControlLoop, LoopConfig
from vla.deploy.protocol import ObservationMessage, PolicySpec
from vla.deploy.run import DeployConfig
from vla.deploy.safety import SafetyConfig
from vla.robot_io.base import Camera, Robot, check_frame
from vla.robot_io.config import (
    LeRobotRobotConfig,
    OpenCVCameraConfig,
    RealSenseCameraConfig,
    URArmConfig,
)
from vla.robot_io.lerobot_arm import LeRobotArm, LeRobotArmConfig
from vla.robot_io.opencv import OpenCVCamera, OpenCVConfig
from vla.robot_io.realsense import RealSenseCamera, RealSenseConfig
from vla.robot_io.ur import URConfig, URRobot, ur_spec

# --- a fake pyrealsense2 ---


class FakeRealSenseSDK(types.ModuleType):
    """Stands in for pyrealsense2. Colour frames are a known RGB pattern; depth comes at half the colour
    resolution and only matches it after `align.process` (as on a D435, whose depth imager differs).

    fail_reads: the next N wait_for_frames calls time out; fail_starts: the next N pipeline starts fail.
    """

    def __init__(self, serials=("111", "222"), depth_scale=0.001, fps=200.0):
        super().__init__("pyrealsense2")
        sdk = self
        self.serials, self.depth_scale, self.fps = list(serials), depth_scale, fps
        self.fail_reads = self.fail_starts = 0
        self.configs, self.started, self.stopped, self.aligned_to = [], [], 0, []
        self.stream = types.SimpleNamespace(color="color", depth="depth")
        self.format = types.SimpleNamespace(rgb8="rgb8", z16="z16")
        self.camera_info = types.SimpleNamespace(serial_number="serial_number")

        class config:  # noqa: N801 (the SDK's names)
            def __init__(self):
                self.device, self.streams = None, []
                sdk.configs.append(self)

            def enable_device(self, serial):
                self.device = serial

            def enable_stream(self, stream, width, height, fmt, fps):
                self.streams.append((stream, width, height, fmt, fps))

        class pipeline:  # noqa: N801
            def start(self, cfg):
                if sdk.fail_starts:
                    sdk.fail_starts -= 1
                    raise RuntimeError("No device connected")
                if cfg.device is not None and cfg.device not in sdk.serials:
                    raise RuntimeError("No device connected")
                self.cfg = cfg
                sdk.started.append(cfg)
                sensor = types.SimpleNamespace(get_depth_scale=lambda: sdk.depth_scale)
                device = types.SimpleNamespace(first_depth_sensor=lambda: sensor)
                return types.SimpleNamespace(get_device=lambda: device)

            def wait_for_frames(self, timeout_ms=5000):
                time.sleep(1.0 / sdk.fps)
                if sdk.fail_reads:
                    sdk.fail_reads -= 1
                    raise RuntimeError(f"Frame didn't arrive within {timeout_ms}")
                _, width, height, _, _ = self.cfg.streams[0]
                return FakeFrameset(width, height, aligned=False)

            def stop(self):
                sdk.stopped += 1

        class align:  # noqa: N801
            def __init__(self, stream):
                sdk.aligned_to.append(stream)

            def process(self, frames):
                return FakeFrameset(frames.width, frames.height, aligned=True)

        class context:  # noqa: N801
            def query_devices(self):
                return [types.SimpleNamespace(get_info=lambda _, s=s: s) for s in sdk.serials]

        self.config, self.pipeline, self.align, self.context = config, pipeline, align, context


class FakeFrameset:
    RAW_DEPTH = 1234  # device units

    def __init__(self, width, height, aligned):
        self.width, self.height, self.aligned = width, height, aligned

    def get_color_frame(self):
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        image[..., 0] = 200  # red: RGB order is kept
        return types.SimpleNamespace(get_data=lambda: image)

    def get_depth_frame(self):
        h, w = (self.height, self.width) if self.aligned else (self.height // 2, self.width // 2)
        depth = np.full((h, w), self.RAW_DEPTH, dtype=np.uint16)
        return types.SimpleNamespace(get_data=lambda: depth)


@pytest.fixture
def realsense(monkeypatch) -> FakeRealSenseSDK:
    sdk = FakeRealSenseSDK()
    monkeypatch.setitem(sys.modules, "pyrealsense2", sdk)
    return sdk


def test_realsense_frames_rgb_with_aligned_depth_from_the_chosen_camera(realsense):
    camera = RealSenseCameraConfig(name="corner", serial="222", width=64, height=48, fps=30, depth=True).make()
    assert isinstance(camera, Camera)
    before = time.monotonic()
    camera.connect()
    frame = camera.read()
    camera.disconnect()
    check_frame(frame, "corner")
    assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8 and frame.image[0, 0, 0] == 200
    assert frame.depth.shape == (48, 64) and frame.depth.dtype == np.uint16
    assert (frame.depth == FakeFrameset.RAW_DEPTH).all()  # D400 depth unit is 1 mm already
    assert before <= frame.timestamp <= time.monotonic()
    cfg = realsense.started[0]
    assert cfg.device == "222"
    assert cfg.streams == [("color", 64, 48, "rgb8", 30), ("depth", 64, 48, "z16", 30)]
    assert realsense.aligned_to == ["color"] and realsense.stopped == 1


def test_realsense_depth_in_millimetres_for_a_finer_depth_unit(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", FakeRealSenseSDK(depth_scale=0.0001))  # a D405
    camera = RealSenseCamera(RealSenseConfig(width=32, height=32, depth=True))
    camera.connect()
    assert (camera.read().depth == 123).all()  # 1234 units of 0.1 mm


def test_realsense_without_depth_and_unknown_serial(realsense):
    camera = RealSenseCamera(RealSenseConfig(width=32, height=32))
    camera.connect()
    assert camera.read().depth is None and realsense.aligned_to == []
    with pytest.raises(RuntimeError, match=r"serial 999.*connected cameras: \['111', '222'\]"):
        RealSenseCamera(RealSenseConfig(serial="999")).connect()


def test_realsense_restarts_the_pipeline_after_a_timeout(realsense, caplog):
    camera = RealSenseCamera(RealSenseConfig(serial="111", width=32, height=32, depth=True))
    camera.backoff_s = 0.05
    camera.connect()
    camera.read()
    realsense.fail_reads, realsense.fail_starts = 1, 2
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="lost.*didn't arrive.*reconnecting"):
        camera.read()
    assert "restarting it" in caplog.text and realsense.stopped == 1
    for _ in range(2):  # two failed restarts: the error stays the same while it reconnects
        with pytest.raises(RuntimeError, match="camera 'main' is reconnecting after: Frame didn't arrive"):
            camera.read()
    assert "reopening failed" in caplog.text
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # back-off of 0.05 then 0.1 s before the third start
        try:
            frame = camera.read()
            break
        except RuntimeError:
            pass
    assert frame.image.shape == (32, 32, 3) and frame.depth.shape == (32, 32)
    assert camera.reconnects == 1 and len(realsense.started) == 2 and realsense.started[1].device == "111"


# --- OpenCV through LeRobot's OpenCVCamera, on a real video file ---


def write_video(path, frames=300, size=(240, 320)) -> None:
    """An MJPG .avi whose top third is pure red and the rest noise (noise keeps decoding from being instant)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        bgr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        bgr[: size[0] // 3] = (0, 0, 255)
        writer.write(bgr)
    writer.release()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # LeRobot's reader at EOF
def test_opencv_camera_reads_a_video_file_through_lerobot_and_reopens_it(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path)
    camera = OpenCVCameraConfig(name="wrist", index_or_path=str(path), warmup_s=0, read_timeout_ms=300).make()
    assert isinstance(camera, OpenCVCamera)
    camera.connect()
    frame = camera.read()
    check_frame(frame, "wrist")
    assert frame.image.shape == (240, 320, 3)
    red = frame.image[40, 160].astype(int)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # RGB, not OpenCV's BGR
    assert frame.timestamp <= time.monotonic()
    errors = 0
    deadline = time.monotonic() + 5.0
    while camera.reconnects == 0 and time.monotonic() < deadline:  # play to the end: the reader dies, reopen
        try:
            camera.read()
        except RuntimeError:
            errors += 1
    assert errors >= 1 and camera.reconnects == 1
    assert camera.read().image.shape == (240, 320, 3)
    camera.disconnect()
    with pytest.raises(RuntimeError, match="not connected"):
        camera.read()


def test_opencv_config_checks_resolution():
    with pytest.raises(ValueError, match="both width and height"):
        OpenCVConfig(width=640)


# --- UR arms over a fake ur_rtde (the `rtde` fixture, tests/conftest.py) ---


def make_ur(**options) -> URRobot:
    """A connected URRobot over the fake RTDE; the controller watchdog is off unless asked (its own test covers it),
    so the other tests see only the commands they are about."""
    options.setdefault("watchdog_hz", 0.0)
    robot = URArmConfig(host="10.0.0.2", **options).make()
    robot.connect()
    return robot


def test_ur_servoj_sends_joint_targets_for_one_control_period(rtde):
    robot = make_ur(command="servoj", control_hz=50.0, servo_lookahead_s=0.05, servo_gain=500.0)
    assert isinstance(robot, Robot) and rtde.hosts == ["10.0.0.2", "10.0.0.2"]
    assert robot.spec.action_kind == "joint_position" and robot.spec.action_dim == 6
    target = np.array(HOME) + 0.01
    robot.send_action(target)
    name, (q, speed, acceleration, dt, lookahead, gain) = rtde.calls[-1]
    assert name == "servoJ" and np.allclose(q, target) and (dt, lookahead, gain) == (0.02, 0.05, 500.0)
    state = robot.get_state()
    assert state.state.shape == (6,) and state.state.dtype == np.float32
    assert np.allclose(state.joint_positions, target) and np.allclose(state.state, target)
    assert np.allclose(state.tcp_position, rtde.tcp[:3]) and state.fault is None


def test_ur_speedl_and_movel_send_tool_motion(rtde):
    robot = make_ur(command="speedl", control_hz=20.0, ee_delta_scale=0.01, tool_acceleration=0.3)
    assert robot.spec.action_kind == "ee_delta" and robot.spec.action_names == ["dx", "dy", "dz"]
    robot.send_action(np.array([1.0, -0.5, 0.0]))
    name, (xd, acceleration, _) = rtde.calls[-1]
    assert name == "speedL" and np.allclose(xd, [0.2, -0.1, 0.0, 0, 0, 0]) and acceleration == 0.3  # 1 cm/step at 20 Hz

    robot = make_ur(command="movel", ee_delta_scale=0.01, tool_speed=0.05)
    assert robot.spec.action_dim == 3
    robot.send_action(np.array([0.0, 0.0, -1.0]))
    name, (pose, speed, acceleration, asynchronous) = rtde.calls[-1]
    assert name == "moveL" and np.allclose(pose, np.array(rtde.tcp) + [0, 0, -0.01, 0, 0, 0])
    assert speed == 0.05 and asynchronous is True


@pytest.mark.parametrize(("command", "stop_call"), [("servoj", "servoStop"), ("speedl", "speedStop"),
                                                   ("movel", "stopL")])
def test_ur_hold_decelerates_and_stop_ends_the_script_once(rtde, command, stop_call):
    robot = make_ur(command=command, stop_deceleration=1.5)
    robot.hold()
    assert rtde.calls == []  # nothing moving: nothing to stop
    robot.send_action(np.array(HOME) if command == "servoj" else np.zeros(3))
    robot.hold()
    robot.hold()
    assert rtde.names()[1:] == [stop_call] and rtde.calls[1][1] == (1.5,)
    robot.stop()
    robot.stop()
    assert rtde.names()[2:] == [stop_call, "stopScript"]
    with pytest.raises(RuntimeError, match="stopped; call reset"):
        robot.send_action(np.zeros(robot.spec.action_dim))
    robot.disconnect()
    assert rtde.names()[-2:] == ["disconnect", "receive.disconnect"] and "stopScript" not in rtde.names()[4:]


def test_ur_reset_restarts_the_script_and_moves_home(rtde):
    robot = make_ur(home=HOME, home_speed=0.3, home_acceleration=0.4)
    robot.stop()
    robot.reset()
    assert rtde.names()[-2:] == ["reuploadScript", "moveJ"]
    assert rtde.calls[-1][1] == (HOME, 0.3, 0.4)
    robot.send_action(np.array(HOME))
    assert rtde.names()[-1] == "servoJ"


@pytest.mark.parametrize(("setting", "fault"), [
    ({"protective": True}, "protective stop"), ({"emergency": True}, "emergency stop"),
    ({"safety_mode": 5}, "safety mode 5 (safeguard stop)"), ({"connected": False}, "RTDE connection"),
])
def test_ur_stops_surface_as_faults(rtde, setting, fault):
    robot = make_ur()
    assert robot.get_state().fault is None
    for key, value in setting.items():
        setattr(rtde, key, value)
    assert fault in robot.get_state().fault


def test_ur_refused_command_becomes_a_fault(rtde, caplog):
    robot = make_ur()
    rtde.refuse.add("servoJ")
    with caplog.at_level(logging.ERROR):
        robot.send_action(np.array(HOME))
    assert robot.get_state().fault == "the controller refused servoJ" and "refused servoJ" in caplog.text


def test_ur_config_is_checked():
    with pytest.raises(ValueError, match="servoj"):
        URConfig(host="h", command="speedj")
    with pytest.raises(ValueError, match="6 joint positions"):
        URConfig(host="h", home=[0.0, 1.0])
    with pytest.raises(ValueError, match="lookahead"):
        URConfig(host="h", servo_lookahead_s=0.5)


# --- the control loop drives the real drivers ---


class ScriptedURPolicy:
    """A fake policy for a UR without a gripper: each chunk steps every joint 1 mrad further per action."""

    def __init__(self, horizon: int = 4):
        self.spec = PolicySpec.for_robot(ur_spec(URConfig(host="x", control_hz=100.0)), ["corner"], 32, horizon)

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        assert obs.images.shape == (1, 32, 32, 3) and obs.embodiment == "ur5e"
        steps = 0.001 * np.arange(1, self.spec.horizon + 1)[:, None]
        chunk = np.tile(obs.state, (self.spec.horizon, 1)) + steps
        return chunk.astype(np.float32)


def test_control_loop_drives_ur_and_realsense(rtde, realsense):
    robot = make_ur(command="servoj", control_hz=100.0)
    camera = RealSenseCamera(RealSenseConfig(name="corner", width=64, height=48, depth=True))
    camera.connect()
    config = LoopConfig(max_steps=30, safety=SafetyConfig(max_frame_age_s=0.2, policy_timeout_s=1.0))
    loop = ControlLoop(robot, {"corner": camera}, ScriptedURPolicy(), config, "pick up the cube")
    loop.start()
    try:
        report = loop.run_episode()
    finally:
        loop.close()
        robot.stop()
        camera.disconnect()
    servo = [args for name, args in rtde.calls if name == "servoJ"]
    assert report.steps == 30 and report.stopped is None and len(servo) >= 20, report.holds
    assert rtde.q[0] > HOME[0] + 0.005  # the arm followed the policy
    assert rtde.names()[-1] == "stopScript"


def test_control_loop_stops_on_a_protective_stop(rtde, realsense):
    robot = make_ur(control_hz=100.0)
    camera = RealSenseCamera(RealSenseConfig(name="corner", width=64, height=48))
    camera.connect()
    loop = ControlLoop(robot, {"corner": camera}, ScriptedURPolicy(), LoopConfig(max_steps=200), "test")
    loop.start()
    threading.Timer(0.15, lambda: setattr(rtde, "protective", True)).start()
    try:
        report = loop.run_episode()
    finally:
        loop.close()
        camera.disconnect()
    assert report.stopped == "robot fault: protective stop" and report.steps < 200
    assert rtde.names()[-1] == "stopScript" and robot.stopped


class FarURPolicy(ScriptedURPolicy):
    """Asks every joint to move 0.5 rad per action: far beyond one control period of joint speed."""

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        if self.spec.action_dims["ur5e"] == 3:  # speedL: a tool step of 2 units (clipped to 1) along x
            return np.tile(np.float32([2.0, 0.0, 0.0]), (self.spec.horizon, 1))
        chunk = super().infer(obs)
        chunk[:, :6] = obs.state[:6] + 0.5 * np.arange(1, self.spec.horizon + 1)[:, None]
        return chunk


@pytest.mark.parametrize("command", ["servoj", "speedl"])
def test_loop_rate_override_reaches_the_safety_layer_and_the_ur_driver(rtde, realsense, tmp_path, command):
    """--loop.control_hz=100 on a robot configured for 30 Hz: the driver times servoJ / speedL for 100 Hz and the
    safety layer limits joint speed per 1/100 s, so the commanded joint velocity stays within its 1 rad/s limit."""
    from vla.deploy.run import deploy

    cfg = DeployConfig(checkpoint="unused", robot=URArmConfig(host="10.0.0.2", command=command, control_hz=30.0,
                                                              watchdog_hz=0.0, ee_delta_scale=0.01),
                       cameras=[RealSenseCameraConfig(name="corner", width=64, height=48)], instruction="go",
                       output_dir=str(tmp_path),
                       loop=LoopConfig(control_hz=100.0, max_steps=30,
                                       safety=SafetyConfig(max_frame_age_s=0.2, policy_timeout_s=1.0)))
    policy = FarURPolicy()
    if command == "speedl":
        policy.spec = PolicySpec.for_robot(ur_spec(URConfig(host="x", command="speedl", control_hz=100.0)),
                                           ["corner"], 32, policy.spec.horizon)
    summary = deploy(cfg, policy=policy)
    assert summary["control_hz"] == 100.0 and summary["episodes"][0]["stopped"] is None
    if command == "servoj":
        servo = [args for name, args in rtde.calls if name == "servoJ"]
        assert len(servo) >= 20 and {args[3] for args in servo} == {0.01}  # servoJ time = one 100 Hz period
        q = np.array([HOME] + [args[0] for args in servo])
        assert np.abs(np.diff(q, axis=0)).max() <= 1.0 * 0.01 + 1e-6  # 1 rad/s at 100 Hz (float32 actions)
    else:
        speeds = [args[0][:3] for name, args in rtde.calls if name == "speedL"]
        assert len(speeds) >= 20
        # a unit action moves the tool 1 cm per 100 Hz period: 1 m/s (the action is clipped to [-1, 1])
        assert np.allclose(np.abs(speeds).max(), 0.01 * 100.0)


# --- LeRobot arms ---


class FakeLeRobotCamera:
    """A LeRobot camera as a LeRobot robot owns it: `async_read` waits for the next frame (here: a constant
    picture of `value`), `read_latest` returns the latest one; both raise TimeoutError once `stalled`, as LeRobot's
    do when no frame comes."""

    def __init__(self, value: int):
        self.value, self.connected, self.reads, self.stalled = value, False, 0, False

    def async_read(self, timeout_ms: float) -> np.ndarray:
        assert self.connected, "the robot connects its cameras"
        time.sleep(0.005)
        return self.read_latest()

    def read_latest(self) -> np.ndarray:
        if self.stalled:
            raise TimeoutError("no new frame for 500 ms (fake)")
        self.reads += 1
        return np.full((48, 64, 3), self.value, np.uint8)


def lerobot_classes():
    """A fake LeRobot follower, registered with LeRobot so make_robot_from_config builds it by name."""
    from lerobot.robots import Robot as LeRobotRobot
    from lerobot.robots import RobotConfig as LeRobotConfig

    module = sys.modules[__name__]
    if hasattr(module, "FakeFollower"):
        return module.FakeFollowerConfig, module.FakeFollower

    @LeRobotConfig.register_subclass("fake_test_follower")
    @dataclass(kw_only=True)
    class FakeFollowerConfig(LeRobotConfig):
        port: str = ""
        disable_torque_on_disconnect: bool = True
        max_relative_target: float | None = None
        cameras: dict = field(default_factory=dict)  # LeRobot camera configs by name, as a real follower has

    class FakeFollower(LeRobotRobot):
        """Three motors that reach their goal at once; clips like LeRobot's max_relative_target."""

        config_class, name = FakeFollowerConfig, "fake_test_follower"
        motors = ["shoulder_pan", "elbow_flex", "gripper"]

        def __init__(self, config):
            super().__init__(config)
            self.config = config
            self.position = {m: 10.0 * i for i, m in enumerate(self.motors)}
            self.sent, self.connect_args, self.connected, self.torque_disabled = [], [], False, False
            self.calibrated = True
            # one fake camera per configured camera (default: "front"); each frame is filled with its index
            names = list(config.cameras) or ["front"]
            self.cameras = {name: FakeLeRobotCamera(40 * (i + 1)) for i, name in enumerate(names)}
            self.bus = types.SimpleNamespace(sync_read=lambda item: dict(self.position))  # the motor bus
            type(self).last = self  # the latest one built, for tests that build it through a config

        @property
        def observation_features(self):
            return {f"{m}.pos": float for m in self.motors} | {"front": (48, 64, 3)}

        @property
        def action_features(self):
            return {f"{m}.pos": float for m in self.motors}

        @property
        def is_connected(self):
            return self.connected

        def connect(self, calibrate=True):
            self.connect_args.append(calibrate)
            self.connected = True
            for camera in self.cameras.values():
                camera.connected = True

        @property
        def is_calibrated(self):
            return self.calibrated

        def calibrate(self):
            raise AssertionError("calibration is interactive; the adapter must never start it")

        def configure(self):
            pass

        def get_observation(self):  # as LeRobot's followers: the motors, then every camera's latest frame
            cameras = {name: camera.read_latest() for name, camera in self.cameras.items()}
            return {f"{m}.pos": p for m, p in self.position.items()} | cameras

        def send_action(self, action):
            limit = self.config.max_relative_target
            goal = {k.removesuffix(".pos"): v for k, v in action.items()}
            if limit is not None:
                goal = {m: float(np.clip(v, self.position[m] - limit, self.position[m] + limit))
                        for m, v in goal.items()}
            self.position.update(goal)
            self.sent.append(dict(action))
            return {f"{m}.pos": v for m, v in goal.items()}

        def disconnect(self):
            self.connected = False
            self.torque_disabled = self.config.disable_torque_on_disconnect

    FakeFollowerConfig.__module__ = FakeFollower.__module__ = __name__  # where LeRobot's factory looks
    module.FakeFollowerConfig, module.FakeFollower = FakeFollowerConfig, FakeFollower
    return FakeFollowerConfig, FakeFollower


def make_lerobot_arm(tmp_path, **options) -> LeRobotArm:
    lerobot_classes()
    config = LeRobotRobotConfig(robot="fake_test_follower", port="/dev/fake", id="left", embodiment="so101",
                                calibration_dir=str(tmp_path), **options)
    return config.make()


def test_lerobot_arm_round_trips_the_action_dict(tmp_path):
    arm = make_lerobot_arm(tmp_path, max_relative_target=5.0, disable_torque_on_disconnect=False)
    robot = arm.robot
    assert type(robot).__name__ == "FakeFollower" and robot.config.port == "/dev/fake" and robot.id == "left"
    assert arm.spec.action_names == arm.spec.state_names == ["shoulder_pan.pos", "elbow_flex.pos", "gripper.pos"]
    arm.connect()
    assert robot.connect_args == [False]
    state = arm.get_state()
    assert np.allclose(state.state, [0, 10, 20]) and state.state.dtype == np.float32
    arm.send_action(np.array([1.0, 30.0, 20.0]))
    assert robot.sent[-1] == {"shoulder_pan.pos": 1.0, "elbow_flex.pos": 30.0, "gripper.pos": 20.0}
    assert arm.last_sent == {"shoulder_pan.pos": 1.0, "elbow_flex.pos": 15.0, "gripper.pos": 20.0}  # LeRobot clipped
    assert np.allclose(arm.get_state().state, [1, 15, 20])
    with pytest.raises(ValueError, match=r"takes actions \[3\]"):
        arm.send_action(np.zeros(4))
    frame = arm.cameras()["front"].read()
    check_frame(frame, "front")


def test_lerobot_arm_hold_resends_the_measured_position_and_stop_disconnects(tmp_path):
    arm = make_lerobot_arm(tmp_path)
    arm.connect()
    arm.get_state()
    arm.robot.position["elbow_flex"] = 12.0  # drifted since the last measurement
    arm.hold()
    assert arm.robot.sent[-1] == {"shoulder_pan.pos": 0.0, "elbow_flex.pos": 10.0, "gripper.pos": 20.0}
    arm.robot.position["elbow_flex"] = 12.0  # sagging under the hold
    arm.get_state()
    arm.hold()
    assert arm.robot.sent[-1]["elbow_flex.pos"] == 10.0  # the hold keeps its pose: no creep with the sag
    arm.robot.position["elbow_flex"] = 12.0
    arm.stop()
    assert arm.robot.sent[-1]["elbow_flex.pos"] == 12.0  # stop holds where the arm is now
    assert not arm.robot.is_connected and arm.robot.torque_disabled  # LeRobot's config default
    sent = len(arm.robot.sent)
    arm.stop()
    arm.hold()
    arm.disconnect()
    assert len(arm.robot.sent) == sent
    arm.reset()
    assert arm.robot.is_connected and arm.robot.connect_args == [False, False]


def test_lerobot_arm_refuses_an_uncalibrated_robot_and_unknown_types(tmp_path):
    arm = make_lerobot_arm(tmp_path)
    arm.robot.calibrated = False
    with pytest.raises(RuntimeError, match="lerobot-calibrate --robot.type=fake_test_follower"):
        arm.connect()
    assert not arm.robot.is_connected
    with pytest.raises(ValueError, match="unknown LeRobot robot 'so102_follower'.*so101_follower"):
        LeRobotArm(LeRobotArmConfig(robot="so102_follower"))
    with pytest.raises(ValueError, match=r"joint_velocity needs 3 values"):
        make_lerobot_arm(tmp_path, joint_velocity=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"no option\(s\) \['use_degrees'\]"):
        make_lerobot_arm(tmp_path, use_degrees=True)


# --- configs and missing drivers ---


def test_device_configs_parse_from_the_command_line():
    cfg = draccus.parse(DeployConfig, args=[
        "--checkpoint", "ckpt", "--robot.type=ur", "--robot.host=192.168.1.10", "--robot.command=speedl",
        "--robot.home=[0,-1.57,1.57,-1.57,-1.57,0]",
        "--cameras", '[{type: realsense, name: corner, serial: "123456", depth: true}, '
                     '{type: opencv, name: wrist, index_or_path: /dev/video4, width: 640, height: 480}]'])
    assert isinstance(cfg.robot, URArmConfig) and cfg.robot.host == "192.168.1.10" and cfg.robot.command == "speedl"
    assert cfg.robot.home == HOME
    corner, wrist = cfg.cameras
    assert isinstance(corner, RealSenseCameraConfig) and corner.serial == "123456" and corner.depth
    assert isinstance(wrist, OpenCVCameraConfig) and wrist.index_or_path == "/dev/video4" and wrist.width == 640
    cfg = draccus.parse(DeployConfig, args=["--server", "ws://gpu:8765", "--robot.type=lerobot",
                                            "--robot.robot=koch_follower", "--robot.port=/dev/ttyACM0",
                                            "--robot.max_relative_target=8", "--robot.joint_velocity=[90,90,90]"])
    assert isinstance(cfg.robot, LeRobotRobotConfig) and cfg.robot.robot == "koch_follower"
    assert cfg.robot.max_relative_target == 8.0 and cfg.robot.joint_velocity == [90.0, 90.0, 90.0]


@pytest.mark.parametrize(("modules", "config"), [
    (["pyrealsense2"], RealSenseCameraConfig()),
    (["rtde_control", "rtde_receive"], URArmConfig(host="10.0.0.2")),
])
def test_missing_driver_packages_say_how_to_install_them(monkeypatch, modules, config):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail like a missing package
    with pytest.raises(ImportError, match=r'pip install -e "\.\[robot\]"'):
        config.make()


def test_missing_motor_sdk_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "scservo_sdk", None)
    with pytest.raises(ImportError, match=r"lerobot\[feetech\]"):
        LeRobotArm(LeRobotArmConfig(robot="so101_follower", port="/dev/null", calibration_dir=str(tmp_path)))


def test_ur_controller_watchdog_is_armed_and_kicked_every_tick(rtde):
    """If this PC freezes, the UR controller stops the arm on its own: the watchdog is set and kicked."""
    robot = make_ur(watchdog_hz=20.0)
    assert ("setWatchdog", (20.0,)) in rtde.calls
    robot.send_action(np.array(HOME))
    robot.hold()
    assert rtde.names().count("kickWatchdog") == 2


def test_ur_script_killed_by_the_controller_is_a_fault_and_reset_restarts_it(rtde):
    robot = make_ur()
    rtde.refuse.add("isProgramRunning")  # the controller's watchdog ended the control script
    assert "control script is not running" in robot.get_state().fault
    rtde.refuse.discard("isProgramRunning")
    robot.reset()
    assert "reuploadScript" not in rtde.names()  # running again: nothing to restart
    rtde.refuse.add("isProgramRunning")
    robot.reset()
    assert "reuploadScript" in rtde.names()


def test_lerobot_arm_embodiment_defaults_to_the_lerobot_config_type(tmp_path):
    """The deploy side names a LeRobot arm as LeRobot's config type does (so101_follower), as vla-record writes it
    into the dataset's robot_type; an explicit name still wins."""
    lerobot_classes()
    default = LeRobotRobotConfig(robot="fake_test_follower", port="/dev/fake", calibration_dir=str(tmp_path))
    assert default.make().spec.embodiment == "fake_test_follower"
    assert make_lerobot_arm(tmp_path).spec.embodiment == "so101"
    assert LeRobotRobotConfig().robot == "so101_follower"


class TwoCameraPolicy:
    """A fake policy for the fake follower that needs its cameras "front" and "wrist"; it records which picture
    came from which camera and asks every motor to stay where it is."""

    def __init__(self, spec):
        self.spec = PolicySpec.for_robot(spec, ["front", "wrist"], 32, 4)
        self.seen: list[tuple[int, int]] = []

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        assert obs.images.shape == (2, 32, 32, 3)  # the cameras in the policy's order
        self.seen.append((int(obs.images[0].mean()), int(obs.images[1].mean())))
        return np.tile(obs.state, (self.spec.horizon, 1))


def test_a_lerobot_robots_own_cameras_feed_the_loop(tmp_path):
    """The cameras a LeRobot robot config lists (here two, parsed by LeRobot's own camera registry) are connected by
    the robot and reach the policy under their names, without being configured again as `--cameras`."""
    from vla.deploy.run import deploy

    lerobot_classes()
    cameras = {"front": {"type": "opencv", "index_or_path": "/dev/video0", "width": 64, "height": 48, "fps": 30},
               "wrist": {"type": "opencv", "index_or_path": 2, "fps": 30, "width": 64, "height": 48,
                         "rotation": 180}}
    robot = LeRobotRobotConfig(robot="fake_test_follower", port="/dev/fake", calibration_dir=str(tmp_path),
                               embodiment="so101", control_hz=50.0, cameras=cameras)
    lerobot_config = robot.make().robot.config
    assert type(lerobot_config.cameras["wrist"]).__name__ == "OpenCVCameraConfig"
    assert lerobot_config.cameras["wrist"].rotation.value == 180 and lerobot_config.cameras["front"].width == 64
    policy = TwoCameraPolicy(robot.make().spec)
    cfg = DeployConfig(checkpoint="unused", robot=robot, instruction="pick", output_dir=str(tmp_path),
                       loop=LoopConfig(max_steps=30, safety=SafetyConfig(max_frame_age_s=0.2, policy_timeout_s=1.0)))
    summary = deploy(cfg, policy=policy)
    assert summary["episodes"][0]["stopped"] is None and summary["episodes"][0]["steps"] == 30
    assert len(policy.seen) >= 5 and set(policy.seen) == {(40, 80)}  # front, then wrist


def test_lerobot_camera_configs_are_checked_by_lerobot(tmp_path):
    from vla.robot_io.lerobot_arm import lerobot_camera_configs

    with pytest.raises(ValueError, match="LeRobot camera 'top': type must be one of .*opencv"):
        lerobot_camera_configs({"top": {"type": "webcam"}})
    with pytest.raises(ValueError, match="LeRobot camera 'top' \\(opencv\\)"):
        lerobot_camera_configs({"top": {"type": "opencv", "index_or_path": 0, "rotation": 45}})
    parsed = draccus.parse(LeRobotRobotConfig, args=["--cameras", "{top: {type: opencv, index_or_path: 0}}"])
    assert parsed.cameras == {"top": {"type": "opencv", "index_or_path": 0}}


def test_a_camera_configured_twice_is_refused(tmp_path):
    from vla.deploy.session import make_cameras
    from vla.robot_io.config import FakeCameraConfig

    arm = make_lerobot_arm(tmp_path)
    with pytest.raises(ValueError, match=r"\['front'\] are both in --cameras and among the robot's own"):
        make_cameras([FakeCameraConfig(name="front")], arm)


def test_a_lerobot_robots_stalled_camera_holds_then_stops_the_arm_without_an_exception(tmp_path):
    """LeRobot's get_observation raises on a late camera frame; the arm's state is read from the motor bus, so a
    stalled camera is the loop's stale-frame case (hold, then stop with the reason), not a crash mid-tick."""
    from vla.deploy.run import deploy

    _, follower = lerobot_classes()
    cameras = {name: {"type": "opencv", "index_or_path": i, "width": 64, "height": 48, "fps": 30}
               for i, name in enumerate(["front", "wrist"])}
    robot = LeRobotRobotConfig(robot="fake_test_follower", port="/dev/fake", calibration_dir=str(tmp_path),
                               embodiment="so101", control_hz=50.0, cameras=cameras)
    policy = TwoCameraPolicy(robot.make().spec)
    original = policy.infer

    def infer_then_stall(obs):
        if len(policy.seen) == 3:
            for camera in follower.last.cameras.values():
                camera.stalled = True
        return original(obs)

    policy.infer = infer_then_stall
    cfg = DeployConfig(checkpoint="unused", robot=robot, instruction="pick", output_dir=str(tmp_path),
                       loop=LoopConfig(max_steps=200, safety=SafetyConfig(max_frame_age_s=0.1, policy_timeout_s=0.5)))
    summary = deploy(cfg, policy=policy)
    episode = summary["episodes"][0]
    assert episode["stopped"].startswith("camera stale for") and episode["held_ticks"]["camera frame stale or missing"]
