"""Box-constrained LQR: x' = A x + B u, |u| <= u_limit, quadratic cost."""

from __future__ import annotations

import crocoddyl
import numpy as np
import scipy.linalg

from tocpl_ros.config import FieldError
from tocpl_ros.tasks.base import Problems, Task
from tocpl_ros.tasks.config import TaskConfig


def double_integrators(n_dof: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """n_dof double integrators, semi-implicit Euler: v' = v + dt u, q' = q + dt v'."""
    eye, zero = np.eye(n_dof), np.zeros((n_dof, n_dof))
    A = np.block([[eye, dt * eye], [zero, eye]])
    B = np.vstack([dt * dt * eye, dt * eye])
    return A, B


class LQRTask(Task):
    """Cost terms: running 'state' (½‖x‖²_W), 'control' (½‖u‖²_W); terminal 'state'."""

    running_terms = ("state", "control")
    terminal_terms = ("state",)
    error_unit = "|x_T|"

    def __init__(self, name: str, config: TaskConfig):
        super().__init__(name, config)
        lqr = config.lqr
        if lqr.A is not None:
            self.A, self.B = np.array(lqr.A, dtype=float), np.array(lqr.B, dtype=float)
            nx = self.A.shape[0]
            if self.A.shape != (nx, nx) or self.B.ndim != 2 or self.B.shape[0] != nx:
                raise FieldError("lqr.A", f"A must be square and B have as many rows, got {self.A.shape} and {self.B.shape}")
        else:
            self.A, self.B = double_integrators(lqr.n_dof, config.dt)
        self.nx, self.nu = self.B.shape
        self.u_max = np.full(self.nu, lqr.u_limit)
        self.u_min = -self.u_max
        self.joint_names = []
        self.obs_layout = [("x", self.nx)]
        self.Q = np.diag(self._weight(config.costs.running.get("state", 0.0), self.nx, "running.state"))
        self.R = np.diag(self._weight(config.costs.running.get("control", 0.0), self.nu, "running.control"))
        self.Q_T = np.diag(self._weight(config.costs.terminal.get("state", 0.0), self.nx, "terminal.state"))
        if lqr.terminal_riccati:
            try:
                P = scipy.linalg.solve_discrete_are(self.A, self.B, self.Q * self.dt, self.R * self.dt)
            except (ValueError, np.linalg.LinAlgError) as exc:
                raise FieldError("lqr.terminal_riccati", f"no Riccati solution for these A, B and weights ({exc})") from exc
            self.Q_T = self.Q_T + P

    @staticmethod
    def _weight(weight, size: int, key: str) -> np.ndarray:
        w = np.broadcast_to(np.asarray(weight, dtype=float), (size,)) if np.ndim(weight) == 0 else np.asarray(weight, float)
        if w.shape != (size,):
            raise FieldError(f"costs.{key}", f"expected a scalar or {size} weights, got {len(w)}")
        return np.array(w)

    def sample(self, n: int, seed) -> Problems:
        rng = np.random.default_rng(seed)
        h = self.config.sampling.q0_halfwidth
        return Problems(rng.uniform(-h, h, (n, self.nx)), np.zeros((n, 0)))

    def build_problem(self, problem=None, constrained=None):
        constrained = self.config.constrained if constrained is None else constrained
        # Crocoddyl's LQR model is discrete (its cost is not scaled by dt): the
        # running weights get the dt here, so R means the same as for the robots.
        running = self._lqr_model(self.Q * self.dt, self.R * self.dt)
        if constrained:
            running.u_lb, running.u_ub = self.u_min.copy(), self.u_max.copy()
        terminal = self._lqr_model(self.Q_T, np.zeros((self.nu, self.nu)))
        x0 = np.zeros(self.nx) if problem is None else problem.x0[0]
        return crocoddyl.ShootingProblem(x0, [running] * self.horizon, terminal)

    def _lqr_model(self, Q, R) -> crocoddyl.ActionModelLQR:
        nx, nu = self.nx, self.nu
        N, f, q, r = np.zeros((nx, nu)), np.zeros(nx), np.zeros(nx), np.zeros(nu)
        return crocoddyl.ActionModelLQR(self.A, self.B, Q, R, N, f, q, r)

    def set_problem(self, shooting, problem):
        shooting.x0 = problem.x0[0].copy()

    def step(self, x, u):
        return x @ self.A.T + u @ self.B.T

    def final_error(self, x, target):
        return np.linalg.norm(x, axis=-1)
