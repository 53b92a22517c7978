"""Chunk schedulers: receding horizon and CogACT's adaptive action ensemble."""

import math

import pytest
import torch

from vla.deploy.chunking import AdaptiveEnsemble, RecedingHorizon, make_scheduler


def test_receding_horizon_executes_k_then_asks():
    scheduler = RecedingHorizon(execute_steps=3)
    chunk = torch.arange(16.0).reshape(8, 2)
    assert scheduler.wants_chunk()
    scheduler.add(chunk)
    taken = [scheduler.next_action() for _ in range(3)]
    assert torch.equal(torch.stack(taken), chunk[:3])
    assert scheduler.wants_chunk()
    with pytest.raises(RuntimeError, match="add"):
        scheduler.next_action()
    with pytest.raises(ValueError, match="horizon"):
        RecedingHorizon(execute_steps=9).add(chunk)


def test_adaptive_ensemble_weights_by_similarity_to_newest():
    ensemble = AdaptiveEnsemble(horizon=4, alpha=1.0)
    old = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # points along x
    new = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # points along y
    ensemble.add(old)
    assert torch.equal(ensemble.next_action(), old[0])
    ensemble.add(new)
    action = ensemble.next_action()
    # cos(old, new) = 0, cos(new, new) = 1: weights e^0 and e^1
    w_old, w_new = 1.0, math.e
    expected = (w_old * old[1] + w_new * new[0]) / (w_old + w_new)
    assert torch.allclose(action, expected)


def test_adaptive_ensemble_forgets_chunks_older_than_horizon():
    ensemble = AdaptiveEnsemble(horizon=2, alpha=0.1)
    for value in (1.0, 2.0, 3.0):
        ensemble.add(torch.full((2, 3), value))
    assert len(ensemble.chunks) == 2
    assert ensemble.next_action().min() > 2.0 - 1e-6


def test_unknown_ensemble_is_named():
    with pytest.raises(ValueError, match="temporal"):
        make_scheduler("temporal", 8, 4, 0.1)
