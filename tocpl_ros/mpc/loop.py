"""The MPC node's per-tick logic without ROS (:class:`MPCLoop`): the node is a thin rclpy layer
over it, and the tests drive it with an in-thread solver."""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np

from tocpl_ros.control.controller import PolicyController
from tocpl_ros.control.plan import encode_result
from tocpl_ros.control.stats import PeriodStats

TICK_MARGIN = 0.001
"""Seconds of each period a tick never spends waiting for the solver (publishing, callbacks)."""


class MPCLoop:
    """The node's per-tick logic without ROS: input checks (PolicyController), freshness, the
    exchange with the solver, the command/feedback to publish and the counters.

    ``solver`` is an :class:`~tocpl_ros.mpc.worker.MPCWorker` (the node: solves in a process of their
    own) or an :class:`~tocpl_ros.mpc.solver.InlineSolver` (solves inside ``submit``: deterministic
    tests). Every tick with a fresh joint state and a target publishes, never waiting for more
    than ``budget`` (the rest of its period):

    1. a result that arrived since the last tick is taken;
    2. if the solver is idle, a solve from the current state is submitted, with the deadline
       still left for that state (``deadline`` − its age), and the tick waits for it, at most
       until that deadline or the end of ``budget``, whichever is first (a solve that takes
       longer goes on in the solver and is taken by a later tick);
    3. the command: the newest result if it converged and its state is at most ``fresh_for``
       old (the deadline, at most the horizon), following its plan with the feedback law
       u = ū_k − K_k (x − x̄_k) at the current state x (k: the plan step ``age`` falls in; for a
       solve from this tick's own state x = x̄_0 and u = ū_0); otherwise the policy's command for
       x (K = 0), and should the policy's output not be finite, the braking command.
    """

    def __init__(self, solver, controller: PolicyController, stale_periods: int):
        self.solver = solver
        self.config = solver.config
        self.controller = controller
        self.stale_limit = stale_periods * self.config.period + 1e-9
        self.fresh_for = solver.fresh_for
        self.plan = None
        """The newest result if it converged (an MPCResult), until it is no longer fresh."""
        self.counts: Counter = Counter()
        self.solve_times = PeriodStats(5000)
        self.iterations = PeriodStats(5000)
        self.last_status = "waiting"
        self.last_message = "no joint state received yet"
        self._reason = "no MPC solution yet"
        self._submitted_at: float | None = None
        self._request: tuple[float, float | None, np.ndarray] | None = None
        """(state_time, joint-state stamp, target) of the last request submitted."""
        self.plans: list[np.ndarray] = []
        """/mpc/plan messages to publish (tocpl_ros.control.plan layout): one per result taken,
        its plan if it converged (whatever its age: the fast loop judges that), else its failure."""
        self.plan_sequence = 0

    def tick(self, now: float, budget: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(command [nu], feedback [nu + nx + nu·nx]) to publish, or None (nothing). ``budget``:
        seconds the tick may spend waiting for a solve (None: one period minus TICK_MARGIN)."""
        c = self.controller
        self.counts["ticks"] += 1
        x, target = c.x, c.target  # the OCP's state: the model's q (cos θ, sin θ of a continuous joint), v
        if x is None:
            self.counts["no_state_ticks"] += 1
            self.last_status, self.last_message = "waiting", "no joint state received yet"
            return None
        age = c.age(now)
        if not -self.stale_limit <= age <= self.stale_limit:
            self.counts["stale_ticks"] += 1
            if self.last_status != "stale":
                self.solver.reset()  # a solution from before the gap is no guess for 'shifted'
            self.plan = None
            self.last_status = "stale"
            self.last_message = f"stale joint_states: last accepted {age * 1e3:.1f} ms ago (limit {self.stale_limit * 1e3:.1f} ms)"
            return None
        if target is None:
            self.counts["no_target_ticks"] += 1
            self.last_status, self.last_message = "waiting", "no target"
            return None
        if budget is not None and budget < self.config.deadline:
            self.counts["short_budget_ticks"] += 1  # less than the deadline left in this period
        try:
            return self._step(x, target, now, now - age, budget)
        except Exception as exc:  # a bug here must not leave a gap: the policy, else braking
            self.counts["tick_errors"] += 1
            self.last_status, self.last_message = "fallback", f"MPC tick failed: {type(exc).__name__}: {exc}"
            return self._fallback(x, target)

    def _step(self, x: np.ndarray, target: np.ndarray, now: float, state_time: float, budget: float | None):
        solver = self.solver
        self._take(solver.receive(0.0), now)
        t = now
        if solver.busy:
            self.counts["busy_ticks"] += 1
        else:
            remaining = self.config.deadline - (now - state_time)  # for a solution of this state to be fresh
            if solver.submit(x, target, state_time, remaining):
                self.counts["requests"] += 1
                self._submitted_at = now
                self._request = (state_time, self.controller.stamp, np.array(target, dtype=float))
                limit = self.config.period - TICK_MARGIN if budget is None else budget
                wait = max(0.0, min(limit, remaining))
                t0 = time.perf_counter()
                result = solver.receive(wait)
                t = now + (time.perf_counter() - t0)
                self._take(result, t)
            else:
                self.counts["solver_down_ticks"] += 1
                self._reason = f"no MPC solver ({solver.status}: {getattr(solver, 'last_error', '') or 'starting'})"
        return self._command(x, target, t)

    def _take(self, result, t: float) -> None:
        """Account for a result (None: nothing arrived) and keep it as the plan if usable."""
        if result is None:
            return
        self._queue_plan(result)
        self.counts["solves"] += 1
        self.counts[f"warm_start.{result.warm_start or 'none'}"] += 1
        self.solve_times.add(result.solve_time)
        self.iterations.add(float(result.iterations))
        age = t - result.state_time
        if result.ok and age <= self.fresh_for:
            self.counts["converged"] += 1
            self.plan = result
            self._reason = ""
            return
        self.plan = None  # the newest result failed: the policy, not an older plan
        self.counts["fallbacks"] += 1
        if result.ok:
            self.counts["fallback.late"] += 1
            self._reason = (f"the solution arrived {age * 1e3:.1f} ms after its state (deadline "
                            f"{self.fresh_for * 1e3:.3g} ms; solve {result.solve_time * 1e3:.1f} ms)")
        else:
            self.counts[f"fallback.{result.status}"] += 1
            self._reason = result.message

    def _queue_plan(self, result) -> None:
        """The result as a /mpc/plan message, stamped with the joint state it was solved from."""
        request = self._request
        if request is None or request[1] is None or result.state_time != request[0]:
            return
        c = self.controller
        try:
            self.plan_sequence += 1
            self.plans.append(encode_result(result, request[1], request[2], self.plan_sequence, c.nv, 2 * c.nv,
                                            to_positions=c.robot.positions_state, continuous=c.robot.is_continuous))
            self.counts["plans_published"] += 1
        except Exception:  # a plan that cannot be encoded is not published; the command still is
            self.counts["plan_errors"] += 1
        if len(self.plans) > 10:
            del self.plans[:-10]

    def _command(self, x: np.ndarray, target: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        c = self.controller
        plan = self.plan
        if plan is not None:
            age = t - plan.state_time
            law = plan.law(age) if age <= self.fresh_for else None
            if law is None:
                self.plan = None
                self._reason = f"the last solution expired ({age * 1e3:.1f} ms old, deadline {self.fresh_for * 1e3:.3g} ms)"
            else:
                u_bar, x_bar, K = law
                u_bar = np.clip(u_bar, c.u_lo, c.u_hi)
                # K is in the tangent space: x ⊖ x̄ (pin.difference on a continuous joint), not x − x̄
                command = np.clip(u_bar - K @ c.robot.state_difference(x, x_bar), c.u_lo, c.u_hi)
                # states in /mpc/feedback as in /mpc/plan: joint positions and velocities (2 nv)
                feedback = np.concatenate([u_bar, c.robot.positions_state(x_bar), K.reshape(-1)])
                if command.shape == (c.nv,) and np.isfinite(command).all() and np.isfinite(feedback).all():
                    self.counts["mpc_ticks"] += 1
                    self.last_status, self.last_message = "mpc", ""
                    return command, feedback
                self.plan = None
                self._reason = "the solution's feedback law gave NaN/Inf"
        self.counts["policy_ticks"] += 1
        reason = self._reason
        if self.solver.busy and self._submitted_at is not None:
            reason = f"solving (started {(t - self._submitted_at) * 1e3:.1f} ms ago); last: {reason}"
        self.last_status, self.last_message = "fallback", reason
        return self._fallback(x, target)

    def _fallback(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The policy's command for x, else (non-finite policy output) the controller's braking
        command g(q) − M(q)·hold_kd·v; either with K = 0 in the feedback."""
        c = self.controller
        command = None
        try:
            command = self.solver.policy_command(x, target)
        except Exception:
            command = None
        if command is None or command.shape != (c.nv,) or not np.isfinite(command).all():
            self.counts["brake_ticks"] += 1
            self.last_status = "brake"
            q, v = x[: c.nq], x[c.nq:]
            command = c.gravity(q) - c.mass_matrix(q) @ (c.config.hold_kd * v)
            if not np.isfinite(command).all():
                command = np.zeros(c.nv)
        command = np.clip(command, c.u_lo, c.u_hi)
        return command, np.concatenate([command, c.robot.positions_state(x), np.zeros(c.nv * 2 * c.nv)])

    def diagnostics(self) -> dict[str, str]:
        """Flat key → value strings (solve statistics of the window since the last call)."""
        st, it = self.solve_times.summary(), self.iterations.summary()
        self.solve_times.clear()
        self.iterations.clear()
        cfg = self.config
        s = self.controller.stats
        out = {
            "state": self.last_status,
            "reason": self.last_message,
            "warm_start": cfg.warm_start,
            "rate_hz": f"{cfg.rate:g}",
            "deadline_ms": f"{cfg.deadline * 1e3:g}",
            "max_iter": str(cfg.max_iter),
            "horizon": str(self.solver.horizon),
            "fresh_for_ms": f"{self.fresh_for * 1e3:g}",
            "solver": self.solver.status,
            "solver_pid": str(getattr(self.solver, "pid", None) or os.getpid()),
            "solver_deaths": str(self.solver.deaths),
            "solver_restarts": str(self.solver.restarts),
            "solve_time_p50_ms": f"{st['p50'] * 1e3:.3f}",
            "solve_time_p99_ms": f"{st['p99'] * 1e3:.3f}",
            "solve_time_max_ms": f"{st['max'] * 1e3:.3f}",
            "iterations_p50": f"{it['p50']:g}",
            "iterations_mean": f"{it['mean']:.2f}",
            "iterations_max": f"{it['max']:g}",
            "window_solves": str(st["n"]),
            "accepted_joint_states": str(s.accepted_states),
            "rejected_inputs": str(s.rejected_total),
            **self.controller.target_diagnostics(),
        }
        counters = ("ticks", "requests", "solves", "converged", "fallbacks", "mpc_ticks", "policy_ticks", "busy_ticks",
                    "solver_down_ticks", "short_budget_ticks", "stale_ticks", "no_state_ticks", "no_target_ticks",
                    "brake_ticks", "tick_errors", "plans_published", "plan_errors")
        for key in counters:
            out[key] = str(self.counts[key])
        for key, count in sorted(self.counts.items()):
            if "." in key:
                out[key] = str(count)
        for key, count in sorted(s.rejected.items()):
            out[f"rejected.{key}"] = str(count)
        return out
