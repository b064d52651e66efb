"""``tocpl-bringup``: start a node graph of tocpl_ros as processes (``ros2 launch`` without ``launch``).

    tocpl-bringup ur5_policy policy:=runs/demo/policy.onnx target:=0.4,0.1,0.5 use_mpc:=false
    tocpl-bringup ur5_policy --show-args
    tocpl-bringup ur5_policy policy:=p.onnx --dry-run

The graph and its parameters come from :func:`tocpl_ros.bringup.graph.graph_for`, like
``launch/ur5_policy.launch.py``. Each node runs as
``<executable> --ros-args --log-level L -r __node:=<name> --params-file <config/...yaml> -p k:=v ...``;
the executable is looked for next to this Python (a venv's bin/), in a colcon install
(``<prefix>/lib/tocpl_ros/`` of every AMENT_PREFIX_PATH entry) and on PATH. All of them are
checked before anything starts.

Every node gets the same ROS_DOMAIN_ID (the one set, else one derived for this run) and
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless the environment sets it: DDS stays on
loopback by default. Node output is printed line by line, prefixed with ``[node name]``.

When a node exits, or on Ctrl-C / SIGTERM, all nodes are stopped: SIGINT, then SIGTERM
after ``--sigterm-timeout`` s, then SIGKILL after ``--sigkill-timeout`` s more (a second
Ctrl-C skips to SIGKILL). Exit status: 0 when stopped cleanly, 1 when a node failed (exited
by itself with a non-zero status, or had to be killed), 2 for bad arguments or a missing
executable.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from tocpl_ros.bringup.graph import GRAPHS, BringupError, graph_for, launch_arguments
from tocpl_ros.bringup.processes import PROG, Bringup

__all__ = ["parse_launch_args", "build_parser", "main"]


def parse_launch_args(items: Sequence[str]) -> dict[str, str]:
    """``["policy:=x.onnx", "use_mpc:=true"]`` -> {"policy": "x.onnx", "use_mpc": "true"}.
    BringupError for an item without ``:=``, an empty name or a name given twice."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        name = name.strip()
        if not sep:
            hint = f" (did you mean '{item.replace('=', ':=', 1)}'?)" if "=" in item else ""
            raise BringupError(f"launch arguments are written name:=value, got {item!r}{hint}")
        if not name:
            raise BringupError(f"launch argument without a name: {item!r}")
        if name in values:
            raise BringupError(f"launch argument '{name}' given twice ({values[name]!r} and {value!r})")
        values[name] = value
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start a tocpl_ros node graph as processes, like `ros2 launch tocpl_ros <graph>.launch.py`.",
        epilog="Graphs: " + "; ".join(f"{k}: {v[2]}" for k, v in GRAPHS.items())
        + ". Launch arguments (name:=value): see --show-args.",
    )
    parser.add_argument("graph", help=f"graph to start ({', '.join(GRAPHS)}; '<graph>.launch.py' works too)")
    parser.add_argument("launch_args", nargs="*", metavar="name:=value", help="launch arguments")
    parser.add_argument("-s", "--show-args", action="store_true", help="list the launch arguments and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the node command lines and exit")
    parser.add_argument("--sigterm-timeout", type=float, default=5.0, metavar="S",
                        help="seconds after SIGINT before SIGTERM (default: 5)")
    parser.add_argument("--sigkill-timeout", type=float, default=5.0, metavar="S",
                        help="seconds after SIGTERM before SIGKILL (default: 5)")
    return parser


def show_args(graph: str) -> str:
    lines = [f"Arguments of {graph} (name:=value):"]
    for arg in launch_arguments(graph):
        lines.append(f"    '{arg.name}':")
        lines.append(f"        {arg.description}")
        if arg.choices:
            lines.append(f"        Valid choices are: {', '.join(arg.choices)}")
        lines.append(f"        (default: '{arg.default}')")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.show_args:
            print(show_args(args.graph))
            return 0
        values = parse_launch_args(args.launch_args)
        specs = graph_for(args.graph, **values)
        bringup = Bringup(specs, sigterm_timeout=args.sigterm_timeout, sigkill_timeout=args.sigkill_timeout)
    except BringupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for spec, command in zip(specs, bringup.commands):
            print(f"{spec.name}: {' '.join(command)}")
        return 0

    def on_signal(signum, frame):
        bringup.interrupt()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        bringup.start()
        return bringup.run()
    finally:
        bringup.stop("exiting")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
