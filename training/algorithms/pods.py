"""PODS — policy optimisation via differentiable simulation (Mora et al., ICML 2021), the paper's baseline.

Each iteration: roll the policy out; improve its action sequence by one damped
Gauss–Newton step on the trajectory cost, through the linearised dynamics
(a second-order step in action space, no control box); regress the policy on
the improved actions at the rollout states.
"""

from __future__ import annotations

import numpy as np

from tocpl_ros.tasks import Problems
from tocpl_training.algorithms.base import Algorithm, OCBatch
from tocpl_training.learning.supervised import SupervisedData


class PODS(Algorithm):
    #: Levenberg–Marquardt damping of the Gauss–Newton system (relative to its largest diagonal entry):
    #: only a guard against a singular system, small enough not to bias the step.
    damping = 1e-10
    #: Backtracking step sizes of the line search on the true cost.
    step_sizes = (1.0, 0.5, 0.25, 0.125, 0.0625)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # PODS has no constraints: the improvement is computed on the problem without the box
        self.shooting = self.task.build_problem(constrained=False)

    def oc_phase(self) -> OCBatch:
        cfg = self.config
        problems = self.task.sample(cfg.problems, np.random.default_rng([cfg.seed, self.iteration]))
        traj = self.task.rollout(self.policy.act, problems, counter=self.counter)
        n, T, nu, nx = len(problems), self.task.horizon, self.task.nu, self.task.nx
        us = traj.us.copy()
        iterations = np.zeros(n, dtype=int)
        for i in range(n):
            if traj.diverged[i]:
                continue  # no usable linearisation: keep the rollout's actions, it is not learned from
            self.task.set_problem(self.shooting, problems[i])
            us[i], iterations[i] = self._gauss_newton_step(traj.xs[i], traj.us[i])
        keep = ~traj.diverged
        kept = Problems(problems.x0[keep], problems.target[keep])
        zeros_K = np.zeros((keep.sum(), T, nu, nx))
        return OCBatch(kept, traj.xs[keep], us[keep], zeros_K, iterations[keep], int(traj.diverged.sum()))

    def _gauss_newton_step(self, xs: np.ndarray, us: np.ndarray) -> tuple[np.ndarray, int]:
        """Improved actions after one damped GN step with backtracking; (actions, line-search trials)."""
        problem, T = self.shooting, self.task.horizon
        nu, nx = self.task.nu, self.task.nx
        cost0 = problem.calc(list(xs), list(us))
        problem.calcDiff(list(xs), list(us))
        self.counter.add(T, "pods_linearisation")
        datas = list(problem.runningDatas)
        # sensitivities S_t = ∂x_t/∂U through the linearised dynamics, [nx, T·nu]
        S = np.zeros((nx, T * nu))
        grad = np.zeros(T * nu)
        H = np.zeros((T * nu, T * nu))
        for t, d in enumerate(datas):
            E = np.zeros((nu, T * nu))
            E[:, t * nu:(t + 1) * nu] = np.eye(nu)
            Fx, Fu = np.reshape(d.Fx, (nx, nx)), np.reshape(d.Fu, (nx, nu))
            Lxx, Lxu, Luu = np.reshape(d.Lxx, (nx, nx)), np.reshape(d.Lxu, (nx, nu)), np.reshape(d.Luu, (nu, nu))
            grad += S.T @ d.Lx + E.T @ d.Lu
            H += S.T @ Lxx @ S + S.T @ Lxu @ E + E.T @ Lxu.T @ S + E.T @ Luu @ E
            S = Fx @ S + Fu @ E
        dT = problem.terminalData
        grad += S.T @ dT.Lx
        H += S.T @ np.reshape(dT.Lxx, (nx, nx)) @ S
        H[np.diag_indices_from(H)] += self.damping * np.abs(np.diag(H)).max()
        step = -np.linalg.solve(H, grad).reshape(T, nu)
        for trial, alpha in enumerate(self.step_sizes, start=1):
            candidate = us + alpha * step
            cost = problem.calc(list(problem.rollout(list(candidate))), list(candidate))
            self.counter.add(T, "pods_line_search")
            if cost < cost0:
                return candidate, trial
        return us, len(self.step_sizes)

    def supervision(self, batch: OCBatch) -> SupervisedData:
        # regress π(x_t) onto the improved actions at the rollout's own states
        obs = self.observations(batch.xs[:, :-1], batch.problems)
        return SupervisedData(obs.reshape(-1, obs.shape[-1]), batch.us.reshape(-1, self.task.nu), None)
