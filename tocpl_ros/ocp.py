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

from .tasks.base import DynamicsCounter
from .tasks.config import SolverConfig


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


def solution_gains(shooting: crocoddyl.ShootingProblem, xs, us) -> np.ndarray:
    """Feedback gains of the locally optimal controller at (xs, us), [T, nu, ndx] (u = ū − K dx).

    One Riccati pass on the derivatives at the solution itself, a control clamped by the box (at
    its bound, the cost pushing outward) getting a zero row as in box-DDP. Not the solver's own
    ``K``: that comes from the backward pass before the last step, and from a warm start that is
    already optimal BoxFDDP leaves the rows of controls on the bound unprojected (gains where the
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
            upper, lower = at_bounds(us[t], np.asarray(model.u_lb), np.asarray(model.u_ub))
            free = ~((upper & (qu < 0)) | (lower & (qu > 0)))
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
) -> OCSolution:
    """Solve one OCP, warm-started from (init_xs, init_us) when given.

    Without an initial guess the solver starts from x0 held constant and
    quasi-static controls (Crocoddyl's default cold start).
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
    converged = solver.solve(xs0, us0, max_iter if max_iter is not None else config.max_iter, False)
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
