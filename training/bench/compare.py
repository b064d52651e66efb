"""``tocpl-bench``: the paper's comparison (Fig. 3–5) and TO warm-start study (Fig. 7).

    tocpl-bench --quick --tasks lqr --configs pddp+S ppo --seeds 0        # smoke run (seconds)
    tocpl-bench --tasks lqr --configs pddp+S plal+M+S ppo sac --seeds 0 1 2 --out docs/results
    tocpl-bench --plot-only --out docs/results                             # re-aggregate existing runs
    tocpl-bench --merge runs/other/results --configs plal+S --out docs/results   # join runs made elsewhere
    tocpl-bench --warm-start-study runs/ur5/policy.onnx --task ur5_reach --out docs/results

Configurations are named like the paper: ``pddp``, ``plal`` with ``+M`` (multiple shooting),
``+S`` (Sobolev), ``-C`` (no control box in the OC phase), e.g. ``plal+M+S-C``; the baselines
``pods``, ``dpl`` (penalty consensus, full-Jacobian Sobolev, no box, as the paper runs them),
``ppo`` and ``sac`` (stable-baselines3, :mod:`tocpl_training.baselines.rl`).

Every run is a normal run folder under ``--runs-dir`` (checkpoints, TensorBoard: not for git).
A run listed as done in ``<out>/runs.json`` is skipped; one that was interrupted (killed, machine
down) is continued from its checkpoint when its settings are unchanged (a TO run exactly, an RL
run from its last evaluation), else started afresh; ``--force`` starts every run afresh. Its
``metrics.csv`` is copied to ``<out>/metrics/<task>/<configuration>/seed<k>.csv`` and listed
in ``<out>/runs.json``. All runs of one task evaluate on the same held-out problems with the same
TO reference costs (the constrained OCP of the task config, also for the ``-C`` ablations), with
the trainer's :func:`evaluate_policy`. Then, under ``--out``:

* ``<task>_precision.png``: held-out final error (mean) and median cost gap to TO vs dynamics
  evaluations and vs wall time, median over seeds with the min–max band;
* ``summary.md`` / ``summary.csv``: per task and configuration, the dynamics evaluations and wall
  time until ≥ ``reach_fraction`` of the held-out problems are within tolerance (1 cm on
  ur5_reach, 2° on the pendulums, 1 % cost gap on lqr: the trainer's ``success_tolerance``), and
  the final precision, medians over seeds.

``--warm-start-study POLICY.onnx`` runs :func:`tocpl_ros.bench.mpc.open_loop` (SolverBoxFDDP
to the task's th_stop from the policy's rollout vs Crocoddyl's cold start) on held-out problems
and writes ``warm_start_<task>.png`` (histogram of iterations), ``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tocpl_ros.config import ConfigError, FieldError, load_dataclass, parse_key_values, read_yaml, to_dict
from tocpl_ros.resources import config_path

RUNS_MANIFEST = "runs.json"
NAME_RE = re.compile(r"^(pddp|plal|pods|dpl|ppo|sac)(\+M)?(\+S)?(-C)?$")


@dataclass
class BenchConfig:
    """What tocpl-bench runs (``config/bench/compare.yaml``)."""

    tasks: list[str] = field(default_factory=lambda: ["lqr", "pendulum", "double_pendulum", "ur5_reach"])
    """Tasks (config/tasks/<task>.yaml)."""
    configurations: list[str] = field(default_factory=lambda: ["pddp+S", "plal+M+S", "pods", "dpl", "ppo", "sac"])
    """Configurations, named as in the paper (see the module docstring)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of every configuration (policy initialisation, problem sampling, RL exploration)."""
    reach_fraction: float = 0.9
    """'Reached the tolerance' = at least this share of the held-out problems within tolerance."""
    workers: int = 0
    """OC-phase worker processes of the TO learners (0 = one per core)."""
    to_overrides: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields applied to every TO run (over config/train/<task>.yaml)."""
    to_task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task TrainConfig fields (over to_overrides)."""
    to_configuration_overrides: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per task and configuration TrainConfig fields (over to_task_overrides), e.g.
    ``ur5_reach: {plal+M+S: {problems: 256}}``. ``--to-set`` wins over all three levels; the
    configuration's own flags (algo, +M, +S, -C) over everything."""
    rl_overrides: dict[str, Any] = field(default_factory=dict)
    """RLConfig fields applied to every PPO / SAC run (over config/bench/<algo>.yaml)."""
    quick_to: dict[str, Any] = field(default_factory=dict)
    """--quick: TrainConfig fields of the smoke run."""
    quick_rl: dict[str, Any] = field(default_factory=dict)
    """--quick: RLConfig fields of the smoke run."""

    def __post_init__(self) -> None:
        if not 0 < self.reach_fraction <= 1:
            raise FieldError("reach_fraction", f"must be in (0, 1], got {self.reach_fraction}")
        for name in self.configurations:
            configuration(name)
        for task, per_configuration in self.to_configuration_overrides.items():
            for name in per_configuration:
                if configuration(name)[0] != "to":
                    raise FieldError("to_configuration_overrides", f"{task}.{name}: not a TO configuration")


def configuration(name: str) -> tuple[str, dict[str, Any]]:
    """('to' | 'rl', overrides) of a configuration name; FieldError naming what is wrong."""
    m = NAME_RE.match(name)
    if not m:
        raise FieldError("configurations", f"unknown configuration '{name}' (e.g. pddp+S, plal+M+S-C, pods, dpl, ppo, sac)")
    algo, multiple, sobolev, unconstrained = m.groups()
    if algo in ("pods", "dpl", "ppo", "sac"):
        if multiple or sobolev or unconstrained:
            raise FieldError("configurations", f"'{name}': {algo} takes no +M/+S/-C flags")
        if algo == "pods":  # Mora et al.: no box, no derivative supervision
            return "to", {"algo": "pods", "sobolev": False, "constrained": False}
        if algo == "dpl":  # Mordatch & Todorov as the paper runs it (training/algorithms/plal.py DPL)
            return "to", {"algo": "dpl", "sobolev": True, "sobolev_full": True, "constrained": False}
        return "rl", {"algo": algo}
    if multiple and algo != "plal":
        raise FieldError("configurations", f"'{name}': multiple shooting (+M) is a variant of plal")
    return "to", {"algo": algo, "multiple_shooting": bool(multiple), "sobolev": bool(sobolev),
                  "constrained": not unconstrained}


def load_bench_config(path: str | Path | None = None) -> BenchConfig:
    path = Path(path) if path is not None else config_path("bench", "compare.yaml")
    return load_dataclass(BenchConfig, read_yaml(path), source=str(path))


# -- runs ------------------------------------------------------------------------------------
def train_config_for(task: str, name: str, seed: int, bench: BenchConfig, quick: bool):
    """The resolved TrainConfig of a TO configuration on a task."""
    from tocpl_training.cli import default_config_file
    from tocpl_training.config import TrainConfig

    file = default_config_file(task)
    data = dict(read_yaml(file)) if file else {"task": task}
    data.update(bench.to_overrides)
    data.update(bench.to_task_overrides.get(task, {}))
    data.update(bench.to_configuration_overrides.get(task, {}).get(name, {}))
    data.update(configuration(name)[1])  # the name's flags (algo, +M, +S, -C) always hold
    data.update({"seed": seed, "workers": bench.workers})
    if quick:
        data.update(bench.quick_to)
    return load_dataclass(TrainConfig, data, source=f"{file or task} + tocpl-bench {name}")


def held_out_for(task: str, bench: BenchConfig, quick: bool):
    """The held-out problems all runs on ``task`` share (size and seed of the task's train config),
    with reference costs from the task's own (constrained) OCP."""
    from tocpl_ros.tasks import load_task

    from tocpl_training.trainer import HeldOut

    config = train_config_for(task, "pddp", 0, bench, quick)
    return HeldOut.make(load_task(task), config.eval_problems, config.eval_seed)


def interrupted_run(run_dir: Path, checkpoint: str, settings: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds an interrupted run (its checkpoint) of exactly these settings (its
    config.yaml): the benchmark continues such a run instead of starting it afresh."""
    from tocpl_training.checkpoint import differing_settings

    if not (run_dir / checkpoint).is_file():
        return False
    try:
        stored = read_yaml(run_dir / "config.yaml")
    except ConfigError:
        return False
    if isinstance(stored.get("train"), dict):  # a TO run's results do not depend on its worker count
        stored["train"]["workers"] = settings["train"]["workers"]
    differing = differing_settings(stored, settings)
    if differing:
        print(f"tocpl-bench: {run_dir} holds a run with other '{differing[0]}' settings: starting afresh", flush=True)
    return not differing


def fresh_run_dir(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)


def run_to(task: str, name: str, seed: int, run_dir: Path, held_out, bench: BenchConfig, quick: bool,
           resume: bool = False) -> list[dict]:
    from tocpl_ros.tasks import load_task

    from tocpl_training.checkpoint import CheckpointError
    from tocpl_training.export import export_onnx
    from tocpl_training.trainer import CHECKPOINT, Trainer, run_settings

    config = train_config_for(task, name, seed, bench, quick)
    trainer = None
    if resume and interrupted_run(run_dir, CHECKPOINT, run_settings(config, {}, load_task(config.task))):
        try:
            trainer = Trainer.resume(run_dir, workers=config.workers)
            print(f"tocpl-bench: resuming {run_dir} after iteration {trainer.algorithm.iteration}", flush=True)
        except (CheckpointError, ConfigError) as exc:
            print(f"tocpl-bench: {exc}: starting afresh", flush=True)
    if trainer is None:
        fresh_run_dir(run_dir)
        trainer = Trainer(config, run_dir)
        trainer.held_out = held_out  # the shared held-out set (Trainer.run keeps a preset one)
    rows = trainer.run()
    export_onnx(trainer.final_policy(), trainer.task, run_dir / "policy.onnx", to_dict(config))
    return rows


def run_rl(task: str, name: str, seed: int, run_dir: Path, held_out, bench: BenchConfig, quick: bool,
           resume: bool = False) -> list[dict]:
    from tocpl_ros.tasks import load_task

    from tocpl_training.checkpoint import CheckpointError
    from tocpl_training.baselines.rl import RL_CHECKPOINT, load_rl_config, rl_settings, train_rl

    config = load_rl_config(name, task, {**bench.rl_overrides, **(bench.quick_rl if quick else {})})
    if resume and interrupted_run(run_dir, RL_CHECKPOINT, rl_settings(config, load_task(task), seed, {})):
        print(f"tocpl-bench: resuming {run_dir} from its last evaluation", flush=True)
        try:
            return train_rl(config, task, seed, run_dir, held_out=held_out, resume=True)
        except CheckpointError as exc:
            print(f"tocpl-bench: {exc}: starting afresh", flush=True)
    fresh_run_dir(run_dir)
    return train_rl(config, task, seed, run_dir, held_out=held_out)


def budget_of(run_dir: Path) -> dict[str, Any]:
    """The budget fields of a finished run's resolved config (run_dir/config.yaml)."""
    data = read_yaml(run_dir / "config.yaml")
    if "rl" in data:
        return {k: data["rl"][k] for k in ("total_steps", "n_envs", "evaluations")}
    train = data["train"]
    budget = {k: train[k] for k in ("iterations", "problems", "oc_max_iter", "epochs", "workers")}
    if train.get("sobolev") and train.get("sobolev_gains", "solver") != "solver":
        budget["sobolev_gains"] = train["sobolev_gains"]  # runs from before the field: the solver's K
    if train.get("oc_feasible_warm_start"):
        budget["oc_feasible_warm_start"] = True
    if train["algo"] in ("plal", "dpl"):  # their results hinge on the penalty and, for +M, on ²x's source
        budget["mu"] = train["mu"]
        if train["multiple_shooting"]:
            budget["policy_states"] = train.get("policy_states", "rollout")  # runs from before the field: rollout
        if train["algo"] == "plal" and train.get("dual_decay", 1.0) != 1.0:  # dpl has no multipliers
            budget["dual_decay"] = train["dual_decay"]
        if train.get("problem_refresh", 0.0):
            budget["problem_refresh"] = train["problem_refresh"]
    return budget


def metrics_file(out: Path, task: str, name: str, seed: int) -> Path:
    return out / "metrics" / task / name / f"seed{seed}.csv"


def load_manifest(out: Path) -> dict[str, dict]:
    path = out / RUNS_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(out: Path, manifest: dict[str, dict]) -> None:
    tmp = out / f"{RUNS_MANIFEST}.{os.getpid()}.tmp"  # a reader never sees half a file
    tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    os.replace(tmp, out / RUNS_MANIFEST)


def record_run(out: Path, key: str, entry: dict) -> None:
    """Add one run to ``<out>/runs.json``, re-read under a lock: benchmarks running side by side
    into the same ``--out`` (other configurations, seeds) each add their runs, none is lost."""
    with open(out / (RUNS_MANIFEST + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(out)
        manifest[key] = entry
        _write_manifest(out, manifest)


def _selected(entry: dict, tasks, names, seeds) -> bool:
    return ((not tasks or entry["task"] in tasks) and (not names or entry["configuration"] in names)
            and (not seeds or entry["seed"] in seeds))


def merge_runs(source: Path, out: Path, tasks=None, names=None, seeds=None) -> list[str]:
    """Copy the ok runs of another results folder (``<source>/runs.json`` and their metrics) into
    ``out``, those of ``tasks`` / ``names`` / ``seeds`` if given: seeds run on another machine or
    into another ``--out`` join the tables. A run already listed in ``out`` is replaced. Returns
    the keys merged."""
    manifest = load_manifest(source)
    if not manifest:
        raise ConfigError(str(source / RUNS_MANIFEST), "", "no runs listed here: not a tocpl-bench results folder")
    if len({bool(e.get("quick")) for e in [*manifest.values(), *load_manifest(out).values()]}) > 1:
        raise ConfigError(str(source / RUNS_MANIFEST), "quick", "full and --quick runs do not go into one --out")
    merged = []
    out.mkdir(parents=True, exist_ok=True)
    for key, entry in sorted(manifest.items()):
        if entry.get("status") != "ok" or not _selected(entry, tasks, names, seeds):
            continue
        csv_path = metrics_file(out, entry["task"], entry["configuration"], entry["seed"])
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / entry["metrics"], csv_path)
        record_run(out, key, {**entry, "metrics": str(csv_path.relative_to(out))})
        merged.append(key)
    return merged


def drop_runs(out: Path, tasks=None, names=None, seeds=None) -> list[str]:
    """Remove the runs of ``tasks`` / ``names`` / ``seeds`` (at least one given) from ``out``:
    their runs.json entries and metrics files (after ``--merge`` has copied them elsewhere, say).
    Returns the keys dropped."""
    if not (tasks or names or seeds):
        raise ConfigError("--drop", "", "name the runs to drop with --tasks, --configs and/or --seeds")
    with open(out / (RUNS_MANIFEST + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(out)
        dropped = [k for k, e in manifest.items() if _selected(e, tasks, names, seeds)]
        for key in dropped:
            (out / manifest.pop(key)["metrics"]).unlink(missing_ok=True)
        _write_manifest(out, manifest)
    return dropped


def run_all(tasks, names, seeds, out: Path, runs_dir: Path, bench: BenchConfig, quick: bool, force: bool) -> int:
    """Run every (task, configuration, seed) not already done; returns the number of failed runs."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out)
    mixed = sorted(k for k, e in manifest.items() if bool(e.get("quick")) != quick)
    if mixed:
        raise ConfigError(str(out / RUNS_MANIFEST), mixed[0], f"{'full' if quick else '--quick'} runs are listed here: "
                          f"{'--quick' if quick else 'full'} runs go into another --out")
    failed = 0
    for task in tasks:
        held_out = None
        for name in names:
            kind = configuration(name)[0]
            for seed in seeds:
                key = f"{task}/{name}/seed{seed}"
                csv_path = metrics_file(out, task, name, seed)
                if not force and manifest.get(key, {}).get("status") == "ok" and csv_path.is_file():
                    print(f"tocpl-bench: {key}: done before, skipped (--force re-runs it)", flush=True)
                    continue
                if held_out is None:
                    held_out = held_out_for(task, bench, quick)
                run_dir = runs_dir / task / name / f"seed{seed}"  # an interrupted run there is continued
                print(f"tocpl-bench: {key} -> {run_dir}", flush=True)
                start = time.perf_counter()
                entry = {"task": task, "configuration": name, "seed": seed, "kind": kind, "quick": quick,
                         "run_dir": str(run_dir), "metrics": str(csv_path.relative_to(out))}
                try:
                    rows = (run_to if kind == "to" else run_rl)(task, name, seed, run_dir, held_out, bench, quick,
                                                                resume=not force)
                    csv_path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(run_dir / "metrics.csv", csv_path)
                    last = rows[-1]
                    entry["budget"] = budget_of(run_dir)
                    entry.update(status="ok", evaluations=len(rows), dynamics_evaluations=last["dynamics_evaluations"],
                                 wall_time=last["wall_time"], final_error_mean=last["final_error_mean"],
                                 within_tolerance=last["within_tolerance"])
                    print(f"tocpl-bench: {key}: {len(rows)} evaluations, {last['dynamics_evaluations']:.3g} dynamics "
                          f"evaluations, within tolerance {100 * last['within_tolerance']:.0f} %, "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
                except Exception as exc:  # one failing run must not end the benchmark
                    failed += 1
                    entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    csv_path.unlink(missing_ok=True)
                    print(f"tocpl-bench: {key} FAILED: {entry['error']}", file=sys.stderr, flush=True)
                entry["seconds"] = time.perf_counter() - start
                record_run(out, key, entry)
    return failed


# -- aggregation -----------------------------------------------------------------------------
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
                     f"({'cost gap' if metric == 'cost_gap' else 'final error'} ≤ {_fmt(tol * (scale if metric == 'final_error' else 100), '.3g')}"
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
                f"| {r['configuration']} | {r['budget']} | {r['seeds']} | {r['reached']}/{r['seeds']} | {_fmt(r['evals_to_tolerance'], '.3g')} "
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


# -- TO warm-start study (Fig. 7) ---------------------------------------------------------------
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

    from tocpl_ros.mpc.task_policy import TaskPolicy
    from tocpl_ros.bench.mpc import DEFAULT_SEED, LONG_TAIL, open_loop, policy_vs_cold_costs
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


# -- command line ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tocpl-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", type=Path, help="bench config (default: config/bench/compare.yaml)")
    p.add_argument("--tasks", nargs="+", help="tasks (default: the config's)")
    p.add_argument("--configs", nargs="+", help="configurations, e.g. pddp+S plal+M+S-C ppo (default: the config's)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the config's)")
    p.add_argument("--out", type=Path, help="results folder (default: docs/results, with --quick runs/bench-quick)")
    p.add_argument("--runs-dir", type=Path, help="run folders (default: runs/bench, with --quick <out>/runs)")
    p.add_argument("--workers", type=int, help="OC-phase worker processes of the TO learners")
    p.add_argument("--to-set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig field for every TO run, e.g. iterations=10 (repeatable)")
    p.add_argument("--rl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="RLConfig field for every PPO/SAC run, e.g. total_steps=300000 (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny budgets (quick_to / quick_rl of the config): a smoke run")
    p.add_argument("--force", action="store_true", help="start every run afresh: re-run runs already done in --out, do not continue interrupted ones")
    p.add_argument("--plot-only", action="store_true", help="only re-aggregate the runs listed in <out>/runs.json")
    p.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS",
                   help="copy the runs of these results folders (of --tasks/--configs/--seeds if given) into --out, "
                        "replacing runs listed there, then re-aggregate")
    p.add_argument("--drop", action="store_true",
                   help="remove the runs of --tasks/--configs/--seeds from --out (runs.json and metrics), then re-aggregate")
    p.add_argument("--warm-start-study", type=Path, metavar="POLICY.onnx",
                   help="only the TO warm-start study (Fig. 7) of this policy on --task")
    p.add_argument("--task", default="ur5_reach", help="task of --warm-start-study (default: ur5_reach)")
    p.add_argument("--problems", type=int, default=100, help="held-out problems of --warm-start-study (default: 100)")
    p.add_argument("--max-iter", type=int, default=500, help="solver iteration cap of --warm-start-study (default: 500)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or Path("runs/bench-quick" if args.quick else "docs/results")
    try:
        bench = load_bench_config(args.config)
        if args.workers is not None:
            bench.workers = args.workers
        to_set = parse_key_values(args.to_set, "--to-set")
        for overrides in [bench.to_overrides, *bench.to_task_overrides.values(),
                          *(o for per_task in bench.to_configuration_overrides.values() for o in per_task.values())]:
            overrides.update(to_set)  # the command line wins over every level of the bench config
        bench.rl_overrides.update(parse_key_values(args.rl_set, "--rl-set"))
        if args.warm_start_study is not None:
            r = warm_start_study(args.warm_start_study, args.task, out, problems=args.problems, max_iter=args.max_iter)
            print(f"tocpl-bench: warm start on {r['task']}: median iterations policy {r['policy']['iterations_median']:g} "
                  f"vs cold {r['cold']['iterations_median']:g}, over {r['long_tail']}: {r['policy']['over_100']} vs "
                  f"{r['cold']['over_100']} -> {out}/warm_start_{r['task']}.md")
            return 0
        tasks = args.tasks or bench.tasks
        names = args.configs or bench.configurations
        for name in names:
            configuration(name)
        if args.merge or args.drop:  # filtered by what the command line names, not the config's defaults
            for source in args.merge or []:
                merged = merge_runs(source, out, args.tasks, args.configs, args.seeds)
                print(f"tocpl-bench: {len(merged)} runs from {source} -> {out}: {', '.join(merged)}")
            if args.drop:
                dropped = drop_runs(out, args.tasks, args.configs, args.seeds)
                print(f"tocpl-bench: {len(dropped)} runs dropped from {out}: {', '.join(dropped)}")
            args.plot_only = True
        failed = 0
        if not args.plot_only:
            runs_dir = args.runs_dir or (out / "runs" if args.quick else Path("runs/bench"))
            failed = run_all(tasks, names, args.seeds or bench.seeds, out, runs_dir, bench, args.quick, args.force)
        table = summarize(out, bench)
    except (ConfigError, FieldError) as exc:
        print(f"tocpl-bench: {exc}", file=sys.stderr)
        return 2
    print(f"tocpl-bench: {len(table)} table rows -> {out}/summary.md, {out}/summary.csv, "
          f"{', '.join(sorted({str(out / (r['task'] + '_precision.png')) for r in table}))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
