"""The safety layer between the policy and the arm: every action passes `SafetyLayer.check`.

It enforces the robot's `Limits`: action bounds, joint position / velocity / acceleration
limits (joint-space arms) and a Cartesian workspace box (Cartesian-delta arms). A violation is
clipped back inside the limit or the action is rejected (`on_violation`), with a log line that
names the limit and the value. NaN / inf actions and actions of the wrong width are always
rejected: a rejected action makes the loop hold the arm.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vla.robot_io.base import RobotSpec, RobotState

log = logging.getLogger(__name__)
VIOLATION_MODES = ("clip", "reject")


@dataclass
class SafetyConfig:
    on_violation: str = "clip"  # clip | reject: what to do with an action outside a limit
    max_frame_age_s: float = 0.25  # hold the arm when a camera frame is older than this
    policy_timeout_s: float = 3.0  # stop the run when no action has come for this long
    # Cartesian-delta arms: commanded tool targets are kept this far inside the workspace box, so that the
    # tracking overshoot of the hand stays inside the box (up to 9.6 mm measured in the simulator)
    workspace_margin_m: float = 0.01
    # any arm reporting a TCP position: stop the run when the measured TCP is this far outside the box
    workspace_tolerance_m: float = 0.01

    def __post_init__(self) -> None:
        if self.on_violation not in VIOLATION_MODES:
            raise ValueError(f"safety.on_violation must be one of {VIOLATION_MODES}; got {self.on_violation!r}")


@dataclass
class Verdict:
    """action: the action to send ([D], maybe clipped) or None to hold; events: what was wrong."""

    action: np.ndarray | None
    events: list[str] = field(default_factory=list)


def scale_speed_limits(spec: RobotSpec, speed_scale: float) -> RobotSpec:
    """A copy of `spec` whose speed limits are `speed_scale` times its own (a slow first run): joint velocity and
    acceleration, and for Cartesian-delta arms the bound on the tool step per action (a speed: the step is taken
    every control period). Position limits and the workspace box stay. Refuses an arm with no speed limit to
    scale, which would otherwise run at full speed while its operator believes it slowed down."""
    if not 0 < speed_scale <= 1:
        raise ValueError(f"speed_scale must be in (0, 1] (it only ever lowers limits); got {speed_scale}")
    limits = dataclasses.replace(spec.limits)

    def scale(values: list[float]) -> list[float]:
        return [v * speed_scale for v in values]

    if spec.action_kind == "joint_position":
        if limits.joint_velocity is None:
            raise ValueError(f"speed_scale needs joint velocity limits, and {spec.embodiment} has none: set the robot "
                             f"config's joint_velocity")
        limits.joint_velocity = scale(limits.joint_velocity)
        if limits.joint_acceleration is not None:
            limits.joint_acceleration = scale(limits.joint_acceleration)
    else:
        if limits.action_low is None or limits.action_high is None:
            raise ValueError(f"speed_scale needs bounds on the tool step (action_low / action_high), and "
                             f"{spec.embodiment} has none")
        limits.action_low = scale(limits.action_low[:3]) + limits.action_low[3:]
        limits.action_high = scale(limits.action_high[:3]) + limits.action_high[3:]
    return dataclasses.replace(spec, limits=limits)


class SafetyLayer:
    def __init__(self, spec: RobotSpec, config: SafetyConfig):
        self.spec = spec
        self.config = config
        self.dt = 1.0 / spec.control_hz
        self.clip_counts: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        """A new episode: the arm starts at rest."""
        self._last_velocity: np.ndarray | None = None  # joint velocity of the previous command; None = at rest
        self._velocity: np.ndarray | None = None  # joint velocity of the command being checked
        # Cartesian-delta arms that add each delta to a target of their own (RobotSpec.integrates_ee_deltas: a
        # simulator's mocap): the target the accepted deltas add up to; None = start from the measured TCP.
        # Bounding it, not the lagging measured TCP, prevents windup. Other arms start from the measured TCP.
        self._target: np.ndarray | None = None
        self._pending_target: np.ndarray | None = None  # the target of the action being checked

    def held(self) -> None:
        """The arm was held (zero velocity): the next command accelerates from rest."""
        self._last_velocity = None

    def check(self, action: np.ndarray, state: RobotState) -> Verdict:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.spec.action_dim,):
            return self._reject(f"action has shape {list(action.shape)}; {self.spec.embodiment} takes "
                                f"[{self.spec.action_dim}] ({', '.join(self.spec.action_names)})")
        if not np.isfinite(action).all():
            return self._reject(f"action contains NaN or inf: {np.round(action, 4).tolist()}")
        for name, value in (("joint_positions", state.joint_positions), ("tcp_position", state.tcp_position)):
            if value is not None and not np.isfinite(value).all():
                return self._reject(f"robot state {name} contains NaN or inf: the limits cannot be checked")
        events: list[str] = []
        limits = self.spec.limits
        action = self._bound(action, limits.action_low, limits.action_high, "action", self.spec.action_names, events)
        if self.spec.action_kind == "joint_position":
            action = self._joint_limits(action, state, events)
        else:
            action = self._workspace(action, state, events)
        if events and self.config.on_violation == "reject":
            self._velocity = self._pending_target = None
            return self._reject("; ".join(events))
        for event in events:
            self._log_clip(event)
        if not np.isfinite(action).all():  # belt and braces: nothing non-finite ever reaches the arm
            self._velocity = self._pending_target = None
            return self._reject("the limited action is not finite")
        if self._velocity is not None:  # only an accepted action moves the arm: commit what it leads to
            self._last_velocity, self._velocity = self._velocity, None
        if self._pending_target is not None:
            self._target, self._pending_target = self._pending_target, None
        return Verdict(action.astype(np.float32), events)

    def _joint_limits(self, action: np.ndarray, state: RobotState, events: list[str]) -> np.ndarray:
        limits = self.spec.limits
        n = len(limits.joint_position_low) if limits.joint_position_low is not None else 0
        if not n:
            return action
        names = self.spec.action_names[:n]
        target = self._bound(action[:n], limits.joint_position_low, limits.joint_position_high, "joint", names, events)
        current = state.joint_positions
        if current is not None and limits.joint_velocity is not None:
            velocity = (target - current[:n]) / self.dt  # (J,)
            vmax = np.asarray(limits.joint_velocity)
            velocity = self._bound(velocity, -vmax, vmax, "joint velocity", names, events)
            if limits.joint_acceleration is not None:
                last = self._last_velocity if self._last_velocity is not None else np.zeros(n)
                step = np.asarray(limits.joint_acceleration) * self.dt
                velocity = self._bound(velocity, last - step, last + step, "joint acceleration (velocity change)",
                                       names, events)
            # the acceleration clip may carry the target past a position limit: clip it back (no event: the
            # position limit was already reported if the policy asked for it)
            target = np.clip(current[:n] + velocity * self.dt, limits.joint_position_low, limits.joint_position_high)
            self._velocity = (target - current[:n]) / self.dt
        action = action.copy()
        action[:n] = target
        return action

    def _workspace(self, action: np.ndarray, state: RobotState, events: list[str]) -> np.ndarray:
        limits = self.spec.limits
        if limits.workspace_low is None or state.tcp_position is None:
            return action
        scale = self.spec.ee_delta_scale
        measured = np.asarray(state.tcp_position, dtype=np.float64)
        start = self._target if self.spec.integrates_ee_deltas and self._target is not None else measured
        target = start + action[:3] * scale
        margin = self.config.workspace_margin_m
        low, high = np.asarray(limits.workspace_low) + margin, np.asarray(limits.workspace_high) - margin
        # a target already outside the box may still move back in: only forbid moving further out
        low, high = np.minimum(low, start), np.maximum(high, start)
        inside = self._bound(target, low, high, "workspace", ["x", "y", "z"], events)
        if self.spec.integrates_ee_deltas and np.isfinite(inside).all():
            self._pending_target = inside
        action = action.copy()
        action[:3] = (inside - start) / scale
        return action

    def workspace_violation(self, state: RobotState) -> str | None:
        """Why the measured TCP is outside the workspace box by more than workspace_tolerance_m, or None."""
        limits = self.spec.limits
        if limits.workspace_low is None or state.tcp_position is None:
            return None
        tcp = np.asarray(state.tcp_position, dtype=np.float64)
        outside = np.maximum(np.asarray(limits.workspace_low) - tcp, tcp - np.asarray(limits.workspace_high))
        axis = int(np.argmax(outside))
        if outside[axis] <= self.config.workspace_tolerance_m:
            return None
        return (f"measured TCP {'xyz'[axis]}={tcp[axis]:.4f} is {outside[axis] * 1000:.1f} mm outside the workspace "
                f"box [{limits.workspace_low[axis]}, {limits.workspace_high[axis]}] (tolerance "
                f"safety.workspace_tolerance_m={self.config.workspace_tolerance_m})")

    def _log_clip(self, event: str) -> None:
        """Log the first clip of each kind and every 100th after it, not one line per tick."""
        kind = event.split("=")[0]
        self.clip_counts[kind] += 1
        count = self.clip_counts[kind]
        if count == 1 or count % 100 == 0:
            log.warning("safety: clipped %s (%d times so far)", event, count)

    @staticmethod
    def _bound(values: np.ndarray, low, high, what: str, names: list[str], events: list[str]) -> np.ndarray:
        if low is None or high is None:
            return values
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        bad = (values < low) | (values > high)
        for i in np.flatnonzero(bad):
            events.append(f"{what} {names[i]}={values[i]:.4g} outside [{low[i]:.4g}, {high[i]:.4g}]")
        return np.clip(values, low, high)

    @staticmethod
    def _reject(reason: str) -> Verdict:
        log.error("safety: rejected action, holding the arm: %s", reason)
        return Verdict(None, [reason])
