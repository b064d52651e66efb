"""``tocpl-inference-bench``: how long one policy inference takes, back to back and at a control rate.

The policy node runs one onnxruntime inference per tick and sleeps in between; timed inside the
node (``tocpl-load-bench``) it takes several times what a tight loop of the same call measures
(docs/ros.md, "Policy node timing").
This benchmark times the node's call (``session.run`` on a batch of one, one thread, the options
of :class:`tocpl_ros.policy_file.OnnxPolicy`) in the same process in three regimes, so the gap
can be told apart from the node's own overhead:

- ``back to back``: calls in a tight loop (warm caches, a busy core);
- ``busy-wait P``: a ``P``-second busy wait before each call (the core stays awake, the
  interpreter's own work in between);
- ``sleep P``: ``time.sleep(P)`` before each call (what the node's timer does between ticks:
  the core may idle or run another process, and the call then starts cold).

Printed per regime: median, p99 and the ratio of medians to back to back. Figures are wall times
on this machine under its current load (printed): compare them with each other.

Example::

    tocpl-inference-bench --policy runs/demo/policy.onnx --period 0.001
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from tocpl_ros.policy_file import INPUT_NAME, OUTPUT_NAME, OnnxPolicy, PolicyFileError


def time_calls(policy: OnnxPolicy, calls: int, pause: float = 0.0, sleep: bool = False) -> np.ndarray:
    """Durations (s) of ``calls`` single-observation inferences, each after ``pause`` seconds of
    sleep (``sleep``) or busy wait."""
    session = policy.session
    obs = np.zeros((1, policy.obs_dim), dtype=np.float32)
    durations = np.empty(calls)
    for i in range(calls):
        if pause > 0 and sleep:
            time.sleep(pause)
        elif pause > 0:
            until = time.perf_counter() + pause
            while time.perf_counter() < until:
                pass
        t0 = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: obs})
        durations[i] = time.perf_counter() - t0
    return durations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tocpl-inference-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the .onnx policy (tocpl-export)")
    parser.add_argument("--period", type=float, default=0.001, help="pause before each call in s (default 0.001: 1 kHz)")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per regime (default 3000)")
    args = parser.parse_args(argv)
    if args.calls < 10 or not args.period > 0:
        print("tocpl-inference-bench: --calls must be >= 10 and --period > 0", file=sys.stderr)
        return 2
    try:
        policy = OnnxPolicy(args.policy)
    except (PolicyFileError, OSError) as exc:
        print(f"tocpl-inference-bench: {exc}", file=sys.stderr)
        return 2
    time_calls(policy, 200)  # warm-up: first calls allocate
    load = os.getloadavg()[0]
    print(f"tocpl-inference-bench: {args.policy} (obs {policy.obs_dim}, nu {policy.nu}), batch 1, 1 thread; "
          f"{args.calls} calls per regime; load average {load:.2f} on {os.cpu_count()} CPUs")
    regimes = {
        "back to back": dict(pause=0.0),
        f"busy-wait {args.period * 1e3:g} ms": dict(pause=args.period),
        f"sleep {args.period * 1e3:g} ms": dict(pause=args.period, sleep=True),
    }
    base = None
    print(f"  {'regime':<20} {'median us':>10} {'p99 us':>10} {'x back to back':>15}")
    for name, kwargs in regimes.items():
        d = time_calls(policy, args.calls, **kwargs) * 1e6
        median, p99 = float(np.median(d)), float(np.percentile(d, 99))
        base = base or median
        print(f"  {name:<20} {median:>10.1f} {p99:>10.1f} {median / base:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
