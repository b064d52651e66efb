"""Figures to judge an exported policy: ``tocpl-inspect POLICY.onnx | RUN_FOLDER [--out DIR]``.

Writes into ``--out`` (default: ``inspect/`` next to the policy file):

- ``continuous.png``: one held-out problem run without reset through 5 targets (2 s each), then
  holding the last for 10 s: tool error, joint velocities, torques against their limits;
- ``final_positions.png`` (the paper's Fig. 2): final tool offsets from the targets after T on
  held-out problems, x–y and x–z, with the 1 cm circle (``--compare`` adds another policy);
- ``trajectories.png`` (the paper's Fig. 6): from one held-out start, the policy's rollout against
  the TO solutions warm-started by that rollout and cold, with the solver's iteration counts.

Held-out problems are ``task.sample(N, seed)`` with the trainer's ``eval_seed`` (from the policy's
``tocpl.train_config``, else TrainConfig's default): for N = 100 the trainer's own held-out set.
The task is rebuilt from the policy's ``tocpl.task_config``. Figures a task cannot have (no tool
position, no joints) are skipped with the reason printed. No torch, no rclpy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tocpl_ros.config import ConfigError, load_dataclass
from tocpl_ros.mpc.task_policy import TaskPolicy
from tocpl_ros.ocp import solve
from tocpl_ros.policy_file import OnnxPolicy, PolicyFileError
from tocpl_ros.tasks import Problems, ReachTask, RobotTask, Task, TaskConfig, load_task, make_task
from tocpl_training.config import TrainConfig

Policy = Callable[[np.ndarray], np.ndarray]
POLICY_FILE = "policy.onnx"  # trainer.POLICY (importing the trainer would pull in torch)
TOLERANCE_CM = 1.0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _unit(task: Task) -> tuple[float, str]:
    """Scale and name of the task's error unit for plots (m → cm, rad → deg)."""
    return {"m": (100.0, "cm"), "rad": (float(np.rad2deg(1.0)), "deg")}.get(task.error_unit, (1.0, task.error_unit))


def continuous_figure(task: Task, policy: Policy, problems: Problems, out: Path, targets: int = 5,
                      segment_s: float = 2.0, hold_s: float = 10.0) -> dict[str, float] | str:
    """``continuous.png``: problem 0 run without reset, ``task.rollout`` chained from the last state,
    towards the targets of problems 0..targets-1 for ``segment_s`` each, the last held ``hold_s`` more.
    Panels: task error (tool error in cm; target switches as vertical lines), joint velocities (rad/s),
    joint torques with the ± limits of the task's control box. Upright tasks: one hold of the same length.
    Returns the figures, or the reason for skipping."""
    if not isinstance(task, RobotTask):
        return f"task {task.name} has no joints (kind {task.config.kind})"
    scale, unit = _unit(task)
    seg, hold = max(1, round(segment_s / task.dt)), round(hold_s / task.dt)
    if task.target_dim:
        plan = [(problems.target[k % len(problems)], seg) for k in range(targets)]
    else:  # upright: nothing to switch, one hold as long
        plan = [(problems.target[0], targets * seg)]
    plan[-1] = (plan[-1][0], plan[-1][1] + hold)
    x, xs, us, errors, diverged = problems.x0[:1], [problems.x0[0]], [], [], False
    errors.append(float(task.final_error(x, plan[0][0][None])[0]))
    for target, steps in plan:
        traj = task.rollout(policy, Problems(x, target[None]), horizon=steps)
        xs.extend(traj.xs[0, 1:])
        us.extend(traj.us[0])
        errors.extend(task.final_error(traj.xs[0, 1:], np.repeat(target[None], steps, axis=0)))
        x, diverged = traj.xs[:, -1], diverged or bool(traj.diverged[0])
    xs, us, err = np.array(xs), np.array(us), scale * np.array(errors)
    t = task.dt * np.arange(len(xs))
    switches = task.dt * np.cumsum([steps for _, steps in plan])[:-1]
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    axes[0].plot(t, err, "k")
    axes[0].set_ylabel(f"{'tool' if task.target_dim else 'task'} error ({unit})")
    axes[0].set_yscale("symlog", linthresh=0.1)
    for k, s in enumerate(switches):
        axes[0].axvline(s, color="tab:red", ls="--", lw=0.8, label="target switch" if k == 0 else None)
    if task.target_dim:  # the tolerance line is the trainer's 1 cm
        axes[0].axhline(TOLERANCE_CM, color="tab:green", ls=":", lw=0.8, label="1 cm")
        axes[0].axvline(targets * seg * task.dt, color="tab:gray", ls=":", lw=0.8, label="hold starts")
        axes[0].legend(loc="upper right")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, name in enumerate(task.joint_names):
        c = colors[j % len(colors)]
        axes[1].plot(t, xs[:, task.nq + j], color=c, label=name)
        axes[2].plot(t[:-1], us[:, j], color=c, label=name)
        for bound in (task.u_min[j], task.u_max[j]):
            axes[2].axhline(bound, color=c, ls="--", lw=0.7)
    axes[1].set_ylabel("joint velocity (rad/s)")
    axes[2].set_ylabel("torque (N·m), ± limits dashed")
    axes[2].set_xlabel("time (s)")
    axes[1].legend(ncol=min(6, task.nu), fontsize=7, loc="upper right")
    title = (f"{task.name}: {len(plan)} targets in a row ({segment_s:g} s each) without reset, then {hold_s:g} s hold"
             if task.target_dim else f"{task.name}: {t[-1]:g} s from a held-out start without reset")
    title += " (DIVERGED)" if diverged else ""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "continuous.png", dpi=90)
    plt.close(fig)
    reads = ({f"error_target{k + 1}_{unit}": seg * (k + 1) for k in range(len(plan))} if task.target_dim
             else {f"error_T_{unit}": task.horizon})
    return {
        **{name: float(err[step]) for name, step in reads.items()},  # after seg steps on each target
        f"error_end_of_hold_{unit}": float(err[-1]),
        "max_speed_end_of_hold_rad_s": float(np.abs(xs[-1, task.nq:]).max()),
        "peak_torque_share": float(np.max(np.abs(us) / task.u_max)),
        "diverged": float(diverged),
    }


def final_positions_figure(task: Task, policies: dict[str, Policy], problems: Problems, out: Path) -> dict[str, float] | str:
    """``final_positions.png`` (Fig. 2): for each policy, the tool position after T minus its target (cm)
    on every held-out problem, projected on x–y and x–z, with the 1 cm circle. Returns mean/p95/share
    within 1 cm per policy label, or the reason for skipping (tasks without a target position)."""
    if not isinstance(task, ReachTask):
        return f"task {task.name} has no target position (kind {task.config.kind})"
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    figures: dict[str, float] = {}
    circle = np.linspace(0, 2 * np.pi, 200)
    for (label, policy), color in zip(policies.items(), ("tab:blue", "tab:orange")):
        traj = task.rollout(policy, problems, horizon=task.horizon)
        ok = ~traj.diverged
        # a pose target's first 3 values are its position (the figure shows the position error)
        offset = 100.0 * (task.frame_position(traj.xs[:, -1, : task.nq]) - problems.target[:, :3])[ok]
        error = np.linalg.norm(offset, axis=1)
        for ax, (i, j) in zip(axes, ((0, 1), (0, 2))):
            text = f"{label}: mean {error.mean():.2f} cm" if len(error) else f"{label}: all diverged"
            ax.scatter(offset[:, i], offset[:, j], s=12, alpha=0.7, color=color,
                       label=text + (f", {(~ok).sum()} diverged" if (~ok).any() and len(error) else ""))
        figures |= {f"{label}_mean_cm": float(error.mean()) if len(error) else np.inf,
                    f"{label}_p95_cm": float(np.percentile(error, 95, method="higher")) if len(error) else np.inf,
                    f"{label}_within_1cm": float(np.sum(error <= TOLERANCE_CM) / len(problems)),
                    f"{label}_diverged": float((~ok).sum())}
    for ax, names in zip(axes, ("xy", "xz")):
        ax.plot(TOLERANCE_CM * np.cos(circle), TOLERANCE_CM * np.sin(circle), "k--", lw=0.8, label="1 cm")
        ax.set_xlabel(f"{names[0]} offset (cm)")
        ax.set_ylabel(f"{names[1]} offset (cm)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task.name}: final tool offset from the target after T = {task.horizon * task.dt:g} s "
                 f"({len(problems)} held-out problems)")
    fig.tight_layout()
    fig.savefig(out / "final_positions.png", dpi=90)
    plt.close(fig)
    return figures


def trajectories_figure(task: Task, policy: Policy, problems: Problems, out: Path) -> dict[str, float]:
    """``trajectories.png`` (Fig. 6): from problem 0, joint positions (all states for lqr) and controls over
    T of the policy's rollout, of the TO solution warm-started by that rollout and of the cold-started one
    (x0 held, quasi-static controls: Crocoddyl's default), each solve's iterations in the legend."""
    first = problems[0]
    traj = task.rollout(policy, first, horizon=task.horizon)
    shooting = task.build_problem(first)
    shooting.nthreads = 1  # OpenMP threads busy-wait on a loaded machine
    warm = solve(shooting, task.config.solver, traj.xs[0], traj.us[0], rollout_guess=not traj.diverged[0])
    cold = solve(shooting, task.config.solver)
    policy_cost = float(task.evaluate(first, traj, shooting).cost[0])
    runs = [(f"policy rollout (cost {policy_cost:.4g})", traj.xs[0], traj.us[0], "k", "-"),
            (f"TO from policy: {warm.iterations} it (cost {warm.cost:.4g})", warm.xs, warm.us, "tab:blue", "--"),
            (f"TO cold: {cold.iterations} it (cost {cold.cost:.4g})", cold.xs, cold.us, "tab:red", ":")]
    n_states = task.nv if isinstance(task, RobotTask) else task.nx  # robots: one position per joint
    names = task.joint_names or [f"x{i}" for i in range(task.nx)]
    cols = max(n_states, task.nu)
    plt = _plt()
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.5), squeeze=False, sharex=True)
    t = task.dt * np.arange(task.horizon + 1)
    for label, xs, us, color, ls in runs:
        if isinstance(task, RobotTask):  # a continuous joint's angle, not its (cos, sin)
            xs = task.robot.positions_from_q(np.asarray(xs)[:, : task.nq])
        for i in range(n_states):
            axes[0, i].plot(t, xs[:, i], color=color, ls=ls, label=label)
        for i in range(task.nu):
            axes[1, i].step(t[:-1], us[:, i], where="post", color=color, ls=ls)
    for i in range(cols):
        if i < n_states:
            axes[0, i].set_title(names[i] if isinstance(task, RobotTask) else f"x{i}", fontsize=8)
        else:
            axes[0, i].axis("off")
        if i >= task.nu:
            axes[0, i].tick_params(labelbottom=True)
        if i < task.nu:  # limits drawn, seen only when the controls come near them
            axes[1, i].set_ylim(*axes[1, i].get_ylim())
            axes[1, i].axhline(task.u_max[i], color="gray", lw=0.6)
            axes[1, i].axhline(task.u_min[i], color="gray", lw=0.6)
            axes[1, i].set_xlabel("time (s)")
        else:
            axes[1, i].axis("off")
    axes[0, 0].set_ylabel("q (rad)" if isinstance(task, RobotTask) else "state")
    axes[1, 0].set_ylabel("u (N·m)" if isinstance(task, RobotTask) else "control")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(f"{task.name}: policy vs TO (SolverBoxFDDP, th_stop {task.config.solver.th_stop:g}, "
                 f"max {task.config.solver.max_iter} it) from one held-out start")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "trajectories.png", dpi=90)
    plt.close(fig)
    return {"warm_iterations": float(warm.iterations), "cold_iterations": float(cold.iterations),
            "warm_converged": float(warm.converged), "cold_converged": float(cold.converged),
            "policy_cost": policy_cost, "warm_cost": warm.cost, "cold_cost": cold.cost}


def load(path: Path) -> tuple[OnnxPolicy, Task, Path]:
    """(policy, the task its metadata describes, policy file) from a policy file or a run folder;
    PolicyFileError/ConfigError naming the problem."""
    if path.is_dir():
        if not (path / POLICY_FILE).is_file():
            hint = f" (export its checkpoint: tocpl-export {path / 'checkpoint.pt'} -o {path / POLICY_FILE})" \
                if (path / "checkpoint.pt").is_file() else ""
            raise PolicyFileError(f"run folder {path} holds no {POLICY_FILE}{hint}")
        path = path / POLICY_FILE
    elif not path.exists():
        raise PolicyFileError(f"no such policy file or run folder: {path}")
    onnx_policy = OnnxPolicy(path)
    md = onnx_policy.metadata
    if md.task_config:
        task = make_task(md.task, load_dataclass(TaskConfig, md.task_config, source=f"{path} (tocpl.task_config)"),
                         source=f"{path} (tocpl.task_config)")
    else:
        task = load_task(md.task)
    return onnx_policy, task, path


def _label(path: Path) -> str:
    return path.parent.name if path.name == POLICY_FILE and path.parent.name else path.stem


def _line(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in values.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tocpl-inspect", description="PNG figures to judge an exported policy "
                                "(continuous use, final positions, policy vs TO trajectories).")
    p.add_argument("policy", type=Path, help="policy file (.onnx) or run folder holding policy.onnx")
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: inspect/ beside the policy)")
    p.add_argument("--compare", type=Path, default=None, help="another policy file of the same task (final positions)")
    p.add_argument("--compare-label", default=None, help="legend label of --compare (default: its name)")
    p.add_argument("--seed", type=int, default=None, help="seed of the held-out problems (default: the trainer's eval_seed)")
    p.add_argument("--problems", type=int, default=100, help="held-out problems of final_positions.png (default: 100)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.problems < 1 or (args.seed is not None and args.seed < 0):
        print("tocpl-inspect: --problems must be >= 1 and --seed >= 0", file=sys.stderr)
        return 2
    try:
        onnx_policy, task, path = load(args.policy)
        policy = TaskPolicy(onnx_policy, task)
        policies: dict[str, Policy] = {_label(path): policy}
        if args.compare is not None:
            other, _, other_path = load(args.compare)
            policies[args.compare_label or _label(other_path)] = TaskPolicy(other, task)
        out = args.out or path.parent / "inspect"
        out.mkdir(parents=True, exist_ok=True)
    except (PolicyFileError, ConfigError, OSError) as exc:
        print(f"tocpl-inspect: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(onnx_policy.metadata.train_config.get("eval_seed", TrainConfig.eval_seed))
    problems = task.sample(max(args.problems, 5), seed)
    print(f"tocpl-inspect: {path} (task {task.name}), held-out problems seed {seed}")
    results: dict[str, Any] = {
        "continuous.png": continuous_figure(task, policy, problems, out),
        "final_positions.png": final_positions_figure(task, policies, problems[: args.problems], out),
        "trajectories.png": trajectories_figure(task, policy, problems, out),
    }
    for name, figures in results.items():
        print(f"  {out / name}: {_line(figures)}" if isinstance(figures, dict) else f"  {name}: skipped ({figures})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
