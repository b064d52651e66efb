"""The policy node's fast loop: a thread calling ``tick`` at absolute deadlines (rclpy-free).

An rclpy timer wakes the executor through a second thread and then waits for whichever callback
runs; this thread sleeps until ``spin`` seconds before each deadline and busy-waits the rest,
so the tick starts on time unless another thread holds the GIL (the nodes' callbacks are tens of
µs). It busy-waits only under real-time scheduling: at normal priority the scheduler charges the
spinning against the thread and preempts it, and the loop misses more deadlines than with a plain
sleep. docs/mpc.md, "The fast loop's own thread", has the figures that chose it and ``spin``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

DEFAULT_SPIN = 2e-4
"""Seconds busy-waited before each deadline under SCHED_FIFO/SCHED_RR: more than this VM's wake-up
latency there."""


def realtime_scheduled() -> bool:
    """Whether the calling thread runs under a real-time policy (SCHED_FIFO or SCHED_RR)."""
    try:
        return os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR)
    except (AttributeError, OSError):
        return False


class FastLoop:
    """``tick()`` every ``period`` s from :meth:`start` to :meth:`stop`, in a daemon thread named
    ``name`` (its scheduling inherited from the thread that starts it: ``spin`` applies only if it
    is real-time). A tick that raises goes to ``on_error(exc)`` and the loop goes on; a tick later than
    one whole period re-bases the deadlines on now (the missed ticks are not made up in a burst)."""

    def __init__(self, period: float, tick: Callable[[], None], on_error: Callable[[BaseException], None],
                 spin: float = DEFAULT_SPIN, name: str = "fast_loop"):
        if not period > 0:
            raise ValueError(f"period must be > 0 s, got {period!r}")
        self.period = float(period)
        self.spin = min(max(float(spin), 0.0), self.period)
        self._tick, self._on_error = tick, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the loop to end and wait up to ``timeout`` s; True if it ended (a tick blocked in
        the middleware may outlast the wait: the thread is a daemon)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        spin = self.spin if realtime_scheduled() else 0.0
        deadline = time.monotonic() + self.period
        while not self._stop.is_set():
            early = deadline - time.monotonic() - spin
            if early > 0:
                time.sleep(early)
            while time.monotonic() < deadline:
                pass
            if self._stop.is_set():
                break
            try:
                self._tick()
            except Exception as exc:
                self._on_error(exc)
            deadline += self.period
            now = time.monotonic()
            if now - deadline > self.period:
                deadline = now
