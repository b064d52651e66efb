"""One held-out target through ``tocpl-bringup arm_policy`` over DDS: the tool's error at 2, 5 and
10 s after the policy node starts, with or without the MPC (docs/robots.md's figures).

    python -m tocpl_ros.tools.arm_target --robot kinova --policy runs/reach_kinova/policy.onnx [--use-mpc]

The graph starts with ``autostart:=false`` (the hold command keeps the arm at its nominal posture)
and, with ``--use-mpc``, waits for the first plan the policy node accepts: the clock starts at the
policy node's ~/start either way. The target is ``reach``'s problem ``--seed`` for the robot (not
a training seed). DDS stays on loopback, in ``--domain``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

MARKS = (2.0, 5.0, 10.0)
"""Seconds after the start at which the error is read."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tocpl_ros.tools.arm_target", description=__doc__.split("\n\n")[0])
    p.add_argument("--robot", required=True, help="robot name (config/robots/) of the arm_policy graph")
    p.add_argument("--policy", type=Path, required=True, help="policy file (.onnx) trained for that robot")
    p.add_argument("--use-mpc", action="store_true", help="use_mpc:=true: the policy node follows the MPC's plans")
    p.add_argument("--seed", type=int, default=123, help="the target: reach's problem of this seed")
    p.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "57")), help="ROS_DOMAIN_ID")
    p.add_argument("--log", type=Path, default=None, help="the graph's output (default: beside the policy)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tocpl_ros.bringup.graph import graph_for
    from tocpl_ros.bringup.processes import Bringup
    from tocpl_ros.ros.probe import Probe, ToolKinematics, tool_error
    from tocpl_ros.tasks import load_task

    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    os.environ.update(env)  # the probe's own context joins the same domain, on loopback
    task = load_task("reach", {"robot": args.robot})
    target = task.sample(1, args.seed).target[0]
    log = args.log or args.policy.parent / f"arm_target_{'mpc' if args.use_mpc else 'policy'}.log"
    specs = graph_for("arm_policy", robot=args.robot, policy=str(args.policy), target=",".join(f"{x:.6f}" for x in target),
                      use_mpc=str(args.use_mpc).lower(), autostart="false", realtime_priority="0")
    out = log.open("w")
    graph = Bringup(specs, env=env, out=out)
    probe = Probe(args.domain, name="arm_target_probe", base_frame=task.robot.base_frame)
    try:
        graph.start()

        def ready() -> bool:
            diag = probe.last_diagnostics()
            if diag is None or probe.last_joint_state() is None:
                return False
            return not args.use_mpc or int(diag[1].get("mpc_plans_accepted", 0)) > 0

        if not probe.wait_for(ready, 240):
            print(f"arm_target: the graph did not come up in 240 s (see {log})", file=sys.stderr)
            return 1
        kin = ToolKinematics(args.robot)
        errors = {"start": tool_error(probe, kin, target)}
        ok, message = probe.call_trigger("/policy_node/start")
        if not ok:
            print(f"arm_target: ~/start refused: {message}", file=sys.stderr)
            return 1
        started = time.monotonic()
        for mark in MARKS:
            time.sleep(max(0.0, started + mark - time.monotonic()))
            errors[f"{mark:g} s"] = tool_error(probe, kin, target)
        with probe.lock:
            speeds = np.array([s[3] for s in probe.joint_states if s[0] >= started])
        peak = float(np.abs(speeds / task.robot.velocity_limit).max())
        diag = probe.last_diagnostics()[1]
        mpc = probe.last_mpc_diagnostics()
        print(f"{args.robot}, {'policy node + MPC' if args.use_mpc else 'policy alone'}, target {np.round(target, 4).tolist()}: "
              + ", ".join(f"{k} {1e3 * e:.3f} mm" for k, e in errors.items())
              + f"; peak joint speed / limit {peak:.2f}")
        print("  policy_node:", {k: v for k, v in diag.items() if k.startswith(("policy_ticks", "mpc_plan_ticks", "mpc_policy_ticks",
                                                                                 "mpc_plans_accepted", "mpc_fallback"))})
        if mpc is not None:
            print("  mpc_node:", {k: mpc[1].get(k) for k in ("solves", "converged", "fallbacks", "iterations_p50", "iterations_max",
                                                              "warm_start.policy", "warm_start.shifted", "solve_time_p50_ms")})
        return 0
    finally:
        probe.close()
        graph.stop("done")
        out.close()


if __name__ == "__main__":
    sys.exit(main())
