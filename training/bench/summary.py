"""The aggregation of ``tocpl-bench``: the precision figures and the summary tables of the runs
listed in ``<out>/runs.json``."""

from __future__ import annotations

import csv
import os
import time
import warnings
from pathlib import Path

import numpy as np

from tocpl_training.bench.runs import BenchConfig, configuration, load_manifest


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}


def unit_scale(error_unit: str) -> tuple[float, str]:
    return {"m": (100.0, "cm"), "rad": (float(np.rad2deg(1.0)), "deg")}.get(error_unit, (1.0, error_unit))


def first_reach(m: dict[str, np.ndarray], fraction: float) -> tuple[float, float]:
    """(dynamics evaluations, wall time) of the first evaluation with ≥ fraction within tolerance; inf if never."""
    return first_where(m, m["within_tolerance"] >= fraction - 1e-12)


def first_where(m: dict[str, np.ndarray], condition: np.ndarray) -> tuple[float, float]:
    """(dynamics evaluations, wall time) of the first evaluation where ``condition`` holds; inf if never."""
    hit = np.flatnonzero(condition)
    if not len(hit):
        return np.inf, np.inf
    return float(m["dynamics_evaluations"][hit[0]]), float(m["wall_time"][hit[0]])


def band(series: list[tuple[np.ndarray, np.ndarray]], points: int = 80):
    """(grid, median, min, max) of step-interpolated seed curves over their common x range, or None."""
    lo = max(x[0] for x, _ in series)
    hi = min(x[-1] for x, _ in series)
    if len(series) < 2 or not lo < hi:
        return None
    grid = np.geomspace(lo, hi, points) if lo > 0 else np.linspace(lo, hi, points)
    ys = np.stack([y[np.clip(np.searchsorted(x, grid, side="right") - 1, 0, len(x) - 1)] for x, y in series])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (every seed diverged) stay NaN: not plotted
        return grid, np.nanmedian(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)


def _budget_text(budget: dict | None) -> str:
    if not budget:
        return "?"
    if "total_steps" in budget:
        return f"{budget['total_steps']:.3g} env steps ({budget['n_envs']} envs)"
    text = f"{budget['iterations']} it x {budget['problems']} OCPs"
    if "mu" in budget:
        text += f", μ {budget['mu']:g}"
    if "policy_states" in budget:
        text += f", ²x {budget['policy_states']}"
    if "dual_decay" in budget:
        text += f", λ decay {budget['dual_decay']:g}"
    if "problem_refresh" in budget:
        text += f", refresh {100 * budget['problem_refresh']:g} %"
    if "sobolev_gains" in budget:
        text += {"solution": ", K at solution", "task": ", K of the task's OCP"}[budget["sobolev_gains"]]
    if budget.get("oc_feasible_warm_start"):
        text += ", feasible warm start"
    return text


def _median_over_seeds(values: list[float]) -> float:
    """Median counting non-reached (inf) seeds: inf when half or more never reached."""
    return float(np.median(values)) if values else np.nan


def _fmt(v: float, spec: str = ".3g", inf: str = "not reached") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if np.isinf(v):
        return inf
    return format(v, spec)


def summarize(out: Path, bench: BenchConfig, tasks: list[str] | None = None) -> list[dict]:
    """Plots and tables of every ok run listed in the manifest (restricted to ``tasks`` if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tocpl_ros.tasks import load_task
    from tocpl_training.trainer import success_tolerance

    manifest = load_manifest(out)
    groups: dict[str, dict[str, list[tuple[int, dict[str, np.ndarray]]]]] = {}
    budgets: dict[tuple[str, str], set[str]] = {}
    for entry in manifest.values():
        if entry.get("status") != "ok" or (tasks and entry["task"] not in tasks):
            continue
        m = read_metrics(out / entry["metrics"])
        groups.setdefault(entry["task"], {}).setdefault(entry["configuration"], []).append((entry["seed"], m))
        budgets.setdefault((entry["task"], entry["configuration"]), set()).add(_budget_text(entry.get("budget")))
    known = {n: i for i, n in enumerate(bench.configurations)}
    table: list[dict] = []
    for task in sorted(groups):
        t = load_task(task)
        scale, unit = unit_scale(t.error_unit)
        metric, tol = success_tolerance(t)
        configs = sorted(groups[task], key=lambda n: (known.get(n, len(known)), n))
        fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), squeeze=False)
        drawn = np.zeros((2, 2), dtype=bool)  # a log axis with no finite positive point cannot be laid out
        colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(configs), 2)))
        for ci, name in enumerate(configs):
            runs = sorted(groups[task][name], key=lambda r: r[0])
            style = "--" if configuration(name)[0] == "rl" else "-"
            for row, (key, s) in enumerate((("final_error_mean", scale), ("cost_gap_median", 1.0))):
                for col, xkey in enumerate(("dynamics_evaluations", "wall_time")):
                    series = []
                    for _, m in runs:
                        y = s * m[key]
                        y = np.where(np.isfinite(y), y, np.nan)
                        if key == "cost_gap_median":
                            y = np.maximum(y, 1e-6)
                        series.append((m[xkey], y))
                        drawn[row][col] |= bool(np.any((y > 0) & (m[xkey] > 0)))
                    ax = axes[row][col]
                    b = band(series)
                    label = f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if row == col == 0 else None
                    if b is None:
                        for i, (x, y) in enumerate(series):
                            ax.plot(x, y, style, marker=".", color=colors[ci], label=label if i == 0 else None)
                    else:
                        grid, med, lo, hi = b
                        ax.plot(grid, med, style, color=colors[ci], label=label)
                        ax.fill_between(grid, lo, hi, color=colors[ci], alpha=0.15, linewidth=0)
        for row, (ylabel, line) in enumerate(((f"held-out final error, mean ({unit})", tol * scale if metric == "final_error" else None),
                                              ("held-out cost gap to TO, median", tol if metric == "cost_gap" else None))):
            for col, xlabel in enumerate(("dynamics evaluations", "wall time (s)")):
                ax = axes[row][col]
                if drawn[row][col]:
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                else:
                    ax.text(0.5, 0.5, "no finite values: every run diverged", ha="center", transform=ax.transAxes)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
                ax.grid(True, which="both", alpha=0.3)
                if line is not None:
                    ax.axhline(line, color="k", lw=0.8, ls=":")
        axes[0][0].legend(fontsize=8, ncol=2)
        fig.suptitle(f"{task}: held-out precision (median over seeds, band min–max); dotted: tolerance "
                     f"({'cost gap' if metric == 'cost_gap' else 'final error'} "
                     f"≤ {_fmt(tol * (scale if metric == 'final_error' else 100), '.3g')}"
                     f"{unit if metric == 'final_error' else ' %'})")
        fig.tight_layout()
        fig.savefig(out / f"{task}_precision.png", dpi=90)
        plt.close(fig)

        for name in configs:
            runs = groups[task][name]
            reach = [first_reach(m, bench.reach_fraction) for _, m in runs]
            # the "reaches 1 cm": the mean held-out error (lqr: median cost gap) at the tolerance
            key = "final_error_mean" if metric == "final_error" else "cost_gap_median"
            reach_mean = [first_where(m, m[key] <= tol) for _, m in runs]
            last = [{k: float(v[-1]) for k, v in m.items()} for _, m in runs]
            med = lambda k: float(np.median([r[k] for r in last]))  # noqa: E731
            table.append({
                "task": task, "configuration": name, "budget": " / ".join(sorted(budgets[(task, name)])), "seeds": len(runs),
                "seed_list": " ".join(str(s) for s, _ in sorted(runs, key=lambda r: r[0])),
                "reached": sum(np.isfinite(e) for e, _ in reach),
                "evals_to_tolerance": _median_over_seeds([e for e, _ in reach]),
                "wall_time_to_tolerance": _median_over_seeds([w for _, w in reach]),
                "evals_to_mean_tolerance": _median_over_seeds([e for e, _ in reach_mean]),
                "wall_time_to_mean_tolerance": _median_over_seeds([w for _, w in reach_mean]),
                "final_error_mean": med("final_error_mean") * scale, "final_error_p95": med("final_error_p95") * scale,
                # the best any evaluation saw: what a learner reached at its best, not a tuned choice
                "best_error_mean": float(np.median([np.nanmin(m["final_error_mean"]) for _, m in runs])) * scale,
                "error_unit": unit, "cost_gap_median": med("cost_gap_median"), "within_tolerance": med("within_tolerance"),
                "dynamics_evaluations": med("dynamics_evaluations"), "wall_time": med("wall_time"),
                "evaluations_logged": int(np.median([len(m["iteration"]) for _, m in runs])),
            })
    write_summary(out, bench, table)
    return table


def write_summary(out: Path, bench: BenchConfig, table: list[dict]) -> None:
    keys = list(table[0]) if table else ["task", "configuration"]
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(table)
    manifest = load_manifest(out)
    quick = any(e.get("quick") for e in manifest.values())
    failed = [k for k, e in manifest.items() if e.get("status") != "ok"]
    lines = [
        "# Policy learning from TO vs PPO / SAC / PODS / DPL: held-out comparison",
        "",
        f"Written by `tocpl-bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPUs. {'**Smoke run (--quick): tiny budgets, not a result.** ' if quick else ''}"
        "Run list with per-run budgets and times: `runs.json`; per-run curves: `metrics/<task>/<configuration>/seed<k>.csv` "
        "(the trainer's `metrics.csv` columns).",
        "",
        f"*Reached*: first held-out evaluation where ≥ {100 * bench.reach_fraction:g} % of the held-out problems are within "
        "tolerance (final error ≤ 1 cm on ur5_reach, ≤ 2° on the pendulums; cost gap to TO ≤ 1 % on lqr). *Mean ≤ tol.*: "
        "first evaluation where the mean held-out final error is within that tolerance (lqr: the median cost gap). "
        "Evaluations and wall time to either: median over seeds, a seed that never got there counts as ∞. Final columns: last evaluation, "
        "median over seeds; best error mean: the lowest held-out mean error of any evaluation of a run (median over "
        "seeds). Dynamics evaluations: one per simulated or linearised time step (TO learners: policy "
        "rollouts + solver linearisations + line-search trials; RL: environment steps). Wall time: the whole training run "
        "on this machine, held-out evaluations included.",
        "",
    ]
    if failed:
        lines += [f"Failed runs (see runs.json): {', '.join(failed)}", ""]
    for task in dict.fromkeys(r["task"] for r in table):
        rows = [r for r in table if r["task"] == task]
        unit = rows[0]["error_unit"]
        lines += [
            f"## {task}", "", f"![{task}]({task}_precision.png)", "",
            f"| configuration | budget | seeds | reached | dyn. evals to reach | wall time to reach (s) "
            f"| dyn. evals to mean ≤ tol. | wall time to mean ≤ tol. (s) | final error mean ({unit}) "
            f"| final error p95 ({unit}) | best error mean ({unit}) | cost gap median | within tol. | dyn. evals total "
            f"| wall time total (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['configuration']} | {r['budget']} | {r['seeds']} | {r['reached']}/{r['seeds']} "
                f"| {_fmt(r['evals_to_tolerance'], '.3g')} "
                f"| {_fmt(r['wall_time_to_tolerance'], '.3g')} | {_fmt(r['evals_to_mean_tolerance'], '.3g')} "
                f"| {_fmt(r['wall_time_to_mean_tolerance'], '.3g')} | {_fmt(r['final_error_mean'], '.3g', 'diverged')} "
                f"| {_fmt(r['final_error_p95'], '.3g', 'diverged')} | {_fmt(r['best_error_mean'], '.3g', 'diverged')} "
                f"| {_fmt(100 * r['cost_gap_median'], '.3g', 'diverged')}{'' if np.isinf(r['cost_gap_median']) else ' %'} "
                f"| {100 * r['within_tolerance']:.0f} % | {r['dynamics_evaluations']:.3g} | {r['wall_time']:.3g} |"
            )
        lines.append("")
    for ws in sorted(out.glob("warm_start_*.md")):
        lines += [f"## TO warm start: see [{ws.name}]({ws.name})", ""]
    (out / "summary.md").write_text("\n".join(lines))
