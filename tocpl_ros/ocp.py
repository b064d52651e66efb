"""Solving a task's OCPs with Crocoddyl's SolverBoxFDDP.

Problem construction lives in the tasks; this module only runs the solver and
returns what the learners need: the trajectory, feedback gains (the solver's, or
recomputed at the solution: ``solution_gains``) and the effort spent (iterations,
dynamics evaluations).
"""

from __future__ import annotations

from dataclasses import dataclass

import crocoddyl
import numpy as np

from tocpl_ros.tasks.base import DynamicsCounter
from tocpl_ros.tasks.config import SolverConfig


@dataclass
class OCSolution:
    """A locally optimal trajectory and its local controller."""

    xs: np.ndarray
    """States x_0..x_T, [T+1, nx]."""
    us: np.ndarray
    """Controls u_0..u_{T-1}, [T, nu]."""
    K: np.ndarray
    """Feedback gains, [T, nu, nx], in Crocoddyl's convention u = ū − K (x − x̄):
    the local controller's Jacobian ∂u/∂x is −K. ``solve`` returns the solver's last K;
    ``solution_gains`` recomputes them at the solution."""
    cost: float
    """Total cost of the solution."""
    iterations: int
    """Solver iterations."""
    converged: bool
    """The solver met its stopping criterion (not just the iteration cap)."""
    feasible: bool
    """The dynamics gaps are closed (xs is a rollout of us)."""
    stalled: bool = False
    """Not converged and the last line search fell to its smallest step: no descent was found."""


class _CountingCallback(crocoddyl.CallbackAbstract):
    """Counts dynamics evaluations: T for the derivatives and T per line-search trial."""

    def __init__(self, counter: DynamicsCounter, horizon: int):
        crocoddyl.CallbackAbstract.__init__(self)
        self.counter = counter
        self.horizon = horizon

    def __call__(self, solver, *args):
        alphas = list(solver.alphas)
        step = solver.stepLength
        trials = next((i + 1 for i, a in enumerate(alphas) if a <= step + 1e-15), len(alphas))
        self.counter.add(self.horizon * (1 + trials), "oc_solver")


def make_solver(shooting: crocoddyl.ShootingProblem, config: SolverConfig) -> crocoddyl.SolverBoxFDDP:
    """SolverBoxFDDP; with no bounds in the problem it behaves as FDDP (the '-C' ablation)."""
    solver = crocoddyl.SolverBoxFDDP(shooting)
    solver.th_stop = config.th_stop
    return solver


def at_bounds(u, lb, ub) -> tuple[np.ndarray, np.ndarray]:
    """(at the upper bound, at the lower bound) of controls ``u`` against the box [lb, ub], to
    1e-9 of its width: what BoxFDDP leaves on a bound is on it to rounding."""
    tol = 1e-9 * np.maximum(1.0, np.abs(np.asarray(ub) - np.asarray(lb)))
    return u >= ub - tol, u <= lb + tol


def box_held(quu: np.ndarray, qu: np.ndarray, du_min: np.ndarray, du_max: np.ndarray) -> np.ndarray:
    """Controls the box holds at one step: those on a bound in the solution of the step's box-QP
    min ½ duᵀ Quu du + Quᵀ du, du_min ≤ du ≤ du_max, with the gradient pushing outward (a small
    active-set loop; nu is a handful). A control on its bound is held when the cost pushes it out;
    so is one a hair inside when the Newton step would cross the bound: a solver stopped by its
    criterion (which ignores held controls) can leave such a control 1e-4 short of the bound
    (BoxFDDP from a feasible warm start, after steps shorter than 1), and its row is no gain."""
    n = len(qu)
    held = np.zeros(n, dtype=bool)
    du = np.zeros(n)
    for _ in range(2 * n + 2):
        free = ~held
        if free.any():
            du[free] = -np.linalg.solve(quu[np.ix_(free, free)], qu[free] + quu[np.ix_(free, held)] @ du[held])
        gradient = quu @ du + qu
        crossing = free & ((du < du_min) | (du > du_max))
        released = held & (((du >= du_max) & (gradient > 0)) | ((du <= du_min) & (gradient < 0)))
        if not crossing.any() and not released.any():
            return held
        du[crossing] = np.clip(du[crossing], du_min[crossing], du_max[crossing])
        held = (held | crossing) & ~released
    return held


def solution_gains(shooting: crocoddyl.ShootingProblem, xs, us) -> np.ndarray:
    """Feedback gains of the locally optimal controller at (xs, us), [T, nu, ndx] (u = ū − K dx).

    One Riccati pass on the derivatives at the solution itself, a control the box holds
    (:func:`box_held`) getting a zero row as in box-DDP. Not the solver's own
    ``K``: that comes from the backward pass before the last step, and from a warm start that is
    already optimal (told infeasible: see :func:`solve`) BoxFDDP leaves the rows of controls on the bound unprojected (gains where the
    optimal control cannot move), which also changes the value function and with it the other
    rows (60–74 % on the pendulums and the lqr). Gaps are ignored: this is for a solved problem.
    """
    xs = [np.asarray(x, dtype=float) for x in xs]
    us = [np.asarray(u, dtype=float) for u in us]
    shooting.calc(xs, us)
    shooting.calcDiff(xs, us)
    terminal = shooting.terminalData
    vx, vxx = np.array(terminal.Lx, dtype=float), np.array(terminal.Lxx, dtype=float)
    gains = []
    for t in reversed(range(shooting.T)):
        model, data = shooting.runningModels[t], shooting.runningDatas[t]
        fx, fu = np.atleast_2d(data.Fx), np.atleast_2d(data.Fu).reshape(len(vx), -1)
        qx = np.asarray(data.Lx) + fx.T @ vx
        qu = np.atleast_1d(data.Lu) + fu.T @ vx
        qxx = np.atleast_2d(data.Lxx) + fx.T @ vxx @ fx
        quu = np.atleast_2d(data.Luu) + fu.T @ vxx @ fu
        qux = np.atleast_2d(data.Lxu).reshape(len(vx), -1).T + fu.T @ vxx @ fx
        free = np.ones(len(qu), dtype=bool)
        if model.has_control_limits:
            free = ~box_held(quu, qu, np.asarray(model.u_lb) - us[t], np.asarray(model.u_ub) - us[t])
        K, k = np.zeros((len(qu), len(vx))), np.zeros(len(qu))
        if free.any():
            inverse = np.linalg.inv(quu[np.ix_(free, free)])
            K[free], k[free] = inverse @ qux[free], inverse @ qu[free]
        vx = qx - K.T @ qu - qux.T @ k + K.T @ quu @ k
        vxx = qxx - K.T @ qux - qux.T @ K + K.T @ quu @ K
        vxx = 0.5 * (vxx + vxx.T)
        gains.append(K)
    return np.array(gains[::-1])


def solve(
    shooting: crocoddyl.ShootingProblem,
    config: SolverConfig,
    init_xs: np.ndarray | None = None,
    init_us: np.ndarray | None = None,
    counter: DynamicsCounter | None = None,
    max_iter: int | None = None,
    rollout_guess: bool = False,
) -> OCSolution:
    """Solve one OCP, warm-started from (init_xs, init_us) when given.

    Without an initial guess the solver starts from x0 held constant and
    quasi-static controls (Crocoddyl's default cold start). ``rollout_guess``
    says init_xs is the rollout of init_us from x0 (a policy's rollout): the
    solver is told the guess is feasible, so SolverBoxFDDP solves its box-QP
    from the first iteration. Told "infeasible", it runs the unconstrained
    FDDP backward pass and only clamps in the forward pass until a full step
    is accepted, which a guess near a boxed optimum may never get (the lqr
    stalls at the smallest step).
    """
    solver = make_solver(shooting, config)
    horizon = shooting.T
    if counter is not None:
        solver.setCallbacks([_CountingCallback(counter, horizon)])
        counter.add(horizon, "oc_solver")  # the initial rollout/linearisation
    if init_us is None:
        xs0 = [shooting.x0] * (horizon + 1)
        us0 = list(shooting.quasiStatic(xs0[:-1]))
    else:
        us0 = [np.asarray(u, dtype=float) for u in init_us]
        xs0 = [np.asarray(x, dtype=float) for x in init_xs] if init_xs is not None else shooting.rollout(us0)
    is_feasible = rollout_guess and init_us is not None
    converged = solver.solve(xs0, us0, max_iter if max_iter is not None else config.max_iter, is_feasible)
    return OCSolution(
        xs=np.array(solver.xs),
        us=np.array(solver.us),
        K=np.array(solver.K),
        cost=float(solver.cost),
        iterations=int(solver.iter),
        converged=bool(converged),
        feasible=bool(solver.isFeasible),
        stalled=not converged and float(solver.stepLength) <= min(solver.alphas) + 1e-15,
    )
