"""The training loop: run folder, held-out evaluation, logging, checkpoints, resume.

A run folder holds ``config.yaml`` (the resolved training and task configs),
``metrics.csv`` (one row per outer iteration, also as TensorBoard scalars under
``tensorboard/`` and plotted in ``learning_curve.png``), ``checkpoint.pt`` (written
atomically after every iteration; ``--resume`` continues from it exactly) and,
at the end, ``policy.onnx``.

Faults: every file is written atomically (a kill never leaves a partial file
under its final name), the checkpoint is written before the human-facing logs,
and a resumed run first rewrites those logs from the checkpoint, so an iteration
cut short by a kill is run again and appears exactly once. The run folder is
checked for writability and free space before any work starts.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from tocpl_ros.config import ConfigError, load_dataclass, to_dict
from tocpl_ros.ocp import solve
from tocpl_ros.tasks import DynamicsCounter, Problems, Task, Trajectories, load_task
from tocpl_training.algorithms import make_algorithm
from tocpl_training.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    policy_payload,
    remove_stale_temps,
    save_checkpoint,
)
from tocpl_training.config import TrainConfig
from tocpl_training.evaluation.continuous import (
    ORIENTATION_TOLERANCE,
    ContinuousUse,
    evaluate_continuous,
    has_orientation,
    seconds_label,
)
from tocpl_training.learning.policy import MLPPolicy, make_policy
from tocpl_training.learning.supervised import torch_threads
from tocpl_training.oc.phase import OCJob, OCPhaseRunner, OCRequest
from tocpl_training.run_log import CURVE, METRICS, RunLog

CHECKPOINT = "checkpoint.pt"
POLICY = "policy.onnx"
CONFIG = "config.yaml"
MIN_FREE_BYTES = 16 * 2**20
"""Free space a run folder needs beyond the checkpoints themselves (logs, curve, TensorBoard)."""


def required_free_bytes(policy: MLPPolicy) -> int:
    """Free space needed to start a run: the floor plus a generous bound on checkpoint + ONNX sizes.

    A checkpoint holds the weights and Adam's two moments, and is written beside the
    previous one before the rename; 16 × the weight bytes covers that with margin.
    """
    weight_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    return MIN_FREE_BYTES + 16 * weight_bytes


def success_tolerance(task: Task) -> tuple[str, float]:
    """(metric, threshold) of 'solved' for a held-out problem: 1 cm, 2°, or 1 % cost gap."""
    if task.error_unit == "m":
        return "final_error", 0.01
    if task.error_unit == "rad":
        return "final_error", float(np.deg2rad(2.0))
    return "cost_gap", 0.01


@dataclass
class HeldOut:
    """Fixed held-out problems and their trajectory-optimisation reference costs."""

    problems: Problems
    to_cost: np.ndarray

    @staticmethod
    def make(task: Task, n: int, seed: int, runner: OCPhaseRunner | None = None) -> HeldOut:
        """Sample the problems and solve each cold with the task's solver settings (on the runner's
        workers when given: the references are the run's largest one-off cost)."""
        problems = task.sample(n, seed)
        if runner is not None:
            jobs = [OCJob(problems.x0[i], problems.target[i]) for i in range(n)]
            return HeldOut(problems, np.array([sol.cost for sol in runner.solve(OCRequest(jobs, task.config.solver))]))
        shooting = task.build_problem(problems[0])
        costs = np.empty(n)
        for i in range(n):
            task.set_problem(shooting, problems[i])
            costs[i] = solve(shooting, task.config.solver).cost
        return HeldOut(problems, costs)


def worst_error_over(task: Task, traj: Trajectories, problems: Problems, start: int, stop: int,
                     error: Callable | None = None) -> np.ndarray:
    """Per problem, the largest final-error measure (or ``error``'s: e.g. the orientation's) over steps
    start..stop (inf where the rollout diverged)."""
    error = task.final_error if error is None else error
    errors = np.stack([error(traj.xs[:, t], problems.target) for t in range(start, stop + 1)], axis=1)
    return np.where(traj.diverged, np.inf, errors.max(axis=1))


def orientation_within(task: Task, traj: Trajectories, problems: Problems) -> np.ndarray:
    """Per problem, the orientation within ORIENTATION_TOLERANCE at T and over [T, 2T] (all True
    for tasks without orientation: their 'solved' is unchanged)."""
    if not has_orientation(task):
        return np.ones(len(problems), dtype=bool)
    T = task.horizon
    return worst_error_over(task, traj, problems, T, 2 * T, task.orientation_error) <= ORIENTATION_TOLERANCE


def peak_speed_ratios(task: Task, traj: Trajectories) -> dict[str, float]:
    """Over the rollouts that did not diverge, each one's fastest joint speed relative to that
    joint's velocity limit (1: at the limit): median, p95, max as ``peak_speed_ratio_*``. Empty for
    a task without a robot or whose robot lacks a velocity limit > 0 on some joint."""
    robot = getattr(task, "robot", None)
    limit = None if robot is None else np.asarray(robot.velocity_limit, dtype=float)
    if limit is None or not (np.isfinite(limit) & (limit > 0)).all() or traj.diverged.all():
        return {}
    v = traj.xs[~traj.diverged][:, :, task.nq:]
    peak = np.abs(v / limit).max(axis=(1, 2))
    return {"peak_speed_ratio_median": float(np.median(peak)),
            "peak_speed_ratio_p95": float(np.percentile(peak, 95, method="higher")),
            "peak_speed_ratio_max": float(peak.max())}


def evaluate_policy(task: Task, policy: MLPPolicy, held_out: HeldOut) -> dict[str, float]:
    """Roll the policy out for 2T steps: precision at T, holding over [T, 2T], cost gap to TO over [0, T],
    joint speeds relative to the robot's limits over [0, 2T]."""
    T = task.horizon
    traj = task.rollout(policy.act, held_out.problems, horizon=2 * T)
    first = Trajectories(traj.xs[:, : T + 1], traj.us[:, :T], traj.diverged)
    ev = task.evaluate(held_out.problems, first)
    hold_max = worst_error_over(task, traj, held_out.problems, T, 2 * T)
    gap = (ev.cost - held_out.to_cost) / np.maximum(np.abs(held_out.to_cost), 1e-12)
    metric, tol = success_tolerance(task)
    # Solved = there at T and still there over [T, 2T] (errors), or within the cost gap (lqr).
    solved = (np.maximum(ev.final_error, hold_max) if metric == "final_error" else gap) <= tol
    solved &= orientation_within(task, traj, held_out.problems)
    final = np.where(ev.diverged, np.inf, ev.final_error)
    orientation = {}
    if has_orientation(task):  # pose targets: the orientation at T (deg), next to the position error
        angle = np.where(ev.diverged, np.inf, np.rad2deg(task.orientation_error(traj.xs[:, T], held_out.problems.target)))
        orientation = {"orientation_error_mean_deg": float(np.mean(angle)),
                       "orientation_error_p95_deg": float(np.percentile(angle, 95, method="higher"))}
    return {
        "policy_cost": float(np.mean(np.where(ev.diverged, np.nan, ev.cost))) if not ev.diverged.all() else float("inf"),
        "to_cost": float(held_out.to_cost.mean()),
        "cost_gap_median": float(np.median(gap)),
        "cost_gap_mean": float(np.mean(gap)),
        "final_error_mean": float(np.mean(final)),
        "final_error_p95": float(np.percentile(final, 95, method="higher")),
        "hold_error_p95": float(np.percentile(hold_max, 95, method="higher")),
        "within_tolerance": float(np.mean(solved & ~traj.diverged)),
        "diverged": float(traj.diverged.sum()),
        "max_bound_violation": float(ev.bound_violation.max()),
    } | orientation | peak_speed_ratios(task, traj)


def validation_score(task: Task, policy: MLPPolicy, problems: Problems) -> dict[str, float]:
    """Rollouts only (no TO solves), so cheap enough for every iteration: the share within tolerance
    at T and over [T, 2T] (tasks judged by final error; NaN for lqr, judged by cost) and the mean
    policy cost over [0, T] (inf if a rollout diverged)."""
    T = task.horizon
    metric, tol = success_tolerance(task)
    traj = task.rollout(policy.act, problems, horizon=2 * T if metric == "final_error" else T)
    first = Trajectories(traj.xs[:, : T + 1], traj.us[:, :T], traj.diverged)
    ev = task.evaluate(problems, first)
    cost = float(np.mean(ev.cost)) if not traj.diverged.any() else float("inf")
    within = float("nan")
    if metric == "final_error":
        within = float(np.mean((worst_error_over(task, traj, problems, T, 2 * T) <= tol)
                               & orientation_within(task, traj, problems)))
    return {"validation_within": within, "validation_cost": cost}


def better(a: dict[str, float], b: dict[str, float] | None) -> bool:
    """Validation scores: more problems within tolerance first, then the lower policy cost."""
    def key(score: dict[str, float]) -> tuple[float, float]:
        return float(np.nan_to_num(score["validation_within"], nan=0.0)), -score["validation_cost"]

    return b is None or key(a) > key(b)


def run_settings(config: TrainConfig, task_overrides: dict[str, Any], task: Task) -> dict[str, Any]:
    """What a run folder's config.yaml records, and what a resumed run must match."""
    return {"train": to_dict(config), "task_overrides": task_overrides, "task": to_dict(task.config)}


class Trainer:
    """Builds everything from a TrainConfig and runs the outer iterations."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, task_overrides: dict[str, Any] | None = None,
                 overwrite: bool = False):
        self.config = config
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite  # a fresh run may replace a training run already in out_dir
        self.task_overrides = dict(task_overrides or {})
        robot = {"robot": config.robot} if config.robot else {}
        overrides = {"constrained": config.constrained, **robot, **self.task_overrides}
        self.task = load_task(config.task, overrides)
        torch.manual_seed(config.seed)
        self.policy = make_policy(self.task, config.seed, hidden=config.hidden, activation=config.activation)
        self.counter = DynamicsCounter()
        self.runner = OCPhaseRunner(self.task, constrained=config.constrained, workers=config.workers,
                                   backend=config.backend, ray_address=config.ray_address)
        self.algorithm = make_algorithm(self.task, self.policy, config, self.runner, self.counter)
        self.metrics: list[dict[str, float]] = []
        self.wall_time = 0.0
        self.held_out: HeldOut | None = None
        self.validation: Problems | None = None
        if config.select_best:
            self.validation = self.task.sample(config.validation_problems, config.validation_seed)
        self.selected: dict[str, Any] | None = None  # select_best: {"iteration", "score", "policy_state"}

    # -- run folder -------------------------------------------------------
    def _prepare_out_dir(self) -> None:
        """Preflight before any work: the folder exists, takes a real write, and has room.

        On failure a folder this call created is removed again: a refused run leaves nothing.
        """
        created = not self.out_dir.exists()
        try:
            self._check_out_dir()
        except BaseException:
            if created and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
                self.out_dir.rmdir()
            raise
        remove_stale_temps(self.out_dir, [CHECKPOINT, METRICS, CURVE, POLICY, CONFIG])  # left by a killed run
        resolved = run_settings(self.config, self.task_overrides, self.task)
        atomic_write_bytes(self.out_dir / CONFIG, yaml.safe_dump(resolved, sort_keys=False).encode())

    def _check_out_dir(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / ".write_test"
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
            stats = os.statvfs(self.out_dir)
        except OSError as exc:
            raise ConfigError(str(self.out_dir), "out", f"run folder is not writable ({exc.strerror or exc})") from exc
        if self.algorithm.iteration == 0 and (self.out_dir / CHECKPOINT).exists() and not self.overwrite:
            raise ConfigError(str(self.out_dir), "out", f"already holds a training run ({CHECKPOINT}): continue it with "
                              f"--resume {self.out_dir}, start afresh over it with --overwrite, or choose another --out")
        free = stats.f_bavail * stats.f_frsize
        needed = required_free_bytes(self.policy)
        if free < needed:
            raise ConfigError(str(self.out_dir), "out", f"run folder has {free / 2**20:.1f} MiB free, "
                              f"training needs at least {needed / 2**20:.1f} MiB")

    def save(self) -> None:
        payload = {
            **policy_payload(self.policy, self.task),
            "train_config": to_dict(self.config),
            "task_overrides": self.task_overrides,
            "algorithm": self.algorithm.state_dict(),
            "counter": {"steps": self.counter.steps, "by_source": dict(self.counter.by_source)},
            "metrics": self.metrics,
            "wall_time": self.wall_time,
            "held_out": {"x0": self.held_out.problems.x0, "target": self.held_out.problems.target,
                         "to_cost": self.held_out.to_cost},
        }
        if self.selected is not None:
            payload["selected"] = self.selected
        save_checkpoint(self.out_dir / CHECKPOINT, payload)

    @classmethod
    def resume(cls, out_dir: str | Path, **changes) -> Trainer:
        """Continue a run from its checkpoint (``changes`` may raise the iteration budget or set workers)."""
        path = Path(out_dir) / CHECKPOINT
        data = load_checkpoint(path)
        if not isinstance(data.get("train_config"), dict):
            raise CheckpointError(f"{path}: no training config (a policy-only checkpoint cannot be resumed)")
        train = {**data["train_config"], **changes}
        config = load_dataclass(TrainConfig, train, source=str(path))
        trainer = cls(config, out_dir, data.get("task_overrides") or {})
        try:
            trainer.policy.load_state_dict(data["policy_state"])
            trainer.algorithm.load_state_dict(data["algorithm"])
            trainer.counter.steps = int(data["counter"]["steps"])
            trainer.counter.by_source = {k: int(v) for k, v in data["counter"]["by_source"].items()}
            trainer.metrics = [dict(row) for row in data["metrics"]]
            trainer.wall_time = float(data["wall_time"])
            h = data["held_out"]
            trainer.held_out = HeldOut(Problems(h["x0"].numpy(), h["target"].numpy()), h["to_cost"].numpy())
            if "selected" in data:
                s = data["selected"]
                trainer.selected = {"iteration": int(s["iteration"]), "score": {k: float(v) for k, v in s["score"].items()},
                                    "policy_state": s["policy_state"]}
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            trainer.runner.close()
            raise CheckpointError(f"{path}: incomplete or inconsistent checkpoint ({type(exc).__name__}: {exc})") from exc
        done = trainer.algorithm.iteration
        if [int(row["iteration"]) for row in trainer.metrics] != list(range(1, done + 1)):
            trainer.runner.close()
            raise CheckpointError(f"{path}: metrics do not match the {done} completed iterations")
        if config.iterations < done:
            trainer.runner.close()
            raise ConfigError(str(path), "iterations", f"the run already has {done} iterations, got {config.iterations}")
        return trainer

    def final_policy(self) -> MLPPolicy:
        """The policy a run delivers: the iterate chosen on the validation set (select_best), else the last."""
        if self.selected is None:
            return self.policy
        policy = copy.deepcopy(self.policy)
        policy.load_state_dict(self.selected["policy_state"])
        return policy.eval()

    def final_metrics(self) -> dict[str, float]:
        """The held-out metrics row of the delivered policy."""
        return self.metrics[self.selected["iteration"] - 1] if self.selected is not None else self.metrics[-1]

    def continuous_use_figures(self, policy: MLPPolicy | None = None, final: bool | None = None) -> dict[str, float]:
        """Hold, sequence, moving-start and push figures of ``policy`` (the current one) on the held-out
        problems; ``final`` (default: at the last iteration) adds the long hold."""
        cfg = self.config
        if not cfg.eval_hold_seconds:
            return {}
        final = self.algorithm.iteration >= cfg.iterations if final is None else final
        hold = [*cfg.eval_hold_seconds, *([cfg.eval_final_hold_seconds] if final and cfg.eval_final_hold_seconds else [])]
        policy = self.policy if policy is None else policy
        return evaluate_continuous(self.task, policy.act, self.held_out.problems, success_tolerance(self.task)[1],
                                   ContinuousUse(hold_seconds=tuple(hold)))

    def _finish_selected_row(self) -> None:
        """The delivered iterate's row gets the long hold the last iteration's has (select_best picked
        an earlier one): the figures a run reports are all of the policy it exports."""
        cfg = self.config
        if (self.selected is None or not cfg.eval_hold_seconds or not cfg.eval_final_hold_seconds
                or self.algorithm.iteration < cfg.iterations):
            return
        row = self.final_metrics()
        key = f"hold_{seconds_label(cfg.eval_final_hold_seconds)}_error_mean"
        if key in row and math.isfinite(row[key]) or row is self.metrics[-1]:
            return
        row.update(self.continuous_use_figures(self.final_policy(), final=True))
        self.save()
        self.log.write(self.metrics)

    # -- loop ---------------------------------------------------------------
    def evaluates(self) -> bool:
        """Whether the iteration just done is evaluated: every ``eval_every``-th and the last."""
        done = self.algorithm.iteration
        return done % self.config.eval_every == 0 or done >= self.config.iterations

    def evaluation(self, stats: dict[str, float]) -> dict[str, float]:
        """The held-out, continuous-use and validation figures of the current policy (select_best's
        candidate), each phase's time added to ``stats``."""
        started = time.perf_counter()
        row = evaluate_policy(self.task, self.policy, self.held_out)
        stats["eval_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        row |= self.continuous_use_figures()
        stats["continuous_eval_seconds"] = time.perf_counter() - started
        if self.validation is not None:
            started = time.perf_counter()
            score = validation_score(self.task, self.policy, self.validation)
            row |= score
            if better(score, self.selected and self.selected["score"]):
                self.selected = {"iteration": self.algorithm.iteration, "score": score,
                                 "policy_state": copy.deepcopy(self.policy.state_dict())}
            row["selected_iteration"] = float(self.selected["iteration"])
            stats["validation_seconds"] = time.perf_counter() - started
        return row

    def _record(self, row: dict[str, float]) -> None:
        """Checkpoint first (it is what a resume trusts), then the logs; the curve is redrawn with the
        evaluations. What each took goes in the row afterwards (outside wall_time, which ends before
        them): the next iteration's checkpoint and CSV hold it, so both always show the same rows."""
        started = time.perf_counter()
        self.save()
        checkpoint_seconds = time.perf_counter() - started
        started = time.perf_counter()
        self.log.write(self.metrics, curve=self.evaluates())
        row |= {"checkpoint_seconds": checkpoint_seconds, "log_seconds": time.perf_counter() - started}

    def run(self, on_iteration: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        try:
            self._prepare_out_dir()
        except BaseException:
            self.runner.close()
            raise
        self.log = RunLog(self.out_dir, f"{self.config.variant} on {self.task.name}", self.task.error_unit)
        try:
            # one torch thread for every rollout too, not only the supervised phase: with one per core,
            # OpenMP spin-waits slow a batched policy step many times once another process shares a core
            with torch_threads(1):
                self.log.restart(self.metrics)  # a resumed run: logs equal to the checkpoint again
                if self.held_out is None:
                    self.held_out = HeldOut.make(self.task, self.config.eval_problems, self.config.eval_seed, self.runner)
                while self.algorithm.iteration < self.config.iterations:
                    # wall time covers everything a run spends, evaluation and checkpoint included
                    start = time.perf_counter()
                    stats = self.algorithm.step()
                    row = {"iteration": float(self.algorithm.iteration)}
                    if self.evaluates():
                        row |= self.evaluation(stats)
                    row |= {"dynamics_evaluations": float(self.counter.steps), **stats}
                    self.wall_time += time.perf_counter() - start
                    row["wall_time"] = self.wall_time
                    self.metrics.append(row)
                    self._record(row)
                    if on_iteration is not None:
                        on_iteration(row)
                self._finish_selected_row()
                if self.metrics:  # the last row's checkpoint and log times
                    self.save()
                    self.log.write_csv(self.metrics)
        finally:
            self.runner.close()
            self.log.close()
        return self.metrics
