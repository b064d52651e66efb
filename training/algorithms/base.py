"""The trainer interface every algorithm implements: OC phase, supervised phase, dual update."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tocpl_ros.ocp import OCSolution
from tocpl_ros.tasks import DynamicsCounter, Problems, Task
from tocpl_ros.tasks.config import SolverConfig
from tocpl_training.config import TrainConfig
from tocpl_training.learning.policy import MLPPolicy
from tocpl_training.learning.supervised import SupervisedData, fit
from tocpl_training.oc.phase import OCJob, OCPhaseRunner, OCRequest


@dataclass
class OCBatch:
    """What one OC phase produced."""

    problems: Problems
    xs: np.ndarray
    """[N, T+1, nx] OC states."""
    us: np.ndarray
    """[N, T, nu] OC controls."""
    K: np.ndarray
    """[N, T, nu, nx] Crocoddyl feedback gains (∂u/∂x = −K)."""
    iterations: np.ndarray
    """[N] solver iterations."""
    fallbacks: int = 0
    """Problems whose policy rollout diverged and were warm-started otherwise."""

    @staticmethod
    def from_solutions(problems: Problems, sols: list[OCSolution], fallbacks: int) -> OCBatch:
        return OCBatch(
            problems,
            np.stack([s.xs for s in sols]),
            np.stack([s.us for s in sols]),
            np.stack([s.K for s in sols]),
            np.array([s.iterations for s in sols]),
            fallbacks,
        )


class Algorithm(ABC):
    """Alternates an OC phase, a supervised phase and (ADMM family) a dual update."""

    def __init__(self, task: Task, policy: MLPPolicy, config: TrainConfig, runner: OCPhaseRunner, counter: DynamicsCounter):
        self.task = task
        self.policy = policy
        self.config = config
        self.runner = runner
        self.counter = counter
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.solver = SolverConfig(max_iter=config.oc_max_iter, th_stop=config.oc_th_stop)
        self.iteration = 0
        self.solve_seconds = 0.0  # OC solves of the current step
        self.history: list[SupervisedData] = []
        self.previous: OCBatch | None = None

    # -- the three phases -------------------------------------------------
    @abstractmethod
    def oc_phase(self) -> OCBatch:
        """Solve the iteration's N OCPs."""

    @abstractmethod
    def supervision(self, batch: OCBatch) -> SupervisedData:
        """Regression pairs (and Jacobian targets) from an OC phase."""

    def supervised_phase(self, batch: OCBatch) -> dict[str, float]:
        """Fit the policy on the data of the last ``replay`` OC phases."""
        self.history = (self.history + [self.supervision(batch)])[-self.config.replay:]
        if sum(len(d) for d in self.history) == 0:  # every rollout diverged (pods): nothing to learn from
            return {"regression_loss": float("nan"), "sobolev_loss": 0.0, "skipped_steps": 0.0}
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        return fit(
            self.policy,
            self.optimizer,
            SupervisedData.concat(self.history),
            epochs=self.config.epochs,
            batch_size=self.config.batch_size,
            nx=self.task.nx,
            sobolev_weight=self.config.sobolev_weight if self.config.sobolev else 0.0,
            generator=self.generator,
            full_jacobian=self.config.sobolev_full,
            steps=self.config.supervised_steps,
            device=self.config.device,
            weight_average=self.config.weight_average,
        )

    def learning_rate(self) -> float:
        """Geometric interpolation from learning_rate to learning_rate_final over the iterations."""
        cfg = self.config
        if cfg.learning_rate_final is None or cfg.iterations == 1:
            return cfg.learning_rate
        fraction = min(self.iteration / (cfg.iterations - 1), 1.0)
        return cfg.learning_rate * (cfg.learning_rate_final / cfg.learning_rate) ** fraction

    def dual_update(self, batch: OCBatch) -> dict[str, float]:
        """ADMM multiplier step; nothing for the projection methods."""
        return {}

    def step(self) -> dict[str, float]:
        """One outer iteration."""
        started = time.perf_counter()
        self.solve_seconds = 0.0
        batch = self.oc_phase()
        stats = {
            "oc_seconds": time.perf_counter() - started,  # the paper's +M claim is about this phase's time
            "oc_solve_seconds": self.solve_seconds,  # of which the solves (the rest: rollouts for warm starts and states)
            "oc_iterations": float(batch.iterations.sum()),
            "oc_iterations_median": float(np.median(batch.iterations)) if len(batch.iterations) else 0.0,
            "warm_start_fallbacks": float(batch.fallbacks),
        }
        started = time.perf_counter()
        stats |= self.supervised_phase(batch)
        stats["supervised_seconds"] = time.perf_counter() - started
        stats |= self.dual_update(batch)
        self.previous = batch
        self.iteration += 1
        return stats

    # -- shared helpers ---------------------------------------------------
    def observations(self, xs: np.ndarray, problems: Problems) -> np.ndarray:
        """Policy inputs for states [N, T, nx] of the N problems -> [N, T, obs_dim]."""
        n, t = xs.shape[:2]
        target = np.repeat(problems.target[:, None], t, axis=1)
        # explicit trailing sizes: N may be 0 (every rollout diverged), where -1 cannot be inferred
        obs = self.task.observation(xs.reshape(n * t, xs.shape[-1]), target.reshape(n * t, target.shape[-1]))
        return obs.reshape(n, t, self.task.obs_dim)

    def policy_on(self, xs: np.ndarray, problems: Problems) -> np.ndarray:
        """π at states [N, T, nx] -> [N, T, nu]."""
        obs = self.observations(xs, problems)
        return self.policy.act(obs.reshape(-1, obs.shape[-1])).reshape(*xs.shape[:2], self.task.nu)

    def initial_guesses(self, problems: Problems, same_problems: bool) -> tuple[list[OCJob], int]:
        """Warm starts per the config; a diverged policy rollout falls back to the previous
        solution of the same problem (if any) or a cold start, and is counted."""
        n = len(problems)
        jobs = [OCJob(problems.x0[i], problems.target[i]) for i in range(n)]
        mode = self.config.warm_start
        previous = self.previous if same_problems else None
        fallbacks = 0
        if mode == "policy":
            traj = self.task.rollout(self.policy.act, problems, counter=self.counter)
            for i, job in enumerate(jobs):
                if not traj.diverged[i]:
                    job.init_xs, job.init_us, job.init_is_rollout = traj.xs[i], traj.us[i], True
                else:
                    fallbacks += 1
                    if previous is not None:
                        job.init_xs, job.init_us = previous.xs[i], previous.us[i]
        elif mode == "previous" and previous is not None:
            for i, job in enumerate(jobs):
                job.init_xs, job.init_us = previous.xs[i], previous.us[i]
        return jobs, fallbacks

    def solve(self, problems: Problems, jobs: list[OCJob], fallbacks: int, mode: str = "plain", shared=None) -> OCBatch:
        gains = self.config.sobolev_gains if self.config.sobolev else "solver"  # only Sobolev reads K
        request = OCRequest(jobs, self.solver, mode, shared or {}, self.config.oc_warm_start_probe,
                            self.config.oc_feasible_warm_start, gains)
        started = time.perf_counter()
        sols = self.runner.solve(request, self.counter)
        self.solve_seconds += time.perf_counter() - started
        return OCBatch.from_solutions(problems, sols, fallbacks)

    # -- checkpointing ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        def batch_dict(b: OCBatch | None):
            if b is None:
                return None
            return {"x0": b.problems.x0, "target": b.problems.target, "xs": b.xs, "us": b.us, "K": b.K,
                    "iterations": b.iterations, "fallbacks": b.fallbacks}

        return {
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "history": [{"obs": d.obs, "u": d.u, "jacobian": d.jacobian} for d in self.history],
            "previous": batch_dict(self.previous),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def as_np(v):
            return v.numpy() if isinstance(v, torch.Tensor) else v

        self.iteration = int(state["iteration"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.history = [SupervisedData(as_np(d["obs"]), as_np(d["u"]), as_np(d["jacobian"])) for d in state["history"]]
        p = state["previous"]
        self.previous = None if p is None else OCBatch(
            Problems(as_np(p["x0"]), as_np(p["target"])), as_np(p["xs"]), as_np(p["us"]), as_np(p["K"]),
            as_np(p["iterations"]), int(p["fallbacks"]),
        )
        self.load_extra_state({k: as_np(v) for k, v in state["extra"].items()})

    def extra_state(self) -> dict[str, Any]:
        """Algorithm-specific state (multipliers, fixed problems)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027  optional hook, no extra state by default
        pass
