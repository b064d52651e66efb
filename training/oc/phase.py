"""The OC phase: N independent OCPs solved in a pool of workers.

Each worker builds its task and its Crocoddyl problems once and re-targets them
(x0, target, consensus terms) for every job. Jobs are split into contiguous
chunks, one per worker, and every problem is solved by the same deterministic
solver whatever the chunking: the same seed gives the same result for any
worker count and either backend.

Backends (``TrainConfig.backend``):

* ``process`` (default): a ``spawn`` process pool on this machine (workers = 1:
  in the driver process, no pool).
* ``ray``: one Ray actor per worker, on a local Ray instance started here (on
  loopback, no dashboard, no usage reporting, shut down by ``close()``) or on the
  cluster at ``ray_address``. Needs the ``ray`` extra; see docs/ray.md.

Crocoddyl threads: this Crocoddyl build has OpenMP, and a ShootingProblem built
while no Python-derived model exists in the process gets nthreads = 2. Those
threads busy-wait, so next to other busy processes (a second worker, a loaded
machine) each solve slows down many-fold (docs/ray.md). The workers are the parallelism:
their problems run with one Crocoddyl thread (``crocoddyl_threads``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tocpl_ros.config import ConfigError, load_dataclass
from tocpl_ros.ocp import OCSolution, solution_gains, solve
from tocpl_ros.tasks import DynamicsCounter, Problems, Task, make_task
from tocpl_ros.tasks.config import SolverConfig, TaskConfig
from tocpl_training.config import BACKENDS

RAY_EXTRA_HINT = "pip install 'tocpl_ros[ray]' (or: pip install ray)"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class OCJob:
    """One problem to solve and its initial guess (None: cold start)."""

    x0: np.ndarray
    target: np.ndarray
    init_xs: np.ndarray | None = None
    init_us: np.ndarray | None = None
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-problem data of the extra cost terms (e.g. 'shift' λ/μ [T, nu], 'u_ref', 'x_ref')."""
    init_is_rollout: bool = False
    """init_xs is the rollout of init_us from x0 (a policy's rollout), not just any guess."""


@dataclass
class OCRequest:
    """A batch of jobs with what they share."""

    jobs: list[OCJob]
    solver: SolverConfig
    mode: str = "plain"
    """'plain' (the task's OCP), 'consensus' (+ μ/2‖u − π(x) + λ/μ‖², plal) or 'tracking' (plal+M)."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Data shared by all jobs (e.g. 'mu', 'policy' weights)."""
    warm_start_probe: int = 0
    """Iterations a warm start gets to show progress (TrainConfig.oc_warm_start_probe); 0: no probe."""
    feasible_warm_start: bool = False
    """Tell the solver that a rollout guess is feasible (TrainConfig.oc_feasible_warm_start)."""
    gains: str = "solver"
    """The solutions' K: 'solver' (SolverBoxFDDP's last), 'solution' (ocp.solution_gains of the
    solved OCP) or 'task' (ocp.solution_gains of the task's own OCP at the solution, without the
    consensus/tracking terms of the mode): Sobolev targets."""


class _Worker:
    """Per-worker state: the task and its problems, built once."""

    def __init__(self, task_name: str, task_config: dict, constrained: bool, crocoddyl_threads: int | None = 1):
        config = load_dataclass(TaskConfig, task_config, source=f"task {task_name}")
        self.task: Task = make_task(task_name, config)
        self.constrained = constrained
        self.crocoddyl_threads = crocoddyl_threads
        self.problems: dict[str, Any] = {}

    def problem_for(self, request: OCRequest, job: OCJob):
        """The mode's problem, built on first use, pointed at this job."""
        nominal = Problems(job.x0[None], job.target[None])
        if request.mode not in self.problems:
            shooting = self.task.build_problem(nominal, constrained=self.constrained)
            if self.crocoddyl_threads and shooting.nthreads != self.crocoddyl_threads:
                shooting.nthreads = self.crocoddyl_threads
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
            counter = DynamicsCounter()
            gains_problem = None  # the solved OCP's own, but for 'task' with extra terms
            if request.gains == "task" and request.mode != "plain":
                gains_problem = self.problem_for(dataclasses.replace(request, mode="plain"), job)
            sol = self.solve_job(self.problem_for(request, job), request, job, counter, gains_problem)
            results.append((sol, counter.steps))
        return results

    @staticmethod
    def solve_job(shooting, request: OCRequest, job: OCJob, counter: DynamicsCounter, gains_problem=None) -> OCSolution:
        """Solve ``shooting``; with gains 'solution'/'task', K from a Riccati pass on ``gains_problem``
        (the task's own OCP for 'task'; default: ``shooting``) at the solution."""
        sol = _Worker.solve_trajectory(shooting, request, job, counter)
        if request.gains in ("solution", "task"):
            counter.add(shooting.T, "oc_solver")  # the linearisation at the solution
            sol = dataclasses.replace(sol, K=solution_gains(gains_problem or shooting, sol.xs, sol.us))
        return sol

    @staticmethod
    def solve_trajectory(shooting, request: OCRequest, job: OCJob, counter: DynamicsCounter) -> OCSolution:
        """Cold, or warm from the job's guess (past the probe only while it progresses), else the cheaper of it and cold."""
        if job.init_us is None:
            return solve(shooting, request.solver, counter=counter)
        cap, probe = request.solver.max_iter, request.warm_start_probe
        first = probe if 0 < probe < cap else cap
        told = request.feasible_warm_start
        sol = solve(shooting, request.solver, job.init_xs, job.init_us, counter=counter, max_iter=first,
                    rollout_guess=told and job.init_is_rollout)
        if first < cap and not sol.converged and not sol.stalled:  # past the probe, progressing: go on
            rest = solve(shooting, request.solver, sol.xs, sol.us, counter=counter, max_iter=cap - first,
                         rollout_guess=told and sol.feasible)
            sol = dataclasses.replace(rest, iterations=rest.iterations + sol.iterations)
        if sol.converged:
            return sol
        # A poor or stalling guess (an early policy's rollout; on the boxed lqr BoxFDDP can creep at
        # the smallest step from a good one): keep the cheaper of it and cold.
        cold = solve(shooting, request.solver, counter=counter)
        kept = cold if cold.feasible and (cold.cost < sol.cost or not sol.feasible) else sol
        # iterations spent on the job (the oc_iterations metric): both attempts
        return dataclasses.replace(kept, iterations=sol.iterations + cold.iterations)

    def run_parts(self, request: OCRequest, shared: dict) -> list[tuple[OCSolution, int]]:
        """``run`` with ``shared`` passed apart: Ray resolves it from the object store."""
        return self.run(dataclasses.replace(request, shared=shared))

    def info(self) -> dict:
        """Where this worker runs and how many Crocoddyl threads its problems use."""
        return {"pid": os.getpid(), "threads": {m: int(p[0].nthreads) for m, p in self.problems.items()}}


def attach_terms(task: Task, shooting, request: OCRequest):
    """Add the extra cost terms of the request's mode to a fresh problem; None for 'plain'."""
    if request.mode == "plain":
        return None
    from tocpl_training.oc import consensus  # only the ADMM family needs it

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


def _exit_with_parent(parent_pid: int, period: float = 1.0) -> None:
    """End this worker once its parent is gone.

    A pool worker blocks on the job queue's lock; if the trainer is killed (SIGKILL, OOM) that
    lock is never released and the worker would wait forever. Polling the parent pid is
    portable and needs no cooperation from the dying process.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(task_name: str, task_config: dict, constrained: bool, crocoddyl_threads: int | None = 1) -> None:
    global _WORKER
    _exit_with_parent(os.getppid())
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = _Worker(task_name, task_config, constrained, crocoddyl_threads)


def _run_chunk(request: OCRequest) -> list[tuple[OCSolution, int]]:
    assert _WORKER is not None
    return _WORKER.run(request)


def split_request(request: OCRequest, parts: int) -> list[OCRequest]:
    """Contiguous chunks of the request's jobs, one per worker (empty ones dropped)."""
    chunks = np.array_split(np.arange(len(request.jobs)), parts)
    return [dataclasses.replace(request, jobs=[request.jobs[i] for i in chunk]) for chunk in chunks if len(chunk)]


def import_ray(local: bool):
    """Import Ray with usage reporting off; for a local instance, make it bind loopback only.

    Ray picks the node's address when it is imported (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``,
    default on for Linux, makes a local instance advertise and listen on the primary
    interface, and rewrites a 127.0.0.1 address to it). Setting it to 0 makes
    ``ray.init()`` use 127.0.0.1 for every service.
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if local:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("", "backend", f"the Ray backend needs the optional 'ray' extra, which is not installed "
                          f"({exc}); install it with: {RAY_EXTRA_HINT}") from exc
    if local:
        from ray._private import ray_constants

        # ray imported earlier without the variable: the constant is read at call time
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


class RayPool:
    """One Ray actor per worker, each holding a _Worker (its task and problems, built once)."""

    def __init__(self, args: tuple, workers: int, address: str = ""):
        # a head on this machine's loopback (ray start --head --node-ip-address=127.0.0.1) is local too:
        # without it Ray rewrites 127.0.0.1 to the primary interface's address and cannot connect
        ray = import_ray(local=not address or address.rpartition(":")[0].strip("[]") in LOOPBACK)
        self.ray = ray
        self.owns_instance = False
        if not ray.is_initialized():
            common = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
            if address:
                ray.init(address=address, **common)
            else:
                ctx = ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **common)
                node_ip = ctx.address_info["node_ip_address"]
                if node_ip not in LOOPBACK:
                    ray.shutdown()
                    raise RuntimeError(f"the local Ray instance came up on {node_ip}, not on loopback")
            self.owns_instance = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.size = workers or cpus or 1
        if self.size > cpus:
            self.close()
            raise ConfigError("", "workers", f"{self.size} Ray workers need {self.size} CPUs; the Ray cluster has {cpus}")
        actor = ray.remote(num_cpus=1)(_Worker)
        self.actors = [actor.remote(*args) for _ in range(self.size)]

    def solve(self, request: OCRequest) -> list[tuple[OCSolution, int]]:
        ray = self.ray
        parts = split_request(request, len(self.actors))
        shared = ray.put(request.shared)  # once in the object store, fetched once per node
        refs = [a.run_parts.remote(dataclasses.replace(p, shared={}), shared) for a, p in zip(self.actors, parts)]
        return [r for part in ray.get(refs) for r in part]

    def info(self) -> list[dict]:
        return self.ray.get([a.info.remote() for a in self.actors])

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self.ray.kill(a)
        self.actors = []
        if self.owns_instance and self.ray.is_initialized():
            self.ray.shutdown()
        self.owns_instance = False


class OCPhaseRunner:
    """Solves OCRequests in-process (process backend, workers=1), in a process pool, or on Ray actors.

    ``workers`` = 0: one per core (process) or per CPU of the Ray cluster (ray).
    ``pool`` (process backend): force a pool (True) or the driver process (False);
    None: a pool when workers > 1. ``crocoddyl_threads``: ShootingProblem.nthreads of
    the workers' problems (None keeps Crocoddyl's default).
    """

    def __init__(self, task: Task, constrained: bool, workers: int = 0, backend: str = "process",
                 ray_address: str = "", *, pool: bool | None = None, crocoddyl_threads: int | None = 1):
        if backend not in BACKENDS:
            raise ConfigError("", "backend", f"unknown OC phase backend '{backend}' (known: {', '.join(BACKENDS)})")
        self.backend = backend
        args = (task.name, _config_dict(task), constrained, crocoddyl_threads)
        self._local = self._pool = self._ray = None
        if backend == "ray":
            self._ray = RayPool(args, workers, ray_address)
            self.workers = self._ray.size
            return
        self.workers = workers or os.cpu_count() or 1
        if not (self.workers > 1 if pool is None else pool):
            self._local = _Worker(*args)
        else:
            # spawn: torch in the parent process makes fork unsafe
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=args)

    def solve(self, request: OCRequest, counter: DynamicsCounter | None = None) -> list[OCSolution]:
        if self._ray is not None:
            results = self._ray.solve(request)
        elif self._pool is None:
            results = self._local.run(request)
        else:
            parts = split_request(request, self.workers)
            results = [r for part in self._pool.map(_run_chunk, parts) for r in part]
        if counter is not None:
            counter.add(sum(steps for _, steps in results), "oc_solver")
        return [sol for sol, _ in results]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._ray is not None:
            self._ray.close()
            self._ray = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _config_dict(task: Task) -> dict:
    from tocpl_ros.config import to_dict

    return to_dict(task.config)
