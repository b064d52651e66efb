"""The MPC in closed loop on its own model, simulated (ROS-free): the MPC benchmark's episodes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import crocoddyl
import numpy as np

from tocpl_ros.mpc.config import MPCResult
from tocpl_ros.mpc.solver import RecedingHorizonMPC


@dataclass
class ClosedLoopEpisode:
    """A simulated closed-loop MPC run."""

    xs: np.ndarray
    """Plant states at every MPC cycle, [cycles + 1, nx]."""
    results: list[MPCResult] = field(default_factory=list)
    """The MPC result of every cycle."""
    final_error: float = math.nan
    """Task error of the last state (``Task.final_error``, e.g. m for reach)."""


def has_continuous_dynamics(shooting: crocoddyl.ShootingProblem) -> bool:
    """The OCP integrates a differential model (the robot tasks; not the discrete lqr)."""
    return hasattr(shooting.runningModels[0], "differential")


def run_closed_loop(
    mpc: RecedingHorizonMPC, x0: np.ndarray, target: np.ndarray, duration: float, substeps: int = 10
) -> ClosedLoopEpisode:
    """Simulate the MPC in closed loop on its own model: every 1/rate s a solve from the
    current state (times are simulated: ``now`` advances by 1/rate whatever the wall time);
    in between, the plant integrates the OCP's differential model (Crocoddyl's semi-implicit
    Euler) with ``substeps`` steps per period, applying the fast loop's
    u = clip(ū − K (x − x̄)) at every step (the fallback's K is zero). A cycle without any
    command (no fallback possible) applies zero torque."""
    task = mpc.task
    if not has_continuous_dynamics(mpc.shooting):
        raise ValueError(f"run_closed_loop integrates a continuous-time model; task '{task.name}' is discrete-time")
    differential = mpc.shooting.runningModels[0].differential
    dt = mpc.config.period / substeps
    plant = crocoddyl.IntegratedActionModelEuler(differential, dt)
    data = plant.createData()
    cycles = int(round(duration * mpc.config.rate))
    xs = np.empty((cycles + 1, task.nx))
    x = np.array(x0, dtype=float)
    xs[0] = x
    results = []
    mpc.reset()
    for k in range(cycles):
        result = mpc.solve(x, target, now=k * mpc.config.period)
        results.append(result)
        for _ in range(substeps):
            if result.u_bar is None:
                u = np.zeros(task.nu)
            else:
                # x ⊖ x̄ in the tangent space of K (a continuous joint's (cos, sin) differ from it)
                u = np.clip(result.u_bar - result.K @ task.state.diff(result.x_bar, x), mpc.u_min, mpc.u_max)
            plant.calc(data, x, u)
            x = np.array(data.xnext)
        xs[k + 1] = x
    error = float(task.final_error(x[None], np.asarray(target, dtype=float).reshape(1, -1))[0])
    return ClosedLoopEpisode(xs=xs, results=results, final_error=error)
