"""The task interface shared by the trainer, the ROS nodes and the benchmarks.

A task is a distribution of optimal-control problems: dynamics x' = f(x, u) with a
box on u, a cost ℓ built from named terms, and a distribution P over the problem
parameters β = (x0, target). It builds Crocoddyl problems for the solver, rolls any
policy out with the same integrator as Crocoddyl, and scores trajectories.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import crocoddyl
import numpy as np

from tocpl_ros.config import FieldError
from tocpl_ros.tasks.config import TaskConfig

Policy = Callable[[np.ndarray], np.ndarray]
"""Maps a batch of observations [B, obs_dim] to a batch of controls [B, nu]."""


@dataclass
class Problems:
    """N problem instances β = (x0, target) of one task."""

    x0: np.ndarray
    """Initial states, [N, nx]."""
    target: np.ndarray
    """Task targets, [N, target_dim] (target_dim is 0 for tasks without one)."""

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, index) -> Problems:
        index = np.atleast_1d(np.arange(len(self))[index])
        return Problems(self.x0[index], self.target[index])


@dataclass
class Trajectories:
    """A batch of state/control trajectories."""

    xs: np.ndarray
    """States x_0..x_T, [B, T+1, nx]."""
    us: np.ndarray
    """Controls u_0..u_{T-1}, [B, T, nu]."""
    diverged: np.ndarray | None = None
    """[B] True where a rollout hit non-finite or exploding states (frozen from there on)."""


@dataclass
class Evaluation:
    """Per-problem scores of a batch of trajectories."""

    cost: np.ndarray
    """Trajectory cost R(β; u) of the OCP (Crocoddyl's, running terms scaled by dt), [N]."""
    final_error: np.ndarray
    """Task error at t = T, in the task's unit (``Task.error_unit``), [N]."""
    bound_violation: np.ndarray
    """Largest amount by which a control left its box, 0 when inside, [N]."""
    diverged: np.ndarray
    """True where the rollout produced non-finite or exploding states, [N]."""


@dataclass
class DynamicsCounter:
    """Counts dynamics evaluations (one per time step simulated or linearised).

    The x-axis of the sample-efficiency curves: policy rollouts add B·T, every
    solver iteration adds T for the derivatives plus T per line-search trial.
    """

    steps: int = 0
    by_source: dict[str, int] = field(default_factory=dict)

    def add(self, n: int, source: str) -> None:
        self.steps += int(n)
        self.by_source[source] = self.by_source.get(source, 0) + int(n)


class Task(ABC):
    """One family of optimal-control problems; see the module docstring."""

    #: What Evaluation.final_error measures.
    error_unit: str = ""

    #: Cost term names this task accepts, per phase.
    running_terms: tuple[str, ...] = ()
    terminal_terms: tuple[str, ...] = ()

    def __init__(self, name: str, config: TaskConfig):
        self.name = name
        self.config = config
        self.dt = config.dt
        self.horizon = config.horizon
        for phase, known in (("running", self.running_terms), ("terminal", self.terminal_terms)):
            for term in getattr(config.costs, phase):
                if term not in known:
                    raise FieldError(f"costs.{phase}.{term}", f"unknown cost term for task {name} (known: {', '.join(known)})")

    # -- sizes and bounds --------------------------------------------------
    nx: int
    nu: int
    u_min: np.ndarray
    u_max: np.ndarray
    joint_names: list[str]
    obs_layout: list[tuple[str, int]]
    """Observation blocks in order, e.g. [("q", 6), ("v", 6), ("target", 3)]."""
    target_dim: int = 0

    @property
    def obs_dim(self) -> int:
        return sum(size for _, size in self.obs_layout)

    # -- problem distribution -----------------------------------------------
    @abstractmethod
    def sample(self, n: int, seed: int | np.random.Generator) -> Problems:
        """Draw n problems from P, reproducibly from the seed."""

    def observation(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Policy input for states [B, nx] and targets [B, target_dim]."""
        return np.concatenate([x, target], axis=-1) if self.target_dim else np.array(x)

    def state_jacobian(self, x: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
        """Jacobians [M, nu, ndx] with respect to the tangent dx at states x [M, nx] (Crocoddyl's
        feedback gains) as Jacobians [M, nu, nx] with respect to x, the policy's input. A state
        that is a vector space (nx = ndx) has them the same: returned as is."""
        return jacobian

    # -- Crocoddyl --------------------------------------------------------
    @abstractmethod
    def build_problem(self, problem: Problems | None = None, constrained: bool | None = None) -> crocoddyl.ShootingProblem:
        """A Crocoddyl ShootingProblem for one instance (the first of ``problem``, or a nominal one).

        ``constrained`` (default: the config's) puts the control box into the
        action models, where SolverBoxFDDP honours it.
        """

    @abstractmethod
    def set_problem(self, shooting: crocoddyl.ShootingProblem, problem: Problems) -> None:
        """Point an already built ShootingProblem at another instance (x0, target) in place."""

    # -- simulation -------------------------------------------------------
    @abstractmethod
    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One step of the OCP's discrete dynamics for a batch: [B, nx], [B, nu] -> [B, nx]."""

    def rollout(
        self,
        policy: Policy,
        problems: Problems,
        horizon: int | None = None,
        counter: DynamicsCounter | None = None,
        divergence_limit: float = 1e3,
    ) -> Trajectories:
        """Closed-loop rollout of ``policy`` from each problem's x0 (batched).

        Controls are clipped to the box, as the robot's torque limits would.
        A trajectory whose state becomes non-finite or exceeds ``divergence_limit``
        in absolute value is frozen there (its later states repeat the last
        finite one), so one diverging rollout never poisons a batch.
        """
        horizon = self.horizon if horizon is None else horizon
        n = len(problems)
        xs = np.empty((n, horizon + 1, self.nx))
        us = np.zeros((n, horizon, self.nu))
        xs[:, 0] = problems.x0
        alive = np.ones(n, dtype=bool)
        for t in range(horizon):
            x = xs[:, t]
            x_next = x.copy()
            if alive.any():
                u = np.asarray(policy(self.observation(x[alive], problems.target[alive])), dtype=float)
                us[alive, t] = np.clip(np.nan_to_num(u, nan=0.0), self.u_min, self.u_max)
                x_next[alive] = self.step(x[alive], us[alive, t])
                if counter is not None:
                    counter.add(int(alive.sum()), "policy_rollout")
                bad = ~(np.isfinite(x_next).all(axis=1) & (np.abs(x_next) < divergence_limit).all(axis=1))
                x_next[bad] = x[bad]
                alive &= ~bad
            xs[:, t + 1] = x_next
        return Trajectories(xs, us, diverged=~alive)

    def open_loop(self, x0: np.ndarray, us: np.ndarray) -> np.ndarray:
        """States of a batch of control sequences [B, T, nu] from x0 [B, nx]."""
        xs = np.empty((len(x0), us.shape[1] + 1, self.nx))
        xs[:, 0] = x0
        for t in range(us.shape[1]):
            xs[:, t + 1] = self.step(xs[:, t], us[:, t])
        return xs

    # -- scoring ----------------------------------------------------------
    @abstractmethod
    def final_error(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Task error of states [B, nx] (see ``error_unit``)."""

    def evaluate(self, problems: Problems, traj: Trajectories, shooting: crocoddyl.ShootingProblem | None = None) -> Evaluation:
        """Score trajectories on their problems with the OCP's own cost."""
        shooting = shooting or self.build_problem(problems[0])
        n = len(problems)
        cost = np.empty(n)
        finite = np.isfinite(traj.xs).all(axis=(1, 2)) & np.isfinite(traj.us).all(axis=(1, 2))
        diverged = ~finite if traj.diverged is None else ~finite | traj.diverged
        for i in range(n):
            if diverged[i]:
                cost[i] = np.inf
                continue
            self.set_problem(shooting, problems[i])
            cost[i] = shooting.calc(list(traj.xs[i]), list(traj.us[i]))
        violation = np.maximum(traj.us - self.u_max, self.u_min - traj.us).max(axis=(1, 2))
        return Evaluation(
            cost=cost,
            final_error=self.final_error(traj.xs[:, -1], problems.target),
            bound_violation=np.maximum(violation, 0.0),
            diverged=diverged,
        )
