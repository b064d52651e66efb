"""``tocpl-train-profile``: where a training run's time goes, per phase of an iteration.

    tocpl-train-profile runs/ur5_reach
    tocpl-train-profile runs/ur5_reach --steps 100   # also time the supervised terms and the one-off costs

The per-iteration table reads the run's metrics.csv (every row records the time of each phase).
``--steps`` re-measures on the run's checkpoint: Adam steps on its replay buffer with the regression
term alone and with each Sobolev term, the held-out TO references, and the ONNX export.
The figures in docs/training_speed.md come from this command.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tocpl_ros.config import ConfigError, load_dataclass
from tocpl_training.checkpoint import CheckpointError, load_checkpoint
from tocpl_training.config import TrainConfig
from tocpl_training.trainer import CHECKPOINT, HeldOut

PHASES = (
    ("oc_solve_seconds", "OC phase: solves"),
    ("oc_other_seconds", "OC phase: warm-start rollouts, states"),
    ("supervised_seconds", "supervised phase"),
    ("eval_seconds", "held-out evaluation at T"),
    ("continuous_eval_seconds", "continuous-use evaluation"),
    ("validation_seconds", "validation (select_best)"),
    ("checkpoint_seconds", "checkpoint"),
    ("log_seconds", "CSV, TensorBoard, curve"),
)


def read_rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path}: no iterations recorded")
    for row in rows:
        if "oc_solve_seconds" in row:
            row["oc_other_seconds"] = row["oc_seconds"] - row["oc_solve_seconds"]
    return rows


def phase_table(rows: list[dict[str, float]]) -> str:
    """Per phase: iterations that ran it, median per such iteration, total, share of the total."""
    totals = {key: sum(r.get(key, 0.0) for r in rows) for key, _ in PHASES}
    whole = sum(totals.values())
    if whole == 0:
        raise ValueError("the run records no phase times (trained before they were recorded)")
    lines = [f"{'phase':<40} {'iterations':>10} {'median s':>9} {'total s':>8} {'share':>6}"]
    for key, label in PHASES:
        values = [r[key] for r in rows if key in r]
        if values:
            lines.append(f"{label:<40} {len(values):>10} {np.median(values):>9.3f} {totals[key]:>8.2f} "
                         f"{100 * totals[key] / whole:>5.1f}%")
    oc = totals["oc_solve_seconds"] + totals["oc_other_seconds"]
    lines.append(f"{'all phases':<40} {len(rows):>10} {'':>9} {whole:>8.2f}  (outside the OC phase: "
                 f"{(whole - oc) / oc:.1f}x the OC phase)")
    return "\n".join(lines)


def time_supervised_terms(data: dict, steps: int) -> list[tuple[str, float]]:
    """Median milliseconds of one Adam step on the checkpoint's replay buffer, per loss."""
    from tocpl_training.learning.policy import MLPPolicy, PolicySpec
    from tocpl_training.learning.supervised import SupervisedData, fit, torch_threads

    as_np = lambda v: None if v is None else np.asarray(v)  # noqa: E731
    history = [SupervisedData(as_np(d["obs"]), as_np(d["u"]), as_np(d["jacobian"])) for d in data["algorithm"]["history"]]
    replay = SupervisedData.concat(history)
    config = data["train_config"]
    spec = PolicySpec(**data["policy_spec"])
    nx = replay.jacobian.shape[2] if replay.jacobian is not None else 0
    variants = [("regression only", dict(sobolev_weight=0.0, data=SupervisedData(replay.obs, replay.u)))]
    if replay.jacobian is not None:
        variants.append(("+ stochastic Sobolev term", dict(sobolev_weight=config["sobolev_weight"], data=replay)))
        variants.append(("+ full-Jacobian Sobolev term (sobolev_full)",
                         dict(sobolev_weight=config["sobolev_weight"], data=replay, full_jacobian=True)))
    results = []
    with torch_threads(1):
        for label, kwargs in variants:
            policy = MLPPolicy(spec)
            policy.load_state_dict(data["policy_state"])
            optimizer = torch.optim.Adam(policy.parameters(), lr=1e-5)
            times = []
            for repeat in range(3):
                start = time.perf_counter()
                fit(policy, optimizer, epochs=1, batch_size=config["batch_size"], nx=nx, steps=steps,
                    generator=torch.Generator().manual_seed(repeat), **kwargs)
                times.append((time.perf_counter() - start) / steps)
            results.append((label, 1e3 * float(np.median(times))))
    return results


def time_one_offs(run: Path, data: dict) -> list[tuple[str, float]]:
    """Seconds of the held-out TO references (on the run's workers) and of the ONNX export."""
    from tocpl_ros.tasks import load_task
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import MLPPolicy, PolicySpec
    from tocpl_training.oc.phase import OCPhaseRunner

    config = load_dataclass(TrainConfig, data["train_config"], source=str(run / CHECKPOINT))
    robot = {"robot": config.robot} if config.robot else {}
    task = load_task(config.task, {"constrained": config.constrained, **robot, **(data.get("task_overrides") or {})})
    runner = OCPhaseRunner(task, constrained=config.constrained, workers=config.workers, backend="process")
    try:
        HeldOut.make(task, 2, config.eval_seed, runner)  # the pool's start-up is not the references' cost
        start = time.perf_counter()
        HeldOut.make(task, config.eval_problems, config.eval_seed, runner)
        references = time.perf_counter() - start
    finally:
        runner.close()
    policy = MLPPolicy(PolicySpec(**data["policy_spec"]))
    policy.load_state_dict(data["policy_state"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export_onnx(policy.eval(), task, Path(tmp) / "policy.onnx")
        export = time.perf_counter() - start
    return [(f"held-out TO references ({config.eval_problems} problems, {runner.workers} workers)", references),
            ("ONNX export (with its onnxruntime check)", export)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tocpl-train-profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (metrics.csv, checkpoint.pt)")
    parser.add_argument("--steps", type=int, default=0,
                        help="also time this many supervised steps per loss and the one-off costs (0: not)")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.run / "metrics.csv")
        print(f"{args.run}: {len(rows)} iterations, wall time {rows[-1]['wall_time']:.1f} s\n")
        print(phase_table(rows))
        if args.steps > 0:
            data = load_checkpoint(args.run / CHECKPOINT)
            print(f"\none supervised Adam step (batch {data['train_config']['batch_size']}, "
                  f"replay buffer {sum(len(d['obs']) for d in data['algorithm']['history'])} samples), median of 3 x {args.steps}:")
            for label, ms in time_supervised_terms(data, args.steps):
                print(f"  {label:<46} {ms:7.2f} ms")
            print("\none-off costs of a run:")
            for label, seconds in time_one_offs(args.run, data):
                print(f"  {label:<60} {seconds:6.2f} s")
    except (OSError, ValueError, KeyError, CheckpointError, ConfigError) as exc:
        print(f"tocpl-train-profile: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
