"""Turning action chunks into one action per control step, on a timeline of control steps.

A chunk predicted from the observation of step s holds the actions for steps s, s+1, ...,
s+H-1. The schedule keeps chunks by their start step, so a chunk that arrives late (computed
asynchronously while the previous one executed) is used from the step it arrives at, and the
actions meant for steps already past are skipped. Three ways to pick the action of a step:

- "receding": the newest chunk's action; a new chunk is due every `execute_steps` steps.
- "temporal": ACT's temporal ensemble, all chunks covering the step averaged with weights
  exp(-m * i), i = 0 for the oldest (Zhao et al., arXiv 2304.13705); a chunk every step.
- "adaptive": CogACT's adaptive ensemble, weights exp(alpha * cos(a_k, a_newest)), so past
  chunks that point to another mode count less (Li et al., arXiv 2411.19650, Sec. 3.4).

Numpy only: the robot PC runs this without torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

MODES = ("receding", "temporal", "adaptive")


@dataclass
class ScheduleConfig:
    mode: str = "receding"  # receding | temporal | adaptive
    execute_steps: int = 4  # receding: actions executed from each chunk before the next is due
    temporal_decay: float = 0.01  # temporal: m in exp(-m * i)
    adaptive_alpha: float = 0.1  # adaptive: alpha in exp(alpha * cos)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown schedule mode {self.mode!r}; choose one of {MODES}")
        if self.execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1; got {self.execute_steps}")


class ActionSchedule:
    def __init__(self, config: ScheduleConfig, horizon: int):
        if config.mode == "receding" and config.execute_steps > horizon:
            raise ValueError(f"execute_steps={config.execute_steps} exceeds the policy's chunk horizon {horizon}")
        self.config = config
        self.horizon = horizon
        self.reset()

    def reset(self) -> None:
        self.chunks: deque[tuple[int, np.ndarray]] = deque(maxlen=self.horizon)  # (start step, [H, D]), oldest first

    def needs_chunk(self, step: int, lead: int = 0) -> bool:
        """Is a new prediction due at `step`, for a policy that answers `lead` steps after it is asked?"""
        if not self.chunks:
            return True
        if self.config.mode != "receding":
            return True
        start, _ = self.chunks[-1]
        return step + lead >= start + self.config.execute_steps

    def add(self, chunk: np.ndarray, start_step: int) -> bool:
        """Queue chunk [H, D] predicted from the observation of `start_step`; False when it is older than the
        newest queued chunk (and is not used)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[0] != self.horizon:
            raise ValueError(f"chunk must be [H={self.horizon}, D]; got {list(chunk.shape)}")
        if self.chunks and start_step < self.chunks[-1][0]:
            return False  # an older prediction that finished after a newer one: the newer one wins
        self.chunks.append((start_step, chunk))
        return True

    def drop(self, start_steps: set[int]) -> None:
        """Forget the chunks predicted from the observations of these steps (they are too old to execute)."""
        self.chunks = deque(((s, c) for s, c in self.chunks if s not in start_steps), maxlen=self.horizon)

    def remaining(self, step: int) -> np.ndarray:
        """Actions [R, D] the newest chunk holds for steps >= step (the part RTC keeps fixed)."""
        if not self.chunks:
            return np.zeros((0, 0), dtype=np.float32)
        start, chunk = self.chunks[-1]
        return chunk[max(step - start, 0):]

    def action(self, step: int) -> np.ndarray | None:
        """Action [D] for `step`, or None when no chunk covers it (the policy is late)."""
        covering = [(s, c[step - s]) for s, c in self.chunks if 0 <= step - s < self.horizon]
        if not covering:
            return None
        if self.config.mode == "receding":
            return covering[-1][1]
        preds = np.stack([a for _, a in covering])  # (K, D) oldest..newest
        if self.config.mode == "temporal":
            weights = np.exp(-self.config.temporal_decay * np.arange(len(preds)))
        else:
            ref = preds[-1]
            cos = preds @ ref / (np.linalg.norm(preds, axis=1) * np.linalg.norm(ref) + 1e-8)
            weights = np.exp(self.config.adaptive_alpha * cos)
        return (weights[:, None] * preds).sum(0) / weights.sum()
