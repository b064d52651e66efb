"""Receding-horizon MPC over a task's OCP, warm-started from a learned policy (ROS-free).

:class:`RecedingHorizonMPC` builds the task's Crocoddyl problem and a SolverBoxFDDP once
(control box kept) and re-targets them every cycle: x0 = the current state, the target
of the moment. Each solve starts from an initial guess chosen by ``MPCConfig.warm_start``:

- ``'policy'``: a rollout of the ONNX policy from the current state over the horizon,
  the paper's Fig. 7 warm start. :class:`TaskPolicy` adapts the policy to the task (so
  ``task.rollout(TaskPolicy(policy, task), problems)`` works); the MPC rolls out through
  the OCP's own action models (:meth:`TaskPolicy.rollout`: the same trajectory as
  ``task.rollout`` to 1e-15, ~3x faster for one trajectory, docs/mpc.md);
- ``'shifted'``: the previous solution advanced by the time elapsed since it was computed
  (one OCP step when that time is the task's dt; fractional shifts interpolate linearly),
  its last state and control repeated at the end. The first solve, or one after a reset
  or a non-finite solution, has nothing to shift and starts cold (reported as 'cold');
- ``'cold'``: Crocoddyl's default guess (x0 held, quasi-static controls);
- ``'hybrid'``: 'shifted' when there is a previous solution for the same target (converged, or
  stopped at its deadline or iteration cap: the next solve goes on from it) that, shifted to now,
  matches the measured state (:data:`HYBRID_SHIFT_TOLERANCE`), 'policy' otherwise (the first
  solve, after a target change, a jump of the state, a non-finite solution or a reset): the policy's
  rollout for every solve from scratch, the previous solution in between (the fewest iterations
  and the shortest solves in closed loop, docs/mpc.md "Warm starts in closed loop"; mpc_node's
  default).

A solve has an iteration cap and a wall-time deadline (the warm start's construction
included). The deadline is enforced between solver iterations: a solve whose next
iteration (estimated as its longest one so far) would end past the deadline is stopped
there, so a solve overruns its deadline by at most one iteration's mis-estimate. A cycle
whose budget is smaller than the running estimate of warm start + first iteration is not
attempted at all (reported as 'deadline', "skipped"), so a late cycle or a starved CPU
degrades to the policy's commands instead of wasting the CPU; the estimate decays by 10 %
per skipped cycle so that solves are retried. Every
failure (deadline missed, not converged within the cap, the solver giving up before it, non-finite numbers, a solver
exception, invalid input) is *reported* in the :class:`MPCResult`, never raised, and the
result then carries the policy's own command for the current state as the fallback.

Crocoddyl's problems default to 2 OpenMP threads, whose spin-waits make a solve many times
slower beside other busy processes (docs/mpc.md); ``MPCConfig.threads`` (default 1) sets
``ShootingProblem.nthreads``.

:class:`InlineSolver` gives the interface of :class:`tocpl_ros.mpc.worker.MPCWorker` (the solver
in a process of its own) solving in the caller's thread, for simulations and deterministic tests.

Only numpy, crocoddyl/pinocchio (through the task) and onnxruntime (through
:mod:`tocpl_ros.policy_file`) are needed: no torch, no rclpy (the solver process imports the
same).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import crocoddyl
import numpy as np

from tocpl_ros.mpc.config import MPCConfig, MPCResult
from tocpl_ros.mpc.deadline import DeadlineCallback, DeadlineExceeded
from tocpl_ros.mpc.task_policy import TaskPolicy, policy_command
from tocpl_ros.policy_file import OnnxPolicy
from tocpl_ros.tasks import Problems, Task, make_task

HYBRID_SHIFT_TOLERANCE = (0.05, 0.5)
"""(rad, rad/s): 'hybrid' shifts the previous solution only if, shifted to now, it is this close
to the measured positions and velocities (else the policy's rollout: after a reset of the arm the
shifted old plan was a warm start no 20 ms solve converged from, seen in mpc_node)."""


class RecedingHorizonMPC:
    """Receding-horizon Crocoddyl (SolverBoxFDDP) on a task's OCP; see the module docstring.

    ``policy``: an :class:`OnnxPolicy` (wrapped in a :class:`TaskPolicy`), a ready
    TaskPolicy/callable task policy, or None (then no 'policy' warm start and no fallback
    command). Construction errors (a policy that does not fit the task, bad config) raise;
    :meth:`solve` never does.
    """

    def __init__(self, task: Task, policy: OnnxPolicy | TaskPolicy | Callable | None = None, config: MPCConfig | None = None):
        self.config = config or MPCConfig()
        if self.config.horizon is not None and self.config.horizon != task.horizon:
            task = make_task(task.name, dataclasses.replace(task.config, horizon=self.config.horizon))
        self.task = task
        self.horizon = task.horizon
        if isinstance(policy, OnnxPolicy):
            policy = TaskPolicy(policy, task)
        self.policy = policy
        if self.policy is None and self.config.warm_start == "policy":
            raise ValueError("warm_start 'policy' needs a policy")
        self.u_min = np.asarray(task.u_min, dtype=float)
        self.u_max = np.asarray(task.u_max, dtype=float)
        self.shooting = task.build_problem()
        self.shooting.nthreads = self.config.threads
        self.solver = crocoddyl.SolverBoxFDDP(self.shooting)
        self.solver.th_stop = task.config.solver.th_stop
        self._deadline = DeadlineCallback()
        self.solver.setCallbacks([self._deadline])
        self._previous: tuple[np.ndarray, np.ndarray, float | None] | None = None
        self._previous_target: np.ndarray | None = None
        """The target of the previous solution ('hybrid' shifts it only for the same target)."""
        self._need: dict[str, float] = {}
        """Per warm start, running estimate (s) of warm start + first iteration: the least a useful solve takes."""
        self._now = math.nan
        self._rollout_models = list(self.shooting.runningModels)
        self._rollout_datas = [m.createData() for m in self._rollout_models]

    def reset(self) -> None:
        """Forget the previous solution (the next 'shifted' solve starts cold, 'hybrid' from the policy)."""
        self._previous = None
        self._previous_target = None

    # ------------------------------------------------------------------ warm starts

    def policy_command(self, x: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        """The policy's torque for state x and target (inside the box), or None (no policy
        or a non-finite output)."""
        return policy_command(self.policy, self.task, x, target)

    def _policy_guess(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """The policy's rollout from x, and whether it is one (it did not diverge)."""
        if isinstance(self.policy, TaskPolicy):
            xs, us, diverged = self.policy.rollout(self._rollout_models, self._rollout_datas, x, target)
            return xs, us, not diverged
        traj = self.task.rollout(self.policy, Problems(x[None], target.reshape(1, -1)), horizon=self.horizon)
        return traj.xs[0], traj.us[0], not traj.diverged[0]

    def _shifted_guess(self, x: np.ndarray, now: float | None) -> tuple[np.ndarray, np.ndarray]:
        xs_prev, us_prev, then = self._previous  # type: ignore[misc]
        elapsed = self.config.period if now is None or then is None else now - then
        shift = min(max(elapsed / self.task.dt, 0.0), float(self.horizon))
        T = self.horizon

        def resample(values: np.ndarray, n: int) -> np.ndarray:
            t = np.arange(n) + shift
            i0 = np.minimum(np.floor(t).astype(int), len(values) - 1)
            i1 = np.minimum(i0 + 1, len(values) - 1)
            w = (t - np.floor(t))[:, None]
            return (1.0 - w) * values[i0] + w * values[i1]

        xs = resample(xs_prev, T + 1)
        us = resample(us_prev, T)
        self._shift_prediction = xs[0].copy()  # where the previous solution says the robot is now
        xs[0] = x
        return xs, us

    def _shift_fits(self, x: np.ndarray, prediction: np.ndarray) -> bool:
        """The previous solution, shifted to now, describes the measured state (within
        HYBRID_SHIFT_TOLERANCE): 'hybrid' shifts it; not after a jump (a reset, a push, a long gap)."""
        nq = self.task.nq  # the model's q: with continuous joints nq > nv
        dq, dv = HYBRID_SHIFT_TOLERANCE
        return bool(np.abs(x[:nq] - prediction[:nq]).max() <= dq and np.abs(x[nq:] - prediction[nq:]).max() <= dv)

    def _cold_guess(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = [x] * (self.horizon + 1)
        return np.array(xs), np.array(self.shooting.quasiStatic(xs[:-1]))

    # ------------------------------------------------------------------ solve

    def solve(self, x: np.ndarray, target: np.ndarray, now: float | None = None, deadline: float | None = None) -> MPCResult:
        """One MPC cycle from state ``x`` [nx] towards ``target`` [target_dim] at time ``now``
        (seconds, any monotonic clock; only used to shift the previous solution). ``deadline``:
        this solve's budget in seconds, at most ``config.deadline`` (the default); e.g. less
        when the cycle started late. Never raises."""
        t0 = time.perf_counter()
        cfg = self.config
        try:
            self._now = math.nan if now is None else float(now)
        except (TypeError, ValueError):
            self._now = math.nan
        budget = cfg.deadline if deadline is None or not deadline < cfg.deadline else max(float(deadline), 0.0)
        try:
            x = np.array(x, dtype=float).reshape(-1)
            target = np.array(target, dtype=float).reshape(-1)
        except (TypeError, ValueError) as exc:
            return self._failure("invalid_input", f"state/target are not numbers ({exc})", None, None, "", t0)
        if x.shape != (self.task.nx,) or target.shape != (self.task.target_dim,):
            return self._failure(
                "invalid_input",
                f"state must have {self.task.nx} values and target {self.task.target_dim}, got {x.size} and {target.size}",
                None, None, "", t0,
            )
        if not (np.isfinite(x).all() and np.isfinite(target).all()):
            return self._failure("invalid_input", "NaN/Inf in the state or target", None, None, "", t0)

        mode = cfg.warm_start
        shifted_guess = None
        if mode == "hybrid":
            mode = "policy"
            same = self._previous_target is not None and np.array_equal(self._previous_target, target)
            if same and self._previous is not None:
                try:
                    shifted_guess = self._shifted_guess(x, now)
                    if self._shift_fits(x, self._shift_prediction):
                        mode = "shifted"
                    else:
                        shifted_guess = None
                except Exception:
                    shifted_guess = None
        if mode == "shifted" and self._previous is None:
            mode = "cold"
        need = self._need.get(mode, 0.0)
        if need > budget:
            # No time for even one iteration (a late cycle, a loaded machine): fall back at once,
            # keeping the CPU for the next cycle. The estimate decays so that solves are retried.
            self._need[mode] = 0.9 * need
            return self._failure(
                "deadline",
                f"skipped: deadline {budget * 1e3:.3g} ms, a {mode} solve needs ~{need * 1e3:.3g} ms (warm start + 1 iteration)",
                x, target, mode, t0,
            )
        try:
            self.task.set_problem(self.shooting, Problems(x[None], target[None]))
            # a cold guess holds x; a shifted plan starts at x but its states are the old plan's (rolled
            # out from x instead, the double pendulum's drifted: median 311 iterations instead of 1)
            feasible = False
            if mode == "policy":
                init_xs, init_us, feasible = self._policy_guess(x, target)
            elif mode == "shifted":
                init_xs, init_us = shifted_guess if shifted_guess is not None else self._shifted_guess(x, now)
            else:
                init_xs, init_us = self._cold_guess(x)
            warm_time = time.perf_counter() - t0
            if warm_time > budget:
                self._estimate(mode, warm_time)
                return self._failure(
                    "deadline", f"the {mode} warm start alone took {warm_time * 1e3:.2f} ms (deadline {budget * 1e3:.3g} ms)",
                    x, target, mode, t0, warm_time=warm_time,
                )
            self._deadline.arm(t0, budget)
            try:
                # told feasible, SolverBoxFDDP solves its box-QP from the first iteration (ocp.solve)
                converged = bool(self.solver.solve(list(init_xs), list(init_us), cfg.max_iter, feasible))
                stopped = False
            except DeadlineExceeded:
                converged, stopped = False, True
            solve_time = time.perf_counter() - t0
            first = self._deadline.first if self._deadline.calls else solve_time - warm_time
            self._estimate(mode, warm_time + first)
            iterations = int(self.solver.iter)
            xs, us = np.array(self.solver.xs), np.array(self.solver.us)
            K0 = np.array(self.solver.K[0])
            cost = float(self.solver.cost)
        except Exception as exc:  # a solver/model exception must never escape
            return self._failure("error", f"{type(exc).__name__}: {exc}", x, target, mode, t0)

        finite = np.isfinite(xs).all() and np.isfinite(us).all()
        self._previous = (xs, us, now) if finite else None
        self._previous_target = target.copy() if finite else None
        stats = dict(iterations=iterations, converged=converged, solve_time=solve_time, warm_time=warm_time, cost=cost)
        if not (finite and np.isfinite(K0).all() and math.isfinite(cost)):
            return self._failure("nonfinite", "the solution has NaN/Inf", x, target, mode, t0, **stats)
        solution = dict(xs=xs, us=us)
        if stopped or solve_time > budget:
            return self._failure(
                "deadline",
                f"not converged within the deadline of {budget * 1e3:.3g} ms ({iterations} iterations, "
                f"{solve_time * 1e3:.2f} ms{', stopped' if stopped else ''})",
                x, target, mode, t0, **stats, **solution,
            )
        if not converged and iterations < cfg.max_iter:
            # Crocoddyl gives up before the cap when no step length decreases the cost even at
            # its largest regularization (e.g. a cold start far into the box on the pendulum)
            return self._failure(
                "stalled",
                f"the solver stopped after {iterations} of max_iter {cfg.max_iter} iterations without converging "
                f"(no cost-decreasing step at its largest regularization{'' if self.solver.isFeasible else ', plan still infeasible'})",
                x, target, mode, t0, **stats, **solution,
            )
        if not converged:
            return self._failure(
                "max_iter", f"not converged within max_iter {cfg.max_iter}", x, target, mode, t0, **stats, **solution,
            )
        u0 = np.clip(us[0], self.u_min, self.u_max)
        try:
            gains = np.array([np.array(self.solver.K[k]) for k in range(self.plan_steps)])
        except Exception as exc:  # never raise from solve()
            return self._failure("error", f"reading the gains: {type(exc).__name__}: {exc}", x, target, mode, t0, **stats)
        if not np.isfinite(gains).all():
            return self._failure("nonfinite", "the feedback gains have NaN/Inf", x, target, mode, t0, **stats)
        return MPCResult(
            ok=True, status="converged", message="", command=u0, u_bar=u0, x_bar=xs[0].copy(), K=K0, fallback=False,
            warm_start=mode, iterations=iterations, converged=True, solve_time=solve_time, warm_start_time=warm_time,
            cost=cost, xs=xs, us=us, state_time=self._now, gains=gains, dt=self.task.dt,
        )

    @property
    def fresh_for(self) -> float:
        """How long (s) after its state a solution may be used: the deadline, at most the horizon."""
        return min(self.config.deadline, self.horizon * self.task.dt)

    @property
    def gain_steps(self) -> int:
        """Plan steps needed to follow a result while it is fresh (``law``)."""
        return max(1, min(self.horizon, int(self.fresh_for // self.task.dt) + 1))

    @property
    def plan_steps(self) -> int:
        """Plan steps whose gains a result carries: ``gain_steps``, and enough for ``plan_duration``
        (the plan a fast loop follows, mpc_node's /mpc/plan)."""
        plan = int(math.ceil(self.config.plan_duration / self.task.dt - 1e-9))
        return max(self.gain_steps, min(self.horizon, plan))

    def _estimate(self, mode: str, seconds: float) -> None:
        old = self._need.get(mode, 0.0)
        self._need[mode] = seconds if old <= 0.0 else 0.7 * old + 0.3 * seconds

    def _failure(
        self,
        status: str,
        message: str,
        x: np.ndarray | None,
        target: np.ndarray | None,
        mode: str,
        t0: float,
        iterations: int = 0,
        converged: bool = False,
        solve_time: float | None = None,
        warm_time: float = 0.0,
        cost: float = math.nan,
        xs: np.ndarray | None = None,
        us: np.ndarray | None = None,
    ) -> MPCResult:
        """A failed cycle with the policy's command as the fallback (never raises)."""
        solve_time = time.perf_counter() - t0 if solve_time is None else solve_time
        command = None
        if x is not None and target is not None:
            try:
                command = self.policy_command(x, target)
            except Exception as exc:
                message += f"; the policy failed too ({type(exc).__name__}: {exc})"
        if command is None and x is not None:
            message += "; no policy command to fall back to"
        nx, nu = self.task.nx, self.task.nu
        return MPCResult(
            ok=False, status=status, message=message, command=command, u_bar=command,
            x_bar=None if command is None else x.copy(), K=None if command is None else np.zeros((nu, nx)),
            fallback=command is not None, warm_start=mode, iterations=iterations, converged=converged,
            solve_time=solve_time, warm_start_time=warm_time, cost=cost, xs=xs, us=us,
            state_time=self._now, dt=self.task.dt,
        )


class InlineSolver:
    """A :class:`RecedingHorizonMPC` behind the request/result interface of :class:`MPCWorker`,
    solving inside :meth:`submit` (the caller's thread: it blocks for the whole solve). For
    simulations and for testing the tick logic deterministically; a real-time loop uses
    :class:`MPCWorker`."""

    def __init__(self, mpc: RecedingHorizonMPC):
        self.mpc = mpc
        self.config = mpc.config
        self.horizon = mpc.horizon
        self.task_name = mpc.task.name
        self.fresh_for = mpc.fresh_for
        self._result: MPCResult | None = None
        self.deaths = self.restarts = 0
        self.status = "ready"

    @property
    def busy(self) -> bool:
        return False

    def policy_command(self, x: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        return self.mpc.policy_command(x, target)

    def submit(self, x: np.ndarray, target: np.ndarray, now: float, budget: float) -> bool:
        self._result = self.mpc.solve(x, target, now, deadline=budget)
        return True

    def receive(self, timeout: float = 0.0) -> MPCResult | None:
        result, self._result = self._result, None
        return result

    def reset(self) -> None:
        self.mpc.reset()

    def close(self) -> None:
        pass
