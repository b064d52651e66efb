"""PDDP — projected DDP (Alg. 1): solve the OCPs warm-started from the policy, project by regression."""

from __future__ import annotations

import numpy as np

from ..continuation import with_continuation
from ..learning.supervised import SupervisedData
from .base import Algorithm, OCBatch


class PDDP(Algorithm):
    """U ← argmin R(U) from the policy's rollout; θ ← argmin Σ ½‖u_t − π(x_t)‖² (+ Sobolev)."""

    def oc_phase(self) -> OCBatch:
        cfg = self.config
        continuation = bool(cfg.continuous_share or cfg.moving_start_share)
        same = not cfg.resample and not continuation  # continuation states follow the policy
        seed = cfg.seed if same else [cfg.seed, self.iteration]
        rng = np.random.default_rng(seed)
        problems = self.task.sample(cfg.problems, rng)
        if continuation:
            problems = with_continuation(
                self.task, self.policy.act, problems, rng, share=cfg.continuous_share, chain=cfg.continuous_chain,
                retarget=cfg.continuous_retarget, moving_share=cfg.moving_start_share,
                start_speed=cfg.moving_start_speed, kick=cfg.continuous_kick, counter=self.counter)
        jobs, fallbacks = self.initial_guesses(problems, same_problems=same)
        return self.solve(problems, jobs, fallbacks)

    def supervision(self, batch: OCBatch) -> SupervisedData:
        obs = self.observations(batch.xs[:, :-1], batch.problems)
        jac = None
        if self.config.sobolev:  # K is per tangent dx [nu, 2 nv]; the policy's input is x [nx] (cos, sin of a continuous joint)
            states = batch.xs[:, :-1].reshape(-1, self.task.nx)
            jac = self.task.state_jacobian(states, -batch.K.reshape(len(states), self.task.nu, -1))
        return SupervisedData(obs.reshape(-1, obs.shape[-1]), batch.us.reshape(-1, self.task.nu), jac)
