"""PDDP — projected DDP (Alg. 1): solve the OCPs warm-started from the policy, project by regression."""

from __future__ import annotations

import numpy as np

from ..supervised import SupervisedData
from .base import Algorithm, OCBatch


class PDDP(Algorithm):
    """U ← argmin R(U) from the policy's rollout; θ ← argmin Σ ½‖u_t − π(x_t)‖² (+ Sobolev)."""

    def oc_phase(self) -> OCBatch:
        cfg = self.config
        same = not cfg.resample
        seed = cfg.seed if same else [cfg.seed, self.iteration]
        problems = self.task.sample(cfg.problems, np.random.default_rng(seed))
        jobs, fallbacks = self.initial_guesses(problems, same_problems=same)
        return self.solve(problems, jobs, fallbacks)

    def supervision(self, batch: OCBatch) -> SupervisedData:
        obs = self.observations(batch.xs[:, :-1], batch.problems)
        jac = -batch.K.reshape(-1, self.task.nu, self.task.nx) if self.config.sobolev else None
        return SupervisedData(obs.reshape(-1, obs.shape[-1]), batch.us.reshape(-1, self.task.nu), jac)
