"""Statistics of a control loop (ROS-free): a ring buffer of durations with percentiles, used by
both nodes and the MPC loop, and the policy controller's counters."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np


class PeriodStats:
    """A ring buffer of durations (s) with percentile summaries (loop periods, inference times)."""

    def __init__(self, capacity: int = 20000):
        self._buf = np.zeros(int(capacity))
        self._n = 0
        self.count = 0
        self.max_ever = 0.0

    def add(self, value: float) -> None:
        self._buf[self._n % len(self._buf)] = value
        self._n += 1
        self.count += 1
        if value > self.max_ever:
            self.max_ever = value

    def values(self) -> np.ndarray:
        return self._buf[: min(self._n, len(self._buf))].copy()

    def clear(self) -> None:
        """Forget the window (count and max_ever are kept)."""
        self._n = 0

    def summary(self) -> dict[str, float]:
        """{'n', 'p50', 'p99', 'max', 'mean'} of the window (NaN when empty)."""
        v = self.values()
        if not len(v):
            return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
        p50, p99 = np.percentile(v, [50, 99])
        return {"n": len(v), "p50": float(p50), "p99": float(p99), "max": float(v.max()), "mean": float(v.mean())}


@dataclass
class ControllerStats:
    """Counters of a controller (all cumulative since construction)."""

    ticks: int = 0
    """compute() calls."""
    policy_ticks: int = 0
    """Commands from the policy (fading in or not)."""
    safe_ticks: int = 0
    """Safe commands (including the None 'nothing to publish' ones)."""
    clamped_ticks: int = 0
    """Policy torques that had to be clamped to the limits (by this controller, after the ONNX graph)."""
    accepted_states: int = 0
    """Joint states accepted."""
    rejected: Counter = field(default_factory=Counter)
    """Rejected inputs by reason key (joint states and targets)."""
    safe_reasons: Counter = field(default_factory=Counter)
    """Safe commands by reason key."""
    targets_clamped: int = 0
    """Targets moved into target_limits."""
    stamp_resets: int = 0
    """Publisher restarts accepted: the stream had gone stale, then two older stamps in order."""
    inference: PeriodStats = field(default_factory=lambda: PeriodStats(5000))
    """Policy inference times (s), last 5000."""
    compute: PeriodStats = field(default_factory=lambda: PeriodStats(5000))
    """Whole compute() times (s), last 5000."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())
