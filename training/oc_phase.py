"""The OC phase: N independent OCPs solved in a pool of worker processes.

Each worker builds its task and its Crocoddyl problems once and re-targets them
(x0, target, consensus terms) for every job. Jobs are split into contiguous
chunks, one per worker, and every problem is solved by the same deterministic
solver whatever the chunking: the same seed gives the same result for any
worker count.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tocpl_ros.config import load_dataclass
from tocpl_ros.ocp import OCSolution, solve
from tocpl_ros.tasks import DynamicsCounter, Problems, Task, make_task
from tocpl_ros.tasks.config import SolverConfig, TaskConfig


@dataclass
class OCJob:
    """One problem to solve and its initial guess (None: cold start)."""

    x0: np.ndarray
    target: np.ndarray
    init_xs: np.ndarray | None = None
    init_us: np.ndarray | None = None
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-problem data of the extra cost terms (e.g. 'shift' λ/μ [T, nu], 'u_ref', 'x_ref')."""


@dataclass
class OCRequest:
    """A batch of jobs with what they share."""

    jobs: list[OCJob]
    solver: SolverConfig
    mode: str = "plain"
    """'plain' (the task's OCP), 'consensus' (+ μ/2‖u − π(x) + λ/μ‖², plal) or 'tracking' (plal+M)."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Data shared by all jobs (e.g. 'mu', 'policy' weights)."""


class _Worker:
    """Per-process state: the task and its problems, built once."""

    def __init__(self, task_name: str, task_config: dict, constrained: bool):
        config = load_dataclass(TaskConfig, task_config, source=f"task {task_name}")
        self.task: Task = make_task(task_name, config)
        self.constrained = constrained
        self.problems: dict[str, Any] = {}

    def problem_for(self, request: OCRequest, job: OCJob):
        """The mode's problem, built on first use, pointed at this job."""
        nominal = Problems(job.x0[None], job.target[None])
        if request.mode not in self.problems:
            shooting = self.task.build_problem(nominal, constrained=self.constrained)
            self.problems[request.mode] = (shooting, attach_terms(self.task, shooting, request))
        shooting, terms = self.problems[request.mode]
        if terms is None:
            self.task.set_problem(shooting, nominal)
        else:
            terms.set_problem(nominal)
            configure_terms(terms, request, job)
        return shooting

    def run(self, request: OCRequest) -> list[tuple[OCSolution, int]]:
        results = []
        for job in request.jobs:
            shooting = self.problem_for(request, job)
            counter = DynamicsCounter()
            sol = solve(shooting, request.solver, job.init_xs, job.init_us, counter=counter)
            if not sol.converged and job.init_us is not None:
                # An early policy's rollout can be a poor guess that stalls the solver in a
                # bad basin: try the cold start too and keep the cheaper solution.
                cold = solve(shooting, request.solver, counter=counter)
                if cold.feasible and (cold.cost < sol.cost or not sol.feasible):
                    sol = cold
            results.append((sol, counter.steps))
        return results


def attach_terms(task: Task, shooting, request: OCRequest):
    """Add the extra cost terms of the request's mode to a fresh problem; None for 'plain'."""
    if request.mode == "plain":
        return None
    from . import consensus  # only the ADMM family needs it

    if request.mode == "consensus":
        return consensus.add_consensus_terms(task, shooting, request.shared["policy"], request.shared["mu"])
    if request.mode == "tracking":
        return consensus.add_tracking_terms(task, shooting, request.shared["mu"])
    raise ValueError(f"unknown OC phase mode '{request.mode}'")


def configure_terms(terms, request: OCRequest, job: OCJob) -> None:
    """Point the extra terms at this job's multipliers/references and the shared policy and μ."""
    mu = request.shared["mu"]
    if request.mode == "consensus":
        terms.set(policy=request.shared["policy"], shifts=job.terms["shift"], mu=mu)
    else:
        terms.set(u_refs=job.terms["u_ref"], x_refs=job.terms["x_ref"], mu=mu)


_WORKER: _Worker | None = None


def _init_worker(task_name: str, task_config: dict, constrained: bool) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = _Worker(task_name, task_config, constrained)


def _run_chunk(request: OCRequest) -> list[tuple[OCSolution, int]]:
    assert _WORKER is not None
    return _WORKER.run(request)


class OCPhaseRunner:
    """Solves OCRequests serially (workers=1) or in a process pool."""

    def __init__(self, task: Task, constrained: bool, workers: int = 0):
        self.workers = workers or os.cpu_count() or 1
        args = (task.name, _config_dict(task), constrained)
        if self.workers == 1:
            self._local = _Worker(*args)
            self._pool = None
        else:
            self._local = None
            # spawn: torch in the parent process makes fork unsafe
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=args)

    def solve(self, request: OCRequest, counter: DynamicsCounter | None = None) -> list[OCSolution]:
        if self._pool is None:
            results = self._local.run(request)
        else:
            chunks = np.array_split(np.arange(len(request.jobs)), self.workers)
            requests = [
                OCRequest([request.jobs[i] for i in chunk], request.solver, request.mode, request.shared)
                for chunk in chunks
                if len(chunk)
            ]
            results = [r for part in self._pool.map(_run_chunk, requests) for r in part]
        if counter is not None:
            counter.add(sum(steps for _, steps in results), "oc_solver")
        return [sol for sol, _ in results]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _config_dict(task: Task) -> dict:
    from tocpl_ros.config import to_dict

    return to_dict(task.config)
