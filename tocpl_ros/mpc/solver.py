"""Receding-horizon MPC over a task's OCP, warm-started from a learned policy (ROS-free).

:class:`RecedingHorizonMPC` builds the task's Crocoddyl problem and a SolverBoxFDDP once
(control box kept) and re-targets them every cycle: x0 = the current state, the target
of the moment. Each solve starts from an initial guess chosen by ``MPCConfig.warm_start``:

- ``'policy'``: a rollout of the ONNX policy from the current state over the horizon,
  the paper's Fig. 7 warm start. :class:`TaskPolicy` adapts the policy to the task (so
  ``task.rollout(TaskPolicy(policy, task), problems)`` works); the MPC rolls out through
  the OCP's own action models (:meth:`TaskPolicy.rollout`: the same trajectory as
  ``task.rollout`` to 1e-15, measured 1.6 ms instead of 4.1-4.8 ms for T = 50);
- ``'shifted'``: the previous solution advanced by the time elapsed since it was computed
  (one OCP step when that time is the task's dt; fractional shifts interpolate linearly),
  its last state and control repeated at the end. The first solve, or one after a reset
  or a non-finite solution, has nothing to shift and starts cold (reported as 'cold');
- ``'cold'``: Crocoddyl's default guess (x0 held, quasi-static controls);
- ``'hybrid'``: 'shifted' when there is a previous solution for the same target (converged, or
  stopped at its deadline or iteration cap: the next solve goes on from it) that, shifted to now,
  matches the measured state (:data:`HYBRID_SHIFT_TOLERANCE`), 'policy' otherwise (the first
  solve, after a target change, a jump of the state, a non-finite solution or a reset): the policy's
  rollout for every solve from scratch, the previous solution in between (closed loop, 10
  held-out ur5_reach_fixed_horizon problems: median 2 iterations and 3.6 ms per solve, against
  3 and 10 ms for 'policy' and 6 and 9.4 ms for 'cold'; mpc_node's default).

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

Solving off the caller's thread: :class:`MPCWorker` runs a RecedingHorizonMPC in a process of
its own (a Python thread would not do: Crocoddyl's bindings keep the GIL for a whole solver
iteration), one request at a time, non-blocking submit and a receive with a timeout, restarted
if it dies; :class:`InlineSolver` gives the same interface solving in the caller's thread (for
simulations and deterministic tests). A result is *fresh* while its state is at most
``min(deadline, horizon·dt)`` old (:attr:`RecedingHorizonMPC.fresh_for`); it carries the gains
of the plan steps that window covers, and :meth:`MPCResult.law` gives the local controller
(ū_k, x̄_k, K_k) of the step running at a given age, so a later tick can follow the plan.

The feedback of a solution follows Crocoddyl's convention: a fast loop applies
``u = ū_0 − K_0 (x − x̄_0)`` (``MPCResult.u_bar``, ``K``, ``x_bar``; on a fallback K = 0
and ū = the policy's command, so the same law gives the fallback command).

Crocoddyl's problems default to 2 OpenMP threads; on this 2-core machine with other
processes busy, calc of the T = 50 ur5_reach problem was measured at 8 ms with 2 threads
and 0.36 ms with 1 (a whole solve 167 ms vs 11 ms). ``MPCConfig.threads`` (default 1) sets
``ShootingProblem.nthreads``.

Only numpy, crocoddyl/pinocchio (through the task) and onnxruntime (through
:mod:`tocpl_ros.policy_file`) are needed: no torch, no rclpy (the solver process imports the
same).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import crocoddyl
import numpy as np

from tocpl_ros.config import FieldError
from tocpl_ros.policy_file import INPUT_NAME, OUTPUT_NAME, OnnxPolicy, PolicyFileError
from tocpl_ros.tasks import Problems, Task, make_task

__all__ = [
    "WARM_STARTS",
    "STATUSES",
    "ClosedLoopEpisode",
    "MPCConfig",
    "MPCResult",
    "RecedingHorizonMPC",
    "InlineSolver",
    "MPCWorker",
    "has_continuous_dynamics",
    "TaskPolicy",
    "WorkerError",
    "policy_command",
    "run_closed_loop",
    "worker_main",
]

WARM_STARTS = ("policy", "shifted", "cold", "hybrid")
HYBRID_SHIFT_TOLERANCE = (0.05, 0.5)
"""(rad, rad/s): 'hybrid' shifts the previous solution only if, shifted to now, it is this close
to the measured positions and velocities (else the policy's rollout: after a reset of the arm the
shifted old plan was a warm start no 20 ms solve converged from, seen in mpc_node)."""
STATUSES = ("converged", "max_iter", "stalled", "deadline", "nonfinite", "error", "invalid_input")
"""``MPCResult.status`` values; only 'converged' is a usable solution."""


@dataclass
class MPCConfig:
    """Settings of the receding-horizon MPC (the ``mpc_node`` parameters of the same names)."""

    rate: float = 100.0
    """Re-planning rate (Hz): one solve every 1/rate s. Without explicit times, the 'shifted'
    warm start advances the previous solution by 1/rate s."""
    horizon: int | None = None
    """OCP horizon in steps of the task's dt; None (or 0): the task's own horizon."""
    warm_start: str = "policy"
    """Initial guess of each solve: 'policy' (rollout of the ONNX policy from the current state),
    'shifted' (previous solution advanced by the elapsed time, last state/control repeated;
    cold when there is none), 'cold' (x0 held, quasi-static controls) or 'hybrid' (the shifted
    previous solution when there is one for the same target, converged or stopped at its
    deadline or cap, else the policy's rollout: the policy for every solve from scratch, the cheap
    shift in between, a stopped solve going on from where it stopped)."""
    max_iter: int = 20
    """Iteration cap of one solve; a solve that has not converged by then is a failure."""
    deadline: float = 0.008
    """Wall-time budget of one solve in seconds, warm start included (inf: none). A solve that
    would end later is stopped between iterations and reported as 'deadline' (fallback). In
    mpc_node it counts from the state's arrival, and a solution is used while its state is at
    most this old (at most the horizon)."""
    threads: int = 1
    """Crocoddyl threads for the problem's calc/calcDiff (ShootingProblem.nthreads)."""
    plan_duration: float = 0.1
    """Seconds of each solution kept as the plan a fast loop follows (mpc_node's /mpc/plan): the
    gains and states of the steps up to this time after the solve's state (at most the horizon)."""
    solver_nice: int = 0
    """Niceness added to the solver process of :class:`MPCWorker` (0-19; higher: lower CPU
    priority): when the CPU is short, the fast loop and the robot's driver come first and the MPC
    gets late instead (its plans age, the fast loop falls back to the policy). 0: the same
    priority; measured with 10 beside the Python simulator, the policy node and the MPC node on 2
    cores: shifted solves took 20 ms instead of 3-6 ms and most missed their deadline."""

    def __post_init__(self) -> None:
        def number(name: str, value, lo: float, allow_inf: bool = False) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and (math.isfinite(value) or (allow_inf and value == math.inf))
            if not ok:
                raise FieldError(name, f"must be a {'number' if allow_inf else 'finite number'}, got {value!r}")
            if not value > lo:
                raise FieldError(name, f"must be > {lo:g}, got {value}")

        number("rate", self.rate, 0.0)
        number("deadline", self.deadline, 0.0, allow_inf=True)
        number("plan_duration", self.plan_duration, 0.0)
        if self.horizon is not None and (isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 0):
            raise FieldError("horizon", f"must be an integer >= 1 (or 0/None: the task's), got {self.horizon!r}")
        if self.horizon == 0:
            self.horizon = None
        if self.warm_start not in WARM_STARTS:
            raise FieldError("warm_start", f"must be one of {', '.join(WARM_STARTS)}, got {self.warm_start!r}")
        for name in ("max_iter", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FieldError(name, f"must be an integer >= 1, got {value!r}")
        n = self.solver_nice
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 19:
            raise FieldError("solver_nice", f"must be an integer in [0, 19], got {n!r}")

    @property
    def period(self) -> float:
        """Re-planning period 1/rate (s)."""
        return 1.0 / self.rate


@dataclass
class MPCResult:
    """One MPC cycle: the solution's first control and local controller, or the fallback."""

    ok: bool
    """The solution is usable: converged, finite, within the deadline. False → fallback."""
    status: str
    """One of :data:`STATUSES`."""
    message: str
    """Human-readable detail ('' when ok)."""
    command: np.ndarray | None
    """Torque to send now: ū_0 when ok, else the policy's command for the current state
    (the fallback); both inside the task's box. None only without a usable command
    (invalid input, or no policy to fall back to)."""
    u_bar: np.ndarray | None
    """Feed-forward ū_0 of the feedback law (= command)."""
    x_bar: np.ndarray | None
    """State x̄_0 the feedback law is linearised at (the solve's x0)."""
    K: np.ndarray | None
    """Feedback gain K_0 [nu, nx], Crocoddyl's convention u = ū_0 − K_0 (x − x̄_0); zeros on a fallback."""
    fallback: bool
    """command is the policy's, not the MPC's."""
    warm_start: str
    """Warm start actually used ('shifted' without a previous solution runs 'cold'); '' if none."""
    iterations: int = 0
    """Solver iterations (Crocoddyl's ``solver.iter``, as :func:`tocpl_ros.ocp.solve` reports)."""
    converged: bool = False
    """The solver met its stopping criterion."""
    solve_time: float = 0.0
    """Wall time of the cycle up to the end of the solver (s), warm start included."""
    warm_start_time: float = 0.0
    """Part of solve_time spent building the warm start (s)."""
    cost: float = math.nan
    """Cost of the solution (NaN if none)."""
    xs: np.ndarray | None = None
    """Solution states [T+1, nx] (None if not finite)."""
    us: np.ndarray | None = None
    """Solution controls [T, nu] (None if not finite)."""
    state_time: float = math.nan
    """The ``now`` the solve was given: the time of the state it started from (NaN if none given)."""
    gains: np.ndarray | None = None
    """Feedback gains K_k of the first steps [n, nu, nx] (n covers ``min(deadline, horizon·dt)``,
    so the plan can be followed for as long as it stays fresh, and ``plan_duration``:
    ``RecedingHorizonMPC.plan_steps``; ``gains[0]`` is ``K``); None on a failure."""
    dt: float = math.nan
    """Duration of one OCP step (s): plan step k starts at ``state_time + k·dt``."""

    def law(self, age: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(ū_k, x̄_k, K_k) of the plan step running ``age`` seconds after ``state_time``
        (k = floor(age / dt), at most the last step with a gain), for the feedback law
        u = ū_k − K_k (x − x̄_k); None if the result has no plan (a failure)."""
        if not self.ok or self.gains is None or self.us is None or self.xs is None or not len(self.gains):
            return None
        k = int(age // self.dt) if math.isfinite(age) and age > 0 and math.isfinite(self.dt) and self.dt > 0 else 0
        k = min(k, len(self.gains) - 1)
        if k == 0:
            return self.u_bar, self.x_bar, self.gains[0]  # type: ignore[return-value]
        return self.us[k], self.xs[k], self.gains[k]

    def feedback_array(self) -> np.ndarray | None:
        """[ū (nu), x̄ (nx), K row-major (nu·nx)] (the ``/mpc/feedback`` layout), or None."""
        if self.u_bar is None or self.x_bar is None or self.K is None:
            return None
        return np.concatenate([self.u_bar, self.x_bar, self.K.reshape(-1)])


class TaskPolicy:
    """An :class:`OnnxPolicy` as a policy of ``task``: task observations [B, obs_dim] (the
    task's ``obs_layout``, e.g. [q, v, target]) → torques [B, nu] inside the task's box.

    Checks that the policy fits the task (controls, joint names, dt, observation blocks;
    blocks in another order are permuted) and raises :class:`PolicyFileError` saying what
    differs. Usable directly as ``task.rollout(TaskPolicy(policy, task), problems)``.
    """

    def __init__(self, policy: OnnxPolicy, task: Task):
        md = policy.metadata
        where = f"{policy.path.name}: policy for task '{md.task}' does not fit task '{task.name}'"
        if md.nu != task.nu:
            raise PolicyFileError(f"{where}: {md.nu} controls vs {task.nu}")
        task_joints = list(getattr(task, "joint_names", []) or [])
        if md.joint_names and task_joints and list(md.joint_names) != task_joints:
            raise PolicyFileError(f"{where}: joint names {md.joint_names} vs {task_joints}")
        if abs(md.dt - task.dt) > 1e-9 * max(1.0, task.dt):
            raise PolicyFileError(f"{where}: trained at dt {md.dt:g} s, the task's dt is {task.dt:g} s")
        task_blocks = {name: (sum(s for _, s in task.obs_layout[:i]), size) for i, (name, size) in enumerate(task.obs_layout)}
        if sorted(md.obs_layout) != sorted(task.obs_layout):
            raise PolicyFileError(f"{where}: observation layout {md.obs_layout} vs {task.obs_layout}")
        perm = np.concatenate([np.arange(task_blocks[n][0], task_blocks[n][0] + s) for n, s in md.obs_layout])
        self._perm = None if (perm == np.arange(len(perm))).all() else perm
        self.policy = policy
        self.task = task
        self.u_min = np.asarray(task.u_min, dtype=float)
        self.u_max = np.asarray(task.u_max, dtype=float)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=float)
        if self._perm is not None:
            obs = obs[..., self._perm]
        return np.clip(self.policy(obs), self.u_min, self.u_max)

    def command(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The policy's torque [nu] for one state and target (clipped to the box; NaN outputs
        are returned as they are)."""
        obs = self.task.observation(np.asarray(x, dtype=float)[None], np.asarray(target, dtype=float).reshape(1, -1))
        return self(obs)[0]

    def rollout(self, models: list, datas: list, x0: np.ndarray, target: np.ndarray,
                divergence_limit: float = 1e3) -> tuple[np.ndarray, np.ndarray, bool]:
        """Closed-loop rollout (xs [T+1, nx], us [T, nu], diverged) of one problem through
        Crocoddyl's own action models (``models[t].calc`` → ``xnext``), with the same rules as
        :meth:`Task.rollout`: controls clipped to the box (NaN → 0), a state that becomes
        non-finite or exceeds ``divergence_limit`` is frozen (then xs is no rollout of us). Equal to
        ``task.rollout(self, ...)`` (the task integrates like Crocoddyl), ~3x faster for one
        trajectory (no batch bookkeeping, one preallocated float32 observation)."""
        T, nx = len(models), self.task.nx
        xs = np.empty((T + 1, nx))
        us = np.zeros((T, self.task.nu))
        xs[0] = x0
        obs_task = np.empty(self.task.obs_dim)
        obs_task[nx:] = target
        run = self.policy.session.run
        feed = np.empty((1, self.task.obs_dim), dtype=np.float32)
        perm = self._perm
        alive = True
        for t in range(T):
            x = xs[t]
            if alive:
                obs_task[:nx] = x
                feed[0] = obs_task if perm is None else obs_task[perm]
                u = np.asarray(run([OUTPUT_NAME], {INPUT_NAME: feed})[0][0], dtype=float)
                u[~np.isfinite(u)] = 0.0
                u = np.minimum(np.maximum(u, self.u_min), self.u_max)
                us[t] = u
                models[t].calc(datas[t], x, u)
                x_next = np.array(datas[t].xnext)
                if not (np.isfinite(x_next).all() and (np.abs(x_next) < divergence_limit).all()):
                    alive = False
                    x_next = x
                xs[t + 1] = x_next
            else:
                xs[t + 1] = x
        return xs, us, not alive


class _DeadlineExceeded(Exception):
    """Raised from the solver callback to stop a solve that would miss its deadline."""


class _DeadlineCallback(crocoddyl.CallbackAbstract):
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
        # the rollout is still infeasible, and the solve goes on; seen with an untrained policy's
        # saturated warm start, where the deadline was otherwise never enforced: 17 iterations, 35 ms
        # against 8 ms)
        if now - self.start + self.longest > self.deadline:
            raise _DeadlineExceeded()


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
        self._deadline = _DeadlineCallback()
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
        nq = len(x) // 2
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
            except _DeadlineExceeded:
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


# ---------------------------------------------------------------------- solving off the caller's thread


def policy_command(policy: Callable | None, task: Task, x: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """A task policy's torque for state x and target (inside the task's box), or None (no policy
    or a non-finite output)."""
    if policy is None:
        return None
    obs = task.observation(np.asarray(x, dtype=float)[None], np.asarray(target, dtype=float).reshape(1, -1))
    u = np.clip(np.asarray(policy(obs), dtype=float).reshape(-1), task.u_min, task.u_max)
    return u if u.shape == (task.nu,) and np.isfinite(u).all() else None


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


class WorkerError(RuntimeError):
    """The solver process could not start (its message says why)."""


_WORKER_CODE = "import sys; from tocpl_ros.mpc.solver import worker_main; sys.exit(worker_main(int(sys.argv[1])))"


class MPCWorker:
    """A :class:`RecedingHorizonMPC` in a process of its own, so that a solve never holds up
    the caller (e.g. a control loop that must publish every period).

    Crocoddyl's Python bindings keep the GIL for a whole solver iteration (measured: a Python
    thread beside a horizon-1000 solve was held up 100 ms, the length of one iteration; beside
    GIL-releasing numpy work, 12 ms), so a thread would not do: the solve runs in a child Python
    process (``sys.executable``, a Unix socket pair, pickled requests and results).

    One request at a time: :meth:`submit` (non-blocking; False while a solve is running or the
    process is not ready) sends the state, target, its time ``now`` (any clock: only passed back
    as ``MPCResult.state_time`` and used for the 'shifted' warm start) and a ``budget`` (s) from
    the moment of the call; the process subtracts the time the request spent in transit.
    :meth:`receive` returns the result when it is there (waiting at most ``timeout`` s, the GIL
    released). The policy's command (:meth:`policy_command`) is computed here, in the caller's
    process, from its own copy of the ONNX policy.

    If the process dies (a crash, a kill), :meth:`receive`/:meth:`submit` notice it, count it in
    ``deaths`` and start a new one (``restarts``), at most once per ``restart_backoff`` seconds
    (doubling up to 30 s while restarts keep failing); meanwhile every request is refused, so
    the caller falls back to the policy. The process exits on its own when its socket closes (the
    caller exited or was killed). Build errors (a policy that does not fit the task, a bad
    config) raise :class:`WorkerError` from :meth:`wait_ready`.
    """

    def __init__(
        self,
        task: str,
        policy_path: str,
        config: MPCConfig,
        *,
        task_object: Task | None = None,
        policy: OnnxPolicy | None = None,
        warm_up: int = 2,
        restart_backoff: float = 1.0,
    ):
        """``task``: name or YAML path (``load_task``), loaded again in the process; ``task_object``
        / ``policy``: already loaded copies for this process (the fallback command), else loaded
        here. A policy that does not fit the task raises PolicyFileError before any process starts."""
        from tocpl_ros.tasks import load_task

        self.task_spec = str(task)
        self.policy_path = str(policy_path)
        self.config = config
        self.warm_up = int(warm_up)
        self.task = task_object if task_object is not None else load_task(self.task_spec)
        self.task_name = self.task.name
        self.horizon = config.horizon or self.task.horizon
        self.fresh_for = min(config.deadline, self.horizon * self.task.dt)
        self.policy = TaskPolicy(policy if policy is not None else OnnxPolicy(self.policy_path), self.task)
        self.restart_backoff = self._backoff0 = float(restart_backoff)
        self.deaths = 0
        self.restarts = 0
        self.last_error = ""
        self.status = "starting"
        """'starting' (process started, not ready yet), 'ready', 'dead' (waiting to restart), 'closed'."""
        self._proc = None
        self._conn = None
        self._pending: int | None = None
        self._next_id = 0
        self._started_at = -math.inf
        self._start()

    # -- process management

    def _start(self) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(child.fileno())], pass_fds=(child.fileno(),))
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._conn.send(("init", self.task_spec, self.policy_path, dataclasses.asdict(self.config), self.warm_up))
        self._started_at = time.monotonic()
        self._pending = None
        self.status = "starting"

    def _died(self, why: str) -> None:
        if self.status in ("dead", "closed"):
            return
        self.deaths += 1
        self.status = "dead"
        self._pending = None
        proc = self._proc
        self._stop_process(0.1)
        code = None if proc is None else proc.poll()
        self.last_error = why if code is None or "status" in why else f"{why}, exit status {code}"

    def _stop_process(self, timeout: float) -> None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
            conn.close()  # the process also exits when it sees its socket closed
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except Exception:
                pass
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=5.0)
                except Exception:
                    pass

    def _maybe_restart(self) -> None:
        if self.status == "dead" and time.monotonic() - self._started_at >= self.restart_backoff:
            self.restart_backoff = min(30.0, 2.0 * self.restart_backoff)  # reset once it is ready again
            self.restarts += 1
            try:
                self._start()
            except Exception as exc:  # e.g. no more processes: try again later
                self.last_error = f"restart failed: {type(exc).__name__}: {exc}"
                self.status = "dead"
                self._started_at = time.monotonic()

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the process has built the MPC and warmed up; WorkerError if it failed."""
        deadline = time.monotonic() + timeout
        while self.status == "starting":
            self.receive(max(0.0, min(0.5, deadline - time.monotonic())))
            if self.status == "starting" and time.monotonic() > deadline:
                self.close()
                raise WorkerError(f"the MPC solver process was not ready within {timeout:g} s")
        if self.status != "ready":
            raise WorkerError(self.last_error or f"the MPC solver process is {self.status}")

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def busy(self) -> bool:
        """A submitted solve has not returned yet."""
        return self._pending is not None

    # -- requests

    def policy_command(self, x: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        return policy_command(self.policy, self.task, x, target)

    def submit(self, x: np.ndarray, target: np.ndarray, now: float, budget: float) -> bool:
        """Send a solve request; False (nothing sent) while busy, starting or dead."""
        self._maybe_restart()
        if self.status != "ready" or self._pending is not None:
            return False
        if self._proc is not None and self._proc.poll() is not None:
            self._died(f"the solver process exited (status {self._proc.returncode})")
            return False
        self._next_id += 1
        try:
            self._conn.send(("solve", self._next_id, np.asarray(x, dtype=float), np.asarray(target, dtype=float),
                             float(now), float(budget), time.monotonic()))
        except (OSError, ValueError) as exc:
            self._died(f"sending to the solver process failed: {exc}")
            return False
        self._pending = self._next_id
        return True

    def receive(self, timeout: float = 0.0) -> MPCResult | None:
        """The result of the submitted solve if it has arrived (waiting up to ``timeout`` s), else None."""
        self._maybe_restart()
        end = time.monotonic() + max(0.0, timeout)
        while self._conn is not None:
            try:
                if not self._conn.poll(max(0.0, end - time.monotonic())):
                    if self._proc is not None and self._proc.poll() is not None:
                        self._died(f"the solver process exited (status {self._proc.returncode})")
                    return None
                message = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._died(f"the solver process is gone ({type(exc).__name__})")
                return None
            kind = message[0]
            if kind == "ready":
                self.status = "ready"
                self.restart_backoff = self._backoff0
            elif kind == "error":
                self._died(message[1])
                return None
            elif kind == "result" and message[1] == self._pending:
                self._pending = None
                return message[2]
        return None

    def reset(self) -> None:
        """Forget the previous solution (the next 'shifted' solve starts cold)."""
        if self._conn is not None:
            try:
                self._conn.send(("reset",))
            except (OSError, ValueError) as exc:
                self._died(f"sending to the solver process failed: {exc}")

    def close(self, timeout: float = 2.0) -> None:
        """Stop the process (a running solve ends first, up to ``timeout`` s, then it is killed)."""
        self._stop_process(timeout)
        self.status = "closed"
        self._pending = None


def worker_main(fd: int) -> int:
    """The solver process of :class:`MPCWorker` (the socket ``fd``): builds the task, policy and
    :class:`RecedingHorizonMPC`, warms up, then answers requests until told to stop or its
    socket closes."""
    import signal
    import traceback
    from multiprocessing.connection import Connection

    from tocpl_ros.tasks import load_task

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal: the parent decides
    conn = Connection(fd)
    try:
        message = conn.recv()
        _, task_spec, policy_path, config, warm_up = message
        try:
            if config.get("solver_nice"):
                import os

                os.nice(int(config["solver_nice"]))  # the caller's loop and the robot's driver come first
            task = load_task(task_spec)
            mpc = RecedingHorizonMPC(task, OnnxPolicy(policy_path), MPCConfig(**config))
            nominal = mpc.task.nominal_problem() if hasattr(mpc.task, "nominal_problem") else mpc.task.sample(1, 0)
            for _ in range(warm_up):  # onnxruntime and Crocoddyl allocate on first use
                mpc.solve(nominal.x0[0], nominal.target[0])
            mpc.reset()
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return 1
        conn.send(("ready", {"pid": __import__("os").getpid()}))
        while True:
            message = conn.recv()
            kind = message[0]
            if kind == "stop":
                return 0
            if kind == "reset":
                mpc.reset()
            elif kind == "solve":
                _, request, x, target, now, budget, sent_at = message
                budget -= max(0.0, time.monotonic() - sent_at)
                result = mpc.solve(x, target, now, deadline=max(budget, 0.0))
                conn.send(("result", request, result))
    except (EOFError, OSError, KeyboardInterrupt):
        return 0  # the parent went away
    except Exception:
        traceback.print_exc()
        return 1


# ---------------------------------------------------------------------- closed loop


@dataclass
class ClosedLoopEpisode:
    """A simulated closed-loop MPC run."""

    xs: np.ndarray
    """Plant states at every MPC cycle, [cycles + 1, nx]."""
    results: list[MPCResult] = field(default_factory=list)
    """The MPC result of every cycle."""
    final_error: float = math.nan
    """Task error of the last state (``Task.final_error``, e.g. m for reach)."""


def has_continuous_dynamics(shooting: crocoddyl.ShootingProblem) -> bool:
    """The OCP integrates a differential model (the robot tasks; not the discrete lqr)."""
    return hasattr(shooting.runningModels[0], "differential")


def run_closed_loop(
    mpc: RecedingHorizonMPC, x0: np.ndarray, target: np.ndarray, duration: float, substeps: int = 10
) -> ClosedLoopEpisode:
    """Simulate the MPC in closed loop on its own model: every 1/rate s a solve from the
    current state (times are simulated: ``now`` advances by 1/rate whatever the wall time);
    in between, the plant integrates the OCP's differential model (Crocoddyl's semi-implicit
    Euler) with ``substeps`` steps per period, applying the fast loop's
    u = clip(ū − K (x − x̄)) at every step (the fallback's K is zero). A cycle without any
    command (no fallback possible) applies zero torque."""
    task = mpc.task
    if not has_continuous_dynamics(mpc.shooting):
        raise ValueError(f"run_closed_loop integrates a continuous-time model; task '{task.name}' is discrete-time")
    differential = mpc.shooting.runningModels[0].differential
    dt = mpc.config.period / substeps
    plant = crocoddyl.IntegratedActionModelEuler(differential, dt)
    data = plant.createData()
    cycles = int(round(duration * mpc.config.rate))
    xs = np.empty((cycles + 1, task.nx))
    x = np.array(x0, dtype=float)
    xs[0] = x
    results = []
    mpc.reset()
    for k in range(cycles):
        result = mpc.solve(x, target, now=k * mpc.config.period)
        results.append(result)
        for _ in range(substeps):
            if result.u_bar is None:
                u = np.zeros(task.nu)
            else:
                u = np.clip(result.u_bar - result.K @ (x - result.x_bar), mpc.u_min, mpc.u_max)
            plant.calc(data, x, u)
            x = np.array(data.xnext)
        xs[k + 1] = x
    error = float(task.final_error(x[None], np.asarray(target, dtype=float).reshape(1, -1))[0])
    return ClosedLoopEpisode(xs=xs, results=results, final_error=error)
