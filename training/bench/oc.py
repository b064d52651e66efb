"""``tocpl-oc-bench``: OC-phase throughput (problems solved per second) per backend and worker count.

    tocpl-oc-bench --task ur5_reach --problems 64 --repeats 5
    tocpl-oc-bench --runners serial process:2 ray:2 --threads 1 0

Every runner solves the same N cold-started problems (the task's sampler, --seed) with the
training defaults (--max-iter, th_stop 1e-9); the first pass builds the workers' problems
and is not timed. Throughput = N / median wall time of --repeats passes; the ratio is to
the serial runner with the same Crocoddyl thread setting. Every runner's solutions are
checked to be bit-identical to the serial ones. --threads 0 keeps Crocoddyl's default
ShootingProblem.nthreads (2 on this build) instead of the OC phase's 1.

It also prints what an OC phase ships between the driver and the workers (pickled bytes).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time

import numpy as np

from tocpl_ros.config import ConfigError
from tocpl_ros.tasks import Task, load_task
from tocpl_ros.tasks.config import SolverConfig
from tocpl_training.oc.phase import OCJob, OCPhaseRunner, OCRequest, _config_dict, split_request

RUNNERS = ("serial", "process:1", "process:2", "ray:1", "ray:2")


def make_runner(spec: str, task: Task, threads: int | None) -> OCPhaseRunner:
    """'serial' (the driver process), 'process:N' (a pool of N, even N = 1) or 'ray:N'."""
    if spec == "serial":
        return OCPhaseRunner(task, True, workers=1, pool=False, crocoddyl_threads=threads)
    backend, _, n = spec.partition(":")
    if backend not in ("process", "ray") or not n.isdigit() or int(n) < 1:
        raise ConfigError("", "runners", f"unknown runner '{spec}' (serial, process:N or ray:N)")
    return OCPhaseRunner(task, True, workers=int(n), backend=backend, pool=True, crocoddyl_threads=threads)


def measure(spec: str, task: Task, request: OCRequest, repeats: int, threads: int | None) -> dict:
    start = time.perf_counter()
    with make_runner(spec, task, threads) as runner:
        first = runner.solve(request)  # builds every worker's problems
        startup = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            sols = runner.solve(request)
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {"runner": spec, "threads": threads, "startup": startup, "median": median, "min": min(times),
            "max": max(times), "throughput": len(request.jobs) / median, "solutions": sols, "first": first}


def payload_sizes(task: Task, request: OCRequest, sols, workers: int, hidden: list[int]) -> list[tuple[str, int]]:
    """Pickled bytes of what one OC phase ships (protocol 5, as the pool and Ray's serializer use)."""
    from tocpl_training.learning.policy import NumpyPolicy, make_policy

    size = lambda obj: len(pickle.dumps(obj, protocol=5))  # noqa: E731
    warm = OCRequest([OCJob(j.x0, j.target, s.xs, s.us) for j, s in zip(request.jobs, sols)], request.solver)
    T, nu = sols[0].us.shape
    policy = NumpyPolicy(make_policy(task, 0, hidden=hidden))
    consensus = OCRequest([OCJob(j.x0, j.target, s.xs, s.us, {"shift": np.zeros((T, nu))})
                           for j, s in zip(request.jobs, sols)], request.solver, "consensus",
                          {"mu": 1.0, "policy": policy})
    n = len(request.jobs)
    return [
        ("worker start-up (task config, once per worker)", size((task.name, _config_dict(task), True, 1))),
        (f"PDDP phase, cold starts ({n} jobs)", size(split_request(request, workers))),
        (f"PDDP phase, warm starts from the policy rollout ({n} jobs)", size(split_request(warm, workers))),
        (f"PLAL phase: policy weights {hidden} + mu (Ray: once per node)", size(consensus.shared)),
        (f"PLAL phase: jobs with warm starts and lambda ({n} jobs)", size([p.jobs for p in split_request(consensus, workers)])),
        (f"results: xs, us, K per problem ({n} problems, back to the driver)", size([(s, 0) for s in sols])),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tocpl-oc-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="ur5_reach")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-iter", type=int, default=50, help="solver iteration cap (training default: 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), help="serial, process:N, ray:N")
    parser.add_argument("--threads", nargs="+", type=int, default=[1],
                        help="Crocoddyl ShootingProblem.nthreads in the workers (0: Crocoddyl's default)")
    parser.add_argument("--hidden", nargs="+", type=int, default=[256, 256], help="policy widths for the byte count")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.repeats < 1:
        parser.error("--problems and --repeats must be >= 1")
    try:
        task = load_task(args.task)
        problems = task.sample(args.problems, seed=args.seed)
        request = OCRequest([OCJob(problems.x0[i], problems.target[i]) for i in range(args.problems)],
                            SolverConfig(max_iter=args.max_iter))
        print(f"tocpl-oc-bench: {args.task}, {args.problems} cold-started problems, max_iter {args.max_iter}, "
              f"median of {args.repeats} passes", flush=True)
        print(f"{'runner':<11} {'nthreads':>8} {'start-up s':>10} {'median s':>9} {'min s':>7} {'max s':>7} "
              f"{'problems/s':>10} {'vs serial':>9}  identical", flush=True)
        rows = []
        for threads in args.threads:
            reference = None
            for spec in args.runners:
                r = measure(spec, task, request, args.repeats, threads or None)
                rows.append(r)
                if reference is None:
                    reference = r
                same = all(np.array_equal(a.us, b.us) and np.array_equal(a.K, b.K)
                           for a, b in zip(reference["solutions"], r["solutions"]))
                print(f"{spec:<11} {threads or 'default':>8} {r['startup']:10.2f} {r['median']:9.3f} {r['min']:7.3f} "
                      f"{r['max']:7.3f} {r['throughput']:10.1f} {r['throughput'] / reference['throughput']:8.2f}x  "
                      f"{'yes' if same else 'NO'}", flush=True)
                if not same:
                    print(f"tocpl-oc-bench: {spec} differs from {reference['runner']}", file=sys.stderr)
                    return 1
        print("\nbytes shipped per OC phase (pickled):")
        for name, n in payload_sizes(task, request, rows[0]["solutions"], 2, args.hidden):
            print(f"  {n:>10,d}  {name}")
    except ConfigError as exc:
        print(f"tocpl-oc-bench: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
