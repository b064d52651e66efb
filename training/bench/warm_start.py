"""The TO warm-start study of ``tocpl-bench`` (the paper's Fig. 7): SolverBoxFDDP from a policy's
rollout vs Crocoddyl's cold start on held-out problems."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SAME_COST = 1e-4
"""Relative cost difference up to which the policy-started and cold solves reached the same optimum (the
convex lqr's differ by up to 3e-6: solver tolerance; another local optimum of the double pendulum by 77–100 %)."""


def warm_start_study(policy_path: str | Path, task_name: str, out: Path, problems: int = 100, seed: int | None = None,
                     max_iter: int = 500) -> dict:
    """Iterations of SolverBoxFDDP to the task's th_stop, from the policy's rollout and cold, on held-out problems
    (:func:`tocpl_ros.bench.mpc.open_loop`); writes warm_start_<task>.{png,json,md} into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tocpl_ros.bench.mpc import DEFAULT_SEED, LONG_TAIL, open_loop, policy_vs_cold_costs
    from tocpl_ros.mpc.task_policy import TaskPolicy
    from tocpl_ros.policy_file import OnnxPolicy
    from tocpl_ros.tasks import load_task
    from tocpl_ros.tasks.config import SolverConfig

    seed = DEFAULT_SEED if seed is None else seed
    task = load_task(task_name)
    policy = TaskPolicy(OnnxPolicy(str(policy_path)), task)
    solver = SolverConfig(max_iter=max_iter, th_stop=task.config.solver.th_stop)
    probs = task.sample(problems, seed)
    start = time.perf_counter()
    results = open_loop(task, policy, probs, solver)
    seconds = time.perf_counter() - start
    summary = {k: v.summary() for k, v in results.items()}
    it = {k: np.array(v.iterations) for k, v in results.items()}
    rel, optima = policy_vs_cold_costs(results, SAME_COST)  # Fig. 6: which start reached which optimum
    report = {
        "task": task.name, "policy": str(policy_path), "problems": problems, "seed": seed, "max_iter": max_iter,
        "th_stop": solver.th_stop, "long_tail": LONG_TAIL, "seconds": seconds, **summary,
        "iterations": {k: v.tolist() for k, v in it.items()},
        "costs": {k: list(v.costs) for k, v in results.items()},
        "cost_relative_difference_median": float(np.median(rel)),
        "cost_policy_vs_cold": optima,
        "cost_relative_difference_max_lower": float(-rel.min()) if optima["lower"] else 0.0,
        "cost_relative_difference_max_higher": float(rel.max()) if optima["higher"] else 0.0,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"warm_start_{task.name}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")

    top = int(max(v.max() for v in it.values()))
    # one bin per iteration count up to 10, then log-spaced (symlog keeps the 0-iteration solves in view)
    bins = (np.arange(-0.5, top + 1.5) if top <= 60 else
            np.concatenate([np.arange(-0.5, 10.5), np.unique(np.geomspace(11, top + 1, 30).round()) - 0.5]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, color in (("cold", "tab:gray"), ("policy", "tab:blue")):
        ax.hist(it[k], bins=bins, alpha=0.6, color=color,
                label=f"{'policy rollout' if k == 'policy' else 'cold start'} (median {np.median(it[k]):g}, max {it[k].max()})")
    if top > LONG_TAIL:
        ax.axvline(LONG_TAIL, color="k", ls=":", lw=0.8)
    if top > 60:
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(-0.5, bins[-1])
    ax.set_xlabel(f"SolverBoxFDDP iterations to th_stop = {solver.th_stop:g}")
    ax.set_ylabel("held-out problems")
    ax.set_title(f"{task.name}: TO from the policy's rollout vs cold ({problems} problems)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"warm_start_{task.name}.png", dpi=90)
    plt.close(fig)

    lines = [f"# TO warm start on {task.name} (paper Fig. 7)", "",
             f"Policy `{policy_path}`; {problems} held-out problems (seed {seed}); SolverBoxFDDP to th_stop "
             f"{solver.th_stop:g}, max {max_iter} iterations, 1 thread ({seconds:.0f} s). The policy's rollout is "
             f"handed over as feasible (as the MPC node does), so the solver's box-QP runs from the first iteration.", "",
             f"![warm start](warm_start_{task.name}.png)", "",
             f"| initial guess | converged | iterations median | p90 | max | > {LONG_TAIL} | solve ms median |",
             "|---|---|---|---|---|---|---|"]
    for k in ("policy", "cold"):
        s = summary[k]
        lines.append(f"| {k} | {s['converged']}/{s['solves']} | {s['iterations_median']:g} | {s['iterations_p90']:.1f} | "
                     f"{s['iterations_max']:g} | {s['over_100']} | {s['solve_ms_median']:.2f} |")
    lines += ["", f"Cost reached from the policy's rollout vs cold (Fig. 6: another local optimum when they differ by more "
              f"than {SAME_COST:g} relative): lower on {optima['lower']}, higher on {optima['higher']}, the same on "
              f"{optima['same']} of {problems} problems (largest differences: {100 * report['cost_relative_difference_max_lower']:.3g} % "
              f"lower, {100 * report['cost_relative_difference_max_higher']:.3g} % higher; median {np.median(rel):+.2e}).", ""]
    (out / f"warm_start_{task.name}.md").write_text("\n".join(lines))
    return report
