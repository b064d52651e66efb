"""``tocpl-train-bench``: train the default configuration of each task over several seeds and print
the held-out figures of docs/training.md "Training benchmarks" and docs/continuous_use.md.

    tocpl-train-bench --tasks ur5_reach --seeds 0 1 2
    tocpl-train-bench --tasks lqr pendulum double_pendulum ur5_reach --seeds 0 1 2 --out runs/bench
    tocpl-train-bench --tasks reach --robot panda --seeds 0 1 2

Every run is a normal run folder (metrics.csv, learning_curve.png, policy.onnx) under --out.
Wall time is the whole run, set-up and evaluation included, measured on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from tocpl_ros.config import ConfigError, to_dict
from tocpl_training.cli import default_config
from tocpl_training.evaluation.continuous import hold_labels
from tocpl_training.export import export_onnx
from tocpl_training.trainer import POLICY, Trainer


def run_one(task: str, seed: int, out: Path, overrides: dict) -> dict:
    config = default_config(task, **overrides, seed=seed)
    start = time.perf_counter()
    name = f"{task}_{Path(config.robot).stem}" if config.robot else task
    trainer = Trainer(config, out / f"{name}_seed{seed}", overwrite=True)  # a benchmark re-run regenerates its runs
    rows = trainer.run()
    total = time.perf_counter() - start
    export_onnx(trainer.final_policy(), trainer.task, trainer.out_dir / POLICY, to_dict(config))
    delivered = trainer.final_metrics()  # the last iterate, or the one select_best chose on validation
    return {"task": name, "seed": seed, "variant": config.variant, "iterations": len(rows),
            "delivered": int(delivered["iteration"]), **delivered,
            "dynamics_evaluations": rows[-1]["dynamics_evaluations"], "wall_time": total,  # what the run spent
            "oc_total_seconds": float(sum(r["oc_seconds"] for r in rows))}


def format_row(r: dict, unit: str) -> str:
    scale, shown = {"m": (100.0, "cm"), "rad": (float(np.rad2deg(1)), "deg")}.get(unit, (1.0, unit))
    line = (f"{r['task']:<16} {r['variant']:<10} seed {r['seed']:<3} "
            f"err mean {scale * r['final_error_mean']:8.3g} {shown:<3} p95 {scale * r['final_error_p95']:8.3g} "
            f"hold p95 {scale * r['hold_error_p95']:8.3g}  within {100 * r['within_tolerance']:5.1f}%  "
            f"gap {100 * r['cost_gap_median']:8.3g}%  it {r['delivered']}/{r['iterations']}  bound viol {r['max_bound_violation']:.2g}  "
            f"evals {r['dynamics_evaluations']:9.3g}  {r['wall_time']:6.0f} s "
            f"(OC phase {r['oc_total_seconds']:.1f} s, "
            f"the rest {(r['wall_time'] - r['oc_total_seconds']) / r['oc_total_seconds']:.1f}x it)")
    if "orientation_error_mean_deg" in r:  # pose targets: the orientation at T next to the position
        line += f"\n    orientation (mean/p95 deg): at T {orientation(r, 'orientation_error')}"
    return line + continuous_lines(r, scale, shown)


def orientation(r: dict, prefix: str) -> str:
    """'mean/p95' in degrees of a pose run's orientation figures ``<prefix>_mean_deg`` / ``_p95_deg``."""
    return f"{r[prefix + '_mean_deg']:.3g}/{r[prefix + '_p95_deg']:.3g}"


def continuous_lines(r: dict, scale: float, shown: str) -> str:
    """The continuous-use figures of a run (training/evaluation/continuous.py), when it has them."""
    if "hold_T_error_mean" not in r:
        return ""

    def err(key: str) -> str:
        """mean/p95 of the position error, with pose targets then the orientation's in degrees."""
        text = f"{scale * r[key + '_error_mean']:.3g}/{scale * r[key + '_error_p95']:.3g}"
        return text + (f" {orientation(r, key + '_orientation')} deg" if key + "_orientation_mean_deg" in r else "")

    holds = hold_labels(r)
    text = "\n    continuous use (mean/p95 " + shown + "): hold " + ", ".join(
        f"{label} {err('hold_' + label)} ({r['hold_' + label + '_speed_median']:.2g} rad/s)" for label in holds)
    text += f"; diverged {r['hold_diverged']:.0f}"
    if "sequence_error_mean" in r:
        text += f"; sequence {err('sequence')} ({100 * r['sequence_within']:.0f}% within)"
    if "moving_start_error_mean" in r:
        text += f"; moving starts {err('moving_start')}"
    if "push_recovered" in r:
        text += f"; push back {100 * r['push_recovered']:.0f}%"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tocpl-train-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["ur5_reach"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--iterations", type=int, help="override the default iteration budget")
    parser.add_argument("--workers", type=int, help="override the OC-phase worker count")
    parser.add_argument("--robot", help="the robot of every task (config/robots/<robot>.yaml), e.g. --tasks reach --robot panda")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field of every run (YAML value), e.g. --set supervised_steps=200")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("iterations", args.iterations), ("workers", args.workers), ("robot", args.robot))
                 if v is not None}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or not field:
            parser.error(f"--set {item}: expected FIELD=VALUE")
        overrides[field] = yaml.safe_load(value)
    from tocpl_ros.tasks import load_task

    try:
        units = {task: load_task(task, {"robot": args.robot} if args.robot else None).error_unit for task in args.tasks}
        results = []
        for task in args.tasks:
            for seed in args.seeds:
                r = run_one(task, seed, args.out, overrides)
                results.append(r)
                print(format_row(r, units[task]), flush=True)
    except ConfigError as exc:
        print(f"tocpl-train-bench: {exc}", file=sys.stderr)
        return 2
    print("\nmedian over seeds:")
    for task in args.tasks:
        name = f"{task}_{Path(args.robot).stem}" if args.robot else task
        rows = [r for r in results if r["task"] == name]
        median = {k: float(np.median([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], float)}
        print(format_row({**rows[0], **median, "seed": "med", "delivered": "–"}, units[task]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
