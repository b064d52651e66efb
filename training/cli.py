"""``tocpl-train``: learn a policy from trajectory optimisation and export it to ONNX.

    tocpl-train --task ur5_reach --out runs/ur5
    tocpl-train --task pendulum --algo plal --sobolev --iterations 20 --out runs/pendulum
    tocpl-train --resume runs/ur5 --iterations 60

Defaults come from TrainConfig, then config/train/<task>.yaml (or --config), then
the command line. The resolved config is written to <out>/config.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from tocpl_ros.config import ConfigError, field_docs, load_dataclass, parse_key_values, read_yaml, to_dict
from tocpl_ros.resources import config_path
from tocpl_training.checkpoint import CheckpointError
from tocpl_training.config import TrainConfig
from tocpl_training.evaluation.continuous import hold_labels
from tocpl_training.trainer import POLICY, Trainer


def default_config_file(task: str, robot: str | None = None) -> Path | None:
    """config/train/<task>_<robot>.yaml (with a robot), else config/train/<task>.yaml, if present."""
    names = ([f"{Path(task).stem}_{Path(robot).stem}"] if robot else []) + [Path(task).stem]
    paths = [config_path("train") / f"{name}.yaml" for name in names]
    return next((path for path in paths if path.is_file()), None)


def default_config(task: str, **overrides) -> TrainConfig:
    """What ``tocpl-train --task TASK`` trains (config/train/<task>.yaml), with ``overrides``."""
    file = default_config_file(task, overrides.get("robot"))
    data = read_yaml(file) if file else {"task": task}
    return load_dataclass(TrainConfig, {**data, **overrides}, source=str(file or task))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocpl-train", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<task>)")
    parser.add_argument("--config", type=Path, help="training YAML (default: config/train/<task>.yaml if present)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder from its checkpoint")
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task config field, e.g. costs.terminal.position=1e5")
    parser.add_argument("--quiet", action="store_true", help="no per-iteration progress line")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if --out already holds a training run (its checkpoint is replaced)")
    docs = field_docs(TrainConfig)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        optional = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and len(optional) == 1:
            tp = optional[0]  # X | None: the flag takes an X
        # argparse %-formats help strings: a docstring's "30 %" must not be read as a format spec
        kwargs = {"dest": f.name, "default": None, "help": docs.get(f.name, "").replace("%", "%%")}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, type=typing.get_args(tp)[0], nargs="+", **kwargs)
        else:
            parser.add_argument(flag, type=tp, **kwargs)
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    cli = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    task = cli.get("task", TrainConfig.task)
    data: dict = {}
    source = "command line"
    file = args.config or default_config_file(task, cli.get("robot"))
    if file is not None:
        data = read_yaml(file)
        source = str(file)
        if "task" in data and "task" in cli and data["task"] != cli["task"] and args.config is None:
            data.pop("task")
    data.update(cli)
    try:
        return load_dataclass(TrainConfig, data, source=source)
    except ConfigError as exc:
        field = exc.key.split(".")[0].split("[")[0]
        if field in cli and source != "command line":  # the bad value came from a flag, not the file
            flag = "--" + field.replace("_", "-")
            raise ConfigError(f"command line ({flag})", exc.key, str(exc).split(f"'{exc.key}': ", 1)[-1]) from exc
        raise


RESUME_FLAGS = ("iterations", "workers")
"""TrainConfig fields a resumed run may change; every other setting is the checkpoint's."""


def resume_changes(args: argparse.Namespace) -> dict:
    """The --iterations/--workers of a --resume; any other setting is refused rather than ignored."""
    ignored = [f.name for f in dataclasses.fields(TrainConfig)
               if getattr(args, f.name) is not None and f.name not in RESUME_FLAGS]
    ignored += [name for name in ("out", "config") if getattr(args, name) is not None]
    ignored += ["task_set"] if args.task_set else []
    ignored += ["overwrite"] if args.overwrite else []
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise ConfigError("command line", "resume",
                          f"{flags} cannot be changed when resuming (only --iterations and --workers can); "
                          f"the run keeps the settings stored in its checkpoint")
    return {name: getattr(args, name) for name in RESUME_FLAGS if getattr(args, name) is not None}


def progress_line(row: dict, config: TrainConfig, unit: str) -> str:
    """One line per iteration: the figures that judge a run (docs/training.md "Reading a run")."""
    scale, shown = (100.0, "cm") if unit == "m" else (57.29577951308232, "deg") if unit == "rad" else (1.0, unit)

    def error(key: str) -> str:
        return f"mean {scale * row[key + '_error_mean']:.3g} p95 {scale * row[key + '_error_p95']:.3g}"

    line = f"[{config.variant} {int(row['iteration'])}/{config.iterations}] "
    if "final_error_mean" not in row:  # not an evaluated iteration (eval_every)
        return (line + f"regression {row['regression_loss']:.3g} | OC {row['oc_seconds']:.2f}s supervised "
                f"{row['supervised_seconds']:.2f}s | evals {row['dynamics_evaluations']:.3g} | {row['wall_time']:.0f}s")
    line += f"at T: mean {scale * row['final_error_mean']:.3g} {shown} p95 {scale * row['final_error_p95']:.3g} | "
    if "orientation_error_mean_deg" in row:  # pose targets
        line += f"orientation mean {row['orientation_error_mean_deg']:.3g} deg p95 {row['orientation_error_p95_deg']:.3g} | "
    holds = [label for label in hold_labels(row) if label != "T"]
    if holds:  # continuous use: the longest hold, the sequence, the push
        line += f"hold {holds[-1]}: {error('hold_' + holds[-1])} | "
        line += f"sequence: {error('sequence')} | " if "sequence_error_mean" in row else ""
        line += f"push back {100 * row['push_recovered']:.0f}% | " if "push_recovered" in row else ""
    else:
        line += f"hold p95 {scale * row['hold_error_p95']:.3g} | "
    line += f"within tol {100 * row['within_tolerance']:.0f}% | "
    if unit not in ("m", "rad"):  # the lqr is judged by its cost; the robots' gap is dominated by terminal weights
        line += f"cost gap {100 * row['cost_gap_median']:.2f}% | "
    line += f"evals {row['dynamics_evaluations']:.3g} | {row['wall_time']:.0f}s"
    if row.get("warm_start_fallbacks"):
        line += f" | {row['warm_start_fallbacks']:.0f} policy rollouts diverged: warm-started from the previous solution or cold"
    return line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.resume is not None:
            trainer = Trainer.resume(args.resume, **resume_changes(args))
        else:
            config = resolve_config(args)
            robot = f"_{Path(config.robot).stem}" if config.robot else ""
            out = args.out or Path("runs") / f"{Path(config.task).stem}{robot}"
            trainer = Trainer(config, out, parse_key_values(args.task_set, "--task-set"), overwrite=args.overwrite)
    except (ConfigError, CheckpointError) as exc:
        print(f"tocpl-train: {exc}", file=sys.stderr)
        return 2

    config = trainer.config
    print(f"tocpl-train: {config.variant} on {trainer.task.name} -> {trainer.out_dir}")
    report = None if args.quiet else (lambda row: print(progress_line(row, config, trainer.task.error_unit), flush=True))
    resume_hint = f"resume with: tocpl-train --resume {trainer.out_dir}"
    try:
        trainer.run(report)
        from tocpl_training.export import export_onnx

        onnx_path = export_onnx(trainer.final_policy(), trainer.task, trainer.out_dir / POLICY, to_dict(config))
    except ConfigError as exc:  # the preflight of the run folder: nothing was trained
        print(f"tocpl-train: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, folder removed or made read-only during the run
        print(f"tocpl-train: {exc}\ntocpl-train: stopped; the checkpoint holds the last completed iteration; "
              f"fix the cause and {resume_hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tocpl-train: interrupted; {resume_hint}", file=sys.stderr)
        return 130
    chosen = f" (iteration {trainer.selected['iteration']}, best on the validation set)" if trainer.selected else ""
    print(f"tocpl-train: policy exported to {onnx_path}{chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
