"""The runs of ``tocpl-bench``: the bench configuration, each configuration's training settings, the
run folders (continued when interrupted), and ``<out>/runs.json``, the manifest of the runs done."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tocpl_ros.config import ConfigError, FieldError, load_dataclass, read_yaml, to_dict
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
    from tocpl_training.baselines.rl import RL_CHECKPOINT, load_rl_config, rl_settings, train_rl
    from tocpl_training.checkpoint import CheckpointError

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
