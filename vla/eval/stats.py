"""Confidence intervals for success rates."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the 97.5th percentile of the standard normal: a two-sided 95% interval


def wilson_interval(successes: int, episodes: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927, without continuity correction) for a binomial success rate.

    Unlike the normal approximation p +- z sqrt(p(1-p)/n), it stays inside [0, 1] and is not zero-width at 0/n or
    n/n: 0 successes in 10 episodes gives (0, 0.278), not (0, 0).
    """
    if episodes <= 0 or not 0 <= successes <= episodes:
        raise ValueError(f"need 0 <= successes <= episodes and episodes > 0; got {successes}/{episodes}")
    p = successes / episodes
    z2 = z * z
    centre = (p + z2 / (2 * episodes)) / (1 + z2 / episodes)
    half = z * math.sqrt(p * (1 - p) / episodes + z2 / (4 * episodes * episodes)) / (1 + z2 / episodes)
    return max(0.0, centre - half), min(1.0, centre + half)
