"""PLAL — policy learning via ADMM on the augmented Lagrangian (Alg. 2), and its multiple-shooting variant.

On a fixed set of N problems with multipliers λ (one per problem and step):
  OC:    U ← argmin_U R(U) + Σ μ/2 ‖u_t − π(x_t) + λ_t/μ‖²   (π's Jacobian inside the OCP)
  learn: θ ← argmin_θ Σ μ/2 ‖u_t + λ_t/μ − π(x_t)‖²  (+ Sobolev)
  dual:  λ ← λ + μ (u − π(x)).
With multiple shooting (+M, eqs. 14–16) the policy states ²x are the policy's own
rollout; the OC phase tracks the fixed references π(²x_t) − λ_t/μ and
²x_t − γ_t/μ (no network inside the OCP) and the consensus ¹x = ²x gets its own
multiplier γ ← γ + μ (¹x − ²x).
"""

from __future__ import annotations

import numpy as np

from ..policy import NumpyPolicy
from ..supervised import SupervisedData
from .base import Algorithm, OCBatch


class PLAL(Algorithm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg, task = self.config, self.task
        self.problems = task.sample(cfg.problems, np.random.default_rng(cfg.seed))
        shape = (cfg.problems, task.horizon)
        self.lam = np.zeros((*shape, task.nu))
        self.gamma = np.zeros((*shape, task.nx))
        self.policy_states: np.ndarray | None = None  # ²x of +M, [N, T, nx]

    def oc_phase(self) -> OCBatch:
        cfg = self.config
        mu = cfg.mu
        jobs, fallbacks = self.initial_guesses(self.problems, same_problems=True)
        if not cfg.multiple_shooting:
            for job, lam in zip(jobs, self.lam):
                job.terms["shift"] = lam / mu
            return self.solve(self.problems, jobs, fallbacks, "consensus", {"mu": mu, "policy": NumpyPolicy(self.policy)})
        x2 = self._policy_states()
        u_ref = self.policy_on(x2, self.problems) - self.lam / mu
        x_ref = x2 - self.gamma / mu
        for i, job in enumerate(jobs):
            job.terms["u_ref"], job.terms["x_ref"] = u_ref[i], x_ref[i]
        return self.solve(self.problems, jobs, fallbacks, "tracking", {"mu": mu})

    def _policy_states(self) -> np.ndarray:
        """²x: the policy's rollout states; where it diverged, the last OC states instead."""
        traj = self.task.rollout(self.policy.act, self.problems, counter=self.counter)
        x2 = traj.xs[:, :-1].copy()
        if traj.diverged.any() and self.previous is not None:
            x2[traj.diverged] = self.previous.xs[traj.diverged, :-1]
        self.policy_states = x2
        return x2

    def supervised_states(self, batch: OCBatch) -> np.ndarray:
        return self.policy_states if self.config.multiple_shooting else batch.xs[:, :-1]

    def supervision(self, batch: OCBatch) -> SupervisedData:
        nu, nx = self.task.nu, self.task.nx
        obs = self.observations(self.supervised_states(batch), batch.problems)
        target = batch.us + self.lam / self.config.mu
        jac = -batch.K.reshape(-1, nu, nx) if self.config.sobolev else None
        return SupervisedData(obs.reshape(-1, obs.shape[-1]), target.reshape(-1, nu), jac)

    def dual_update(self, batch: OCBatch) -> dict[str, float]:
        mu = self.config.mu
        x2 = self.supervised_states(batch)
        residual = batch.us - self.policy_on(x2, batch.problems)
        self.lam += mu * residual
        stats = {"consensus_u": float(np.sqrt((residual ** 2).sum(axis=-1)).mean())}
        if self.config.multiple_shooting:
            state_gap = batch.xs[:, :-1] - x2
            self.gamma += mu * state_gap
            stats["consensus_x"] = float(np.sqrt((state_gap ** 2).sum(axis=-1)).mean())
        return stats

    def extra_state(self):
        return {"x0": self.problems.x0, "target": self.problems.target, "lam": self.lam, "gamma": self.gamma,
                "policy_states": self.policy_states if self.policy_states is not None else np.zeros(0)}

    def load_extra_state(self, state):
        from tocpl_ros.tasks import Problems

        self.problems = Problems(state["x0"], state["target"])
        self.lam, self.gamma = state["lam"], state["gamma"]
        self.policy_states = state["policy_states"] if state["policy_states"].size else None
