"""Synthetic smooth action chunks for fitting tokenizers on more data than a dataset has.

VQ-VLA (arXiv 2507.01016) trains its tokenizer mostly on synthetic trajectories and finds the gap to real
ones marginal. Ours are windows of point-to-point motions: the arm moves between random via-points in the
normalised range [-1, 1]^D with minimum-jerk profiles (Flash & Hogan 1985), every dimension on the same
segment timing (as an end effector moving along a path), and sometimes holds still (a via-point repeated).
"""

from __future__ import annotations

import numpy as np


def minimum_jerk(tau: np.ndarray) -> np.ndarray:
    """Fraction of a point-to-point move done at normalised time tau in [0, 1]: 10 tau^3 - 15 tau^4 + 6 tau^5."""
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def synthetic_chunks(n: int, horizon: int, dim: int, seed: int = 0, min_segment: int = 4, max_segment: int = 40,
                     hold_probability: float = 0.2) -> np.ndarray:
    """[n, H, D] float64 in [-1, 1]: each chunk a random window of a trajectory of minimum-jerk moves lasting
    min_segment..max_segment steps between random via-points (each repeated with hold_probability)."""
    if n < 0 or horizon < 1 or dim < 1 or not 1 <= min_segment <= max_segment:
        raise ValueError(f"synthetic_chunks needs n >= 0, horizon >= 1, dim >= 1 and 1 <= min_segment <= "
                         f"max_segment; got n={n}, horizon={horizon}, dim={dim}, min_segment={min_segment}, "
                         f"max_segment={max_segment}")
    rng = np.random.default_rng(seed)
    length = horizon + max_segment  # each window starts in the first max_segment steps
    segments = length // min_segment + 1  # enough moves to cover `length` steps
    out = np.empty((n, horizon, dim))
    t = np.arange(length)
    for i in range(n):
        knots = np.concatenate([[0], np.cumsum(rng.integers(min_segment, max_segment + 1, segments))])  # (S+1,)
        points = rng.uniform(-1.0, 1.0, (segments + 1, dim))
        holds = np.flatnonzero(rng.random(segments) < hold_probability) + 1
        for j in holds:  # in order, so a run of holds stays at one point
            points[j] = points[j - 1]
        seg = np.searchsorted(knots, t, side="right") - 1  # (length,) the move each step is in
        tau = (t - knots[seg]) / (knots[seg + 1] - knots[seg])
        path = points[seg] + (points[seg + 1] - points[seg]) * minimum_jerk(tau)[:, None]  # (length, D)
        start = rng.integers(0, max_segment)
        out[i] = path[start:start + horizon]
    return out
