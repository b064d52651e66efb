"""The policy node's fast loop (tocpl_ros/ros/fast_loop.py), without ROS: it ticks, survives a
tick that raises, does not make up missed ticks in a burst, and stops."""

from __future__ import annotations

import threading
import time

import pytest

from tocpl_ros.ros.fast_loop import FastLoop

PERIOD = 0.002


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_ticks_until_stopped_and_survives_a_raising_tick():
    ticks: list[float] = []
    errors: list[BaseException] = []

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) == 3:
            raise RuntimeError("tick 3 fails")

    loop = FastLoop(PERIOD, tick, errors.append, name="test_loop")
    loop.start()
    assert wait_for(lambda: len(ticks) >= 50, 30.0), f"{len(ticks)} ticks"
    assert loop.running
    assert loop.stop()
    assert not loop.running
    assert [str(e) for e in errors] == ["tick 3 fails"]
    n = len(ticks)
    time.sleep(10 * PERIOD)
    assert len(ticks) == n, "no tick after stop()"
    assert "test_loop" not in [t.name for t in threading.enumerate()]
    assert (sorted(ticks) == ticks) and all(b > a for a, b in zip(ticks, ticks[1:]))


def test_a_late_tick_is_not_made_up_in_a_burst():
    ticks: list[float] = []
    blocked_until: list[float] = []

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) == 5:  # one tick that takes 20 periods
            time.sleep(20 * PERIOD)
            blocked_until.append(time.monotonic())

    loop = FastLoop(PERIOD, tick, lambda exc: None)
    loop.start()
    try:
        assert wait_for(lambda: len(ticks) >= 40, 30.0)
    finally:
        loop.stop()
    end = blocked_until[0]
    # A loop catching up would fire ~20 ticks right away; this one ticks at once, then on period.
    soon = [t for t in ticks if end <= t < end + 3 * PERIOD]
    assert len(soon) <= 4, f"{len(soon)} ticks within 3 periods after the late one"


def test_period_must_be_positive():
    with pytest.raises(ValueError, match="period"):
        FastLoop(0.0, lambda: None, lambda exc: None)
