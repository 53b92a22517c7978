"""A UR cell without hardware: the Robotiq 2F driver against a fake URCap socket server, alone and composed into
the UR arm, and a simulated cell (fake RTDE + fake Robotiq + fake camera) running whole episodes through deploy(),
with the bring-up flags --dry_run and --speed_scale."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fakes import HOME, FakeRobotiqServer  # tests/fakes.py

from vla.deploy.loop import LoopConfig, check_compatible
from vla.deploy.protocol import ObservationMessage, PolicySpec
from vla.deploy.run import DeployConfig, deploy
from vla.deploy.safety import SafetyConfig
from vla.robot_io.config import FakeCameraConfig, URArmConfig
from vla.robot_io.robotiq import RobotiqConfig, RobotiqGripper
from vla.robot_io.ur import URConfig, ur_spec


def wait_for(condition, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def connected_gripper(server: FakeRobotiqServer, **options) -> RobotiqGripper:
    gripper = RobotiqGripper(RobotiqConfig(port=server.port, rate_hz=100.0, **options), "127.0.0.1")
    gripper.connect()
    return gripper


def test_opening_maps_both_ways_and_either_end_can_mean_open():
    config = RobotiqConfig()
    assert config.to_position(0.0) == 0 and config.to_position(1.0) == 255 and config.to_position(7.0) == 255
    inverted = RobotiqConfig(value_open=1.0, value_closed=0.0, position_open=3, position_closed=230)
    assert inverted.to_position(1.0) == 3 and inverted.to_position(0.0) == 230
    assert inverted.to_value(230) == pytest.approx(0.0) and inverted.to_value(3) == pytest.approx(1.0)
    assert inverted.to_value(inverted.to_position(0.25)) == pytest.approx(0.25, abs=0.005)
    with pytest.raises(ValueError, match="must differ"):
        RobotiqConfig(value_open=1.0, value_closed=1.0)
    with pytest.raises(ValueError, match="position_open .* below position_closed"):
        RobotiqConfig(position_open=200, position_closed=10)
    with pytest.raises(ValueError, match="2f-140"):
        RobotiqConfig(model="hand-e")


def test_commands_go_out_and_the_opening_and_object_come_back(robotiq_server):
    robotiq_server.object_at = 150
    gripper = connected_gripper(robotiq_server, speed=200, force=50)
    try:
        assert gripper.state().value == 0.0 and not gripper.state().object_detected
        gripper.command(1.0)
        assert wait_for(lambda: gripper.state().object_detected)
        state = gripper.state()
        assert state.position == 150 and state.value == pytest.approx(150 / 255) and state.fault is None
        assert "SET POS 255 SPE 200 FOR 50 GTO 1" in robotiq_server.requests
        sent = len(robotiq_server.positions_requested())
        time.sleep(0.1)
        assert len(robotiq_server.positions_requested()) == sent  # an unchanged target is not re-sent
        gripper.command(0.0)
        assert wait_for(lambda: gripper.state().position == 0)
        assert robotiq_server.positions_requested() == [255, 0]
    finally:
        gripper.disconnect()


def test_the_loop_never_waits_on_a_slow_gripper(robotiq_server):
    gripper = connected_gripper(robotiq_server)
    robotiq_server.delay_s = 1.0  # every answer now takes a second
    try:
        start = time.perf_counter()
        for i in range(100):
            gripper.command(i % 2)
            gripper.state()
        assert time.perf_counter() - start < 0.5  # no call waited for an answer
    finally:
        gripper.disconnect()


def test_an_inactive_gripper_is_activated_or_refused(robotiq_server):
    robotiq_server.vars.update(ACT=0, STA=0)
    with pytest.raises(RuntimeError, match="not activated: activate it from the teach pendant"):
        connected_gripper(robotiq_server, activate=False)
    assert not any(r.startswith("SET") for r in robotiq_server.requests)  # refused without touching it
    gripper = connected_gripper(robotiq_server)
    try:
        assert robotiq_server.vars["STA"] == 3 and robotiq_server.requests.count("SET ACT 1") == 1
        assert robotiq_server.requests.index("SET ACT 0 ATR 0") < robotiq_server.requests.index("SET ACT 1")
        assert gripper.state().fault is None
    finally:
        gripper.disconnect()


def test_a_wrong_port_says_where_it_looked():
    free = FakeRobotiqServer()
    port = free.port
    free.close()
    gripper = RobotiqGripper(RobotiqConfig(port=port), "127.0.0.1")
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.*URCap"):
        gripper.connect()


def test_a_port_where_another_service_answers_is_named():
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))  # a service that greets like the UR dashboard server

    def greet():
        connection, _ = server.accept()
        connection.recv(1024)
        connection.sendall(b"Connected: Universal Robots Dashboard Server\n")

    threading.Thread(target=greet, daemon=True).start()
    gripper = RobotiqGripper(RobotiqConfig(port=server.getsockname()[1]), "127.0.0.1")
    with pytest.raises(ConnectionError, match="does not answer like the Robotiq URCap .* the URCap's port \\(63352\\)"):
        gripper.connect()
    server.close()


def test_a_fault_code_and_a_dropped_connection_become_faults(robotiq_server):
    gripper = connected_gripper(robotiq_server)
    try:
        robotiq_server.vars["FLT"] = 14
        assert wait_for(lambda: gripper.state().fault is not None)
        assert gripper.state().fault == "Robotiq gripper fault 0x0e: overcurrent triggered"
        robotiq_server.vars["FLT"] = 0
        assert wait_for(lambda: gripper.state().fault is None)
        robotiq_server.drop()
        assert wait_for(lambda: gripper.state().fault is not None)
        assert "connection lost" in gripper.state().fault
        gripper.reset()  # the next episode reconnects
        assert gripper.state().fault is None
        gripper.command(1.0)
        assert wait_for(lambda: gripper.state().position == 255)
    finally:
        gripper.disconnect()


# --- composed into the UR arm ---


def ur_with_gripper(server: FakeRobotiqServer, **options) -> URArmConfig:
    robotiq = RobotiqConfig(port=server.port, rate_hz=100.0)
    return URArmConfig(host="127.0.0.1", gripper="robotiq", robotiq=robotiq, **{"watchdog_hz": 0.0} | options)


def test_a_gripper_that_stops_answering_is_a_fault(robotiq_server):
    gripper = connected_gripper(robotiq_server, readback_timeout_s=0.3)
    try:
        assert gripper.state().fault is None
        robotiq_server.delay_s = 0.5  # answers, but too late for a status every 0.3 s
        assert wait_for(lambda: gripper.state().fault is not None)
        assert "no status for" in gripper.state().fault
    finally:
        robotiq_server.delay_s = 0.0
        gripper.disconnect()


def test_reconnecting_never_leaves_two_threads_on_one_gripper(robotiq_server):
    import threading

    gripper = connected_gripper(robotiq_server)
    robotiq_server.delay_s = 0.3
    gripper.disconnect()
    robotiq_server.delay_s = 0.0
    gripper.connect()
    try:
        time.sleep(0.2)
        assert [t.name for t in threading.enumerate()].count("robotiq") == 1
        assert gripper.state().fault is None
        gripper.command(1.0)  # a target equal to one sent on the old connection still goes out
        assert wait_for(lambda: gripper.state().position == 255)
    finally:
        gripper.disconnect()


def test_the_ur_arm_drives_its_gripper_and_reports_its_faults(rtde, robotiq_server):
    robot = ur_with_gripper(robotiq_server).make()
    assert robot.spec.action_names[-1] == "gripper" and robot.spec.limits.action_high[-1] == 1.0
    robot.connect()
    try:
        robot.send_action(np.append(HOME, 1.0))
        assert rtde.names()[-1] == "servoJ" and len(rtde.calls[-1][1][0]) == 6  # the arm gets the joints only
        assert wait_for(lambda: robot.get_state().state[6] == 1.0)  # the measured opening, in policy units
        robotiq_server.vars["FLT"] = 8
        assert wait_for(lambda: robot.get_state().fault is not None)
        assert "maximum operating temperature" in robot.get_state().fault
    finally:
        robot.disconnect()


def test_a_stopped_arm_sends_its_gripper_nothing_new(rtde, robotiq_server):
    robot = ur_with_gripper(robotiq_server).make()
    robot.connect()
    try:
        robot.send_action(np.append(HOME, 1.0))
        assert wait_for(lambda: robotiq_server.positions_requested() == [255])
        robot.gripper.command(0.0)  # queued in the same instant as the stop
        robot.stop()
        time.sleep(0.1)
        robot.gripper.command(0.0)
        time.sleep(0.1)
        assert robotiq_server.positions_requested() == [255]  # it keeps its grip
        robot.reset()
        robot.send_action(np.append(HOME, 0.0))
        assert wait_for(lambda: robotiq_server.positions_requested() == [255, 0])  # the next episode commands it
    finally:
        robot.disconnect()


def test_a_gripper_that_is_not_there_stops_the_arm_connecting(rtde):
    free = FakeRobotiqServer()
    free.close()
    robot = ur_with_gripper(free).make()
    with pytest.raises(ConnectionError, match="Robotiq gripper"):
        robot.connect()
    assert robot.control is None and "servoJ" not in rtde.names()  # RTDE closed again, nothing sent


def test_a_policy_without_a_gripper_cannot_drive_a_gripper_config(rtde, robotiq_server):
    robot = ur_with_gripper(robotiq_server).make()
    spec = PolicySpec.for_robot(ur_spec(URConfig(host="x")), ["corner"], 32, 4)  # trained without the gripper
    with pytest.raises(ValueError, match="drives a gripper .* trained without a gripper dimension"):
        check_compatible(spec, robot, {"corner": None})


# --- a simulated UR cell through deploy() ---


class PickPolicy:
    """Keeps the arm where it is and closes the gripper for the first `close_chunks` chunks, then opens it."""

    def __init__(self, close_chunks: int = 8, horizon: int = 4):
        robot = ur_spec(URConfig(host="x", gripper="robotiq", control_hz=50.0))
        self.spec = PolicySpec.for_robot(robot, ["corner"], 32, horizon)
        self.close_chunks, self.calls, self.states = close_chunks, 0, []

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        assert obs.images.shape == (1, 32, 32, 3)
        self.calls += 1
        self.states.append(obs.state.copy())
        chunk = np.tile(obs.state, (self.spec.horizon, 1))
        chunk[:, 6] = 1.0 if self.calls <= self.close_chunks else 0.0
        return chunk


def ur_cell(server: FakeRobotiqServer, tmp_path, robot_options: dict | None = None, **options) -> DeployConfig:
    return DeployConfig(checkpoint="unused", robot=ur_with_gripper(server, control_hz=50.0, **(robot_options or {})),
                        cameras=[FakeCameraConfig(name="corner", size=48)], instruction="pick up the cube",
                        output_dir=str(tmp_path),
                        loop=LoopConfig(max_steps=80, safety=SafetyConfig(max_frame_age_s=0.5, policy_timeout_s=2.0)),
                        **options)


def test_a_ur_cell_closes_and_opens_its_gripper_from_the_policys_actions(rtde, robotiq_server, tmp_path):
    robotiq_server.object_at = 180
    policy = PickPolicy()
    summary = deploy(ur_cell(robotiq_server, tmp_path), policy=policy)
    episode = summary["episodes"][0]
    assert episode["stopped"] is None and episode["steps"] == 80
    assert robotiq_server.positions_requested() == [255, 0]  # closed, then opened: each sent once
    opening = [state[6] for state in policy.states]  # what the policy saw of the gripper
    assert max(opening) == pytest.approx(180 / 255) and opening[-1] < 0.5  # it held the object, then let go
    assert len([c for c in rtde.names() if c == "servoJ"]) >= 40 and rtde.names()[-1] == "receive.disconnect"
    assert (tmp_path / "summary.json").exists()


def test_a_gripper_fault_mid_episode_stops_the_arm(rtde, robotiq_server, tmp_path):
    import threading

    threading.Timer(0.4, lambda: robotiq_server.vars.update(FLT=14)).start()
    summary = deploy(ur_cell(robotiq_server, tmp_path), policy=PickPolicy())
    stopped = summary["episodes"][0]["stopped"]
    assert stopped == "robot fault: Robotiq gripper fault 0x0e: overcurrent triggered"
    assert summary["episodes"][0]["steps"] < 80 and "stopScript" in rtde.names()


# --- bring-up flags ---

MOTION = {"servoJ", "speedL", "moveL", "moveJ"}


def test_a_dry_run_reads_everything_and_moves_nothing(rtde, robotiq_server, tmp_path):
    policy = PickPolicy()
    ur = {"home": HOME, "watchdog_hz": 2.0}
    summary = deploy(ur_cell(robotiq_server, tmp_path, robot_options=ur, dry_run=True), policy=policy)
    episode = summary["episodes"][0]
    assert summary["dry_run"] and episode["stopped"] is None and episode["steps"] == 80
    assert policy.calls >= 10 and not MOTION & set(rtde.names())  # the policy ran; no motion command, not even home
    assert rtde.names().count("kickWatchdog") >= 80  # but the controller's watchdog was kept alive every tick
    assert robotiq_server.positions_requested() == []  # nor a gripper command
    rows = (tmp_path / "actions_episode_0.csv").read_text().splitlines()
    assert rows[0] == "step,chunk_step,base,shoulder,elbow,wrist_1,wrist_2,wrist_3,gripper"
    assert len(rows) > 40 and rows[1].endswith(",1.0")  # what would have been sent: close the gripper
    assert rows[1].split(",")[3] == "-1.57"  # values as sent, not float32 noise


def test_a_dry_run_restarts_an_expired_control_script_without_moving_home(rtde, robotiq_server):
    """The controller's watchdog ends the script when nothing kicks it (connect, warm-up): a dry run's reset must
    restart it, as a real reset does, but not move home."""
    from vla.deploy.dry_run import DryRunRobot

    robot = DryRunRobot(ur_with_gripper(robotiq_server, home=HOME, watchdog_hz=10.0).for_dry_run().make())
    robot.connect()
    try:
        rtde.last_kick -= 1.0  # a second without a kick
        assert "control script is not running" in robot.get_state().fault
        robot.reset()
        assert "reuploadScript" in rtde.names() and "moveJ" not in rtde.names()
        assert robot.get_state().fault is None
        with pytest.raises(AttributeError, match="no attribute 'control'"):
            robot.control  # noqa: B018 (the driver's command interfaces are not reachable through the wrapper)
    finally:
        robot.disconnect()


def test_a_dry_run_never_activates_the_gripper_and_refuses_recording(rtde, robotiq_server, tmp_path):
    robotiq_server.vars.update(ACT=0, STA=0)
    with pytest.raises(RuntimeError, match="not activated.*never in a dry run"):
        deploy(ur_cell(robotiq_server, tmp_path, dry_run=True), policy=PickPolicy())
    assert not any(r.startswith("SET") for r in robotiq_server.requests)
    with pytest.raises(ValueError, match="--dry_run with --record_root"):
        ur_cell(robotiq_server, tmp_path, dry_run=True, record_root=str(tmp_path / "rec"))


def test_an_incompatible_policy_is_refused_before_anything_connects(rtde, robotiq_server, tmp_path):
    robotiq_server.vars.update(ACT=0, STA=0)  # connecting would activate it: the fingers would move
    policy = PickPolicy()
    policy.spec = PolicySpec.for_robot(ur_spec(URConfig(host="x", control_hz=50.0)), ["corner"], 32, 4)  # no gripper
    with pytest.raises(ValueError, match="trained without a gripper dimension"):
        deploy(ur_cell(robotiq_server, tmp_path), policy=policy)
    assert robotiq_server.requests == [] and rtde.hosts == []  # nothing was connected


class ReachingPolicy(PickPolicy):
    """Asks every joint to move 0.5 rad per action: far beyond one control period of joint speed."""

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        chunk = super().infer(obs)
        chunk[:, :6] = obs.state[:6] + 0.5 * np.arange(1, self.spec.horizon + 1)[:, None]
        return chunk


def test_speed_scale_slows_every_limit_down(rtde, robotiq_server, tmp_path):
    cfg = ur_cell(robotiq_server, tmp_path, robot_options={"home": HOME, "home_speed": 0.4}, speed_scale=0.25)
    summary = deploy(cfg, policy=ReachingPolicy())
    assert summary["speed_scale"] == 0.25 and summary["episodes"][0]["stopped"] is None
    servo = [args[0] for name, args in rtde.calls if name == "servoJ"]
    steps = np.abs(np.diff(np.array([HOME] + servo), axis=0))
    assert len(servo) >= 40 and steps.max() <= 0.25 * 1.0 / 50.0 + 1e-6  # a quarter of 1 rad/s at 50 Hz
    assert steps.max() > 0.9 * 0.25 / 50.0  # and the policy did push against that limit
    move_home = next(args for name, args in rtde.calls if name == "moveJ")
    assert move_home[1] == pytest.approx(0.1)  # a quarter of the home speed
    assert "SET POS 255 SPE 64 FOR 100 GTO 1" in robotiq_server.requests  # a quarter of the gripper's speed


def test_speed_scale_refuses_what_it_cannot_slow_down():
    from vla.deploy.safety import scale_speed_limits
    from vla.robot_io.base import Limits, RobotSpec
    from vla.robot_io.sim import sim_spec

    with pytest.raises(ValueError, match="speed_scale must be in"):
        DeployConfig(checkpoint="x", speed_scale=1.5)
    unlimited = RobotSpec("so101_follower", "joint_position", ["a.pos"], ["a.pos"], 30.0, Limits())
    with pytest.raises(ValueError, match="needs joint velocity limits, and so101_follower has none"):
        scale_speed_limits(unlimited, 0.5)
    tool = scale_speed_limits(sim_spec(30.0), 0.5)
    assert tool.limits.action_high == [0.5, 0.5, 0.5, 1.0] and tool.limits.action_low == [-0.5, -0.5, -0.5, -1.0]
    assert sim_spec(30.0).limits.action_high == [1.0] * 4  # the original is untouched


def test_the_bringup_checklists_commands_parse():
    """Every `python deploy.py` command in docs/bringup.md parses into a DeployConfig as written."""
    import re
    import shlex
    from pathlib import Path

    import draccus

    text = (Path(__file__).resolve().parents[1] / "docs" / "bringup.md").read_text()
    commands = [c.replace("\\\n", " ") for c in re.findall(r"^python deploy\.py (.*?)(?<!\\)$", text, re.M | re.S)]
    assert len(commands) == 2
    for command in commands:
        args = shlex.split(command)
        cfg = draccus.parse(DeployConfig, args=args)
        assert cfg.robot.gripper == "robotiq" and cfg.cameras[0].serial == "123456789"
        assert cfg.dry_run or cfg.speed_scale == 0.25
