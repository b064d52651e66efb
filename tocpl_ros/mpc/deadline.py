"""The wall-time deadline of a solve, enforced between Crocoddyl's iterations (ROS-free)."""

from __future__ import annotations

import math
import time

import crocoddyl


class DeadlineExceeded(Exception):
    """Raised from the solver callback to stop a solve that would miss its deadline."""


class DeadlineCallback(crocoddyl.CallbackAbstract):
    """Called by Crocoddyl after every iteration: stops the solve (by raising) when the next
    iteration, estimated as the longest one of this solve, would end past the deadline."""

    def __init__(self):
        crocoddyl.CallbackAbstract.__init__(self)
        self.arm(0.0, math.inf)

    def arm(self, start: float, deadline: float) -> None:
        self.start = start
        self.deadline = deadline
        self.last = time.perf_counter()
        self.longest = 0.0
        self.first = math.nan
        self.calls = 0

    def __call__(self, solver, *args):
        now = time.perf_counter()
        self.calls += 1
        self.longest = max(self.longest, now - self.last)
        if self.calls == 1:
            self.first = now - self.last
        self.last = now
        if solver.isFeasible and solver.stop < solver.th_stop:
            return  # the solver is about to return converged: let it
        # (feasibility too: with every control on the box, BoxFDDP's projected criterion is 0 while
        # the rollout is still infeasible and the solve goes on: a saturated warm start would
        # otherwise never meet its deadline, docs/mpc.md)
        if now - self.start + self.longest > self.deadline:
            raise DeadlineExceeded()
