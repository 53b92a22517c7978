"""The deploy loop, safety layer, server and client: normal runs and injected faults.

Every fault test asserts how the episode ended (arm held or stopped) and the log line that says why.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vla.deploy.chunking import ScheduleConfig
from vla.deploy.loop import ControlLoop, LoopConfig, check_compatible
from vla.deploy.protocol import ObservationMessage, PolicySpec
from vla.deploy.realtime import EStop, RateTimer
from vla.deploy.safety import SafetyConfig, SafetyLayer
from vla.robot_io.base import RobotState
from vla.robot_io.fake import FakeArm, FakeCamera

TOKEN = "test-token-0123456789"


class ScriptedPolicy:
    """A fake policy with a fixed answer and a chosen failure: "hang", "raise", "nan", "far" (out of limits)."""

    def __init__(self, fault: str | None = None, fault_after: int = 0, horizon: int = 8, latency_s: float = 0.005,
                 n_obs_steps: int = 1):
        self.spec = PolicySpec.for_robot(FakeArm(control_hz=100.0).spec, ["main"], 32, horizon)  # make_loop's arm
        self.spec.n_obs_steps = n_obs_steps
        self.images: list[np.ndarray] = []
        self.fault, self.fault_after, self.latency_s = fault, fault_after, latency_s
        self.calls = 0
        self.prefixes: list = []
        self.release = threading.Event()

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        assert obs.images.shape == (self.spec.n_obs_steps, 32, 32, 3) and obs.images.dtype == np.uint8
        self.images.append(obs.images)
        self.calls += 1
        self.prefixes.append(obs.prefix)
        time.sleep(self.latency_s)
        chunk = np.tile(obs.state, (self.spec.horizon, 1)) + 0.01 * np.arange(1, self.spec.horizon + 1)[:, None]
        if self.fault and self.calls > self.fault_after:
            if self.fault == "hang":
                self.release.wait()
            elif self.fault == "raise":
                raise RuntimeError("CUDA out of memory (injected)")
            elif self.fault == "nan":
                chunk[:] = np.nan
            elif self.fault == "far":
                chunk[:, 0] = 2.9  # inside the joint range, far beyond one step of joint speed
        return chunk.astype(np.float32)


def make_loop(policy=None, camera=None, arm=None, **config) -> tuple[ControlLoop, FakeArm]:
    arm = arm or FakeArm(control_hz=100.0)
    camera = camera or FakeCamera("main", size=48, fps=200)
    defaults = {"max_steps": 40, "safety": SafetyConfig(max_frame_age_s=0.1, policy_timeout_s=0.4)}
    loop = ControlLoop(arm, {"main": camera}, policy or ScriptedPolicy(), LoopConfig(**(defaults | config)), "test")
    loop.start()
    return loop, arm


def run(loop) -> object:
    try:
        return loop.run_episode()
    finally:
        loop.close()


# --- normal operation ---


@pytest.mark.parametrize("async_inference", [True, False])
def test_loop_executes_policy_actions(async_inference):
    loop, arm = make_loop(async_inference=async_inference)
    report = run(loop)
    assert report.steps == 40 and report.stopped is None
    assert len(arm.commands) >= 35, report.holds  # a few holds while the first chunk is computed
    assert report.summary(loop.period)["chunks"] >= 10  # receding horizon of 4: a chunk every 4 steps


def test_ensembles_ask_for_a_chunk_every_step():
    loop, arm = make_loop(schedule=ScheduleConfig("temporal"), async_inference=False)
    report = run(loop)
    assert len(report.inference_s) >= 35


def test_rtc_sends_queued_actions_with_a_fading_mask():
    from vla.deploy.loop import rtc_weights

    weights = rtc_weights(6, delay=2)
    assert np.allclose(weights[:2], 1.0) and np.all(np.diff(weights[1:]) < 0) and 0 < weights[-1] < 0.2
    assert np.allclose(rtc_weights(3, delay=5), 1.0)  # the policy is slower than the queue: keep all of it
    policy = ScriptedPolicy(latency_s=0.02)
    loop, arm = make_loop(policy, rtc=True)
    run(loop)
    sent = [p for p in policy.prefixes if p is not None]
    assert policy.prefixes[0] is None and len(sent) >= 5  # the first chunk has nothing queued before it
    assert all(p.shape[1] == 7 and 0 < p.shape[0] <= 8 for p in sent)


class FakeClock:
    """perf_counter / sleep for RateTimer: every sleep overshoots by 0.7 ms (like an OS sleep), every
    clock read costs 10 us (so the timer's spin ends), and `work` advances time like a tick's work."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        self.now += 1e-5
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + 7e-4

    def work(self, seconds: float) -> None:
        self.now += seconds


def test_rate_timer_does_not_drift(monkeypatch):
    """Ticks stay on the absolute grid t0 + k * period despite sleep overshoot (a deterministic clock, so
    machine load cannot make this flaky), and a long overrun restarts the grid instead of bursting."""
    import vla.deploy.realtime as realtime

    clock = FakeClock()
    monkeypatch.setattr(realtime, "time", clock)
    timer = RateTimer(200.0)
    starts, first_tick = [], None
    for _ in range(60):
        timer.wait()
        first_tick = timer.next_tick if first_tick is None else first_tick
        starts.append(clock.now)
        clock.work(0.001)  # work shorter than the period
    lateness = np.array(starts) - (first_tick + timer.period * np.arange(60))
    assert lateness.min() >= 0 and lateness.max() < 5e-5  # on the grid to within two clock reads
    clock.work(3 * timer.period)  # a tick that overran by more than a period
    timer.wait()
    restarted = clock.now
    timer.wait()
    assert timer.overruns == 1
    assert clock.now - restarted == pytest.approx(timer.period, abs=5e-5)  # the next tick is one period later


def test_policy_must_fit_the_robot():
    policy = ScriptedPolicy()
    policy.spec.state_dims = {"ur5e": 7}
    with pytest.raises(ValueError, match="not trained on embodiment 'fake_arm'"):
        make_loop(policy)
    policy = ScriptedPolicy()
    policy.spec.cameras = ["wrist"]
    with pytest.raises(ValueError, match="missing \\['wrist'\\]"):
        make_loop(policy)


# --- faults: each must end with the arm held or stopped, and a log line ---


def test_stalled_camera_holds_the_arm(caplog):
    camera = FakeCamera("main", size=48, fps=200, fault="stall", fault_after=20)
    loop, arm = make_loop(camera=camera, max_steps=60)
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    camera.disconnect()
    assert report.holds["camera frame stale or missing"] > 10
    assert "camera 'main' frame is" in caplog.text and "old" in caplog.text
    moved_after_stall = arm.commands[-1]
    assert arm.holds >= report.holds["camera frame stale or missing"]
    assert np.array_equal(arm.position, moved_after_stall)


def test_garbage_frames_hold_the_arm(caplog):
    camera = FakeCamera("main", size=48, fps=200, fault="garbage", fault_after=10)
    loop, arm = make_loop(camera=camera, max_steps=60)
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    assert report.holds["camera frame stale or missing"] > 10
    assert "bad frame: expected uint8 [H, W, 3]" in caplog.text


def test_hung_policy_holds_then_stops(caplog):
    policy = ScriptedPolicy(fault="hang", fault_after=2)
    loop, arm = make_loop(policy, max_steps=200)
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    policy.release.set()
    assert report.holds["waiting for the policy"] > 0
    assert report.stopped and "no action from the policy" in report.stopped
    assert arm.stopped and "stopping the arm: no action from the policy" in caplog.text


def test_policy_error_is_logged_and_arm_held(caplog):
    loop, arm = make_loop(ScriptedPolicy(fault="raise", fault_after=1), max_steps=200)
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    assert "CUDA out of memory (injected)" in caplog.text
    assert report.holds["waiting for the policy"] > 0 and arm.stopped


def test_nan_actions_are_rejected(caplog):
    loop, arm = make_loop(ScriptedPolicy(fault="nan", fault_after=1))
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    assert report.holds["policy chunk rejected"] > 20
    assert "NaN" in caplog.text
    assert all(np.isfinite(c).all() for c in arm.commands)


class TimedArm(FakeArm):
    """A FakeArm that stamps every command with perf_counter; `slow_s` makes each command take that long."""

    def __init__(self, slow_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.slow_s, self.sent_at = slow_s, []

    def send_action(self, action):
        super().send_action(action)
        self.sent_at.append(time.perf_counter())
        time.sleep(self.slow_s)


class StampedPolicy(ScriptedPolicy):
    """Every chunk carries its call number in the gripper dimension; `asked_at` records when each call began
    (the observation was taken just before) and `silent_at` when the policy went silent or turned bad."""

    def __init__(self, hang_after: int | None = None, nan_always: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.hang_after, self.nan_always = hang_after, nan_always
        self.asked_at: list[float] = []
        self.silent_at: float | None = None

    def infer(self, obs):
        self.asked_at.append(time.perf_counter())
        if self.hang_after is not None and len(self.asked_at) > self.hang_after:
            self.silent_at = self.silent_at or self.asked_at[-1]
            self.release.wait()
        time.sleep(self.latency_s)
        chunk = np.tile(obs.state, (self.spec.horizon, 1)) + 0.001 * np.arange(1, self.spec.horizon + 1)[:, None]
        chunk[:, 6] = len(self.asked_at) / 1000
        if self.nan_always:
            self.silent_at = self.silent_at or self.asked_at[0]
            chunk[2, 3] = np.nan  # one bad value in a chunk that is otherwise fine
        return chunk.astype(np.float32)


def action_ages(arm: TimedArm, policy: StampedPolicy) -> np.ndarray:
    """Seconds between each executed action and the observation its chunk was computed from."""
    calls = [round(c[6] * 1000) for c in arm.commands]
    return np.array([t - policy.asked_at[c - 1] for t, c in zip(arm.sent_at, calls, strict=True)])


@pytest.mark.parametrize("async_inference", [True, False])
def test_a_silent_policy_stops_the_arm_at_the_timeout_and_no_stale_action_runs(async_inference, caplog):
    """The policy hangs on its 4th request: nothing planned before is executed past its chunk's window
    (H = 8 periods = 80 ms), and the stop comes policy_timeout_s (0.5 s) after the unanswered request, not 2x."""
    policy = StampedPolicy(hang_after=3, latency_s=0.005)
    safety = SafetyConfig(max_frame_age_s=0.1, policy_timeout_s=0.5)
    loop, arm = make_loop(policy, arm=TimedArm(control_hz=100.0), max_steps=400, safety=safety,
                          async_inference=async_inference)
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    policy.release.set()
    stopped_at = report.tick_starts[-1] + report.rows[-1]["work_ms"] / 1000  # the end of the tick that stopped
    assert report.stopped and "no action from the policy" in report.stopped and "limit" in report.stopped
    assert 0.45 < stopped_at - policy.silent_at < 0.5 + 0.25, report.stopped
    window = 8 * 0.01 + (0.005 if async_inference else 0.02)  # sync: the clock starts at arrival (latency)
    assert action_ages(arm, policy).max() < window + 0.03
    assert max(arm.sent_at) < policy.silent_at + window + 0.03  # nothing of an old chunk once the policy is silent


def test_overrunning_ticks_never_execute_actions_past_their_window():
    """An arm whose commands take 2.5 periods makes the clock skip ticks: steps then lag wall-clock time, and
    the chunk's wall-clock window (8 periods from its observation) must still bound every action's age."""
    policy = StampedPolicy(latency_s=0.002)
    arm = TimedArm(slow_s=0.025, control_hz=100.0)
    loop, arm = make_loop(policy, arm=arm, max_steps=60, safety=SafetyConfig(max_frame_age_s=0.2,
                                                                             policy_timeout_s=1.0))
    report = run(loop)
    assert report.stopped is None and len(arm.commands) > 10
    assert action_ages(arm, policy).max() < 8 * 0.01 + 0.03


def test_chunks_with_one_nan_each_stop_the_run_at_the_timeout(caplog):
    policy = StampedPolicy(nan_always=True, latency_s=0.002)
    loop, arm = make_loop(policy, max_steps=1000, safety=SafetyConfig(max_frame_age_s=0.1, policy_timeout_s=0.4))
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    assert report.stopped and "NaN" in report.stopped and "policy_timeout_s=0.4" in report.stopped
    stopped_at = report.tick_starts[-1] + report.rows[-1]["work_ms"] / 1000
    assert 0.35 < stopped_at - policy.silent_at < 0.4 + 0.25
    assert arm.commands == [] and report.holds["policy chunk rejected"] > 10
    assert "rejected the policy's chunk" in caplog.text


@pytest.mark.parametrize("mode", ["clip", "reject"])
def test_actions_beyond_joint_speed_are_clipped_or_rejected(mode, caplog):
    safety = SafetyConfig(on_violation=mode, max_frame_age_s=0.1, policy_timeout_s=0.4)
    arm = FakeArm(control_hz=100.0)
    arm.spec.limits.joint_acceleration = [1000.0] * 6  # this test is about the speed limit alone
    loop, arm = make_loop(ScriptedPolicy(fault="far", fault_after=1), arm=arm, safety=safety)
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    steps = np.diff(np.stack([np.zeros(7)] + arm.commands)[:, 0])
    assert np.abs(steps).max() <= 2.0 / 100 + 1e-6  # joint speed limit 2 rad/s at 100 Hz
    assert "joint velocity joint_0=" in caplog.text
    if mode == "reject":
        assert report.holds["safety rejected the action"] > 20


def test_protective_stop_ends_the_episode(caplog):
    loop, arm = make_loop(arm=FakeArm(control_hz=100.0, fault_at_step=10))
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    assert report.stopped == "robot fault: protective stop (fake)" and arm.stopped
    assert len(arm.commands) == 10


def test_signal_triggers_estop_and_stops_the_arm(caplog):
    estop = EStop()
    estop.install_signal_handlers()
    arm = FakeArm(control_hz=100.0)
    loop = ControlLoop(arm, {"main": FakeCamera("main", 48, 200)}, ScriptedPolicy(),
                       LoopConfig(max_steps=500), "test", estop)
    loop.start()
    threading.Timer(0.15, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        with caplog.at_level(logging.WARNING):
            report = run(loop)
    finally:
        estop.restore_signal_handlers()
    assert report.stopped == "e-stop (signal SIGINT)" and arm.stopped and report.steps < 500
    assert "E-STOP: signal SIGINT" in caplog.text


def test_workspace_box_limits_cartesian_moves():
    from vla.robot_io.sim import sim_spec

    spec = sim_spec(30.0)
    layer = SafetyLayer(spec, SafetyConfig(workspace_margin_m=0.0))
    at_edge = RobotState(state=np.zeros(7, np.float32), timestamp=0.0, tcp_position=np.array([0.495, 0.7, 0.2]))
    verdict = layer.check(np.array([1.0, 0.0, 0.0, 0.0]), at_edge)
    assert verdict.action[0] == pytest.approx(0.5, abs=1e-4)  # 1 cm asked, 0.5 cm left to the edge
    assert "workspace x=" in verdict.events[0]
    assert SafetyLayer(spec, SafetyConfig()).check(np.zeros(3), at_edge).action is None  # wrong width


def test_rejected_actions_do_not_move_the_tracked_tool_target():
    """In reject mode a refused action never reaches the arm, so it must not shift the target the box is checked
    from; arms that do not integrate their own target (UR speedL / moveL) are checked from the measured tool."""
    import dataclasses

    from vla.robot_io.sim import sim_spec

    spec = sim_spec(30.0)
    layer = SafetyLayer(spec, SafetyConfig(workspace_margin_m=0.0, on_violation="reject"))
    near = RobotState(state=np.zeros(7, np.float32), timestamp=0.0, tcp_position=np.array([0.495, 0.7, 0.2]))
    assert layer.check(np.array([1.0, 0.0, 0.0, 2.0]), near).action is None  # gripper beyond its bound
    inside = RobotState(state=np.zeros(7, np.float32), timestamp=0.0, tcp_position=np.array([0.48, 0.7, 0.2]))
    assert layer.check(np.array([1.0, 0.0, 0.0, 0.0]), inside).action[0] == pytest.approx(1.0)  # 1 cm: fine
    clip = SafetyLayer(spec, SafetyConfig(workspace_margin_m=0.0))
    clip.check(np.array([1.0, 0.0, 0.0, 0.0]), inside)  # target 0.49, the simulator's hand lags at 0.48
    assert clip.check(np.array([1.0, 0.0, 0.0, 0.0]), inside).action[0] == pytest.approx(1.0)  # 0.49 -> 0.50
    assert clip.check(np.array([1.0, 0.0, 0.0, 0.0]), inside).action[0] == pytest.approx(0.0)  # at the wall
    measured = SafetyLayer(dataclasses.replace(spec, integrates_ee_deltas=False), SafetyConfig(workspace_margin_m=0.0))
    for _ in range(3):  # every check starts from the measured tool at 0.48
        assert measured.check(np.array([1.0, 0.0, 0.0, 0.0]), inside).action[0] == pytest.approx(1.0)


# --- server and client ---


@pytest.fixture()
def server():
    from vla.deploy.server import PolicyServer

    policy = ScriptedPolicy(latency_s=0.0)
    srv = PolicyServer(policy, TOKEN, port=0).start_in_thread()
    yield srv
    srv.shutdown()


def test_client_round_trip_and_reconnect(server):
    from vla.deploy.client import RemotePolicy

    client = RemotePolicy(f"ws://127.0.0.1:{server.port}", TOKEN)
    assert client.spec.horizon == 8 and server.host == "127.0.0.1"
    obs = ObservationMessage(np.zeros((1, 32, 32, 3), np.uint8), np.ones(7, np.float32), "go", "fake_arm")
    first = client.infer(obs)
    assert first.shape == (8, 7) and np.allclose(first[0], 1.01)
    client._connection.close()  # the network drops the connection: the next request reconnects
    assert np.array_equal(client.infer(obs), first)
    assert client.health()["served"] == 2


def test_server_rejects_bad_requests_and_stays_up(server):
    from websockets.sync.client import connect

    from vla.deploy.client import RemotePolicy
    from vla.deploy.protocol import pack, unpack

    with pytest.raises(PermissionError, match="HTTP 401"):
        RemotePolicy(f"ws://127.0.0.1:{server.port}", "wrong-token-123")
    url, header = f"ws://127.0.0.1:{server.port}", {"Authorization": f"Bearer {TOKEN}"}
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus, match="401"):  # a second Authorization header is refused, not a crash
        connect(url, additional_headers=[("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer x")])
    with connect(url, additional_headers=header) as ws:
        bad = {"type": "infer", "observation": {"images": np.zeros((1, 8, 8, 3), np.uint8),
                                                "state": np.ones(7, np.float32), "instruction": "go",
                                                "embodiment": "fake_arm"}}
        ws.send(pack(bad))
        assert "images must be uint8 [1, 32, 32, 3]" in unpack(ws.recv())["message"]
        ws.send(b"\xc1 not msgpack")
        assert "not a valid msgpack" in unpack(ws.recv())["message"]
        ws.send("text frame")
        assert "binary msgpack" in unpack(ws.recv())["message"]
        ws.send(pack({"type": "infer", "observation": dict(bad["observation"], embodiment="ur5e")}))
        assert "unknown embodiment 'ur5e'" in unpack(ws.recv())["message"]
        ws.send(pack({"type": "infer", "observation": dict(bad["observation"], embodiment=["fake_arm"])}))
        assert "unknown embodiment" in unpack(ws.recv())["message"]
        ws.send(pack({"type": "health", "junk": [{}] * 5000}))  # container limits: no memory blow-up
        assert "not a valid msgpack" in unpack(ws.recv())["message"]
        good = dict(bad["observation"], images=np.zeros((1, 32, 32, 3), np.uint8))
        ws.send(pack({"type": "infer", "observation": good | {"prefix": np.zeros((3, 7), np.float32),
                                                              "prefix_weights": np.full(3, 2.0, np.float32)}}))
        assert "within [0, 1]" in unpack(ws.recv())["message"]
        ws.send(pack({"type": "infer", "observation": good}))
        assert unpack(ws.recv())["actions"].shape == (8, 7)
    with connect(url, additional_headers=header, max_size=None) as ws:
        ws.send(b"\x00" * (9 * 2**20))  # over the 8 MiB cap: the server closes this connection ...
        with pytest.raises(Exception, match="1009|message too big"):
            ws.recv(timeout=5)
    assert RemotePolicy(url, TOKEN).health()["type"] == "health"  # ... and keeps serving


def test_health_answers_during_inference():
    from vla.deploy.client import RemotePolicy
    from vla.deploy.server import PolicyServer

    slow = ScriptedPolicy(latency_s=1.0)
    srv = PolicyServer(slow, TOKEN, port=0).start_in_thread()
    url = f"ws://127.0.0.1:{srv.port}"
    obs = ObservationMessage(np.zeros((1, 32, 32, 3), np.uint8), np.ones(7, np.float32), "go", "fake_arm")
    answers = []
    busy_client = threading.Thread(target=lambda: answers.append(RemotePolicy(url, TOKEN).infer(obs)))
    busy_client.start()
    time.sleep(0.2)
    start = time.perf_counter()
    health = RemotePolicy(url, TOKEN).health()
    assert health["busy"] and time.perf_counter() - start < 0.5
    busy_client.join()
    assert answers[0].shape == (8, 7)
    srv.shutdown()


def test_server_killed_mid_episode_holds_then_stops(caplog):
    from vla.deploy.client import RemotePolicy
    from vla.deploy.server import PolicyServer

    srv = PolicyServer(ScriptedPolicy(latency_s=0.0), TOKEN, port=0).start_in_thread()
    client = RemotePolicy(f"ws://127.0.0.1:{srv.port}", TOKEN, timeout_s=0.2, retries=2)
    threading.Timer(0.2, srv.shutdown).start()
    loop, arm = make_loop(client, max_steps=300)
    with caplog.at_level(logging.WARNING):
        report = run(loop)
    assert len(arm.commands) > 5  # it ran before the server died
    assert report.stopped and "no action from the policy" in report.stopped and arm.stopped
    assert "unreachable" in caplog.text


def test_client_imports_neither_torch_nor_transformers():
    code = ("import sys, vla.deploy.client, vla.deploy.loop, vla.robot_io.fake; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unauthenticated_server_refuses_to_start(monkeypatch):
    from vla.deploy.server import main

    monkeypatch.delenv("VLA_SERVER_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="VLA_SERVER_TOKEN"):
        main(["--checkpoint=unused"])


# --- end to end: a trained checkpoint drives the simulator through deploy.py ---


def sim_deploy_config(tmp_path, **changes):
    from vla.deploy.run import DeployConfig
    from vla.robot_io.config import SimArmConfig

    robot = SimArmConfig(task="reach", image_size=32, max_steps=25, control_hz=20.0)
    return DeployConfig(robot=robot, episodes=2, num_inference_steps=2, output_dir=str(tmp_path),
                        loop=LoopConfig(max_steps=25, safety=SafetyConfig(max_frame_age_s=0.5)), **changes)


def check_sim_summary(summary, tmp_path):
    assert [e["steps"] for e in summary["episodes"]] == [25, 25]  # the untrained policy runs to max_steps
    for episode in summary["episodes"]:
        assert episode["stopped"] is None and episode["chunks"] >= 4
        assert sum(episode["held_ticks"].values()) < 10
    assert (tmp_path / "steps_episode_1.csv").read_text().count("\n") == 26
    assert (tmp_path / "timing_episode_1.png").stat().st_size > 0


def test_deploy_checkpoint_in_process(tiny_checkpoint, tmp_path):
    from vla.deploy.run import main

    main([f"--checkpoint={tiny_checkpoint}", "--robot.type=sim", "--robot.task=reach", "--robot.image_size=32",
          "--robot.control_hz=20", "--episodes=2", "--num_inference_steps=2", "--loop.max_steps=25",
          "--loop.safety.max_frame_age_s=0.5", f"--output_dir={tmp_path}"])
    import json

    check_sim_summary(json.loads((tmp_path / "summary.json").read_text()), tmp_path)


def test_deploy_through_policy_server(tiny_checkpoint, tmp_path, monkeypatch):
    from vla.deploy.run import deploy
    from vla.deploy.runner import LocalPolicy
    from vla.deploy.server import PolicyServer

    srv = PolicyServer(LocalPolicy.from_checkpoint(str(tiny_checkpoint), num_steps=2), TOKEN, port=0)
    srv.start_in_thread()
    monkeypatch.setenv("VLA_SERVER_TOKEN", TOKEN)
    try:
        summary = deploy(sim_deploy_config(tmp_path, server=f"ws://127.0.0.1:{srv.port}"))
    finally:
        srv.shutdown()
    check_sim_summary(summary, tmp_path)
    assert srv.served >= 8


def test_deploy_needs_exactly_one_policy_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one of --checkpoint"):
        sim_deploy_config(tmp_path)


def test_record_sim_expert_demos_through_the_loop(tmp_path):
    """Teleoperated demos go through the loop + safety layer into a LeRobot dataset the trainer reads."""
    from vla.data.dataset import load_chunked_demos
    from vla.deploy.record import RecordConfig, record
    from vla.robot_io.config import SimArmConfig

    cfg = RecordConfig(robot=SimArmConfig(task="reach", image_size=32, max_steps=150, control_hz=200.0),
                       episodes=2, max_steps=150, image_size=32, root=str(tmp_path / "rec"), repo_id="test/rec",
                       safety=SafetyConfig(max_frame_age_s=0.5))
    demos = load_chunked_demos(str(record(cfg)), "test/rec", chunk_size=4, expected_action_dim=4,
                               expected_state_dim=7)
    assert int(demos.episode_index.max()) == 1  # two kept episodes: the expert succeeded in both
    assert demos.images.shape[1:] == (1, 32, 32, 3) and demos.embodiment == "metaworld_sawyer"
    assert demos.tasks == ["reach the goal"]
    assert (demos.actions.abs() <= 1.0 + 1e-6).all()  # what was executed, after the safety layer
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        record(cfg)


def test_robot_pc_imports_stay_light():
    """deploy.py with a server and real devices needs neither torch nor the simulator."""
    code = ("import sys, vla.deploy.run, vla.deploy.record; "
            "bad = [m for m in ('torch', 'transformers', 'mujoco', 'metaworld') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    from vla.robot_io.sim import FIRST_EVAL_SEED
    from vla.sim.demos import EVAL_SEED_START

    assert FIRST_EVAL_SEED == EVAL_SEED_START


@pytest.mark.parametrize("name", ["sim_reach", "ur5e_realsense", "so101"])
def test_deploy_recipes_parse(name):
    import draccus

    from vla.deploy.run import DeployConfig

    args = ["--checkpoint=ckpt"] if name == "so101" else []  # the recipe leaves the checkpoint to the command line
    cfg = draccus.parse(DeployConfig, config_path=f"configs/deploy/{name}.yaml", args=args)
    assert cfg.robot.control_hz == 30 and cfg.output_dir.startswith("outputs/deploy")


def test_keypress_triggers_estop(monkeypatch):
    """q typed in the terminal (a pseudo-terminal here) is the e-stop."""
    import io

    master, slave = os.openpty()
    terminal = io.TextIOWrapper(io.FileIO(slave, "r+", closefd=False))
    monkeypatch.setattr(sys, "stdin", terminal)
    estop = EStop()
    keys = estop.watch_keyboard()
    time.sleep(0.2)
    os.write(master, b"q")
    assert estop.event.wait(2.0) and estop.reason == "key pressed"
    keys.join(2.0)  # it restores the terminal's mode before the test closes it
    os.close(master)
    os.close(slave)


def test_safety_rejects_when_the_state_is_not_finite_and_never_passes_a_limit():
    arm = FakeArm(control_hz=100.0)
    layer = SafetyLayer(arm.spec, SafetyConfig())
    bad = RobotState(state=np.zeros(7, np.float32), timestamp=0.0, joint_positions=np.array([0, 0, 0, 0, 0, np.nan]))
    verdict = layer.check(np.zeros(7), bad)
    assert verdict.action is None and "NaN" in verdict.events[0]
    # from rest, the first command may only change velocity by acceleration * dt = 20 * 0.01 = 0.2 rad/s
    rest = RobotState(state=np.zeros(7, np.float32), timestamp=0.0, joint_positions=np.zeros(6))
    first = layer.check(np.array([1.0] * 6 + [0.5]), rest).action
    assert np.allclose(first[:6], 0.2 * 0.01)
    # approaching the position limit at speed: the acceleration clip must not carry a joint past it
    joints = np.full(6, 2.99)
    layer._last_velocity = np.full(6, 2.0)
    near = RobotState(state=np.zeros(7, np.float32), timestamp=0.0, joint_positions=joints)
    assert layer.check(np.array([3.2] * 6 + [0.5]), near).action[:6].max() <= 3.0 + 1e-6


def test_episode_end_leaves_the_arm_held():
    loop, arm = make_loop(max_steps=20)
    report = run(loop)
    assert report.stopped is None and arm.holds == sum(report.holds.values()) + 1


def test_rtc_needs_the_receding_schedule():
    with pytest.raises(ValueError, match="schedule.mode=receding"):
        LoopConfig(rtc=True, schedule=ScheduleConfig("temporal"))


def test_loop_rate_must_be_the_robots_rate():
    """The safety layer and the driver time commands with the robot's rate: a loop ticking at another rate
    would scale joint velocity by the ratio, so it is refused (deploy.py applies --loop.control_hz to the robot)."""
    with pytest.raises(ValueError, match="loop.control_hz=200 but the robot is set up for 100 Hz"):
        make_loop(control_hz=200.0)


def test_hung_policy_gets_a_deadline_on_the_server():
    from vla.deploy.client import RemotePolicy
    from vla.deploy.server import PolicyServer

    policy = ScriptedPolicy(fault="hang", latency_s=0.0)
    srv = PolicyServer(policy, TOKEN, port=0, inference_timeout_s=0.3).start_in_thread()
    client = RemotePolicy(f"ws://127.0.0.1:{srv.port}", TOKEN, timeout_s=3.0)
    obs = ObservationMessage(np.zeros((1, 32, 32, 3), np.uint8), np.ones(7, np.float32), "go", "fake_arm")
    try:
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match="inference_timeout_s=0.3"):
            client.infer(obs)
        assert time.perf_counter() - start < 1.5
        health = client.health()
        assert health["healthy"] is False and "inference_timeout_s" in health["problem"]
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match="policy unavailable"):  # refused at once while it is stuck
            client.infer(obs)
        assert time.perf_counter() - start < 0.3
        policy.release.set()  # the stuck call returns: the server takes requests again
        deadline = time.perf_counter() + 2.0
        while not client.health()["healthy"] and time.perf_counter() < deadline:
            time.sleep(0.02)
        assert client.infer(obs).shape == (8, 7)
    finally:
        policy.release.set()
        srv.shutdown()


def test_client_stalled_mid_frame_is_dropped():
    import socket

    from vla.deploy.server import PolicyServer

    srv = PolicyServer(ScriptedPolicy(), TOKEN, port=0, client_timeout_s=0.3).start_in_thread()
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=3.0)
        sock.sendall(("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                      f"Authorization: Bearer {TOKEN}\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(4096)
        assert response.startswith(b"HTTP/1.1 101")
        sock.sendall(b"\x82\xfe\x10\x00" + b"mask" + b"x" * 10)  # a masked 4096-byte binary frame, 10 bytes of it
        start, closed, received = time.perf_counter(), False, b""
        while time.perf_counter() - start < 3.0:
            chunk = sock.recv(4096)
            received += chunk
            if not chunk or b"\x88" in received:  # EOF, or the server's close frame (opcode 8)
                closed = True
                break
        sock.close()
        assert closed and time.perf_counter() - start < 2 * 0.3 + 0.5
    finally:
        srv.shutdown()


def test_state_beyond_float32_is_refused(server):
    from vla.deploy.client import RemotePolicy

    client = RemotePolicy(f"ws://127.0.0.1:{server.port}", TOKEN)
    obs = ObservationMessage(np.zeros((1, 32, 32, 3), np.uint8), np.full(7, 1e300), "go", "fake_arm")
    with pytest.raises(RuntimeError, match="state has values beyond the float32 range"):
        client.infer(obs)
    obs.state = np.ones(7)
    obs.prefix, obs.prefix_weights = np.full((2, 7), -1e39), np.ones(2)
    with pytest.raises(RuntimeError, match="prefix has values beyond the float32 range"):
        client.infer(obs)


@pytest.mark.parametrize("direction", [[-1.0, -1.0, -1.0], [1.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
def test_simulated_hand_stays_in_the_workspace_box(direction):
    """Drive the simulated hand into a corner / the floor of the box, toggling the gripper: the measured hand
    stays inside the box to within 1 mm (10 mm over it and 4 mm under the floor before the layer bounded the
    integrated target instead of the lagging measured position), and the measured-position check stays quiet."""
    from vla.robot_io.sim import SimRobot, SimRobotConfig

    robot = SimRobot(SimRobotConfig(task="reach", image_size=32, max_steps=200))
    robot.connect()
    try:
        robot.reset()
        layer = SafetyLayer(robot.spec, SafetyConfig())  # default margin 1 cm
        low, high = np.array(robot.spec.limits.workspace_low), np.array(robot.spec.limits.workspace_high)
        outside = []
        for i in range(120):
            action = layer.check(np.array(direction + [1.0 if i % 20 < 10 else -1.0]), robot.get_state()).action
            robot.send_action(action)
            tcp = robot.get_state().tcp_position
            outside.append(np.max(np.concatenate([low - tcp, tcp - high])))
            assert layer.workspace_violation(robot.get_state()) is None
        assert max(outside) < 0.001 and max(outside) > -0.02  # it did reach the wall
    finally:
        robot.disconnect()
    far = RobotState(state=np.zeros(7, np.float32), timestamp=0.0, tcp_position=np.array([0.0, 0.7, 0.03]))
    assert "20.0 mm outside the workspace box" in layer.workspace_violation(far)


def test_policy_and_robot_must_agree_on_action_names_kind_and_rate():
    """A 7-D joint policy must not drive a 7-D end-effector arm, nor play its chunks at another rate than the
    demonstrations were recorded at (unless asked, with a warning)."""
    arm = FakeArm(control_hz=100.0)
    cameras = {"main": FakeCamera("main")}
    spec = PolicySpec.for_robot(arm.spec, ["main"], 32, 8)
    check_compatible(spec, arm, cameras)
    other_kind = dataclasses.replace(spec, action_kinds={"fake_arm": "ee_delta"})
    with pytest.raises(ValueError, match="trained with action kind ee_delta, the robot has joint_position"):
        check_compatible(other_kind, arm, cameras)
    renamed = dataclasses.replace(spec, action_names={"fake_arm": ["x", "y", "z", "roll", "pitch", "yaw", "grip"]})
    with pytest.raises(ValueError, match=r"action names \['x', .*the robot has \['joint_0'"):
        check_compatible(renamed, arm, cameras)
    slow = dataclasses.replace(spec, fps={"fake_arm": 10.0})
    with pytest.raises(ValueError, match="recorded at 10 fps, the robot executes actions at 100 Hz.*10.00x.*"
                                         "--loop.allow_rate_mismatch"):
        check_compatible(slow, arm, cameras)
    check_compatible(slow, arm, cameras, allow_rate_mismatch=True)
    with pytest.raises(ValueError, match="trained with state width 6, the robot has 7"):
        check_compatible(dataclasses.replace(spec, state_dims={"fake_arm": 6}), arm, cameras)
    with pytest.raises(ValueError, match="does not record the action names, kind and fps"):
        check_compatible(dataclasses.replace(spec, action_kinds={}), arm, cameras)


def test_checkpoint_spec_carries_the_training_data_description(tiny_checkpoint):
    from vla.deploy.runner import LocalPolicy

    spec = LocalPolicy.from_checkpoint(str(tiny_checkpoint)).spec
    name = next(iter(spec.state_dims))
    assert (spec.action_kinds[name], spec.fps[name], spec.action_names[name]) == \
        ("ee_delta", 80.0, ["dx", "dy", "dz", "gripper"])
    assert PolicySpec.from_dict(spec.to_dict()) == spec  # as the server sends it
