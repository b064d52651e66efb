"""Continuous-use evaluation: how a policy behaves beyond the one episode it was trained on.

A controller runs for hours: it holds a target, takes a new one while moving, starts from a
moving arm and is pushed. Four scenarios on held-out problems, rollouts of the policy alone on
the task's own discrete dynamics, no reset:

- hold: from each problem's x0 towards its target, errors and the fastest joint speed read at
  given times after the start (T, 3 s, 10 s, 60 s);
- sequence: ``sequence_targets`` targets of other held-out problems, switched every T while the
  arm moves; the error at the end of every segment;
- moving starts: x0's joint velocities replaced by U(−h, h) per joint; the error at T;
- push: after holding for T, a velocity kick of ±h on every joint (random signs); the share back
  within tolerance T later.

With pose targets (reach_pose) every scenario also reports the orientation error (mean, p95, deg:
``<scenario>_orientation_mean_deg``) and "within tolerance" needs the orientation within 2° too.

Robot tasks only (reach, upright): they have joint velocities to kick. Figures are in the
task's error unit (m, rad); tolerances are the trainer's (1 cm, 2°).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tocpl_ros.tasks import Problems, RobotTask, Task


@dataclass
class ContinuousUse:
    """Which scenarios to run and how long."""

    hold_seconds: tuple[float, ...] = (3.0, 10.0)
    """Times after the start (s) at which the hold error is read (the error at T is always read)."""
    sequence_targets: int = 5
    """Targets in a row of the sequence scenario (0: skip it); reach tasks only."""
    start_speed: float = 0.5
    """Half-width h of the joint velocities U(−h, h) of the moving starts (rad/s; 0: skip)."""
    push_speed: float = 0.5
    """Size of the velocity kick of the push scenario (rad/s on every joint; 0: skip)."""
    seed: int = 7
    """Seed of the random velocities and of the sequence's target order."""


def applies_to(task: Task) -> bool:
    return isinstance(task, RobotTask)


def _roll(task: RobotTask, policy, x0: np.ndarray, target: np.ndarray, steps: int, alive: np.ndarray):
    """States after ``steps`` steps towards ``target`` (diverged rollouts stay frozen and flagged)."""
    traj = task.rollout(policy, Problems(x0, target), horizon=steps)
    return traj.xs, alive & ~traj.diverged


def _speed(task: RobotTask, x: np.ndarray) -> np.ndarray:
    return np.abs(x[:, task.nq:]).max(axis=1)


def _errors(task: RobotTask, x: np.ndarray, target: np.ndarray, alive: np.ndarray) -> np.ndarray:
    return np.where(alive, task.final_error(x, target), np.inf)


def _summary(prefix: str, error: np.ndarray, tolerance: float) -> dict[str, float]:
    return {
        f"{prefix}_error_mean": float(np.mean(error)),
        f"{prefix}_error_p95": float(np.percentile(error, 95, method="higher")),
        f"{prefix}_within": float(np.mean(error <= tolerance)),
    }


ORIENTATION_TOLERANCE = float(np.deg2rad(2.0))
"""A pose target is within tolerance (held out, continuous use, validation) when the orientation is
within 2° too (the issue's mean target)."""


def has_orientation(task: Task) -> bool:
    """Reach with pose targets: an orientation error next to the position error."""
    return bool(getattr(task, "has_orientation", False))


def _scores(task: RobotTask, prefix: str, x: np.ndarray, target: np.ndarray, alive: np.ndarray,
            tolerance: float) -> dict[str, float]:
    """_summary of the position error; with pose targets also the orientation's mean and p95 (deg),
    and within tolerance needs both."""
    error = _errors(task, x, target, alive)
    out = _summary(prefix, error, tolerance)
    if has_orientation(task):
        angle = np.where(alive, task.orientation_error(x, target), np.inf)
        deg = np.rad2deg(angle)
        out[f"{prefix}_orientation_mean_deg"] = float(np.mean(deg))
        out[f"{prefix}_orientation_p95_deg"] = float(np.percentile(deg, 95, method="higher"))
        out[f"{prefix}_within"] = float(np.mean((error <= tolerance) & (angle <= ORIENTATION_TOLERANCE)))
    return out


def _back(task: RobotTask, x: np.ndarray, target: np.ndarray, alive: np.ndarray, tolerance: float) -> np.ndarray:
    """Per problem, within tolerance (position, and orientation for pose targets)."""
    within = _errors(task, x, target, alive) <= tolerance
    if has_orientation(task):
        within &= np.where(alive, task.orientation_error(x, target), np.inf) <= ORIENTATION_TOLERANCE
    return within


def seconds_label(seconds: float) -> str:
    return f"{seconds:g}s"


def hold_labels(row: dict) -> list[str]:
    """The hold times a metrics row has figures for ('T', '3s', '10s', ...), in time order."""
    labels = [k[len("hold_"):-len("_error_mean")] for k in row if k.startswith("hold_") and k.endswith("_error_mean")]
    return sorted(labels, key=lambda label: 0.0 if label == "T" else float(label[:-1]))


def evaluate_continuous(task: Task, policy, problems: Problems, tolerance: float,
                        scenarios: ContinuousUse | None = None) -> dict[str, float]:
    """The four scenarios' figures (see the module docstring) as a flat dict of floats
    (``scenarios``: ContinuousUse() when None)."""
    scenarios = ContinuousUse() if scenarios is None else scenarios
    if not applies_to(task):
        return {}
    rng = np.random.default_rng(scenarios.seed)
    T, n = task.horizon, len(problems)
    out: dict[str, float] = {}

    # hold: one long rollout read at T and at each requested time
    marks = sorted({T, *(max(1, round(s / task.dt)) for s in scenarios.hold_seconds)})
    x, alive, t = problems.x0, np.ones(n, dtype=bool), 0
    for mark in marks:
        xs, alive = _roll(task, policy, x, problems.target, mark - t, alive)
        x, t = xs[:, -1], mark
        label = "T" if mark == T else seconds_label(mark * task.dt)
        if mark == T:
            at_T, alive_at_T = x, alive  # the push starts from here
        out |= _scores(task, f"hold_{label}", x, problems.target, alive, tolerance)
        out[f"hold_{label}_speed_median"] = float(np.median(np.where(alive, _speed(task, x), np.inf)))
    out["hold_diverged"] = float((~alive).sum())

    if scenarios.sequence_targets > 0 and task.target_dim > 0 and n > 1:
        x, alive, ends = problems.x0, np.ones(n, dtype=bool), []
        for k in range(scenarios.sequence_targets):
            # target of another held-out problem: each segment starts where the last left off
            target = problems.target[rng.permutation(n)] if k else problems.target
            xs, alive = _roll(task, policy, x, target, T, alive)
            x = xs[:, -1]
            ends.append((x, target, alive))
        x, target, alive_ends = (np.concatenate(a) for a in zip(*ends))
        out |= _scores(task, "sequence", x, target, alive_ends, tolerance)
        out["sequence_diverged"] = float((~alive).sum())

    if scenarios.start_speed > 0:
        x0 = problems.x0.copy()
        x0[:, task.nq:] = rng.uniform(-scenarios.start_speed, scenarios.start_speed, (n, task.nv))
        xs, alive = _roll(task, policy, x0, problems.target, T, np.ones(n, dtype=bool))
        out |= _scores(task, "moving_start", xs[:, -1], problems.target, alive, tolerance)

    if scenarios.push_speed > 0:
        # push after the T of holding (the first hold mark): the arm is at its target, at rest
        kicked, alive = at_T.copy(), alive_at_T
        kicked[:, task.nq:] += scenarios.push_speed * rng.choice([-1.0, 1.0], (n, task.nv))
        xs, alive = _roll(task, policy, kicked, problems.target, T, alive)
        out["push_recovered"] = float(np.mean(_back(task, xs[:, -1], problems.target, alive, tolerance)))
    return out
