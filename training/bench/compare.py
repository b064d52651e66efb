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
import sys
from pathlib import Path

from tocpl_ros.config import ConfigError, FieldError, parse_key_values
from tocpl_training.bench.runs import configuration, drop_runs, load_bench_config, merge_runs, run_all
from tocpl_training.bench.summary import summarize
from tocpl_training.bench.warm_start import warm_start_study


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
    p.add_argument("--force", action="store_true",
                   help="start every run afresh: re-run runs already done in --out, do not continue interrupted ones")
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
