"""``tocpl-load-bench``: the policy node's control loop under CPU load.

Runs the real ``policy_node`` (its Node class and the EventsExecutor it uses by default, in
this process) at ``--rate`` (default 1 kHz) driving the simulated UR5 (``ur5_sim``, a separate
process, DDS on loopback) for ``--duration`` seconds, while ``--busy`` processes (default 2:
both cores of this machine) spin in ``while True: pass``. They are started after the node is
up and stopped (SIGKILL, by pid) at the end of the run. ``--no-load``: the baseline without
them; ``--both``: the baseline, then the loaded run, side by side.

Measured in the node's own timer callback (a thin subclass records the time of every tick;
nothing else changes): loop period p50/p99/max, missed deadlines (periods > 2x nominal, count
and %), time spent in the tick; from the controller: policy inference and whole compute()
times; the process' RSS at the start and end of the measured window (sampled every 5 s too:
growth would show); the /joint_states subscription (sensor-data QoS, keep last 5): messages
received vs published by the simulator, age of the newest state at each tick, ticks on stale
data (safe command).

The busy processes run at the niceness this command runs at (no nice of their own): run it as
``nice -n 19 tocpl-load-bench ...`` and node and load compete at the same priority.

Example::

    tocpl-load-bench --policy runs/demo/policy.onnx --duration 60 --both
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tocpl_ros.resources import console_command
from tocpl_ros.ros.environment import apply_loopback_defaults, derive_domain_id, loopback_ros_env

DEFAULT_TARGET = (0.5, 0.1, 0.4)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process (this one by default) in MiB, from /proc."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return math.nan


def _percentiles(values: np.ndarray, scale: float = 1.0) -> dict[str, float]:
    if len(values) == 0:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
    v = np.asarray(values, dtype=float) * scale
    return {"n": int(len(v)), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
            "max": float(v.max()), "mean": float(v.mean())}


def start_busy(n: int) -> list[subprocess.Popen]:
    """n processes spinning a CPU each (``python -S``: no site, so no venv bootstrap re-exec)."""
    return [subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


def stop_processes(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass



def run_once(args: argparse.Namespace, load: int, domain: int, log_dir: Path) -> dict:
    """One measured run with ``load`` busy processes; returns the figures."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from tocpl_ros.ros.nodes.policy_node import PolicyNode

    env = loopback_ros_env({k: v for k, v in os.environ.items()}, domain_id=domain)
    label = f"load{load}"
    sim_log = open(log_dir / f"ur5_sim_{label}.log", "w")
    sim_cmd = console_command("ur5_sim", "tocpl_ros.ros.nodes.ur5_sim") + ["--ros-args", "-p", f"publish_rate:={args.js_rate}"]
    for p in args.sim_param:
        sim_cmd += ["-p", p]
    sim = subprocess.Popen(sim_cmd, env=env, stdout=sim_log, stderr=subprocess.STDOUT)
    busy: list[subprocess.Popen] = []
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = executor = None
    try:
        capacity = int(args.rate * (args.duration + 30)) + 1000

        class InstrumentedPolicyNode(PolicyNode):  # the real node; each tick's start time and duration recorded
            def __init__(self, **kwargs):
                self.tick_start = np.zeros(capacity)
                self.tick_time = np.zeros(capacity)
                self.state_age = np.full(capacity, math.nan)
                self.published_after = np.zeros(capacity, dtype=np.int64)  # commands published after each tick
                self.n_ticks = 0
                super().__init__(**kwargs)

            def _tick(self):
                t = time.monotonic()
                i = self.n_ticks
                if i < capacity:
                    self.tick_start[i] = t
                    self.state_age[i] = self.controller.age(t)
                super()._tick()
                if i < capacity:
                    self.tick_time[i] = time.monotonic() - t
                    self.published_after[i] = self.published
                    self.n_ticks = i + 1

        overrides = [
            Parameter("policy_path", value=str(args.policy)),
            Parameter("rate", value=float(args.rate)),
            Parameter("initial_target", value=[float(x) for x in args.target]),
            Parameter("executor", value=args.executor),
        ]
        node = InstrumentedPolicyNode(context=context, parameter_overrides=overrides)
        if args.executor == "events":
            from rclpy.experimental import EventsExecutor

            executor = EventsExecutor(context=context)
        else:
            executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        def spin_for(seconds: float, until=None) -> bool:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
                if until is not None and until():
                    return True
                if sim.poll() is not None:
                    raise RuntimeError(f"ur5_sim exited ({sim.returncode}); see {sim_log.name}")
            return until is None

        if not spin_for(90.0, lambda: node.controller.stats.policy_ticks > 100):
            raise RuntimeError(f"the policy node did not start driving the simulator within 90 s (state "
                               f"{node.controller.state}: {node.controller.last_reason}); see {sim_log.name}")
        busy = start_busy(load)
        spin_for(1.0)  # settle under the load
        stats = node.controller.stats
        i0 = node.n_ticks
        before = dict(accepted=stats.accepted_states, rejected=stats.rejected_total, policy=stats.policy_ticks,
                      safe=stats.safe_ticks, stale=stats.safe_reasons["stale"])
        stats.inference.clear()
        stats.compute.clear()
        rss = [(0.0, rss_mb())]
        t0 = time.monotonic()
        next_sample = t0 + 5.0
        while time.monotonic() - t0 < args.duration:
            executor.spin_once(timeout_sec=0.05)
            if time.monotonic() >= next_sample:
                rss.append((time.monotonic() - t0, rss_mb()))
                next_sample += 5.0
            if sim.poll() is not None:
                raise RuntimeError(f"ur5_sim exited ({sim.returncode}) during the run; see {sim_log.name}")
        elapsed = time.monotonic() - t0
        rss.append((elapsed, rss_mb()))
        busy_pids = [p.pid for p in busy]
        busy_alive = sum(p.poll() is None for p in busy)
        stop_processes(busy)
        i1 = node.n_ticks
        nominal = 1.0 / args.rate
        starts = node.tick_start[i0:i1]
        periods = np.diff(starts)
        missed = int((periods > 2 * nominal).sum())
        ages = node.state_age[i0:i1]
        ages = ages[np.isfinite(ages)]
        received = stats.accepted_states + stats.rejected_total - before["accepted"] - before["rejected"]
        expected = args.js_rate * elapsed
        result = {
            "load_processes": load,
            "busy_alive_at_end": busy_alive,
            "busy_pids": busy_pids,
            "duration_s": elapsed,
            "rate_hz": args.rate,
            "ticks": int(i1 - i0),
            "period_ms": _percentiles(periods, 1e3),
            "missed_deadlines": missed,
            "missed_pct": 100.0 * missed / max(len(periods), 1),
            "overruns_1_5x": int((periods > 1.5 * nominal).sum()),
            "tick_time_us": _percentiles(node.tick_time[i0:i1], 1e6),
            "inference_us": _percentiles(stats.inference.values(), 1e6),
            "compute_us": _percentiles(stats.compute.values(), 1e6),
            "rss_mb_start": rss[0][1],
            "rss_mb_end": rss[-1][1],
            "rss_mb_max": max(r for _, r in rss),
            "rss_samples": rss,
            "joint_states_received": int(received),
            "joint_states_published_by_sim": expected,  # nominal: js_rate x duration (a starved simulator sends fewer)
            "joint_states_received_pct": 100.0 * received / expected if expected else math.nan,
            "state_age_ms": _percentiles(ages, 1e3),
            "policy_ticks": stats.policy_ticks - before["policy"],
            "safe_ticks": stats.safe_ticks - before["safe"],
            "stale_ticks": stats.safe_reasons["stale"] - before["stale"],
            # per tick, not node.published: the node's loop thread runs on while this one reads
            "commands_published": int(node.published_after[i1 - 1] - node.published_after[i0 - 1]) if i0 > 0 else 0,
        }
        return result
    finally:
        stop_processes(busy)
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_processes([sim])
        sim_log.close()


ROWS = [
    ("busy processes", lambda r: f"{r['load_processes']}"),
    ("measured", lambda r: f"{r['duration_s']:.1f} s, {r['ticks']} ticks"),
    ("loop period p50 / p99 / max (ms)", lambda r: "{p50:.3f} / {p99:.3f} / {max:.2f}".format(**r["period_ms"])),
    ("missed deadlines (> 2x period)", lambda r: f"{r['missed_deadlines']} ({r['missed_pct']:.2f} %)"),
    ("periods > 1.5x", lambda r: f"{r['overruns_1_5x']}"),
    ("tick callback p50 / p99 / max (us)", lambda r: "{p50:.0f} / {p99:.0f} / {max:.0f}".format(**r["tick_time_us"])),
    ("inference p50 / p99 / max (us)", lambda r: "{p50:.1f} / {p99:.1f} / {max:.0f}".format(**r["inference_us"])),
    ("compute() p50 / p99 / max (us)", lambda r: "{p50:.0f} / {p99:.0f} / {max:.0f}".format(**r["compute_us"])),
    ("RSS start / end / max (MiB)", lambda r: f"{r['rss_mb_start']:.1f} / {r['rss_mb_end']:.1f} / {r['rss_mb_max']:.1f}"),
    ("/joint_states received / nominal", lambda r: f"{r['joint_states_received']} / {r['joint_states_published_by_sim']:.0f} "
                                                f"({r['joint_states_received_pct']:.1f} %)"),
    ("state age at tick p50 / p99 / max (ms)", lambda r: "{p50:.2f} / {p99:.2f} / {max:.1f}".format(**r["state_age_ms"])),
    ("policy / safe ticks (stale)", lambda r: f"{r['policy_ticks']} / {r['safe_ticks']} ({r['stale_ticks']})"),
    ("commands published", lambda r: f"{r['commands_published']}"),
]


def format_table(results: list[dict]) -> str:
    headers = ["", *("no load" if r["load_processes"] == 0 else f"{r['load_processes']} busy processes" for r in results)]
    rows = [[name, *(fmt(r) for r in results)] for name, fmt in ROWS[1:]]
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tocpl-load-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, type=Path, help="the .onnx policy (tocpl-export) the node runs")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds per run (default 60)")
    parser.add_argument("--rate", type=float, default=1000.0, help="control rate of the policy node, Hz (default 1000)")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes of the loaded run (default 2: both cores)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-load", action="store_true", help="only the baseline, no busy processes")
    group.add_argument("--both", action="store_true", help="the baseline, then the loaded run")
    parser.add_argument("--js-rate", type=float, default=500.0, help="ur5_sim /joint_states rate, Hz (default 500)")
    parser.add_argument("--sim-param", action="append", default=[], metavar="KEY:=VALUE",
                        help="extra ur5_sim parameter (repeatable), e.g. damping:=5.0")
    parser.add_argument("--target", type=lambda s: [float(x) for x in s.split(",")], default=list(DEFAULT_TARGET),
                        help="initial target x,y,z (m, base frame; default 0.5,0.1,0.4)")
    parser.add_argument("--executor", choices=("events", "single"), default="events", help="rclpy executor (node default: events)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: derived from the pid)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--log-dir", type=Path, default=None, help="where ur5_sim logs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not args.policy.is_file():
        parser.error(f"policy file not found: {args.policy}")
    if len(args.target) != 3:
        parser.error("--target needs x,y,z")
    if args.duration <= 0 or args.rate <= 0 or args.busy < 0:
        parser.error("--duration and --rate must be > 0, --busy >= 0")
    args.policy = args.policy.resolve()
    domain = args.domain_id if args.domain_id is not None else derive_domain_id()
    apply_loopback_defaults(domain)  # before rclpy.init: DDS on loopback, one domain for node and simulator
    import tempfile

    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="tocpl-load-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    loads = [0] if args.no_load else [0, args.busy] if args.both else [args.busy]
    results = []
    for load in loads:
        print(f"[tocpl-load-bench] policy_node at {args.rate:g} Hz for {args.duration:g} s, {load} busy process(es), "
              f"ROS_DOMAIN_ID {domain}, nice {os.nice(0)} ...", flush=True)
        results.append(run_once(args, load, domain, log_dir))
    print()
    print(format_table(results))
    print(f"\nnominal period {1e3 / args.rate:g} ms; missed deadline = a period > 2x nominal; inference = onnxruntime "
          f"run of the last 5000 policy ticks; state age = time since the newest accepted /joint_states at each tick")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
