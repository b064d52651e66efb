"""What the ROS node tests share: an in-process rclpy test node that spins in a background
thread, and the helpers around the node processes under test.

A plain module next to the tests (test/ is no package): pytest's default import mode puts
test/ on sys.path, so the test modules import it as ``from ros_harness import ...``.
rclpy is imported inside the methods, so importing this module needs no ROS.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tocpl_ros.interfaces import COMMAND_TOPICS
from tocpl_ros.resources import console_command
from tocpl_ros.ros.environment import DISCOVERY_RANGE_VAR, derive_domain_id, loopback_ros_env
from tocpl_ros.ros.probe import SpinningNode


class SpinningTestNode(SpinningNode):
    """The tests' in-process rclpy node (tocpl_ros.ros.probe.SpinningNode: own context on
    ``domain``, no signal handlers, a background spin thread), with what the tests record:

    - ``record_arrays(topics)``: every Float64MultiArray on these topics (reliable, depth 1000) as
      (arrival time, values) in ``self.received[topic]``; ``arrays_since`` / ``arrays_between``;
    - ``record_diagnostics()``: every /diagnostics status as (arrival time, node name before ':',
      values + {"stamp": the message's stamp in s}, level) in ``self.diagnostics``; ``last_diag`` /
      ``diags_since``.

    A subclass sets these up on ``self.node``, then calls ``start_spinning()``. Usable as a
    context manager (closed on exit)."""

    def __init__(self, domain: int, name: str, *, record_errors: bool = False):
        super().__init__(domain, name, record_errors=record_errors)
        self.received: dict[str, list[tuple[float, np.ndarray]]] = {}
        self.diagnostics: list[tuple[float, str, dict, int]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record_arrays(self, topics) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64MultiArray

        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        for topic in topics:
            self.received[topic] = []
            self.node.create_subscription(Float64MultiArray, topic, lambda m, t=topic: self._on_array(t, m), reliable)

    def _on_array(self, topic: str, msg) -> None:
        values = np.array(msg.data, dtype=float)
        with self.lock:
            self.received[topic].append((time.monotonic(), values))

    def arrays_since(self, topic: str, t: float) -> list[tuple[float, np.ndarray]]:
        # the list grows by 500 a second and is polled every few ms: copy the tail only (times are
        # in order), or the GIL this takes starves the executor
        with self.lock:
            received = self.received[topic]
            return received[bisect.bisect_left(received, t, key=lambda c: c[0]):]

    def arrays_between(self, topic: str, t0: float, t1: float) -> list[np.ndarray]:
        return [v for tc, v in self.arrays_since(topic, t0) if tc < t1]

    def record_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 100)

    def _on_diag(self, msg) -> None:
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec  # the node's clock
        now = time.monotonic()
        with self.lock:
            for s in msg.status:
                values = {kv.key: kv.value for kv in s.values} | {"stamp": stamp}
                self.diagnostics.append((now, s.name.split(":")[0], values, s.level))

    def diags_since(self, name: str, t: float = -math.inf) -> list[dict]:
        """The values of node ``name``'s diagnostics received from ``t`` on, oldest first."""
        with self.lock:
            return [d for tc, n, d, _ in self.diagnostics if n == name and tc >= t]

    def last_diag(self, name: str, after: float = -math.inf) -> dict | None:
        found = self.diags_since(name, after)
        return found[-1] if found else None


EFFORT_TOPIC, VELOCITY_TOPIC = COMMAND_TOPICS["effort"], COMMAND_TOPICS["velocity"]


class SimProbe(SpinningTestNode):
    """Drives the simulator node: records its /joint_states messages as (arrival time, message)
    in ``states``, publishes commands on the effort and velocity topics, calls its reset."""

    def __init__(self, domain: int, name: str = "ur5_sim_test_probe"):
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        super().__init__(domain, name)
        self.Float64MultiArray = Float64MultiArray
        self.states: list[tuple[float, object]] = []
        self.node.create_subscription(JointState, "/joint_states", self._on_state, qos_profile_sensor_data)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {t: self.node.create_publisher(Float64MultiArray, t, qos) for t in (EFFORT_TOPIC, VELOCITY_TOPIC)}
        self.start_spinning()

    def _on_state(self, msg) -> None:
        with self.lock:
            self.states.append((time.monotonic(), msg))

    def latest(self):
        with self.lock:
            return self.states[-1][1]

    def messages(self, since: int = 0) -> list:
        """The joint-state messages from index ``since`` on."""
        with self.lock:
            return [msg for _, msg in self.states[since:]]

    def clear(self) -> None:
        with self.lock:
            self.states.clear()

    def publish(self, topic: str, values) -> None:
        pub = self.pubs[topic]
        assert self.wait_for(lambda: pub.get_subscription_count() > 0, 10.0), f"nobody subscribes {topic}"
        pub.publish(self.Float64MultiArray(data=[float(x) for x in values]))


def sim_process(env: dict[str, str], *ros_params_: str) -> OutputProcess:
    """The ur5_sim node with these parameters (``name:=value``), its stderr collected."""
    return OutputProcess(node_command("ur5_sim") + ["--ros-args", *ros_params(*ros_params_)], env, stderr=True)


def check_sim_exit(node: OutputProcess, code: int) -> None:
    """The simulator node after SIGINT: exit status 0, its summary line with physics steps and joint
    states (their rates depend on this machine's load: printed, not asserted), no traceback."""
    assert code == 0, node.text
    match = node.wait_for_line(r"(\d+) physics steps \(([\d.]+) Hz\), (\d+) joint states \(([\d.]+) Hz\)", 1.0)
    assert match, node.text
    print(f"node summary: {match.group(0)}")
    assert int(match.group(1)) > 0 and int(match.group(3)) > 0, match.group(0)
    assert "Traceback" not in node.text


UR5_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]
UR5_Q0 = np.array([0.0, -1.2, 1.6, -0.4, 1.57, 0.0])
"""The UR5 configuration the node tests hold the robot at."""


class JointStateFeed(SpinningTestNode):
    """Plays the robot for a node under test: publishes ``/joint_states`` of UR5_JOINTS at
    ``rate`` while ``publishing`` is set (position ``q``, zero velocity, a new joint order every
    message: the order on the wire is not guaranteed), and records the Float64MultiArray
    commands on ``command_topic`` as (arrival time, values). Faults to inject:
    ``bad_burst = n``: the next n messages carry a NaN/Inf/1e300 position; ``backwards``: stamps
    go back 1 ms per message; ``wrong_length_every = n``: every n-th message has 5 positions.

    A subclass adds its own subscriptions on ``self.node``, then calls ``start_spinning()``."""

    def __init__(self, domain: int, name: str, command_topic: str, rate: float):
        from geometry_msgs.msg import PointStamped
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState

        super().__init__(domain, name)
        self.JointState, self.PointStamped = JointState, PointStamped
        self.command_topic = command_topic
        self.record_arrays([command_topic])
        self.commands = self.received[command_topic]  # (arrival time, values), the list itself
        self.js_sent: list[float] = []
        self.publishing = threading.Event()
        self.q = UR5_Q0.copy()
        self.bad_burst = 0
        self.backwards = False
        self.wrong_length_every = 0
        self._sent = 0
        self._stamp_base = None
        self.js_pub = self.node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.target_pub = self.node.create_publisher(PointStamped, "/target", 10)
        self.node.create_timer(1.0 / rate, self._publish_joint_state)

    def _publish_joint_state(self):
        if not self.publishing.is_set():
            return
        msg = self.JointState()
        now = self.node.get_clock().now()
        if self.backwards:
            if self._stamp_base is None:
                self._stamp_base = now.nanoseconds - 10**9
            self._stamp_base -= 10**6
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(self._stamp_base, 10**9)
        else:
            self._stamp_base = None
            msg.header.stamp = now.to_msg()
        self._sent += 1
        perm = np.random.permutation(6)
        q = self.q.copy()
        if self.bad_burst > 0:
            self.bad_burst -= 1
            q[self.bad_burst % 6] = [math.nan, math.inf, 1e300][self.bad_burst % 3]
        msg.name = [UR5_JOINTS[i] for i in perm]
        msg.position = [float(q[i]) for i in perm]
        msg.velocity = [0.0] * 6
        if self.wrong_length_every and self._sent % self.wrong_length_every == 0:
            msg.position = msg.position[:5]
        self.js_pub.publish(msg)
        with self.lock:
            self.js_sent.append(time.monotonic())

    def send_target(self, xyz):
        msg = self.PointStamped()
        msg.header.frame_id = "base_link"
        msg.point.x, msg.point.y, msg.point.z = (float(v) for v in xyz)
        self.target_pub.publish(msg)

    def commands_since(self, t: float) -> list[tuple[float, np.ndarray]]:
        return self.arrays_since(self.command_topic, t)

    def commands_between(self, t0: float, t1: float) -> list[np.ndarray]:
        return self.arrays_between(self.command_topic, t0, t1)

    def last_command(self) -> np.ndarray:
        with self.lock:
            return self.commands[-1][1]


def assert_node_imports_none(node_module: str, forbidden: tuple[str, ...]) -> None:
    """A fresh Python that imports ``tocpl_ros.ros.nodes.<node_module>`` (its node class)
    has none of the ``forbidden`` packages loaded (a robot computer need not carry them)."""
    code = (
        f"import sys; from tocpl_ros.ros.nodes import {node_module} as m; "
        f"bad = [k for k in sys.modules if k.split('.')[0] in {forbidden!r}]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


DOMAINS_VAR = "TOCPL_TEST_DOMAINS"
"""``lo-hi`` (e.g. ``60-69``): the ROS domains the tests may use, on a machine whose other
domains belong to other users. Unset: any domain in 1..100."""


def domain_for(session_domain: int, offset: int) -> int:
    """The ROS domain of a test: derived from the session's domain and the test's ``offset`` (each
    node test its own), within TOCPL_TEST_DOMAINS if set."""
    bounds = os.environ.get(DOMAINS_VAR, "").strip()
    if not bounds:
        return derive_domain_id(session_domain + offset)
    lo, hi = (int(x) for x in bounds.split("-"))
    if lo > hi:
        raise ValueError(f"{DOMAINS_VAR}={bounds!r}: expected lo-hi")
    return lo + (session_domain + offset) % (hi - lo + 1)


def quiet_harness(make, session_domain: int, offset: int, **kwargs):
    """``(make(domain, **kwargs), domain)`` on a domain (derived from ``session_domain`` and
    ``offset``) where no other ROS node shows up for 1 s (other test runs on this machine choose
    domains the same way: a shared one would mix their topics with ours). ``make``: a
    SpinningNode class or factory."""
    for attempt in range(10):
        domain = domain_for(session_domain, offset + 7 * attempt)
        harness = make(domain, **kwargs)
        time.sleep(1.0)
        if not harness.other_nodes():
            return harness, domain
        harness.close()
    pytest.fail("no quiet ROS domain found (10 tried)")


def node_env(domain: int) -> dict[str, str]:
    """The environment of a node process on ``domain``, DDS on loopback."""
    base = {k: v for k, v in os.environ.items() if k != DISCOVERY_RANGE_VAR}
    env = loopback_ros_env(base, domain_id=domain)
    assert env[DISCOVERY_RANGE_VAR] == "LOCALHOST"
    env["PYTHONFAULTHANDLER"] = "1"  # wait_for() asks a stuck node for its Python stacks
    return env


def node_command(name: str) -> list[str]:
    """The command of console script ``name`` of tocpl_ros.ros.nodes (ur5_sim, policy_node, mpc_node)."""
    return console_command(name, f"tocpl_ros.ros.nodes.{name}")


def ros_params(*assignments: str) -> list[str]:
    """``-p a:=1 -p b:=2`` for ``ros_params("a:=1", "b:=2")``."""
    return [arg for a in assignments for arg in ("-p", a)]


def target_param(target) -> str:
    return f"initial_target:=[{', '.join(map(str, target))}]"


def start_node(command: list[str], env: dict[str, str], log: Path, append: bool = False) -> subprocess.Popen:
    """``command`` as a process, stdout and stderr into ``log``."""
    with open(log, "a" if append else "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log: Path):
    """``with running(...) as proc:`` start_node(), the process killed on exit if it still runs."""
    proc = start_node(command, env, log)
    try:
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen | None, grace: float = 0.0) -> None:
    """Stop ``proc`` if it still runs (None: never started) and reap it: killed at once, or with
    ``grace`` > 0 given Ctrl-C first and killed if still running ``grace`` s later (a tocpl-bringup
    stops its nodes on Ctrl-C; killed outright it would leave them running)."""
    if proc is None or proc.poll() is not None:
        return
    if grace > 0:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(timeout=10)


@contextlib.contextmanager
def arm_policy(env: dict[str, str], log: Path, robot: str, policy, target, *arguments: str):
    """``tocpl-bringup arm_policy robot:=ROBOT policy:=... target:=...`` (3 values, or a pose's 7:
    x, y, z, qx, qy, qz, qw) and further ``name:=value`` arguments, as a process, its output in
    ``log``; Ctrl-C at the end, after which it must exit 0."""
    exe = Path(sys.executable).parent / "tocpl-bringup"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "tocpl_ros.bringup.cli"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd + ["arm_policy", f"robot:={robot}", f"policy:={policy}", "target:=" + ",".join(f"{x:.6f}" for x in target),
                   "realtime_priority:=0", *arguments, "--sigterm-timeout", "5", "--sigkill-timeout", "5"],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        stop_process(proc, grace=30)
        kill_left_nodes(log)
    assert proc.returncode == 0, log.read_text()[-3000:]


def kill_left_nodes(log: Path) -> list[int]:
    """SIGKILL the nodes a tocpl-bringup logged as started ('started NAME (pid N)') that still run:
    each node is a session of its own, so a bringup killed outright (wait_for's SIGABRT) leaves them
    running, publishing on the test's domain. Returns the pids killed."""
    killed = []
    for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", log.read_text() if log.exists() else ""):
        try:
            if name not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                continue  # gone, its pid reused by another process
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return killed


def tail(log: Path, chars: int = 3000) -> str:
    return f"--- {log.name} ---\n" + (log.read_text()[-chars:] if log.exists() else "")


def wait_for(predicate, timeout: float, what: str, proc=None, log=None) -> float:
    """Poll ``predicate`` until true and return the time it was; AssertionError (with the tails of
    the logs) on timeout or once a process has exited. ``proc``/``log``: a Popen and its log, or
    {name: Popen} and {name: log}.

    A process still running at the timeout gets SIGABRT: with PYTHONFAULTHANDLER (node_env())
    it writes every thread's Python stack to its log first, so a node stuck in start-up (seen
    once in a full test run: nothing logged in 60 s) says where."""
    procs = proc if isinstance(proc, dict) else {"node": proc}
    logs = log if isinstance(log, dict) else {"node": log}
    procs = {n: p for n, p in procs.items() if p is not None}
    logs = {n: f for n, f in logs.items() if f is not None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            raise AssertionError(f"{what}: {dead} exited\n" + "\n".join(tail(logs[n]) for n in dead if n in logs))
        time.sleep(0.01)
    for running in procs.values():
        if running.poll() is None:
            running.send_signal(signal.SIGABRT)
    for running in procs.values():
        try:
            running.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    raise AssertionError(f"timed out ({timeout} s) waiting for {what}\n" + "\n".join(tail(f, 6000) for f in logs.values()))


class NodeGroup:
    """Node processes under test by name, on one environment, each writing into
    ``folder/<name>.log`` (appended: a restarted node keeps its history); a context manager that
    kills whatever still runs on exit."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.env, self.folder = env, folder
        self.procs: dict[str, subprocess.Popen | None] = {}
        self.logs: dict[str, Path] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            stop_process(proc)

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        self.logs[name] = self.folder / f"{name}.log"
        self.procs[name] = start_node(command, self.env, self.logs[name], append=True)
        return self.procs[name]

    def text(self, name: str) -> str:
        return self.logs[name].read_text()

    def tail(self, name: str) -> str:
        return tail(self.logs[name])

    def wait(self, predicate, timeout: float, what: str) -> float:
        """wait_for(): fails as soon as one of the group's processes has exited."""
        return wait_for(predicate, timeout, what, self.procs, self.logs)

    def stop(self, name: str, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Send ``sig`` and return the exit status (the process must exit within ``timeout``)."""
        self.procs[name].send_signal(sig)
        return self.procs[name].wait(timeout=timeout)


def refuse_to_start(commands: dict[str, list[str]], env: dict[str, str], timeout: float = 60.0) -> dict[str, tuple[int, str, str]]:
    """Run the ``commands`` (nodes given a bad parameter or policy file) at once: {name:
    (exit status, stdout, stderr)} once each has exited."""
    procs = {}
    try:
        for name, command in commands.items():
            procs[name] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        results = {}
        for name, proc in procs.items():
            out, err = communicate(proc, timeout, f"{name} to refuse to start")
            results[name] = (proc.returncode, out, err)
        return results
    finally:
        for proc in procs.values():
            stop_process(proc)


def communicate(proc: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    """``proc.communicate(timeout)``; a ``proc`` still running at the timeout gets SIGABRT, as in
    ``wait_for``, and the AssertionError carries its stderr: the Python stacks of where it hangs
    (a node refusing a bad policy hung silently once in a full test run)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = ""
        raise AssertionError(f"timed out ({timeout} s) waiting for {what}\n{(err or '')[-6000:]}") from None


class OutputProcess:
    """A process whose output lines (stdout, or stderr with ``stderr=True``; the other one to
    /dev/null or merged) are collected with their arrival times by a reader thread."""

    def __init__(self, command: list[str], env: dict[str, str], stderr: bool = False):
        out = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) if stderr else dict(stdout=subprocess.PIPE,
                                                                                         stderr=subprocess.STDOUT)
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, text=True, **out)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr if stderr else self.proc.stdout,),
                                        daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append((time.monotonic(), line))
            self.on_line(line)

    def on_line(self, line: str) -> None:
        """Called by the reader thread for every line (for subclasses)."""

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first_line_time(self, pattern: str) -> float | None:
        return next((t for t, line in list(self.lines) if re.search(pattern, line)), None)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match | None:
        deadline = time.monotonic() + timeout
        while True:
            for _, line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, then SIGKILL if it does not exit within ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode


FASTDDS_SEGMENT = re.compile(r"fastdds_[0-9a-f]{16}")
"""Name of a Fast DDS participant's shared-memory segment in /dev/shm (one per participant)."""


def remove_dead_fastdds_segments(shm: Path = Path("/dev/shm"), min_age: float = 60.0, only: set[str] | None = None) -> int:
    """Delete the shared-memory segments of dead Fast DDS participants (as ``fastdds shm clean``
    does); returns how many. The tests SIGKILL node processes on purpose, and a killed
    participant leaves its segment behind (~0.5 MiB each: 420 of them, 230 MiB, had piled up
    here). A live participant holds an flock on ``<segment>_el``; a segment younger than
    ``min_age`` s is left alone (a participant starting up may not hold its lock yet). Port
    files are shared between participants and never touched. ``only``: these segment names."""
    import fcntl

    removed = 0
    for lock_file in shm.glob("fastdds_*_el"):
        segment = lock_file.with_name(lock_file.name[: -len("_el")])
        if not FASTDDS_SEGMENT.fullmatch(segment.name) or (only is not None and segment.name not in only):
            continue
        try:
            if time.time() - lock_file.stat().st_mtime < min_age:
                continue
            with open(lock_file, "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its participant is alive
                segment.unlink(missing_ok=True)
                lock_file.unlink(missing_ok=True)
                removed += 1
        except OSError:
            continue
    return removed


# ---------------------------------------------------------------------- launch files without launch


class _Recorded:
    """Stand-in launch action: remembers its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def stand_in_launch_modules(monkeypatch) -> None:
    """Minimal ``launch`` / ``launch_ros`` modules with the names tocpl_ros/bringup/launch_file.py
    uses (not installable here: ENVIRONMENT.md). They only record what they are given: the
    translation of the graph into launch actions is what the tests check."""
    import types

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    launch = types.ModuleType("launch")
    launch.LaunchDescription = type("LaunchDescription", (_Recorded,), {})
    actions = types.ModuleType("launch.actions")
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "LogInfo"):
        setattr(actions, name, type(name, (_Recorded,), {}))
    substitutions = types.ModuleType("launch.substitutions")
    substitutions.LaunchConfiguration = LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorded,), {})
    launch.actions, launch.substitutions, launch_ros.actions = actions, substitutions, ros_actions
    for name, module in {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
                         "launch_ros": launch_ros, "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, module)
    # launch_file.py imported again against these modules, and forgotten after the test
    monkeypatch.delitem(sys.modules, "tocpl_ros.bringup.launch_file", raising=False)
