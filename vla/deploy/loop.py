"""The real-time control loop: frames + state -> policy -> action schedule -> safety -> arm.

Every tick of a fixed-rate clock (drift-free, `RateTimer`):
1. stop on e-stop or a robot fault;
2. take the latest camera frames (grabbed in background threads) and the robot state; hold the
   arm if a frame is stale;
3. collect a finished chunk from the inference worker, and ask for the next one when the
   schedule says so — asynchronously (the next chunk is computed while the current one
   executes) or synchronously (the loop waits, the baseline);
4. pick this step's action from the schedule, pass it through the safety layer and send it;
   with no action (policy late) or a rejected one, hold the arm.
The arm is stopped on every way out. Per-step timing goes to a CSV.

Validity of a chunk: a chunk of H actions is executed only within H control periods of wall-clock time from
its start: the tick whose observation it was computed from (asynchronous), or the moment it arrived
(synchronous: the arm was held from the observation until then). Older chunks are dropped, never executed.
The window is wall-clock time: after an overrun that skipped ticks, a chunk's next actions still play one per
tick (so later than planned), but never past the window. A chunk with a NaN or inf anywhere is rejected whole.
Policy timeout: the run stops once a request has gone unanswered for safety.policy_timeout_s, or once the
arm has had no usable action for that long (policy errors, rejected chunks, actions the safety layer refused).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vla.deploy.chunking import ActionSchedule, ScheduleConfig
from vla.deploy.protocol import ObservationMessage, PolicySpec
from vla.deploy.realtime import EStop, FrameGrabber, InferenceWorker, RateTimer
from vla.deploy.safety import SafetyConfig, SafetyLayer
from vla.robot_io.base import Camera, Robot

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    # the loop, the safety layer and the robot driver run at one rate, the robot config's control_hz; deploy.py
    # applies this override to the robot config before the robot is built. 0: the robot config's rate
    control_hz: float = 0.0
    max_steps: int = 300  # per episode
    async_inference: bool = True  # compute the next chunk while the current one executes
    # real-time chunking (Black et al., arXiv 2506.07339): a diffusion / flow head generates the next chunk
    # inpainted onto the actions still queued, so consecutive chunks join without a jump (async only)
    rtc: bool = False
    # run although the robot executes actions at another rate than the training data's fps (the policy's
    # chunks then play faster or slower than demonstrated); off: that mismatch is an error
    allow_rate_mismatch: bool = False

    def __post_init__(self) -> None:
        if self.rtc and self.schedule.mode != "receding":
            raise ValueError(f"loop.rtc needs schedule.mode=receding (an ensemble blends chunks, so there is no one "
                             f"queued plan to continue); got {self.schedule.mode!r}")
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)


def percentiles_ms(seconds) -> dict[str, float]:
    """p50 / p99 in milliseconds of durations given in seconds (0.0 for none)."""
    ms = np.asarray(list(seconds) or [0.0], dtype=np.float64) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


@dataclass
class EpisodeReport:
    steps: int = 0
    success: bool | None = None  # from the simulator; None on a real arm
    stopped: str | None = None  # why the episode ended early (e-stop, fault, policy timeout)
    holds: Counter = field(default_factory=Counter)  # reason -> ticks the arm was held
    safety_events: int = 0
    tick_starts: list[float] = field(default_factory=list)  # perf_counter of each tick
    inference_s: list[float] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # per-step timing log
    sent: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (step, chunk start step, action sent)

    def chunk_boundary_jump(self) -> dict[str, float]:
        """Mean |a_t - a_{t-1}| where consecutive actions come from different chunks vs from the same one.

        Chunks that do not join up show as boundary >> within; real-time chunking narrows the gap.
        """
        boundary, within = [], []
        for (s0, c0, a0), (s1, c1, a1) in zip(self.sent, self.sent[1:], strict=False):
            if s1 == s0 + 1:
                (boundary if c1 != c0 else within).append(float(np.abs(a1 - a0).mean()))
        return {"boundary": float(np.mean(boundary)) if boundary else 0.0,
                "within": float(np.mean(within)) if within else 0.0}

    def period_jitter_ms(self, period_s: float) -> dict[str, float]:
        """|actual tick period - nominal| p50 / p99 / max in milliseconds."""
        jitter_s = np.abs(np.diff(self.tick_starts) - period_s)
        return percentiles_ms(jitter_s) | {"max": float(jitter_s.max() * 1000) if len(jitter_s) else 0.0}

    def summary(self, period_s: float) -> dict:
        return {"steps": self.steps, "success": self.success, "stopped": self.stopped,
                "held_ticks": dict(self.holds), "safety_events": self.safety_events,
                "period_jitter_ms": self.period_jitter_ms(period_s),
                "inference_ms": percentiles_ms(self.inference_s),
                "chunks": len(self.inference_s)}


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to uint8 [size, size, 3] (the policy's training view)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(image[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)


def rtc_weights(length: int, delay: int) -> np.ndarray:
    """RTC's soft mask [length]: 1 for the `delay` steps that execute while the chunk is computed, then an
    exponential fade c * (e^c - 1) / (e - 1), c = (length - i) / (length - delay + 1), to the end of the overlap."""
    i = np.arange(length)
    c = np.clip((length - i) / max(length - delay + 1, 1), 0.0, 1.0)
    fade = c * np.expm1(c) / np.expm1(1.0)
    return np.where(i < delay, 1.0, fade).astype(np.float32)


def chunk_problem(actions: np.ndarray) -> str | None:
    """Why a chunk [H, D] must not be executed (NaN or inf anywhere in it), or None."""
    bad = ~np.isfinite(actions)
    if not bad.any():
        return None
    step, dim = np.argwhere(bad)[0]
    return f"chunk contains NaN or inf ({int(bad.sum())} values, first at action {step}, dim {dim})"


def check_compatible(spec: PolicySpec, robot: Robot, cameras: dict[str, Camera] | None,
                     allow_rate_mismatch: bool = False) -> None:
    """Refuse to start (ValueError naming the mismatch) when the robot or cameras do not fit the policy: the
    embodiment, state and action widths, the action names and kind (joint targets vs tool displacements), the
    rate the actions were recorded at against the robot's (unless allow_rate_mismatch), the cameras (None:
    not checked, for a check before the cameras exist)."""
    name = robot.spec.embodiment
    if name not in spec.state_dims:
        raise ValueError(f"the policy was not trained on embodiment {name!r}; it knows {sorted(spec.state_dims)}")
    if name not in spec.action_kinds:
        raise ValueError(f"{name}: the checkpoint does not record the action names, kind and fps of its training "
                         f"data (made by an older vla?), so the arm cannot be checked against it: retrain")
    robot_spec = robot.spec
    gripper = [a for a in robot_spec.action_names if "gripper" in a]
    trained = spec.action_names[name]
    if gripper and len(trained) == robot_spec.action_dim - len(gripper) and not any("gripper" in a for a in trained):
        raise ValueError(f"{name}: the robot drives a gripper (action {gripper[0]!r}) but the policy was trained "
                         f"without a gripper dimension (actions {trained}): train on data with "
                         f"the gripper, or configure the robot without one (UR: --robot.gripper none)")
    for what, trained, robot_value in (("state width", spec.state_dims[name], robot_spec.state_dim),
                                       ("action width", spec.action_dims[name], robot_spec.action_dim),
                                       ("action kind", spec.action_kinds[name], robot_spec.action_kind),
                                       ("action names", spec.action_names[name], robot_spec.action_names)):
        if trained != robot_value:
            raise ValueError(f"{name}: the policy was trained with {what} {trained}, the robot has {robot_value} "
                             f"(state {robot_spec.state_names}, actions {robot_spec.action_names})")
    rate = robot_spec.action_rate
    if abs(spec.fps[name] - rate) > 1e-6 * rate:
        message = (f"{name}: the training data was recorded at {spec.fps[name]:g} fps, the robot executes actions "
                   f"at {rate:g} Hz, so every chunk would play {rate / spec.fps[name]:.2f}x as fast as demonstrated")
        if not allow_rate_mismatch:
            raise ValueError(f"{message}; set the robot's control rate to {spec.fps[name]:g} Hz, or pass "
                             f"--loop.allow_rate_mismatch true to run anyway")
        log.warning("%s (--loop.allow_rate_mismatch)", message)
    missing = [c for c in spec.cameras if cameras is not None and c not in cameras]
    if missing:
        raise ValueError(f"the policy needs cameras {spec.cameras}; missing {missing} (have {sorted(cameras)})")


class ControlLoop:
    def __init__(self, robot: Robot, cameras: dict[str, Camera], policy, config: LoopConfig, instruction: str,
                 estop: EStop | None = None, recorder=None):
        if config.control_hz and config.control_hz != robot.spec.control_hz:
            raise ValueError(f"loop.control_hz={config.control_hz:g} but the robot is set up for "
                             f"{robot.spec.control_hz:g} Hz (its safety limits and driver timing use that rate): set "
                             f"the rate once, on the robot config (deploy.py applies --loop.control_hz to it)")
        check_compatible(policy.spec, robot, cameras, config.allow_rate_mismatch)
        self.robot, self.cameras, self.policy, self.config = robot, cameras, policy, config
        self.instruction = instruction
        self.estop = estop or EStop()
        self.hz = robot.spec.control_hz
        self.period = 1.0 / self.hz
        self.schedule = ActionSchedule(config.schedule, policy.spec.horizon)
        self.safety = SafetyLayer(robot.spec, config.safety)
        self.recorder = recorder  # optional EpisodeRecorder: every executed action is written with its frames
        watched = set(policy.spec.cameras) | set(getattr(recorder, "cameras", []))
        self.grabbers = {name: FrameGrabber(cameras[name]) for name in sorted(watched)}
        self.worker = InferenceWorker(policy.infer)
        self.latency_s = 0.0  # running estimate, sets how early an asynchronous request goes out
        # camera pictures of the last n_obs_steps ticks (as grabbed; resized only when an observation is built)
        self.history: deque[list[np.ndarray]] = deque(maxlen=policy.spec.n_obs_steps)
        self.episode = -1

    def start(self) -> None:
        for grabber in self.grabbers.values():
            grabber.start()
        if hasattr(self.policy, "warmup"):
            self.policy.warmup()  # the first inference allocates and autotunes: keep it out of the episode

    def close(self) -> None:
        for grabber in self.grabbers.values():
            grabber.close()
        self.worker.close()

    def run_episode(self) -> EpisodeReport:
        self.episode += 1
        self.robot.reset()
        self.schedule.reset()
        self.safety.reset()
        self.history.clear()
        self._wait_for_cameras()
        report, timer = EpisodeReport(), RateTimer(self.hz)
        self._last_action = self._last_fresh_frame = time.perf_counter()
        self._first_valid_step = 0  # chunks from observations before this step are stale (see _hold_stale)
        self._expires_at: dict[int, float] = {}  # chunk start step -> wall-clock time it goes stale
        self._chunk_problem: str | None = None  # why the policy's latest chunk was unusable, if it was
        try:
            for step in range(self.config.max_steps):
                late = timer.wait()
                tick = time.perf_counter()
                report.tick_starts.append(tick)
                event = self._tick(step, report)
                report.steps = step + 1
                report.rows.append({"step": step, "t_s": tick - report.tick_starts[0], "late_ms": late * 1000,
                                    "work_ms": (time.perf_counter() - tick) * 1000, "event": event or ""})
                if report.stopped or getattr(self.robot, "episode_done", False):
                    break
        except BaseException:
            self.robot.stop()  # an error inside a tick: the arm must not keep its last command
            raise
        if not report.stopped:
            self.robot.hold()  # between episodes (or before disconnect) nothing moves
        report.success = getattr(self.robot, "success", None)
        return report

    def _wait_for_cameras(self, timeout_s: float = 5.0) -> None:
        """Start the clock once every camera has delivered a frame (or after timeout_s; the watchdog holds then)."""
        deadline = time.monotonic() + timeout_s
        while self._stale_camera() and time.monotonic() < deadline:
            time.sleep(0.005)

    def _tick(self, step: int, report: EpisodeReport) -> str | None:
        """One control step; returns what happened when it was not a plain policy action."""
        if self.estop.triggered:
            return self._stop(report, f"e-stop ({self.estop.reason})")
        state = self.robot.get_state()
        if state.fault:
            return self._stop(report, f"robot fault: {state.fault}")
        outside = self.safety.workspace_violation(state)
        if outside:
            return self._stop(report, outside)
        self._collect(report)
        stale = self._stale_camera()
        if stale:
            return self._hold_stale(report, step, stale)
        self._last_fresh_frame = time.perf_counter()
        self._remember_frames()
        if self.schedule.needs_chunk(step, lead=self._lead_steps()) and not self.worker.busy:
            self.worker.submit(self.episode, step, self._observation(state, step))
            if not self.config.async_inference:
                state = self._wait_holding(report)
                if state is None or state.fault:
                    return self._stop(report, f"e-stop ({self.estop.reason})" if state is None
                                      else f"robot fault: {state.fault}")
        unanswered = self.worker.busy_for()
        # synchronous: still busy after the wait means the wait ran out
        if unanswered > self.config.safety.policy_timeout_s or (unanswered and not self.config.async_inference):
            return self._stop(report, f"no action from the policy for {unanswered:.2f} s (a request unanswered; limit "
                                      f"safety.policy_timeout_s={self.config.safety.policy_timeout_s})")
        self._drop_stale_chunks()
        action = self.schedule.action(step)
        if action is None:
            if self._chunk_problem:
                return self._hold_or_timeout(report, "policy chunk rejected", self._chunk_problem)
            return self._hold_or_timeout(report, "waiting for the policy")
        verdict = self.safety.check(action, state)
        report.safety_events += len(verdict.events)
        if verdict.action is None:
            return self._hold_or_timeout(report, "safety rejected the action")
        self.robot.send_action(verdict.action)
        self._last_action = time.perf_counter()
        report.sent.append((step, self.schedule.chunks[-1][0], verdict.action))
        if self.recorder is not None:
            images = {name: grabber.latest.image for name, grabber in self.grabbers.items()}
            self.recorder.add(images, state.state, verdict.action, self.instruction)
        return "; ".join(verdict.events) or None

    def _wait_holding(self, report: EpisodeReport):
        """Synchronous inference: hold the arm and watch the e-stop while the chunk is computed, in slices of one
        tick; returns the robot state read afterwards (the one the action will be checked against), None on e-stop."""
        deadline = time.perf_counter() + self.config.safety.policy_timeout_s - self.worker.busy_for()
        while self.worker.busy and time.perf_counter() < deadline and not self.estop.triggered:
            self.robot.hold()
            self.worker.wait_idle(self.period)
        self._collect(report)
        return None if self.estop.triggered else self.robot.get_state()

    def _hold_or_timeout(self, report: EpisodeReport, reason: str, detail: str = "") -> str:
        """Hold the arm, or stop it once no usable action has come for safety.policy_timeout_s."""
        waited = time.perf_counter() - self._last_action
        if waited > self.config.safety.policy_timeout_s:
            why = f"{reason}: {detail}" if detail else reason
            return self._stop(report, f"no action from the policy for {waited:.2f} s ({why}; limit "
                                      f"safety.policy_timeout_s={self.config.safety.policy_timeout_s})")
        return self._hold(report, reason, detail)

    def _drop_stale_chunks(self) -> None:
        """Forget chunks past their validity window (module docstring): H periods from the chunk's start."""
        now = time.perf_counter()
        stale = {start for start, expiry in self._expires_at.items() if now > expiry}
        if stale:
            self.schedule.drop(stale)
            for start in stale:
                del self._expires_at[start]

    def _hold_stale(self, report: EpisodeReport, step: int, detail: str) -> str:
        """A stale camera holds the arm and voids the queued plan: it assumed the held ticks would be executed.
        Chunks computed from observations before this step are dropped; the policy is not blamed for the wait,
        but a camera that stays stale for safety.policy_timeout_s stops the arm."""
        self.schedule.reset()
        self._expires_at.clear()
        self._first_valid_step = step + 1
        self._last_action = time.perf_counter()
        stale_for = time.perf_counter() - self._last_fresh_frame
        if stale_for > self.config.safety.policy_timeout_s:
            return self._stop(report, f"camera stale for {stale_for:.1f} s: {detail}")
        return self._hold(report, "camera frame stale or missing", detail)

    def _collect(self, report: EpisodeReport) -> None:
        result = self.worker.poll()
        if result is None or result.episode != self.episode or result.step < self._first_valid_step:
            return  # none yet, left over from the last episode, or planned before a camera outage
        if result.error:
            log.error("policy failed on the observation of step %d: %s", result.step, result.error)
            self._chunk_problem = f"the policy raised {result.error}"
            return
        report.inference_s.append(result.latency_s)
        self.latency_s = result.latency_s if not self.latency_s else 0.8 * self.latency_s + 0.2 * result.latency_s
        problem = chunk_problem(result.actions)
        if problem is None:
            try:
                if not self.schedule.add(result.actions, result.step):
                    return  # an older prediction than the newest queued one: not used, nothing to track
            except ValueError as error:
                problem = str(error)
        if problem is not None:
            # a chunk is used whole or not at all; a rejected one does not reset the policy timeout
            log.error("rejected the policy's chunk for step %d: %s", result.step, problem)
            self._chunk_problem = problem
            return
        self._chunk_problem = None
        # asynchronous: the chunk starts at the tick whose observation it used; synchronous: the arm was held from
        # the observation until now, so the chunk's first action is for now
        start = report.tick_starts[result.step] if self.config.async_inference else time.perf_counter()
        self._expires_at[result.step] = start + self.policy.spec.horizon * self.period

    def _lead_steps(self) -> int:
        """Ticks between asking for a chunk and using it: the latency in ticks, plus the tick at which it is
        collected (an answer is only picked up at the start of a tick)."""
        return math.ceil(self.latency_s / self.period) + 1 if self.config.async_inference else 0

    def _stale_camera(self) -> str | None:
        now = time.monotonic()
        for name, grabber in self.grabbers.items():
            frame = grabber.latest
            if frame is None:
                return f"camera {name!r} has no frame yet" + (f" ({grabber.error})" if grabber.error else "")
            age = now - frame.timestamp
            if age > self.config.safety.max_frame_age_s:
                limit = self.config.safety.max_frame_age_s
                detail = f": {grabber.error}" if grabber.error else ""
                return f"camera {name!r} frame is {age:.2f} s old (limit {limit} s){detail}"
        return None

    def _remember_frames(self) -> None:
        """This tick's camera pictures into the observation history (the first fills every slot, as the
        training data repeats an episode's first frame). References only: no copy or resize per tick."""
        pictures = [self.grabbers[c].latest.image for c in self.policy.spec.cameras]
        while len(self.history) < self.history.maxlen - 1:
            self.history.append(pictures)
        self.history.append(pictures)

    def _observation(self, state, step: int) -> ObservationMessage:
        size = self.policy.spec.image_size
        images = np.stack([fit_image(picture, size) for pictures in self.history for picture in pictures])
        obs = ObservationMessage(images=images,  # [T * N, S, S, 3], oldest first
                                 state=np.asarray(state.state, dtype=np.float32), instruction=self.instruction,
                                 embodiment=self.robot.spec.embodiment)
        queued = self.schedule.remaining(step)
        if self.config.rtc and self.config.async_inference and len(queued):
            obs.prefix, obs.prefix_weights = queued, rtc_weights(len(queued), self._lead_steps())
        return obs

    def _hold(self, report: EpisodeReport, reason: str, detail: str = "") -> str:
        """Hold the arm this tick; `reason` is the stable key counted in the report, `detail` the specifics."""
        text = f"{reason}: {detail}" if detail else reason
        if not report.holds[reason]:
            log.warning("holding the arm: %s", text)
        report.holds[reason] += 1
        self.robot.hold()
        self.safety.held()
        return f"hold: {text}"

    def _stop(self, report: EpisodeReport, reason: str) -> str:
        log.error("stopping the arm: %s", reason)
        report.stopped = reason
        self.robot.stop()
        return f"stop: {reason}"


def write_action_log(report: EpisodeReport, action_names: list[str], path: Path) -> None:
    """Every action that passed the safety layer: step, the start step of the newest chunk queued when it was
    sent (with an ensemble, actions blend several chunks), one column per dim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "chunk_step", *action_names])
        writer.writerows([step, chunk_step, *np.round(np.asarray(action, dtype=np.float64), 6).tolist()]
                         for step, chunk_step, action in report.sent)


def write_step_log(report: EpisodeReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "t_s", "late_ms", "work_ms", "event"])
        writer.writeheader()
        writer.writerows(report.rows)
