"""Turning action chunks into one action per control step.

Both schedulers share one small interface, used by the simulator evaluation and the robot loop:
`reset()`, `wants_chunk()` (is a new prediction due?), `add(chunk [H, D])`, `next_action() -> [D]`.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor


class RecedingHorizon:
    """Execute the first `execute_steps` actions of each chunk, then ask for a new one."""

    def __init__(self, execute_steps: int):
        if execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1; got {execute_steps}")
        self.execute_steps = execute_steps
        self.reset()

    def reset(self) -> None:
        self.queue: deque[Tensor] = deque()

    def wants_chunk(self) -> bool:
        return not self.queue

    def add(self, chunk: Tensor) -> None:
        if self.execute_steps > chunk.shape[0]:
            raise ValueError(f"execute_steps={self.execute_steps} exceeds the chunk horizon {chunk.shape[0]}")
        self.queue.extend(chunk[: self.execute_steps])

    def next_action(self) -> Tensor:
        if not self.queue:
            raise RuntimeError("no action queued: call add(chunk) when wants_chunk() is True")
        return self.queue.popleft()


class AdaptiveEnsemble:
    """CogACT's adaptive action ensemble: a new chunk every step, overlapping predictions fused.

    The predictions for the current step from the last K chunks are averaged with weights
    exp(alpha * cos(a_k, a_newest)), so past chunks that point to another mode count less
    (Li et al., arXiv 2411.19650, Sec. 3.4).
    """

    def __init__(self, horizon: int, alpha: float = 0.1):
        self.horizon = horizon
        self.alpha = alpha
        self.reset()

    def reset(self) -> None:
        self.chunks: deque[Tensor] = deque(maxlen=self.horizon)  # newest last; chunk k is (len - 1 - k) steps old

    def wants_chunk(self) -> bool:
        return True

    def add(self, chunk: Tensor) -> None:
        self.chunks.append(chunk)

    def next_action(self) -> Tensor:
        if not self.chunks:
            raise RuntimeError("no chunk added: call add(chunk) first")
        n = len(self.chunks)
        preds = torch.stack([chunk[n - 1 - i] for i, chunk in enumerate(self.chunks)])  # (K, D) oldest..newest
        ref = preds[-1]
        cos = torch.nn.functional.cosine_similarity(preds, ref[None], dim=-1)  # (K,)
        weights = torch.exp(self.alpha * cos)
        return (weights[:, None] * preds).sum(0) / weights.sum()


def make_scheduler(kind: str, horizon: int, execute_steps: int, alpha: float):
    if kind == "none":
        return RecedingHorizon(execute_steps)
    if kind == "adaptive":
        return AdaptiveEnsemble(horizon, alpha)
    raise ValueError(f"unknown ensemble {kind!r}; choose 'none' (receding horizon) or 'adaptive'")
