"""Action schedules on a timeline of control steps: receding horizon, ACT and CogACT ensembles."""

import math

import numpy as np
import pytest

from vla.deploy.chunking import ActionSchedule, ScheduleConfig


def ramp(start: float, horizon: int = 8, dim: int = 2) -> np.ndarray:
    return (start + np.arange(horizon * dim, dtype=np.float32)).reshape(horizon, dim)


def test_receding_horizon_executes_k_then_asks():
    schedule = ActionSchedule(ScheduleConfig("receding", execute_steps=3), horizon=8)
    assert schedule.needs_chunk(0)
    chunk = ramp(0)
    schedule.add(chunk, start_step=0)
    for step in range(3):
        assert not schedule.needs_chunk(step)
        assert np.array_equal(schedule.action(step), chunk[step])
    assert schedule.needs_chunk(3)
    assert schedule.needs_chunk(1, lead=2), "an asynchronous policy is asked `lead` steps early"
    assert schedule.action(8) is None, "past the horizon there is no action: the loop must hold"


def test_late_chunk_skips_actions_meant_for_past_steps():
    schedule = ActionSchedule(ScheduleConfig("receding", execute_steps=4), horizon=8)
    schedule.add(ramp(0), start_step=0)
    late = ramp(100)
    schedule.add(late, start_step=2)  # predicted from step 2's observation
    assert np.array_equal(schedule.action(5), late[3])
    schedule.add(ramp(200), start_step=1)  # a stale answer arriving after a newer one is dropped
    assert np.array_equal(schedule.action(5), late[3])
    assert np.array_equal(schedule.remaining(5), late[3:])


def test_temporal_ensemble_weights_oldest_most():
    schedule = ActionSchedule(ScheduleConfig("temporal", temporal_decay=1.0), horizon=4)
    schedule.add(np.ones((4, 2)), start_step=0)
    schedule.add(np.zeros((4, 2)), start_step=1)
    expected = 1.0 / (1.0 + math.exp(-1.0))
    assert np.allclose(schedule.action(1), expected)


def test_adaptive_ensemble_weights_by_similarity_to_newest():
    schedule = ActionSchedule(ScheduleConfig("adaptive", adaptive_alpha=1.0), horizon=4)
    old = np.tile([1.0, 0.0], (4, 1))  # points along x
    new = np.tile([0.0, 1.0], (4, 1))  # points along y
    schedule.add(old, 0)
    assert np.allclose(schedule.action(0), old[0])
    schedule.add(new, 1)
    w_old, w_new = 1.0, math.e  # cos(old, new) = 0, cos(new, new) = 1
    assert np.allclose(schedule.action(1), (w_old * old[1] + w_new * new[0]) / (w_old + w_new))


def test_ensemble_forgets_chunks_older_than_horizon():
    schedule = ActionSchedule(ScheduleConfig("adaptive"), horizon=2)
    for step, value in enumerate((1.0, 2.0, 3.0)):
        schedule.add(np.full((2, 3), value), step)
    assert len(schedule.chunks) == 2
    assert schedule.action(2).min() > 2.0 - 1e-6


def test_bad_schedule_settings_are_named():
    with pytest.raises(ValueError, match="ensemble_typo"):
        ScheduleConfig("ensemble_typo")
    with pytest.raises(ValueError, match="horizon 8"):
        ActionSchedule(ScheduleConfig("receding", execute_steps=9), horizon=8)
    with pytest.raises(ValueError, match="chunk must be"):
        ActionSchedule(ScheduleConfig(), horizon=8).add(np.zeros((4, 2)), 0)
