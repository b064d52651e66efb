"""``tocpl-solve``: solve sampled OCPs of a task with Crocoddyl and report precision and timing.

    tocpl-solve --task ur5_reach --problems 20
    tocpl-solve --task pendulum --set costs.terminal.position=1e5 --set horizon=150
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from tocpl_ros.config import ConfigError, parse_key_values
from tocpl_ros.ocp import solve
from tocpl_ros.tasks import DynamicsCounter, Trajectories, available_tasks, load_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tocpl-solve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="ur5_reach", help=f"task name ({', '.join(available_tasks())}) or a YAML path")
    parser.add_argument("--problems", type=int, default=20, help="number of sampled problems")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem sampling")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a task config field (dotted key)")
    parser.add_argument("--unconstrained", action="store_true", help="drop the control box from the OCP ('-C')")
    args = parser.parse_args(argv)
    if args.problems < 1:
        parser.error("--problems must be >= 1")

    try:
        task = load_task(args.task, parse_key_values(args.set, "--set"))
    except ConfigError as exc:
        print(f"tocpl-solve: {exc}", file=sys.stderr)
        return 2

    problems = task.sample(args.problems, args.seed)
    shooting = task.build_problem(problems[0], constrained=not args.unconstrained)
    counter = DynamicsCounter()
    seconds, iterations, errors, violations, converged = [], [], [], [], 0
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        start = time.perf_counter()
        sol = solve(shooting, task.config.solver, counter=counter)
        seconds.append(time.perf_counter() - start)
        ev = task.evaluate(problems[i], Trajectories(sol.xs[None], sol.us[None]), shooting)
        iterations.append(sol.iterations)
        errors.append(ev.final_error[0])
        violations.append(ev.bound_violation[0])
        converged += sol.converged

    errors = np.array(errors)
    scale, unit = (1e3, "mm") if task.error_unit == "m" else (np.rad2deg(1), "deg") if task.error_unit == "rad" else (1, task.error_unit)
    print(f"task {task.name}: {len(problems)} problems, T={task.horizon}, dt={task.dt}, "
          f"{'unconstrained' if args.unconstrained else 'box-constrained'} SolverBoxFDDP, cold start")
    print(f"  final error   mean {scale * errors.mean():.4g} {unit}, max {scale * errors.max():.4g} {unit}")
    print(f"  solve time    median {1e3 * np.median(seconds):.1f} ms, max {1e3 * max(seconds):.1f} ms")
    print(f"  iterations    median {np.median(iterations):.0f}, max {max(iterations)}; converged {converged}/{len(problems)}")
    print(f"  torque bound  max violation {max(violations):.3g}")
    print(f"  dynamics evaluations {counter.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
