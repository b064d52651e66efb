"""PLAL — policy learning via ADMM on the augmented Lagrangian (Alg. 2), and its multiple-shooting variant.

On a fixed set of N problems with multipliers λ (one per problem and step):
  OC:    U ← argmin_U R(U) + Σ μ/2 ‖u_t − π(x_t) + λ_t/μ‖²   (π's Jacobian inside the OCP)
  learn: θ ← argmin_θ Σ μ/2 ‖u_t + λ_t/μ − π(x_t)‖²  (+ Sobolev)
  dual:  λ ← λ + μ (u − π(x)).
With multiple shooting (+M, eqs. 14–16) the policy states ²x are the policy's own
rollout; the OC phase tracks the fixed references π(²x_t) − λ_t/μ and
²x_t − γ_t/μ (no network inside the OCP) and the consensus ¹x = ²x gets its own
multiplier γ ← γ + μ (¹x − ²x).
With problem_refresh > 0 (beyond the paper) a share of the N problems is drawn anew each phase.
"""

from __future__ import annotations

import numpy as np

from tocpl_training.algorithms.base import Algorithm, OCBatch
from tocpl_training.learning.policy import NumpyPolicy
from tocpl_training.learning.supervised import SupervisedData


class PLAL(Algorithm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg, task = self.config, self.task
        self.problems = task.sample(cfg.problems, np.random.default_rng(cfg.seed))
        shape = (cfg.problems, task.horizon)
        self.lam = np.zeros((*shape, task.nu))
        self.gamma = np.zeros((*shape, task.nx))
        self.policy_states: np.ndarray | None = None  # ²x of +M 'rollout', [N, T, nx]
        self.mu = cfg.mu
        self.eta = self._eta_after_growth()  # bcl: tolerance on the consensus error

    def oc_phase(self) -> OCBatch:
        cfg = self.config
        mu = self.mu
        if cfg.problem_refresh > 0 and self.previous is not None:
            self.refresh_problems()
        jobs, fallbacks = self.initial_guesses(self.problems, same_problems=True)
        if not cfg.multiple_shooting:
            for job, lam in zip(jobs, self.lam):
                job.terms["shift"] = lam / mu
            return self.solve(self.problems, jobs, fallbacks, "consensus", {"mu": mu, "policy": NumpyPolicy(self.policy)})
        x2 = self._policy_states()
        if x2 is None:  # first +M phase and nothing to track yet: the plain OCPs give ¹x and ²x = ¹x
            batch = self.solve(self.problems, jobs, fallbacks)
            self.policy_states = batch.xs[:, :-1].copy()
            return batch
        u_ref = self.policy_on(x2, self.problems) - self.lam / mu
        x_ref = x2 - self.gamma / mu
        for i, job in enumerate(jobs):
            job.terms["u_ref"], job.terms["x_ref"] = u_ref[i], x_ref[i]
        return self.solve(self.problems, jobs, fallbacks, "tracking", {"mu": mu})

    def refresh_problems(self) -> None:
        """Replace a problem_refresh share of the problems by fresh draws (beyond the paper, which keeps
        them fixed). A new problem starts with λ = γ = 0, and the last phase's record of it (warm-start
        fallback, ²x of +M 'oc') becomes the policy's rollout from its x0, x0 held where that diverges."""
        n = len(self.problems)
        count = min(n, max(1, round(self.config.problem_refresh * n)))
        rng = np.random.default_rng([self.config.seed, self.iteration])  # a function of the iteration: resumes alike
        index = np.sort(rng.choice(n, count, replace=False))
        fresh = self.task.sample(count, rng)
        self.problems.x0[index], self.problems.target[index] = fresh.x0, fresh.target
        self.lam[index], self.gamma[index] = 0.0, 0.0
        traj = self.task.rollout(self.policy.act, fresh, counter=self.counter)
        xs, us = traj.xs.copy(), traj.us.copy()
        xs[traj.diverged], us[traj.diverged] = fresh.x0[traj.diverged, None], 0.0
        # the last batch now stands for the current problems (after a resume it holds its own copy)
        self.previous.problems = self.problems
        self.previous.xs[index], self.previous.us[index] = xs, us

    def _policy_states(self) -> np.ndarray | None:
        """²x for this OC phase (see TrainConfig.policy_states); None when there is nothing to track:
        the first phase of 'oc', or of 'rollout' with diverged rollouts and no OC states to replace them."""
        if self.config.policy_states == "oc":  # derived from the last OC phase: nothing to keep
            return None if self.previous is None else self.previous.xs[:, :-1]
        traj = self.task.rollout(self.policy.act, self.problems, counter=self.counter)
        x2 = traj.xs[:, :-1].copy()
        if traj.diverged.any():
            if self.previous is None:  # a diverged rollout's frozen states would drag the OCP off
                return None
            x2[traj.diverged] = self.previous.xs[traj.diverged, :-1]
        self.policy_states = x2
        return x2

    def supervised_states(self, batch: OCBatch) -> np.ndarray:
        # 'oc': ²x ← ¹x before learning, π is fit where the OC went; 'rollout': the phase's ²x
        if not self.config.multiple_shooting or self.config.policy_states == "oc":
            return batch.xs[:, :-1]
        return self.policy_states

    def supervision(self, batch: OCBatch) -> SupervisedData:
        nu, nx = self.task.nu, self.task.nx
        obs = self.observations(self.supervised_states(batch), batch.problems)
        target = batch.us + self.lam / self.mu
        jac = -batch.K.reshape(-1, nu, nx) if self.config.sobolev else None
        return SupervisedData(obs.reshape(-1, obs.shape[-1]), target.reshape(-1, nu), jac)

    def consensus_error(self, residual: np.ndarray) -> float:
        """RMS of u − π(x) in units of each joint's half torque range."""
        return float(np.sqrt(np.mean((residual / self.policy.u_half.double().numpy()) ** 2)))

    def dual_update(self, batch: OCBatch) -> dict[str, float]:
        mu = self.mu
        x2 = self.supervised_states(batch)
        residual = batch.us - self.policy_on(x2, batch.problems)
        error = self.consensus_error(residual)
        stats = {"consensus_u": float(np.sqrt((residual ** 2).sum(axis=-1)).mean()), "consensus_error": error, "mu": mu}
        state_gap = batch.xs[:, :-1] - x2 if self.config.multiple_shooting else None
        if self.config.mu_schedule == "bcl" and error > self.eta:
            # Conn–Gould–Toint: the consensus is too far off for the multipliers to be
            # trusted: keep λ, stiffen the penalty, loosen the tolerance to the new μ.
            self.mu = min(self.mu * self.config.mu_growth, self.config.mu_max)
            self.eta = self._eta_after_growth()
        else:
            self.update_multipliers(mu, residual, state_gap)
            if self.config.mu_schedule == "bcl":
                self.eta = max(self.eta / (1.0 + mu) ** 0.9, 1e-6)
        if state_gap is not None:
            stats["consensus_x"] = float(np.sqrt((state_gap ** 2).sum(axis=-1)).mean())
        stats["eta"] = self.eta
        stats["shift_rms"] = self.consensus_error(self.lam / self.mu)  # λ/μ: how far the targets are moved
        return stats

    def update_multipliers(self, mu: float, residual: np.ndarray, state_gap: np.ndarray | None) -> None:
        """λ ← ρ λ + μ (u − π(x)); with +M also γ ← ρ γ + μ (¹x − ²x) (ρ: dual_decay)."""
        decay = self.config.dual_decay
        self.lam = decay * self.lam + mu * residual
        if state_gap is not None:
            self.gamma = decay * self.gamma + mu * state_gap

    def _eta_after_growth(self) -> float:
        # BCL's η = η0 / μ^0.1 (Nocedal & Wright, Alg. 17.4), with 1 + μ so it also tightens for μ <= 1
        return 0.1 / (1.0 + self.mu) ** 0.1

    def extra_state(self):
        return {"x0": self.problems.x0, "target": self.problems.target, "lam": self.lam, "gamma": self.gamma,
                "policy_states": self.policy_states if self.policy_states is not None else np.zeros(0),
                "mu": self.mu, "eta": self.eta}

    def load_extra_state(self, state):
        from tocpl_ros.tasks import Problems

        self.problems = Problems(state["x0"], state["target"])
        self.lam, self.gamma = state["lam"], state["gamma"]
        self.policy_states = state["policy_states"] if state["policy_states"].size else None
        self.mu, self.eta = float(state["mu"]), float(state["eta"])


class DPL(PLAL):
    """DPL (Mordatch & Todorov, RSS 2014) as the paper compares it: the consensus is only the
    quadratic penalty μ/2‖u − π(x)‖² in the OC phase (λ stays 0, no dual ascent), with
    full-Jacobian Sobolev supervision from the feedback gains. Their OC phase has no control
    box: run it with --no-constrained (config/train presets do)."""

    def update_multipliers(self, mu, residual, state_gap) -> None:
        pass
