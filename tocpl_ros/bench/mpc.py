"""``tocpl-mpc-bench``: does the policy warm start remove Crocoddyl's long-tail solves?

On N held-out ur5_reach problems (default 100, drawn from a seed used neither by training
nor by the trainer's evaluation set):

1. **Open loop** (the paper's Fig. 7): each problem's OCP solved once from its x0 with
   :func:`tocpl_ros.ocp.solve` (SolverBoxFDDP, max_iter 500, the task's th_stop: iterations
   to converge), warm-started from (a) the policy's rollout (``task.rollout`` through
   :class:`tocpl_ros.mpc.task_policy.TaskPolicy`) and (b) Crocoddyl's cold start.
2. **Closed loop**: a short MPC episode per problem at the MPC's default rate on the MPC's
   own model (:func:`tocpl_ros.mpc.closed_loop.run_closed_loop`), one episode per warm start 'policy',
   'shifted', 'cold'; every solve runs to convergence (max_iter 500, no deadline), so the
   iteration counts are comparable. 'shifted' has no previous solution at the first solve
   of an episode: that solve starts cold and is reported apart.

3. **Feedback gains** of the closed-loop solves: the K₀ the node publishes (SolverBoxFDDP's
   last backward pass) against :func:`tocpl_ros.ocp.solution_gains` (one box-projected
   Riccati pass at the solution): on how many solves a control held by the box still has a
   gain row, and how much the free rows differ (after a warm start at an optimum BoxFDDP
   leaves such rows unprojected; in the OC phase of training that is measured in docs/training.md "Sobolev targets").

Printed per warm start: median / p90 / max iterations, solves over 100 iterations, median
solve time, and the share of solves that would have met the MPC's default deadline; then
the ratio of median iterations policy / cold and whether the target of issue 4 is met (no
solve over 100 iterations with the policy warm start, median iterations at most a third of
the cold start's). Solve times are wall times on this machine under its current load (the
load average is printed): compare them with each other, not across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tocpl_ros.mpc.closed_loop import has_continuous_dynamics, run_closed_loop
from tocpl_ros.mpc.config import MPCConfig
from tocpl_ros.mpc.solver import RecedingHorizonMPC
from tocpl_ros.mpc.task_policy import TaskPolicy
from tocpl_ros.ocp import at_bounds, solution_gains, solve
from tocpl_ros.policy_file import OnnxPolicy, PolicyFileError
from tocpl_ros.tasks import Problems, load_task
from tocpl_ros.tasks.config import SolverConfig

DEFAULT_SEED = 3_000_017
"""Held-out problems: training samples use seeds [seed, iteration], the trainer's evaluation 1_000_003 and
its validation set (select_best) 2_000_003; a policy chosen on those must not be studied on them."""
LONG_TAIL = 100
"""A solve needing more iterations than this is a long-tail solve (the paper's Fig. 7 threshold)."""


@dataclass
class Solves:
    """Per-solve records of one warm start."""

    iterations: list[int] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """Solver wall time (s), warm start construction excluded."""
    warm_times: list[float] = field(default_factory=list)
    """Warm start construction wall time (s)."""
    costs: list[float] = field(default_factory=list)

    def add(self, iterations: int, converged: bool, seconds: float, warm_seconds: float = 0.0, cost: float = math.nan) -> None:
        self.iterations.append(int(iterations))
        self.converged.append(bool(converged))
        self.times.append(float(seconds))
        self.warm_times.append(float(warm_seconds))
        self.costs.append(float(cost))

    def summary(self, deadline: float | None = None) -> dict[str, float]:
        it = np.array(self.iterations, dtype=float)
        total = np.array(self.times) + np.array(self.warm_times)
        if not len(it):
            return {"solves": 0}
        out = {
            "solves": len(it),
            "converged": int(np.sum(self.converged)),
            "iterations_median": float(np.median(it)),
            "iterations_p90": float(np.percentile(it, 90)),
            "iterations_max": float(it.max()),
            "iterations_mean": float(it.mean()),
            "over_100": int(np.sum(it > LONG_TAIL)),
            "solve_ms_median": float(np.median(self.times) * 1e3),
            "warm_start_ms_median": float(np.median(self.warm_times) * 1e3),
            "total_ms_median": float(np.median(total) * 1e3),
            "total_ms_p90": float(np.percentile(total, 90) * 1e3),
        }
        if deadline is not None:
            out["within_deadline"] = float(np.mean(total <= deadline))
        return out


def open_loop(task, policy: TaskPolicy, problems, solver: SolverConfig) -> dict[str, Solves]:
    """Each OCP once from the policy's rollout and from the cold start."""
    results = {"policy": Solves(), "cold": Solves()}
    shooting = task.build_problem(problems[0])
    shooting.nthreads = 1
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        t0 = time.perf_counter()
        traj = task.rollout(policy, problems[i])
        t1 = time.perf_counter()
        sol = solve(shooting, solver, traj.xs[0], traj.us[0], rollout_guess=not traj.diverged[0])
        t2 = time.perf_counter()
        results["policy"].add(sol.iterations, sol.converged, t2 - t1, t1 - t0, sol.cost)
        t0 = time.perf_counter()
        sol = solve(shooting, solver)
        results["cold"].add(sol.iterations, sol.converged, time.perf_counter() - t0, 0.0, sol.cost)
    return results


def policy_vs_cold_costs(results: dict[str, Solves], same: float) -> tuple[np.ndarray, dict[str, int]]:
    """Per problem of :func:`open_loop`, the policy-started solve's cost relative to the cold one, and on
    how many it is lower / higher / the same (within ``same``, relative): another local optimum (Fig. 6)."""
    cost_policy, cost_cold = np.array(results["policy"].costs), np.array(results["cold"].costs)
    rel = (cost_policy - cost_cold) / np.maximum(np.abs(cost_cold), 1e-12)
    return rel, {"lower": int(np.sum(rel < -same)), "higher": int(np.sum(rel > same)), "same": int(np.sum(np.abs(rel) <= same))}


@dataclass
class GainCheck:
    """The published K₀ of converged solves against the box-projected Riccati pass at the solution."""

    solves: int = 0
    box_solves: int = 0
    """Solves with some control of the plan on the box."""
    clamped_rows: int = 0
    """Rows of K₀ whose control the box holds at step 0 (a zero row in the projected pass)."""
    clamped_rows_nonzero: int = 0
    """... of which K₀ still has a gain: the feedback law would move a control the box holds."""
    clamped_gain_max: float = 0.0
    free_difference: list[float] = field(default_factory=list)
    """Per solve with a control on the box: ‖K₀ − K*‖ / ‖K*‖ over the free rows of step 0."""
    free_difference_off_box: list[float] = field(default_factory=list)
    """The same on solves with no control on the box (the two passes should agree there)."""

    def add(self, mpc: RecedingHorizonMPC, result, target: np.ndarray) -> None:
        if not result.ok or result.xs is None:
            return
        task = mpc.task
        task.set_problem(mpc.shooting, Problems(result.xs[:1], np.asarray(target, dtype=float).reshape(1, -1)))
        projected = solution_gains(mpc.shooting, result.xs, result.us)[0]
        published = np.asarray(result.K, dtype=float).reshape(projected.shape)
        upper, lower = at_bounds(result.us, mpc.u_min, mpc.u_max)
        on_box = upper | lower
        clamped = ~projected.any(axis=1)  # ocp.box_held's rows: on the bound, or a hair inside it
        free = ~clamped
        self.solves += 1
        difference = (
            float(np.linalg.norm(published[free] - projected[free]) / max(np.linalg.norm(projected[free]), 1e-12))
            if free.any() else 0.0
        )
        if on_box.any():
            self.box_solves += 1
            self.free_difference.append(difference)
        else:
            self.free_difference_off_box.append(difference)
        self.clamped_rows += int(clamped.sum())
        if clamped.any():
            row_max = float(np.abs(published[clamped]).max())
            self.clamped_rows_nonzero += int((np.abs(published[clamped]) > 1e-9).any(axis=1).sum())
            self.clamped_gain_max = max(self.clamped_gain_max, row_max)

    def summary(self) -> dict[str, float]:
        def stats(values: list[float], name: str) -> dict[str, float]:
            if not values:
                return {}
            v = np.array(values)
            return {f"{name}_median": float(np.median(v)), f"{name}_p90": float(np.percentile(v, 90)),
                    f"{name}_max": float(v.max())}

        return {
            "solves": self.solves, "box_solves": self.box_solves, "clamped_rows": self.clamped_rows,
            "clamped_rows_nonzero": self.clamped_rows_nonzero, "clamped_gain_max": self.clamped_gain_max,
            **stats(self.free_difference, "free_difference"),
            **stats(self.free_difference_off_box, "free_difference_off_box"),
        }


def closed_loop(task, onnx_policy: OnnxPolicy, problems, max_iter: int, duration: float, substeps: int,
                progress=None) -> tuple[dict[str, Solves], dict[str, list[float]], dict[str, GainCheck]]:
    """Per-solve records of closed-loop MPC episodes, per warm start ('shifted (first, cold)' apart),
    the final errors and the gain check. The warm starts take turns problem by problem, so a
    change of machine load hits them alike."""
    records = {"policy": Solves(), "shifted": Solves(), "shifted (first, cold)": Solves(), "cold": Solves()}
    errors: dict[str, list[float]] = {"policy": [], "shifted": [], "cold": []}
    gains = {mode: GainCheck() for mode in errors}
    mpcs = {
        mode: RecedingHorizonMPC(task, onnx_policy, MPCConfig(warm_start=mode, max_iter=max_iter, deadline=math.inf))
        for mode in ("policy", "shifted", "cold")
    }
    for i in range(len(problems)):
        for mode, mpc in mpcs.items():
            episode = run_closed_loop(mpc, problems.x0[i], problems.target[i], duration, substeps=substeps)
            errors[mode].append(episode.final_error)
            for r in episode.results:
                key = "shifted (first, cold)" if mode == "shifted" and r.warm_start == "cold" else mode
                records[key].add(r.iterations, r.converged, r.solve_time - r.warm_start_time, r.warm_start_time, r.cost)
                gains[mode].add(mpc, r, problems.target[i])
            if progress:
                progress(mode, i)
    return records, errors, gains


def _row(name: str, s: dict[str, float], deadline: bool) -> str:
    if not s.get("solves"):
        return f"  {name:<22} (no solves)"
    line = (
        f"  {name:<22} {s['solves']:>6} {s['converged']:>6}   {s['iterations_median']:>6g} {s['iterations_p90']:>6.1f} "
        f"{s['iterations_max']:>5g} {s['over_100']:>6}   {s['solve_ms_median']:>8.2f} {s['warm_start_ms_median']:>8.2f} "
        f"{s['total_ms_median']:>8.2f}"
    )
    if deadline:
        line += f" {100 * s['within_deadline']:>8.1f} %"
    return line


def _header(deadline_ms: float | None) -> str:
    head = (
        f"  {'warm start':<22} {'solves':>6} {'conv.':>6}   {'median':>6} {'p90':>6} {'max':>5} {'>100':>6}   "
        f"{'solve ms':>8} {'warm ms':>8} {'total ms':>8}"
    )
    if deadline_ms is not None:
        head += f" {'<=' + format(deadline_ms, 'g') + ' ms':>10}"
    return head + "\n  " + " " * 22 + " " * 16 + "(iterations)" + " " * 16 + "(medians; total = warm start + solve)"


def _verdict(policy: dict, cold: dict) -> tuple[float, str]:
    ratio = policy["iterations_median"] / cold["iterations_median"] if cold["iterations_median"] else math.nan
    ok_tail = policy["over_100"] == 0
    ok_ratio = ratio <= 1 / 3
    text = (
        f"median iterations policy/cold = {policy['iterations_median']:g}/{cold['iterations_median']:g} = {ratio:.3f} "
        f"(target <= 0.333: {'met' if ok_ratio else 'NOT met'}); solves over {LONG_TAIL} iterations: policy "
        f"{policy['over_100']}, cold {cold['over_100']} (target: policy 0: {'met' if ok_tail else 'NOT met'})"
    )
    if cold["over_100"] == 0:
        text += (
            f"\n  note: the cold start has no solve over {LONG_TAIL} iterations on these problems either; its tail is "
            f"max {cold['iterations_max']:g} / p90 {cold['iterations_p90']:.1f} vs the policy's max "
            f"{policy['iterations_max']:g} / p90 {policy['iterations_p90']:.1f}"
        )
    return ratio, text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocpl-mpc-bench",
        description="Iterations of Crocoddyl's SolverBoxFDDP warm-started from the learned policy vs shifted vs cold "
        "start, on held-out ur5_reach problems (open loop and closed-loop MPC).",
    )
    parser.add_argument("--policy", required=True, help="policy file (.onnx from tocpl-export) for the task")
    parser.add_argument("--task", default="ur5_reach", help="task name or YAML (default: ur5_reach)")
    parser.add_argument("--problems", type=int, default=100, help="held-out problems (default: 100)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the held-out problems (default: {DEFAULT_SEED})")
    parser.add_argument("--max-iter", type=int, default=500, help="iteration cap of every solve (default: 500)")
    parser.add_argument("--episode", type=float, default=0.5, help="closed-loop episode length in s (default: 0.5)")
    parser.add_argument("--closed-loop-problems", type=int, default=None,
                        help="problems used for the closed loop (default: all; 0 skips it)")
    parser.add_argument("--substeps", type=int, default=10, help="plant steps per MPC period in the closed loop (default: 10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.problems < 1 or args.max_iter < 1 or args.episode <= 0 or args.substeps < 1:
        print("tocpl-mpc-bench: --problems, --max-iter, --substeps must be >= 1 and --episode > 0", file=sys.stderr)
        return 2
    try:
        task = load_task(args.task)
        onnx_policy = OnnxPolicy(args.policy)
        policy = TaskPolicy(onnx_policy, task)
    except (PolicyFileError, ValueError, OSError) as exc:
        print(f"tocpl-mpc-bench: {exc}", file=sys.stderr)
        return 2
    defaults = MPCConfig()
    solver = SolverConfig(max_iter=args.max_iter, th_stop=task.config.solver.th_stop)
    problems = task.sample(args.problems, args.seed)
    n_closed = args.problems if args.closed_loop_problems is None else min(args.closed_loop_problems, args.problems)
    load = os.getloadavg()
    print(
        f"tocpl-mpc-bench: task {task.name} (horizon {task.horizon} x {task.dt:g} s), policy {args.policy}, "
        f"{args.problems} held-out problems (seed {args.seed}); SolverBoxFDDP, max_iter {args.max_iter}, "
        f"th_stop {solver.th_stop:g}, 1 Crocoddyl thread; load average {load[0]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )

    started = time.perf_counter()
    ol = open_loop(task, policy, problems, solver)
    ol_summary = {k: v.summary() for k, v in ol.items()}
    rel, optima = policy_vs_cold_costs(ol, same=1e-3)
    print(f"\n(1) Open loop: each OCP solved once from its x0 ({time.perf_counter() - started:.0f} s)")
    print(_header(None))
    for name in ("policy", "cold"):
        print(_row(name, ol_summary[name], deadline=False))
    ol_ratio, text = _verdict(ol_summary["policy"], ol_summary["cold"])
    print(f"  {text}")
    print(
        f"  cost reached, policy vs cold start: median relative difference {np.median(rel):+.2e}; "
        f"policy lower by > 0.1 % on {optima['lower']}, higher by > 0.1 % on {optima['higher']} problems "
        f"(different local optima)"
    )

    report = {
        "task": task.name, "policy": str(args.policy), "problems": args.problems, "seed": args.seed,
        "max_iter": args.max_iter, "th_stop": solver.th_stop, "load_average": load[0],
        "open_loop": {**ol_summary, "ratio_median_iterations_policy_cold": ol_ratio,
                      "cost_relative_difference_median": float(np.median(rel))},
    }
    if n_closed > 0 and not has_continuous_dynamics(task.build_problem()):
        print(f"\n(2) Closed loop: skipped, task '{task.name}' is discrete-time (no plant to simulate between solves)")
        n_closed = 0
    if n_closed > 0:
        started = time.perf_counter()
        cl, errors, gain_checks = closed_loop(task, onnx_policy, problems[:n_closed], args.max_iter, args.episode, args.substeps)
        cl_summary = {k: v.summary(defaults.deadline) for k, v in cl.items()}
        cycles = int(round(args.episode * defaults.rate))
        print(
            f"\n(2) Closed loop: {n_closed} episodes of {args.episode:g} s at {defaults.rate:g} Hz ({cycles} solves each) on "
            f"the MPC's own model, fast loop at {defaults.rate * args.substeps:g} Hz applying u = ū − K (x − x̄); "
            f"every solve to convergence ({time.perf_counter() - started:.0f} s)"
        )
        print(_header(defaults.deadline * 1e3))
        for name in ("policy", "shifted", "shifted (first, cold)", "cold"):
            print(_row(name, cl_summary[name], deadline=True))
        cl_ratio, text = _verdict(cl_summary["policy"], cl_summary["cold"])
        print(f"  {text}")
        if cl_summary["shifted"].get("solves"):
            print(
                f"  shifted/cold median iterations: {cl_summary['shifted']['iterations_median']:g}/"
                f"{cl_summary['cold']['iterations_median']:g}; policy/shifted: "
                f"{cl_summary['policy']['iterations_median']:g}/{cl_summary['shifted']['iterations_median']:g}"
            )
        scale, unit = {"m": (100.0, "cm"), "rad": (180.0 / math.pi, "deg")}.get(task.error_unit, (1.0, task.error_unit))
        print(
            f"  task error after the episode, median ({unit}): "
            + ", ".join(f"{k} {scale * np.median(v):.3g}" for k, v in errors.items())
        )
        print(
            f"  '<= {defaults.deadline * 1e3:g} ms': share of solves whose warm start + solve fit the MPC's default "
            f"deadline on this machine now (the node falls back to the policy otherwise)"
        )
        gain_summary = {k: v.summary() for k, v in gain_checks.items()}
        print(
            "\n(3) Feedback gains of the converged closed-loop solves: the published K₀ (the solver's last backward "
            "pass) vs one box-projected Riccati pass at the solution (ocp.solution_gains)"
        )
        for mode, g in gain_summary.items():
            line = (f"  {mode:<8} {g['solves']} solves, {g['box_solves']} with a control on the box; rows held by the "
                    f"box at step 0: {g['clamped_rows']}, with a gain in K₀: {g['clamped_rows_nonzero']}")
            if g["clamped_rows_nonzero"]:
                line += f" (max |K| {g['clamped_gain_max']:.3g})"
            if "free_difference_median" in g:
                line += (f"; free rows, relative difference on those solves: median {g['free_difference_median']:.2e}, "
                         f"p90 {g['free_difference_p90']:.2e}, max {g['free_difference_max']:.2e}")
            if "free_difference_off_box_max" in g:
                line += f"; off the box: max {g['free_difference_off_box_max']:.2e}"
            print(line)
        report["closed_loop"] = {
            **cl_summary, "episode": args.episode, "rate": defaults.rate, "substeps": args.substeps,
            "ratio_median_iterations_policy_cold": cl_ratio,
            "final_error_median": {k: float(np.median(v)) for k, v in errors.items()},
            "gains": gain_summary,
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
