"""What the ROS node tests share: an in-process rclpy test node that spins in a background
thread, and the helpers around the node processes under test.

A plain module next to the tests (test/ is no package): pytest's default import mode puts
test/ on sys.path, so the test modules import it as ``from ros_harness import ...``.
rclpy is imported inside the methods, so importing this module needs no ROS.
"""

from __future__ import annotations

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

from tocpl_ros.ros.environment import DISCOVERY_RANGE_VAR, DOMAIN_ID_VAR, derive_domain_id, loopback_ros_env


class SpinningTestNode:
    """An rclpy node in a context of its own (given domain), spun by a background thread.

    A subclass calls ``super().__init__(domain, name)``, creates its publishers, subscriptions
    and timers on ``self.node``, then calls ``self.start_spinning()``: the executor starts once
    everything exists. ``self.lock`` guards what the callbacks record.

    ``signal_handlers=False``: rclpy installs no signal handlers in the test process.
    ``record_errors=True``: an exception from the executor is kept in ``self.errors`` (see
    check_alive()) and spinning goes on; otherwise it ends the spin thread.
    """

    def __init__(self, domain: int, name: str, *, signal_handlers: bool = True, record_errors: bool = False):
        import rclpy

        self.rclpy = rclpy
        self.context = rclpy.Context()
        if signal_handlers:
            rclpy.init(context=self.context, domain_id=domain)
        else:
            from rclpy.signals import SignalHandlerOptions

            rclpy.init(context=self.context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.record_errors = record_errors
        self.errors: list[str] = []

    def start_spinning(self) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as exc:
                if not self.record_errors:
                    raise
                self.errors.append(repr(exc))  # reported by check_alive(), never silent
                if len(self.errors) > 100:
                    return

    def check_alive(self) -> None:
        assert not self.errors and self.thread.is_alive(), f"test harness failed: {self.errors[:3]}"

    def other_nodes(self) -> set[str]:
        """The names of the ROS nodes this one sees on its domain, itself left out."""
        return set(self.node.get_node_names()) - {self.node.get_name()}

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


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
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        super().__init__(domain, name)
        self.JointState, self.PointStamped = JointState, PointStamped
        self.commands: list[tuple[float, np.ndarray]] = []
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
        self.reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Float64MultiArray, command_topic, self._on_command, self.reliable)
        self.node.create_timer(1.0 / rate, self._publish_joint_state)

    def _on_command(self, msg):
        with self.lock:
            self.commands.append((time.monotonic(), np.array(msg.data)))

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
        with self.lock:
            return [(tc, v) for tc, v in self.commands if tc >= t]

    def commands_between(self, t0: float, t1: float) -> list[np.ndarray]:
        with self.lock:
            return [v for tc, v in self.commands if t0 <= tc < t1]


def assert_node_imports_none(node_module: str, forbidden: tuple[str, ...]) -> None:
    """A fresh Python that imports ``tocpl_ros.ros.nodes.<node_module>`` (its node class)
    has none of the ``forbidden`` packages loaded (a robot computer need not carry them)."""
    code = (
        f"import sys; from tocpl_ros.ros.nodes import {node_module} as m; "
        f"bad = [k for k in sys.modules if k.split('.')[0] in {forbidden!r}]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def quiet_harness(make, ros_loopback_env, offset: int, **kwargs):
    """``(make(domain, **kwargs), domain)`` on a domain where no other ROS node shows up for 1 s
    (other test runs on this machine choose domains the same way)."""
    for attempt in range(10):
        domain = derive_domain_id(int(ros_loopback_env[DOMAIN_ID_VAR]) + offset + 7 * attempt)
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


def stop_process(proc: subprocess.Popen | None) -> None:
    """Kill ``proc`` if it still runs (None: never started) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate`` until true; AssertionError (with the tail of ``log``) on timeout or
    once ``proc`` has exited.

    A ``proc`` still running at the timeout gets SIGABRT: with PYTHONFAULTHANDLER (node_env())
    it writes every thread's Python stack to ``log`` first, so a node stuck in start-up (seen
    once in a full test run: nothing logged in 60 s) says where."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.01)
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    detail = log.read_text()[-6000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out ({timeout} s) waiting for {what}\n{detail}")


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

