"""MPC in the loop on the simulated UR5, against the policy alone (issue 23's figures).

    python -m tocpl_ros.bench.mpc_loop --policy runs/demo/policy.onnx
    python -m tocpl_ros.bench.mpc_loop --policy p.onnx --backends mujoco --hold 20 --json out.json

For each simulator backend (Pinocchio, MuJoCo) and each mode (the policy alone; ``use_mpc:=true``:
the policy node following the MPC node's plans), one bring-up of ``ur5_policy`` as processes
(:class:`tocpl_ros.bringup.processes.Bringup`, DDS on loopback), driven from this process:

1. **hold**: ``--hold-targets`` held-out targets, each from the initial posture (simulator reset),
   held ``--hold`` s: the end effector's error at 10 s and at the end;
2. **sequence**: ``--sequence`` targets switched every ``--switch`` s while the arm moves: the error
   at the end of each segment;
3. **loop**: the policy node's own loop periods (p99 of every /diagnostics window, the largest),
   its overruns (> 1.5 periods), the gaps (> 2 periods) between the commands it sent (its
   /diagnostics) and between those received here;
4. (MPC only) **fallback**: the MPC's solver process is SIGKILLed (the node restarts it): the policy
   node's switches, how far past the plan's staleness bound (joint-state time) it switched, the
   largest plan/policy difference at a switch and the largest step of a blend (its /diagnostics),
   the largest step of the commands received here around it; then back to the plans;
   and the MPC node's solve statistics (iterations, solve time, warm starts).

The issue's targets are printed next to the figures (with MPC: ≤ 1 mm mean at 10 s and at 60 s,
≤ 2 mm mean at the end of the segments of a 10-target sequence switched every 2 s; fast-loop period
p99 within 10 % of its period on an idle machine, no gap over 2 periods; fallback within 3 fast-loop
periods of the plan going stale, no step larger than the policy/plan difference at the switch).
Timings depend on the machine's load (the load average is printed): compare runs on one machine.
``--realtime-priority N`` runs the policy node and the simulator under SCHED_FIFO (the graph's
``realtime_priority``); ``--probe-realtime-priority N`` this process's ROS threads too (not the
thread that starts the nodes, so the MPC node is not affected), so that gaps seen here are the
nodes' rather than the probe's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tocpl_ros.bringup.graph import graph_for
from tocpl_ros.ros.environment import apply_loopback_defaults, loopback_ros_env
from tocpl_ros.ros.probe import HELD_OUT_SEED, Probe, ToolKinematics, demo_targets, follow, tool_error

PROG = "tocpl-mpc-loop-bench"


def _diag_windows(probe: Probe, since: float) -> list[dict[str, str]]:
    with probe.lock:
        return [d for t, d, _ in probe.diagnostics if t >= since]


def run_mode(args, env, policy: Path, backend: str, use_mpc: bool, hold_targets: np.ndarray, sequence: np.ndarray) -> dict:
    from tocpl_ros.bringup.processes import Bringup

    label = f"{backend}, {'policy + MPC' if use_mpc else 'policy alone'}"
    specs = graph_for("ur5_policy", policy=str(policy), use_mpc="true" if use_mpc else "false", rate=args.rate,
                      sim_backend=backend, target=",".join(f"{x:.6f}" for x in hold_targets[0]),
                      **({} if args.realtime_priority is None else {"realtime_priority": args.realtime_priority}))
    bringup = Bringup(specs, env=env, out=sys.stdout if args.show_nodes else None)
    probe = Probe(int(env["ROS_DOMAIN_ID"]), record_commands=True, name="mpc_loop_bench_probe")
    if args.probe_realtime_priority:
        _probe_realtime(args.probe_realtime_priority)
    kin = ToolKinematics()
    period = 1.0 / float(args.rate)
    out: dict = {"backend": backend, "mpc": use_mpc}
    try:
        bringup.start()
        up = probe.wait_for(lambda: bringup.poll() is not None or (probe.last_joint_state() is not None
                                                          and probe.last_diagnostics() is not None), 120)
        if not up or bringup.poll() is not None:
            raise RuntimeError(f"{label}: the nodes did not come up")
        if use_mpc and not probe.wait_for(lambda: int(probe.last_diagnostics()[1].get("mpc_plans_accepted", 0)) > 0, 180):
            print(f"[{PROG}] {label}: warning: no MPC plan followed yet", flush=True)
        t_start = time.monotonic()

        def reset() -> None:
            ok, message = probe.call_trigger("/ur5_sim/reset")
            if not ok:
                raise RuntimeError(f"/ur5_sim/reset failed: {message}")
            done = time.monotonic()
            probe.wait_for(lambda: probe.last_joint_state()[0] > done + 0.003, 2.0, poll=0.002)

        # 1. hold
        at_10, at_end = [], []
        for target in hold_targets:
            reset()
            probe.send_target(target)
            first = follow(probe, kin, target, min(10.0, args.hold))
            at_10.append(first["final_error"])
            rest = follow(probe, kin, target, args.hold - 10.0) if args.hold > 10.0 else first
            at_end.append(rest["final_error"])
            print(f"[{PROG}] {label}: hold [{', '.join(f'{x:.3f}' for x in target)}]: {1e3 * at_10[-1]:.3f} mm at 10 s, "
                  f"{1e3 * at_end[-1]:.3f} mm at {args.hold:g} s", flush=True)
        out["hold_10s_mm"] = [1e3 * e for e in at_10]
        out["hold_end_mm"] = [1e3 * e for e in at_end]
        # 2. sequence (no reset: switched while the arm moves)
        seg = []
        for target in sequence:
            probe.send_target(target)
            time.sleep(args.switch)
            seg.append(tool_error(probe, kin, target))
        out["sequence_mm"] = [1e3 * e for e in seg]
        print(f"[{PROG}] {label}: sequence of {len(sequence)} every {args.switch:g} s: mean {1e3 * np.mean(seg):.3f} mm, "
              f"max {1e3 * np.max(seg):.3f} mm", flush=True)
        # 3. loop
        windows = [d for d in _diag_windows(probe, t_start) if d.get("loop_period_p99_ms", "nan") != "nan"]
        p99 = [float(d["loop_period_p99_ms"]) for d in windows]
        with probe.lock:
            times = np.array([t for t, _ in probe.commands if t >= t_start])
        gaps = np.diff(times) if len(times) > 1 else np.array([0.0])
        last = probe.last_diagnostics()[1]
        first = _diag_windows(probe, t_start)
        sent_gaps = int(last.get("command_gaps_over_2_periods", 0)) - (int(first[0].get("command_gaps_over_2_periods", 0)) if first else 0)
        out.update(sent_gaps_over_2=sent_gaps,
                   sent_gap_max_ms=max((float(d.get("command_gap_max_ms", "nan")) for d in windows), default=math.nan))
        out["safe_ticks"] = int(last.get("safe_ticks", 0)) - (int(first[0].get("safe_ticks", 0)) if first else 0)
        out.update(period_p99_ms_median=float(np.median(p99)) if p99 else math.nan,
                   period_p99_ms_max=float(np.max(p99)) if p99 else math.nan,
                   overruns=int(last.get("overruns", 0)), gaps_over_2=int((gaps > 2 * period).sum()),
                   gap_max_ms=float(1e3 * gaps.max()), commands=len(times))
        # 4. fallback (MPC): kill the solver process, then back
        if use_mpc:
            out.update(fallback(probe, label, period))
            mpc = probe.last_mpc_diagnostics()
            last = probe.last_diagnostics()[1]
            out["mpc_node"] = {k: v for k, v in (mpc[1] if mpc else {}).items()
                               if k.startswith(("solve", "iterations", "warm_start", "fallback", "converged", "deadline"))}
            out["policy_node_mpc"] = {k: v for k, v in last.items() if k.startswith("mpc_")}
            diag = last
            out["plan_ticks"], out["policy_ticks"] = int(diag["mpc_plan_ticks"]), int(diag["mpc_policy_ticks"])
    finally:
        bringup.stop("benchmark finished")
        probe.close()
        bringup.summary()
    return out


def _probe_realtime(priority: int) -> None:
    """SCHED_FIFO for every thread of this process but the main one (which starts the nodes: they
    would inherit it)."""
    main = threading.main_thread().native_id
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != main:
            try:
                os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))
            except ProcessLookupError:
                pass
            except OSError as exc:
                print(f"[{PROG}] probe: SCHED_FIFO {priority} refused ({exc}); the probe runs at normal priority", flush=True)
                return


def fallback(probe: Probe, label: str, period: float) -> dict:
    """SIGKILL the MPC's solver process while the policy node follows its plans; the switch to the
    policy and back, from the policy node's /diagnostics and the commands received here."""
    mpc = probe.last_mpc_diagnostics()
    if mpc is None or not mpc[1].get("solver_pid", "").isdigit():
        return {"fallback": "no MPC diagnostics"}
    before = probe.last_diagnostics()[1]
    t_kill = time.monotonic()
    os.kill(int(mpc[1]["solver_pid"]), signal.SIGKILL)
    switched = probe.wait_for(
        lambda: int(probe.last_diagnostics()[1]["mpc_switches_to_policy"]) > int(before["mpc_switches_to_policy"]), 10)
    back = probe.wait_for(lambda: probe.last_diagnostics()[0] > t_kill + 1 and probe.last_diagnostics()[1]["mpc_source"] == "plan"
                 and int(probe.last_diagnostics()[1]["mpc_switches_to_plan"]) > int(before["mpc_switches_to_plan"]), 60)
    t_back = time.monotonic()
    diag = probe.last_diagnostics()[1]
    with probe.lock:
        values = np.array([v for t, v in probe.commands if t_kill - 0.1 <= t <= t_back])
    steps = np.abs(np.diff(values, axis=0)).max(axis=1) if len(values) > 1 else np.array([0.0])
    lag = float(diag.get("mpc_stale_lag_max_ms", "nan"))
    result = {
        "fallback_switched": switched, "fallback_back": back, "back_s": t_back - t_kill,
        "stale_lag_max_ms": lag, "stale_lag_periods": lag * 1e-3 / period,
        "blend_periods": int(diag.get("mpc_blend_periods", 0)),
        "switch_difference_max": float(diag["mpc_switch_difference_max"]),
        "blend_step_max": float(diag["mpc_blend_step_max"]),
        "step_max_seen": float(steps.max()),
        "safe_ticks_meanwhile": int(diag["safe_ticks"]) - int(before["safe_ticks"]),
    }
    print(f"[{PROG}] {label}: solver killed: switched to the policy {'yes' if switched else 'NO'}, "
          f"{result['stale_lag_periods']:.2f} periods past the plan's staleness bound (largest so far) + a blend of "
          f"{result['blend_periods']}; back on the plans after {result['back_s']:.1f} s; largest plan/policy difference "
          f"at a switch {result['switch_difference_max']:.2f} N·m, largest blend step {result['blend_step_max']:.2f} N·m, "
          f"largest step seen here {result['step_max_seen']:.2f} N·m", flush=True)
    return result


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def report(runs: list[dict], args) -> None:
    period_ms = 1e3 / float(args.rate)
    for backend in dict.fromkeys(r["backend"] for r in runs):
        pair = {r["mpc"]: r for r in runs if r["backend"] == backend}
        print(f"\n{backend}: | policy alone | policy node + MPC | target (with MPC)")
        rows = [
            ("hold: mean error at 10 s (mm)", lambda r: f"{_mean(r['hold_10s_mm']):.3f}", "<= 1"),
            (f"hold: mean error at {args.hold:g} s (mm)", lambda r: f"{_mean(r['hold_end_mm']):.3f}", "<= 1"),
            ("sequence: mean error at the switches (mm)", lambda r: f"{_mean(r['sequence_mm']):.3f}", "<= 2"),
            ("loop period p99 (ms): median / largest window", lambda r: f"{r['period_p99_ms_median']:.3f} / {r['period_p99_ms_max']:.3f}",
             f"<= {1.1 * period_ms:.2f} (idle machine)"),
            ("commands sent (node's /diagnostics): gaps > 2 periods / largest (ms)",
             lambda r: f"{r.get('sent_gaps_over_2', '?')} / {r.get('sent_gap_max_ms', math.nan):.1f}", "0"),
            ("commands received: gaps > 2 periods / largest (ms)", lambda r: f"{r['gaps_over_2']} / {r['gap_max_ms']:.1f}", "0"),
            ("overruns (> 1.5 periods)", lambda r: str(r["overruns"]), ""),
            ("safe ticks (joint states late by > 5 periods: the safe command, then a fade-in)",
             lambda r: str(r.get("safe_ticks", "?")), "0"),
        ]
        for name, cell, goal in rows:
            print(f"  {name} | " + " | ".join(cell(pair[m]) if m in pair else "-" for m in (False, True)) + f" | {goal}")
        r = pair.get(True)
        if r and "stale_lag_periods" in r:
            print(f"  fallback: periods past the staleness bound + blend | - | {r['stale_lag_periods']:.2f} + "
                  f"{r['blend_periods']} | <= 3 (in all)")
            print(f"  fallback: largest blend step / largest difference at a switch (N·m) | - | {r['blend_step_max']:.2f} / "
                  f"{r['switch_difference_max']:.2f} | step <= difference")
            print(f"  fast loop ticks on the plan / on the policy | - | {r['plan_ticks']} / {r['policy_ticks']} |")
            m = r.get("mpc_node", {})
            print(f"  MPC solves (last window): iterations p50 {m.get('iterations_p50', '?')}, max {m.get('iterations_max', '?')}; "
                  f"solve time p50 {m.get('solve_time_p50_ms', '?')} ms, p99 {m.get('solve_time_p99_ms', '?')} ms; "
                  + ", ".join(f"{k} {v}" for k, v in m.items() if k.startswith(("warm_start.", "fallback."))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", type=Path, required=True, help="the .onnx policy (tocpl-export)")
    parser.add_argument("--backends", nargs="+", default=["pinocchio", "mujoco"], choices=["pinocchio", "mujoco"])
    parser.add_argument("--modes", nargs="+", default=["policy", "mpc"], choices=["policy", "mpc"])
    parser.add_argument("--hold-targets", type=int, default=3, help="targets held from the initial posture (default 3)")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each is held (default 60; errors at 10 s and at the end)")
    parser.add_argument("--sequence", type=int, default=10, help="targets of the sequence (default 10)")
    parser.add_argument("--switch", type=float, default=2.0, help="seconds per target of the sequence (default 2)")
    parser.add_argument("--rate", default="500", help="policy node rate, Hz (default 500)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED + 17, help="seed of the targets")
    parser.add_argument("--realtime-priority", type=int, default=None,
                        help="the graph's realtime_priority (SCHED_FIFO of the policy node and the simulator; 0: off); "
                             "default: the graph's default")
    parser.add_argument("--probe-realtime-priority", type=int, default=0,
                        help="SCHED_FIFO priority of this process's ROS threads (default 0: normal scheduling)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--show-nodes", action="store_true", help="print the nodes' output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.policy.is_file():
        print(f"{PROG}: error: no such policy file: {args.policy}", file=sys.stderr)
        return 2
    apply_loopback_defaults()
    env = loopback_ros_env()
    targets = demo_targets(args.hold_targets + args.sequence, args.seed)
    hold_targets, sequence = targets[: args.hold_targets], targets[args.hold_targets:]
    print(f"[{PROG}] DDS: ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
          f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    runs = []
    try:
        for backend in args.backends:
            for mode in args.modes:
                runs.append(run_mode(args, env, args.policy.absolute(), backend, mode == "mpc", hold_targets, sequence))
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"{PROG}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not runs:
            return 1
    report(runs, args)
    print(f"\n[{PROG}] load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
