"""Block-wise adaptive caching (BAC; Ji et al., arXiv 2506.13456) for transformer denoisers.

Within one sampling call the output of a transformer block changes little between neighbouring
denoising steps, and by different amounts for different blocks. BAC recomputes block b only at
its own set of "update steps" and, in between, reuses the block's cached residual contribution
(output - input), so the fresh input stream still flows through the residual connection.

The schedule is calibrated once per model and step count on a few observations: sample without
caching, record each block's relative change ||d_k - d_{k-1}|| / ||d_{k-1}|| between consecutive
steps, and let a block skip steps until its accumulated change exceeds `threshold`; or give an
error `tolerance` and the largest threshold whose cached samples stay that close to the uncached
ones on the calibration observations is chosen, per step count. (The paper
picks update steps by dynamic programming over cosine similarities and adds a "bubbling union"
between sub-blocks; this is the simpler accumulated-change rule, applied per whole block.)

One implementation serves every head: a head routes each block call of its denoiser through
`run_block(cache, i, block, x, ...)`, and its `sample` gets a cache from `CachedSampling.block_cache`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

SCHEDULE_FILE = "bac_schedule.json"
FORMAT = "vla-bac-1"


@dataclass
class BACSchedule:
    """When each block is recomputed during a `num_steps`-step sampling call.

    recompute: one sorted list of step indices (0-based, step 0 always included) per block.
    relative_change: the calibration measurement, [n_blocks][num_steps] (step 0 is 0).
    """

    num_steps: int
    threshold: float
    recompute: list[list[int]]
    relative_change: list[list[float]]
    error: float | None = None  # mean |cached - uncached| on the calibration observations (normalised units)
    tolerance: float | None = None  # the error bound the threshold was chosen for, if any

    def __post_init__(self) -> None:
        for b, steps in enumerate(self.recompute):
            if not steps or steps[0] != 0 or any(not 0 <= s < self.num_steps for s in steps):
                raise ValueError(f"BAC schedule block {b}: update steps {steps} must start at 0 and lie in "
                                 f"[0, {self.num_steps})")

    @property
    def n_blocks(self) -> int:
        return len(self.recompute)

    def computed_fraction(self) -> float:
        """Share of block evaluations actually computed (1.0 = no caching)."""
        return sum(len(s) for s in self.recompute) / (self.n_blocks * self.num_steps)


class BlockCache:
    """Per-sampling-call cache. A new denoising step begins each time block 0 runs.

    With a schedule, blocks off their update steps return `x + cached delta`. With record=True,
    every block is computed and its relative change per step is accumulated for calibration.
    """

    def __init__(self, schedule: BACSchedule | None = None, record: bool = False):
        self.schedule = schedule
        self.update_steps = [set(s) for s in schedule.recompute] if schedule else None
        self.record = record
        self.step = -1
        self.deltas: dict[int, Tensor] = {}
        self.changes: dict[int, list[float]] = {}  # record mode: block -> relative change per step

    def __call__(self, index: int, block: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
        if index == 0:
            self.step += 1
        if self.update_steps is not None:
            if index >= len(self.update_steps):
                raise ValueError(f"BAC schedule covers {len(self.update_steps)} blocks; the denoiser has more")
            if self.step not in self.update_steps[index] and index in self.deltas:
                return x + self.deltas[index]
        out = block(x, *args, **kwargs)
        delta = out - x
        if self.record:
            self._record(index, delta)
        self.deltas[index] = delta
        return out

    def _record(self, index: int, delta: Tensor) -> None:
        previous = self.deltas.get(index)
        if previous is None:
            change = 0.0
        else:
            dims = tuple(range(1, delta.ndim))
            ratio = (delta - previous).norm(dim=dims) / previous.norm(dim=dims).clamp_min(1e-8)
            change = float(ratio.mean())
        self.changes.setdefault(index, []).append(change)


def run_block(cache: BlockCache | None, index: int, block: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    """block(x, ...) directly, or through the cache when one is active."""
    return block(x, *args, **kwargs) if cache is None else cache(index, block, x, *args, **kwargs)


def schedule_from_changes(changes: Tensor, threshold: float) -> list[list[int]]:
    """Update steps per block from relative changes [n_blocks, num_steps]: recompute when the change
    accumulated since the last update exceeds threshold."""
    schedule = []
    for row in changes.tolist():
        steps, accumulated = [0], 0.0
        for k in range(1, len(row)):
            accumulated += row[k]
            if accumulated > threshold:
                steps.append(k)
                accumulated = 0.0
        schedule.append(steps)
    return schedule


def measure_changes(sample: Callable[[BlockCache], Tensor], num_steps: int) -> tuple[Tensor, Tensor]:
    """Run one uncached sampling call `sample(cache)` through a recording cache.

    Returns (its output, each block's relative change per step [n_blocks, num_steps])."""
    recorder = BlockCache(record=True)
    output = sample(recorder)
    if recorder.step + 1 != num_steps:
        raise ValueError(f"calibration ran {recorder.step + 1} denoising steps, expected {num_steps}")
    return output, torch.tensor([recorder.changes[b] for b in sorted(recorder.changes)])


# Thresholds tried, largest (fastest) first, when calibrating to an error tolerance; 0 recomputes every block.
THRESHOLD_GRID = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03, 0.015, 0.0)


def calibrate_head(head: CachedSampling, cond, num_steps: int, threshold: float | None = None,
                   tolerance: float | None = None, valid: Tensor | None = None, seed: int = 0) -> BACSchedule:
    """Calibrate and attach a schedule for `num_steps` on the calibration observations in `cond` (a Cond of
    B observations, sampled as one batch; block changes are averaged over them).

    threshold: use this accumulated-change threshold. tolerance: instead pick, from THRESHOLD_GRID, the
    largest threshold whose cached samples differ from the uncached ones (same noise) by at most
    `tolerance`, so one setting suits every step count. It is found by bisection (about four cached
    sampling calls), which assumes the deviation grows with the threshold; the chosen one is always
    measured to fit. The deviation is the mean absolute difference in normalised action units over
    the real action dims (valid: bool [B, D]; None = all), measured on these observations and noise.
    """
    if (threshold is None) == (tolerance is None):
        raise ValueError("BAC calibration needs either a threshold or a tolerance (not both)")
    bound = threshold if tolerance is None else tolerance
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"BAC {'threshold' if tolerance is None else 'tolerance'} must be finite and >= 0; "
                         f"got {bound}")

    def sample(cache: BlockCache) -> Tensor:
        return head.sample(cond, generator=torch.Generator().manual_seed(seed), num_steps=num_steps, bac=cache)

    reference, changes = measure_changes(sample, num_steps)
    weight = torch.ones_like(reference) if valid is None else valid[:, None, :].expand_as(reference).to(reference)

    def measured(candidate: float) -> BACSchedule:
        schedule = BACSchedule(num_steps, candidate, schedule_from_changes(changes, candidate), changes.tolist(),
                               tolerance=tolerance)
        difference = (sample(BlockCache(schedule)) - reference).abs() * weight
        schedule.error = float(difference.sum() / weight.sum().clamp_min(1))
        return schedule

    if tolerance is None:
        schedule = measured(threshold)
    else:
        # Bisection over the grid (the deviation grows with the threshold): `fits` is the smallest index known to
        # fit, `fails` the largest known not to; the grid's last entry, 0, recomputes every block and always fits.
        fails, fits, tried = -1, len(THRESHOLD_GRID) - 1, {}
        while fits - fails > 1:
            mid = (fails + fits) // 2
            tried[mid] = measured(THRESHOLD_GRID[mid])
            fails, fits = (fails, mid) if tried[mid].error <= tolerance else (mid, fits)
        schedule = tried.get(fits) or measured(THRESHOLD_GRID[fits])
    head.add_bac_schedule(schedule)
    return schedule


class CachedSampling:
    """Mixin for heads whose denoiser blocks go through `run_block`: holds schedules per step count."""

    @property
    def bac_schedules(self) -> dict[int, BACSchedule]:
        return self.__dict__.setdefault("_bac_schedules", {})

    def add_bac_schedule(self, schedule: BACSchedule) -> None:
        self.require_cached_blocks()
        n_blocks = self.num_cached_blocks()
        if schedule.n_blocks != n_blocks:
            raise ValueError(f"BAC schedule has {schedule.n_blocks} blocks; this head's denoiser has {n_blocks}")
        self.bac_schedules[schedule.num_steps] = schedule

    def num_cached_blocks(self) -> int:
        return len(self.net.blocks)

    def require_cached_blocks(self) -> None:
        if self.num_cached_blocks() == 0:
            raise ValueError(f"BAC caches the blocks of a head's own denoiser; this {self.config.type} head has none "
                             f"(its denoising runs inside the backbone's LLM, e.g. dita with denoiser=shared), so BAC "
                             f"cannot be calibrated or used for it (sample with bac=False, evaluate with --bac false)")

    def block_cache(self, num_steps: int, bac: bool | BlockCache) -> BlockCache | None:
        """The cache for one sampling call.

        bac=False (the default of every sampling path): no caching, whatever schedules the head holds;
        True: cache with the schedule calibrated for num_steps (an error without one); a BlockCache
        instance (calibration) is used as is.
        """
        if isinstance(bac, BlockCache):
            self.require_cached_blocks()
            return bac
        if not bac:
            return None
        self.require_cached_blocks()
        schedule = self.bac_schedules.get(num_steps)
        if schedule is None:
            raise ValueError(f"bac=True but no BAC schedule is calibrated for {num_steps} steps; "
                             f"calibrated step counts: {sorted(self.bac_schedules)} (vla-eval calibrate-bac)")
        return BlockCache(schedule)


def save_schedules(schedules: dict[int, BACSchedule], path: str | Path) -> None:
    records = [asdict(s) for _, s in sorted(schedules.items())]
    Path(path).write_text(json.dumps({"format": FORMAT, "schedules": records}, indent=1))


def load_schedules(path: str | Path) -> list[BACSchedule]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a BAC schedule file (format {data.get('format')!r}, expected {FORMAT!r})")
    return [BACSchedule(**record) for record in data["schedules"]]
