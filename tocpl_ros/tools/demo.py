"""``tocpl-demo`` (``make demo``): train the default UR5 policy, run it on the simulated UR5 through ROS 2.

1. Policy: ``runs/demo/policy.onnx`` if it exists, else ``tocpl-train --task ur5_reach
   --out runs/demo`` (the default configuration) (resumed from its checkpoint if a previous run was cut short).
2. Bring-up of ``ur5_policy`` (simulated UR5 + policy node, + MPC node with ``--use-mpc``) as
   processes, by :class:`tocpl_ros.bringup.processes.Bringup`, like ``tocpl-bringup ur5_policy``.
3. Five targets from the ur5_reach task's held-out distribution (the trainer's held-out seed),
   one after the other on ``/target`` (geometry_msgs/PointStamped), 2 s each, switched while the
   arm moves (no reset, as in use; ``--reset`` starts each from rest), then the last held for
   10 s; for each, how close the end effector got: forward kinematics of the received
   ``/joint_states`` on the task's robot (``config/robots/<robot>.yaml``, :mod:`tocpl_ros.robot`).
4. The policy node's loop statistics from ``/diagnostics``.

With ``--use-mpc`` it runs the targets twice, the policy alone and then the policy node following
the MPC node's plans (``use_mpc:=true``), prints the plan/fallback counts of both nodes'
``/diagnostics`` and compares the two runs (errors, loop periods, solve times).

DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless set; one ROS_DOMAIN_ID
for this run, shared by the demo and its nodes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tocpl_ros.bringup.graph import BringupError, graph_for
from tocpl_ros.resources import console_command
from tocpl_ros.ros.environment import apply_loopback_defaults, loopback_ros_env
from tocpl_ros.ros.probe import HELD_OUT_SEED, TASK, Probe, ToolKinematics, demo_targets, follow, reach

PROG = "tocpl-demo"

__all__ = ["ensure_policy", "main"]


def ensure_policy(out: Path, iterations: int | None, retrain: bool = False) -> Path:
    """``out/policy.onnx``: reused if present (unless ``retrain``), else trained with tocpl-train
    (a run cut short is resumed from its checkpoint)."""
    policy = out / "policy.onnx"
    if policy.is_file() and not retrain:
        print(f"[{PROG}] reusing the policy {policy} (delete it or pass --retrain to train again)", flush=True)
        return policy
    train = console_command("tocpl-train", "tocpl_training.cli")
    budget = ["--iterations", str(iterations)] if iterations else []
    if (out / "checkpoint.pt").is_file() and not retrain:
        cmd = train + ["--resume", str(out)] + budget
    else:
        cmd = train + ["--task", TASK, "--out", str(out)] + budget
        cmd += ["--overwrite"] if retrain else []
    print(f"[{PROG}] training the default UR5 policy (a few minutes): {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    code = subprocess.call(cmd)
    if code != 0 or not policy.is_file():
        raise RuntimeError(f"training failed (exit status {code}); see the output above")
    print(f"[{PROG}] trained in {time.monotonic() - started:.0f} s: {policy}", flush=True)
    return policy


def format_diagnostics(values: dict[str, str], message: str) -> list[str]:
    get = values.get
    return [
        f"state {message}; {get('commands_published', '?')} commands published at {get('rate_hz', '?')} Hz "
        f"on {get('command_topic', '?')}",
        f"loop period (last window of {get('loop_period_samples', '?')} ticks): p50 {get('loop_period_p50_ms', '?')} ms, "
        f"p99 {get('loop_period_p99_ms', '?')} ms, max {get('loop_period_max_ms', '?')} ms; "
        f"max since start {get('loop_period_max_ever_ms', '?')} ms; overruns (> 1.5 periods) {get('overruns', '?')}",
        f"policy inference: p50 {get('inference_p50_us', '?')} us, p99 {get('inference_p99_us', '?')} us, "
        f"max {get('inference_max_us', '?')} us; whole step p50 {get('compute_p50_us', '?')} us, "
        f"p99 {get('compute_p99_us', '?')} us",
        f"safety: {get('safe_ticks', '?')} safe ticks of {get('ticks', '?')}, {get('clamped_ticks', '?')} clamped, "
        f"{get('rejected_inputs', '?')} rejected inputs, {get('targets_clamped', '?')} targets clamped",
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder of the policy (default: runs/demo)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations if it trains (default: config/train/ur5_reach.yaml's)")
    parser.add_argument("--retrain", action="store_true", help="train again even if the run folder has a policy")
    parser.add_argument("--policy", type=Path, help="use this .onnx instead of training / runs/demo")
    parser.add_argument("--targets", type=int, default=5, help="number of targets (default: 5)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="seed of the targets (default: the held-out seed)")
    parser.add_argument("--wait", type=float, default=2.0, help="seconds per target (default: 2)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the last target is then held (default: 10)")
    parser.add_argument("--rate", default="500", help="control rate, Hz (default: 500)")
    parser.add_argument("--reset", action="store_true",
                        help="reset the simulated UR5 to its initial posture before each target (each target then "
                        "starts at rest, like a training episode); default: targets follow each other while the arm moves")
    parser.add_argument("--use-mpc", action="store_true",
                        help="run the targets twice: the policy alone, then with the MPC node (use_mpc:=true: the policy "
                        "node follows its plans), and compare; prints the plan/fallback counts of /diagnostics")
    parser.add_argument("--quiet-nodes", action="store_true", help="do not print the nodes' output")
    return parser


def format_mpc_diagnostics(values: dict[str, str], mpc: dict[str, str] | None) -> list[str]:
    """The MPC lines of the demo: the policy node's plan following (its mpc_* keys) and the MPC
    node's solves."""
    get = values.get
    lines = [
        f"fast loop: {get('mpc_plan_ticks', '?')} ticks on the MPC plan, {get('mpc_policy_ticks', '?')} on the policy "
        f"(" + (", ".join(f"{k[len('mpc_fallback.'):]} {v}" for k, v in values.items() if k.startswith("mpc_fallback."))
                or "no fallback") + f"); switches to the policy {get('mpc_switches_to_policy', '?')}, back to the plan "
        f"{get('mpc_switches_to_plan', '?')} (largest difference {get('mpc_switch_difference_max', '?')} N·m, largest "
        f"blend step {get('mpc_blend_step_max', '?')} N·m over {get('mpc_blend_periods', '?')} periods); plans "
        f"{get('mpc_plans_accepted', '?')} of {get('mpc_plans_received', '?')} received followed, plan age at use p50 "
        f"{get('mpc_plan_age_p50_ms', '?')} ms (limit {get('mpc_max_age_ms', '?')} ms)",
    ]
    if mpc:
        m = mpc.get
        lines.append(
            f"MPC node: {m('solves', '?')} solves, {m('converged', '?')} converged, {m('fallbacks', '?')} failed ("
            + (", ".join(f"{k[len('fallback.'):]} {v}" for k, v in mpc.items() if k.startswith("fallback.")) or "none")
            + f"); last window: solve time p50 {m('solve_time_p50_ms', '?')} ms, p99 {m('solve_time_p99_ms', '?')} ms, "
            f"iterations p50 {m('iterations_p50', '?')} (max {m('iterations_max', '?')}), warm start {m('warm_start', '?')}, "
            f"deadline {m('deadline_ms', '?')} ms")
    return lines


def run_graph(args, env, policy: Path, targets: np.ndarray, use_mpc: bool, label: str = "") -> dict:
    """One bring-up of ``ur5_policy`` (with the MPC if ``use_mpc``) driven through ``targets``:
    the per-target lines, the hold and the diagnostics printed; returns the figures and an exit
    ``code`` (2: the graph could not be built)."""
    from tocpl_ros.bringup.processes import Bringup

    tag = f"[{PROG}]{label}"
    out = {"code": 0, "results": [], "hold": None, "diag": None, "mpc_diag": None}
    try:
        # the policy drives from the first joint state on: holding the end effector where it is until the first
        # target, or with --reset towards the first target (the simulator is reset before it is measured)
        first = "" if not args.reset else ",".join(f"{x:.6f}" for x in targets[0])
        specs = graph_for("ur5_policy", policy=str(policy), use_mpc="true" if use_mpc else "false",
                          rate=args.rate, target=first)
        bringup = Bringup(specs, env=env, out=None if args.quiet_nodes else sys.stdout)
    except (BringupError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        out["code"] = 2
        return out
    kin = ToolKinematics()
    probe = Probe(int(env["ROS_DOMAIN_ID"]))
    results = out["results"]
    code = 0
    try:
        time.sleep(1.0)  # discovery: is anyone else on this domain?
        others = sorted(set(probe.node.get_node_names()) - {"tocpl_demo_probe"})
        if others:
            print(f"[{PROG}] warning: other ROS nodes share ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ({', '.join(others)}); "
                  "their topics mix with the demo's: set another ROS_DOMAIN_ID", flush=True)
        bringup.start()
        started = time.monotonic()
        ready = probe.wait_for(
            lambda: bringup.poll() is not None
            or (probe.last_joint_state() is not None and probe.last_diagnostics() is not None),
            timeout=90.0,
        )
        if bringup.poll() is not None or not ready:
            print(f"{PROG}: error: the nodes did not come up (joint states and policy diagnostics) within 90 s",
                  file=sys.stderr)
            out["code"] = 1
            return out
        if use_mpc:  # the MPC node builds its OCP and solver process: wait for its first plans
            following = probe.wait_for(
                lambda: bringup.poll() is not None
                or int((probe.last_diagnostics() or (0, {}))[1].get("mpc_plans_accepted", 0)) > 0, timeout=120.0)
            if not following:
                print(f"[{PROG}] warning: no MPC plan reached the policy node within 120 s; it runs the policy meanwhile",
                      flush=True)
        print(f"{tag} sim + policy{' + MPC' if use_mpc else ''} up after {time.monotonic() - started:.1f} s; sending "
              f"{len(targets)} targets from the {TASK} held-out distribution, {args.wait:g} s each"
              + (", the simulated UR5 reset to its initial posture before each" if args.reset
                 else f", switched while the arm moves, then the last held for {args.hold:g} s"), flush=True)

        def reset_sim() -> None:
            ok, message = probe.call_trigger("/ur5_sim/reset")
            if not ok:
                raise RuntimeError(f"/ur5_sim/reset failed: {message}")

        for i, target in enumerate(targets, 1):
            r = reach(probe, kin, target, args.wait, before=reset_sim if args.reset else None)
            results.append(r)
            settled = "did not stay within 1 cm" if np.isnan(r["settled_at"]) else f"within 1 cm from {r['settled_at']:.2f} s on"
            print(
                f"{tag} target {i}/{len(targets)} [{target[0]:.3f}, {target[1]:.3f}, {target[2]:.3f}] m, "
                f"{kin.frame} {100 * r['start_error']:.1f} cm away: error {100 * r['error_1s']:.2f} cm at 1 s, "
                f"{100 * r['final_error']:.2f} cm at {args.wait:g} s (best {100 * r['best_error']:.2f} cm), {settled}; "
                f"fastest joint now {r['max_joint_speed']:.2f} rad/s",
                flush=True,
            )
            if bringup.poll() is not None:
                break
        hold = None
        if args.hold > 0 and results and bringup.poll() is None:
            hold = follow(probe, kin, targets[len(results) - 1], args.hold)
            print(f"{tag} held target {len(results)} for {args.hold:g} s more: error {100 * hold['final_error']:.2f} cm "
                  f"at the end (best {100 * hold['best_error']:.2f} cm), fastest joint {hold['max_joint_speed']:.3f} rad/s",
                  flush=True)
        out["hold"] = hold
        probe.wait_for(lambda: probe.last_diagnostics() is not None and probe.last_diagnostics()[0] > time.monotonic() - 0.5,
                       timeout=1.5)
        diag = probe.last_diagnostics()
        if diag is not None:
            out["diag"] = diag[1]
            print(f"{tag} policy_node /diagnostics:", flush=True)
            for line in format_diagnostics(diag[1], diag[2]):
                print(f"{tag}   {line}", flush=True)
            if use_mpc:
                mpc = probe.last_mpc_diagnostics()
                out["mpc_diag"] = None if mpc is None else mpc[1]
                for line in format_mpc_diagnostics(diag[1], out["mpc_diag"]):
                    print(f"{tag}   {line}", flush=True)
        if results:
            at_1s = np.array([r["error_1s"] for r in results])
            final = np.array([r["final_error"] for r in results])
            print(f"{tag} {kin.frame} error over {len(results)} targets: at 1 s mean {100 * at_1s.mean():.2f} cm "
                  f"(max {100 * at_1s.max():.2f}); at each switch ({args.wait:g} s) mean {100 * final.mean():.2f} cm "
                  f"(max {100 * final.max():.2f})"
                  + (f"; after the {args.hold:g} s hold {100 * hold['final_error']:.2f} cm" if hold else ""), flush=True)
        if bringup.poll() is not None:
            print(f"{PROG}: error: {bringup.poll().name} exited during the demo", file=sys.stderr)
            code = 1
    except RuntimeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"[{PROG}] interrupted", flush=True)
        code = 130
    finally:
        bringup.stop("demo finished")
        probe.close()
        stopped = bringup.summary()
        out["code"] = code or stopped
    return out


def print_comparison(alone: dict, with_mpc: dict, wait: float, hold: float) -> None:
    """Policy alone vs the policy node following the MPC, on the same targets."""

    def mm(values) -> str:
        values = np.asarray(values, dtype=float)
        return f"mean {1e3 * values.mean():.2f} mm (max {1e3 * values.max():.2f})" if values.size else "-"

    print(f"[{PROG}] what the MPC buys (and costs), same targets, same machine:", flush=True)
    for name, run in (("policy alone       ", alone), ("policy node + MPC  ", with_mpc)):
        results = run["results"]
        d = run["diag"] or {}
        line = (f"{name}: end-effector error at 1 s {mm([r['error_1s'] for r in results])}, at each switch ({wait:g} s) "
                f"{mm([r['final_error'] for r in results])}")
        if run["hold"] is not None:
            line += f", after the {hold:g} s hold {1e3 * run['hold']['final_error']:.2f} mm"
        line += (f"; fast loop period p99 {d.get('loop_period_p99_ms', '?')} ms (max {d.get('loop_period_max_ms', '?')}), "
                 f"step p99 {d.get('compute_p99_us', '?')} us")
        print(f"[{PROG}]   {line}", flush=True)
    m = with_mpc["mpc_diag"] or {}
    d = with_mpc["diag"] or {}
    print(f"[{PROG}]   MPC cost: a solver process of its own, solve time p50 {m.get('solve_time_p50_ms', '?')} ms / p99 "
          f"{m.get('solve_time_p99_ms', '?')} ms every {1e3 / float(m.get('rate_hz', '100') or 100):g} ms; the fast loop "
          f"ran on the plan for {d.get('mpc_plan_ticks', '?')} ticks and on the policy for {d.get('mpc_policy_ticks', '?')}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_loopback_defaults()  # this process (the probe) and the nodes share the domain
    env = loopback_ros_env()
    print(f"[{PROG}] DDS: ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
          f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}", flush=True)
    try:
        policy = args.policy if args.policy is not None else ensure_policy(args.out, args.iterations, args.retrain)
        targets = demo_targets(args.targets, args.seed)
    except (BringupError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if not args.use_mpc:
        return run_graph(args, env, policy, targets, use_mpc=False)["code"]
    # --use-mpc: the policy alone, then the policy node following the MPC, on the same targets
    print(f"[{PROG}] --use-mpc: run 1/2, the policy alone; run 2/2, the policy node following the MPC's plans "
          f"(use_mpc:=true), the same targets", flush=True)
    alone = run_graph(args, env, policy, targets, use_mpc=False, label=" [policy]")
    if alone["code"] not in (0,):
        return alone["code"]
    with_mpc = run_graph(args, env, policy, targets, use_mpc=True, label=" [policy+MPC]")
    if with_mpc["results"] and alone["results"]:
        print_comparison(alone, with_mpc, args.wait, args.hold)
    return with_mpc["code"]


if __name__ == "__main__":
    sys.exit(main())
