"""realtime_priority: the policy node's and the simulator's processes under SCHED_FIFO.

ROS-free: the parameter's checks and :func:`apply_realtime_priority` with ``os.sched_setscheduler``
replaced (every thread set; EPERM → a warning, False, never an exception). With ROS: the real
``ur5_sim`` and ``policy_node`` processes driving each other over DDS (loopback, a domain of their
own), (1) with ``realtime_priority:=10``: every thread of both processes is SCHED_FIFO 10, as seen
from here (``os.sched_getscheduler``); (2) started without the permission (RLIMIT_RTPRIO 0 and
CAP_SYS_NICE dropped from the bounding set, by a wrapper that then execs the node): a warning and
normal scheduling, the nodes running; (3) invalid values: each node refuses to start, naming the
parameter. No timing is asserted (tocpl-mpc-loop-bench measures it, docs/mpc.md).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tocpl_ros.ros.runtime import REALTIME_PRIORITY_DOC, StartupError, apply_realtime_priority, check_realtime_priority

from ros_harness import NodeGroup, SpinningTestNode, node_command, refuse_to_start

ROOT = Path(__file__).resolve().parents[1]
PRIORITY = 10
"""Below ros2_control's default 50: a test must not outrank a real-time process of the machine."""
POLICY_NODE = node_command("policy_node")
UR5_SIM = node_command("ur5_sim")
EFFORT_TOPIC = "/forward_effort_controller/commands"
# Stage 2 runs without CAP_SYS_NICE: exit 77 if SCHED_FIFO is still permitted (the test cannot take
# the permission away here), else exec the node.
_CHECK_AND_EXEC = (
    "import os, sys\n"
    "try:\n"
    "    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))\n"
    "except PermissionError:\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "sys.exit(77)\n"
)
# Stage 1: RLIMIT_RTPRIO 0 and CAP_SYS_NICE out of the bounding set (prctl PR_CAPBSET_DROP = 24,
# CAP_SYS_NICE = 23: allowed with CAP_SETPCAP, refused harmlessly otherwise), then exec stage 2
# (the capabilities of a process are computed at exec from the bounding set).
_DROP_RT = (
    "import ctypes, os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
    "ctypes.CDLL(None, use_errno=True).prctl(24, 23, 0, 0, 0)\n"
    f"os.execv(sys.executable, [sys.executable, '-c', {_CHECK_AND_EXEC!r}, *sys.argv[1:]])\n"
)
WITHOUT_RT_PERMISSION = [sys.executable, "-c", _DROP_RT]
"""Prefix of a command: the command runs without the permission to use SCHED_FIFO."""


class Logger:
    def __init__(self):
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def info(self, message: str) -> None:
        self.infos.append(message)


# ------------------------------------------------------------------------ ROS-free


@pytest.mark.parametrize("value", [0, 1, 50, 99])
def test_valid_priorities(value):
    assert check_realtime_priority(value) == value


@pytest.mark.parametrize("value", [-1, 100, 1.5, True, "50", None])
def test_invalid_priorities_name_the_parameter(value):
    with pytest.raises(StartupError, match=r"parameter 'realtime_priority': must be an integer in 0\.\.99"):
        check_realtime_priority(value)


def test_priority_sets_every_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda tid, policy, param: calls.append((tid, policy, param.sched_priority)))
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    log = Logger()
    try:
        assert apply_realtime_priority(30, log) is True
    finally:
        release.set()
    assert calls[0] == (0, os.SCHED_FIFO, 30)  # this thread first
    assert other.native_id in {tid for tid, _, _ in calls}
    assert all(policy == os.SCHED_FIFO and prio == 30 for _, policy, prio in calls)
    assert not log.warnings and "SCHED_FIFO priority 30" in log.infos[0]
    calls.clear()
    assert apply_realtime_priority(0, log) is False and not calls  # 0: nothing changed


def test_priority_not_permitted_is_a_warning(monkeypatch):
    calls = []

    def refuse(tid, policy, param):
        calls.append(tid)
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    log = Logger()
    assert apply_realtime_priority(50, log) is False
    assert calls == [0]  # refused for this thread: no other thread is touched
    (warning,) = log.warnings
    for fragment in ("realtime_priority 50", "not permitted", "CAP_SYS_NICE", "RLIMIT_RTPRIO >= 50", "normal priority"):
        assert fragment in warning, warning
    assert not log.infos


def test_parameter_declared_and_documented():
    from tocpl_ros.bringup.graph import LAUNCH_ARGUMENTS
    from tocpl_ros.config import field_docs
    from tocpl_ros.ros.nodes.policy_node import NODE_PARAMETERS
    from tocpl_ros.sim.config import SimConfig

    assert NODE_PARAMETERS["realtime_priority"] == (0, REALTIME_PRIORITY_DOC)
    assert "SCHED_FIFO" in REALTIME_PRIORITY_DOC and "warning" in REALTIME_PRIORITY_DOC
    assert SimConfig().realtime_priority == 0 and "SCHED_FIFO" in field_docs(SimConfig)["realtime_priority"]
    for node in ("policy_node", "ur5_sim"):
        params = yaml.safe_load((ROOT / "config" / f"{node}.yaml").read_text())[node]["ros__parameters"]
        assert params["realtime_priority"] == 0, node
    (arg,) = [a for a in LAUNCH_ARGUMENTS if a.name == "realtime_priority"]
    assert "SCHED_FIFO" in arg.description


# ------------------------------------------------------------------------ the nodes


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from tocpl_ros.tasks import load_task
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task("ur5_reach")
    return export_onnx(make_policy(task, seed=3).eval(), task, tmp_path_factory.mktemp("rt_policy") / "policy.onnx")


def fifo_permitted() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


class Listener(SpinningTestNode):
    """Records the effort commands and the nodes' /diagnostics."""

    def __init__(self, domain: int):
        super().__init__(domain, "realtime_test_listener")
        self.record_arrays([EFFORT_TOPIC])
        self.record_diagnostics()
        self.start_spinning()

    def command_count(self) -> int:
        with self.lock:
            return len(self.received[EFFORT_TOPIC])


def start_graph(nodes: NodeGroup, priority: int, policy: Path, prefix: list[str] = ()) -> None:
    """ur5_sim and policy_node (effort, 500 Hz) with ``realtime_priority:=priority``, each command after ``prefix``."""
    nodes.start("ur5_sim", list(prefix) + UR5_SIM + ["--ros-args", "-p", f"realtime_priority:={priority}"])
    nodes.start("policy_node", list(prefix) + POLICY_NODE + [
        "--ros-args", "--params-file", str(ROOT / "config" / "policy_node.yaml"),
        "-p", f"policy_path:={policy}", "-p", f"realtime_priority:={priority}"])


def schedulers(pid: int) -> set[tuple[int, int]]:
    """(policy, priority) of every thread of process ``pid``."""
    seen = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            seen.add((os.sched_getscheduler(int(tid)), os.sched_getparam(int(tid)).sched_priority))
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    return seen


def run_and_stop(nodes: NodeGroup, listener, check) -> None:
    """Wait for commands and diagnostics, ``check(name, proc, log_text)`` each node, SIGINT: exit 0."""
    for name in nodes.procs:
        nodes.wait(lambda: "real-time scheduling" in nodes.text(name) or "realtime_priority" in nodes.text(name), 60,
                   f"{name} to start")
    nodes.wait(lambda: listener.command_count() > 200
               and "command_gaps_over_2_periods" in (listener.last_diag("policy_node") or {}), 60, "commands and diagnostics")
    for name, proc in nodes.procs.items():
        check(name, proc, nodes.text(name))
    for name in nodes.procs:
        code = nodes.stop(name)
        text = nodes.text(name)
        assert code == 0 and "Traceback" not in text, f"{name}: exit {code}\n{text[-3000:]}"


def test_nodes_run_under_sched_fifo(policy, ros_node_env, tmp_path):
    if not fifo_permitted():
        pytest.skip("SCHED_FIFO is not permitted here (no CAP_SYS_NICE, RLIMIT_RTPRIO 0)")
    domain, env = ros_node_env(71)
    with NodeGroup(env, tmp_path) as nodes, Listener(domain) as listener:
        start_graph(nodes, PRIORITY, policy)

        def check(name, proc, text):
            assert f"SCHED_FIFO priority {PRIORITY} on the" in text, text[-3000:]
            assert os.sched_getscheduler(proc.pid) == os.SCHED_FIFO, name
            # every thread: the executor's, the timers', the middleware's (started before and after)
            assert schedulers(proc.pid) == {(os.SCHED_FIFO, PRIORITY)}, (name, schedulers(proc.pid))

        run_and_stop(nodes, listener, check)


def test_not_permitted_is_a_warning_and_the_nodes_run(policy, ros_node_env, tmp_path):
    domain, env = ros_node_env(73)
    with NodeGroup(env, tmp_path) as nodes:
        start_graph(nodes, PRIORITY, policy, prefix=WITHOUT_RT_PERMISSION)
        time.sleep(1.0)
        if any(proc.poll() == 77 for proc in nodes.procs.values()):
            pytest.skip("SCHED_FIFO stays permitted here even with RLIMIT_RTPRIO 0 and CAP_SYS_NICE dropped")
        with Listener(domain) as listener:

            def check(name, proc, text):
                assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{text[-3000:]}"
                warning = f"realtime_priority {PRIORITY}: not permitted to use SCHED_FIFO"
                assert warning in text and "running at normal priority" in text, text[-3000:]
                assert "WARN" in next(line for line in text.splitlines() if warning in line)
                assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER, name

            run_and_stop(nodes, listener, check)


def test_invalid_priorities_refused_at_start(policy, ros_node_env):
    """Out of range or not an integer: each node refuses to start, naming the parameter."""
    _, env = ros_node_env(79)
    cases = {
        "policy 100": (POLICY_NODE, ["-p", f"policy_path:={policy}", "-p", "realtime_priority:=100"], 2, "0..99"),
        "policy -1": (POLICY_NODE, ["-p", f"policy_path:={policy}", "-p", "realtime_priority:=-1"], 2, "0..99"),
        "policy text": (POLICY_NODE, ["-p", f"policy_path:={policy}", "-p", "realtime_priority:=high"], 2, "an integer"),
        "sim 100": (UR5_SIM, ["-p", "realtime_priority:=100"], 2, "0..99"),
        "sim 2.5": (UR5_SIM, ["-p", "realtime_priority:=2.5"], 2, "realtime_priority"),
    }
    results = refuse_to_start({name: command + ["--ros-args", *args] for name, (command, args, _, _) in cases.items()}, env)
    for name, (code, out, err) in results.items():
        want, fragment = cases[name][2], cases[name][3]
        assert code == want, f"{name}: exit {code}\n{out}\n{err}"
        assert "realtime_priority" in err and fragment in err and "Traceback" not in err, f"{name}: {err}"
