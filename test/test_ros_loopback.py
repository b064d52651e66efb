"""ROS 2 on loopback: the env helper, and two rclpy processes that talk over it."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tocpl_ros.ros.environment import (
    DISCOVERY_RANGE_VAR,
    DOMAIN_ID_VAR,
    apply_loopback_defaults,
    derive_domain_id,
    loopback_ros_env,
)

# ---------------------------------------------------------------------------- unit tests


def test_default_is_localhost_and_domain_in_range():
    env = loopback_ros_env(base={"PATH": "/usr/bin"})
    assert env[DISCOVERY_RANGE_VAR] == "LOCALHOST"
    assert 1 <= int(env[DOMAIN_ID_VAR]) <= 100
    assert env["PATH"] == "/usr/bin"


def test_empty_discovery_range_counts_as_unset():
    env = loopback_ros_env(base={DISCOVERY_RANGE_VAR: ""})
    assert env[DISCOVERY_RANGE_VAR] == "LOCALHOST"


def test_explicit_caller_setting_is_kept():
    env = loopback_ros_env(base={DISCOVERY_RANGE_VAR: "SUBNET", DOMAIN_ID_VAR: "42"})
    assert env[DISCOVERY_RANGE_VAR] == "SUBNET"
    assert env[DOMAIN_ID_VAR] == "42"


def test_given_domain_id_wins_and_is_checked():
    assert loopback_ros_env(base={DOMAIN_ID_VAR: "42"}, domain_id=7)[DOMAIN_ID_VAR] == "7"
    with pytest.raises(ValueError):
        loopback_ros_env(base={}, domain_id=-1)
    with pytest.raises(ValueError):
        loopback_ros_env(base={}, domain_id=1000)
    with pytest.raises(ValueError):
        loopback_ros_env(base={DOMAIN_ID_VAR: "abc"})


def test_base_is_not_modified_and_default_base_is_os_environ(monkeypatch):
    base = {"X": "1"}
    loopback_ros_env(base=base)
    assert base == {"X": "1"}
    monkeypatch.setenv("TOCPL_TEST_MARKER", "yes")
    assert loopback_ros_env()["TOCPL_TEST_MARKER"] == "yes"


def test_derived_domain_id_range_avoids_zero():
    ids = {derive_domain_id(seed) for seed in range(1000)}
    assert ids == set(range(1, 101))
    assert 1 <= derive_domain_id() <= 100


def test_apply_loopback_defaults(monkeypatch):
    monkeypatch.delenv(DISCOVERY_RANGE_VAR, raising=False)
    monkeypatch.delenv(DOMAIN_ID_VAR, raising=False)
    values = apply_loopback_defaults()
    assert os.environ[DISCOVERY_RANGE_VAR] == "LOCALHOST" == values[DISCOVERY_RANGE_VAR]
    assert 1 <= int(os.environ[DOMAIN_ID_VAR]) <= 100
    monkeypatch.setenv(DISCOVERY_RANGE_VAR, "SUBNET")
    assert apply_loopback_defaults(domain_id=5) == {
        DISCOVERY_RANGE_VAR: "SUBNET",
        DOMAIN_ID_VAR: "5",
    }
    assert os.environ[DOMAIN_ID_VAR] == "5"


def test_ros_env_module_is_ros_free():
    code = (
        "import sys, tocpl_ros.ros.environment; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rcl', 'rmw')]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_session_runs_on_loopback(ros_loopback_env):
    assert os.environ[DISCOVERY_RANGE_VAR] == "LOCALHOST"
    assert os.environ[DOMAIN_ID_VAR] == ros_loopback_env[DOMAIN_ID_VAR]


# ------------------------------------------------------------- two processes talking

PUBLISHER = r"""
import sys, time
import rclpy
from rclpy.executors import ExternalShutdownException
from std_msgs.msg import String

topic, token, lifetime = sys.argv[1], sys.argv[2], float(sys.argv[3])
rclpy.init()
node = rclpy.create_node("tocpl_test_talker")
pub = node.create_publisher(String, topic, 10)
count = 0

def tick():
    global count
    count += 1
    pub.publish(String(data=f"{token} {count}"))

node.create_timer(0.05, tick)
deadline = time.monotonic() + lifetime  # never outlive a crashed test
try:
    while rclpy.ok() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
finally:
    node.destroy_node()
    rclpy.try_shutdown()
"""

SUBSCRIBER = r"""
import sys, time
import rclpy
from std_msgs.msg import String

topic, token, wanted, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rclpy.init()
node = rclpy.create_node("tocpl_test_listener")
got = []

def on_msg(msg):
    if msg.data.startswith(token + " "):
        got.append(msg.data)
        print("RECV", msg.data, flush=True)

node.create_subscription(String, topic, on_msg, 10)
print("READY", flush=True)
deadline = time.monotonic() + timeout
while rclpy.ok() and len(got) < wanted and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
print("COUNT", len(got), flush=True)
node.destroy_node()
rclpy.try_shutdown()
sys.exit(0 if len(got) >= wanted else 3)
"""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_two_processes_talk_over_loopback(ros_node_env):
    # not the session's domain: no cross-talk; the other one is the negative control (nothing
    # must arrive there). ros_node_env: a caller environment that had opened discovery up does not
    # leak into the test.
    domain, env = ros_node_env(37)
    other_domain, env_other = ros_node_env(38)
    assert other_domain != domain
    assert env[DISCOVERY_RANGE_VAR] == env_other[DISCOVERY_RANGE_VAR] == "LOCALHOST"
    token = uuid.uuid4().hex
    topic = f"/tocpl_test_loopback_{token[:8]}"
    wanted, receive_timeout = 5, 20.0

    procs: list[subprocess.Popen] = []

    def start(script, args, proc_env):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            env=proc_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    try:
        start(PUBLISHER, [topic, token, 120.0], env)
        listener = start(SUBSCRIBER, [topic, token, wanted, receive_timeout], env)
        stranger = start(SUBSCRIBER, [topic, token, 1, 8.0], env_other)
        out, err = listener.communicate(timeout=receive_timeout + 40)
        s_out, s_err = stranger.communicate(timeout=60)
    finally:
        for proc in procs:
            _stop(proc)
        for proc in procs:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    received = [line for line in out.splitlines() if line.startswith(f"RECV {token} ")]
    assert listener.returncode == 0, f"listener got {len(received)} msgs\n{out}\n{err}"
    assert len(received) >= wanted
    # Same topic, other domain: the stranger ran (READY) and received nothing.
    assert "READY" in s_out, s_err
    assert stranger.returncode == 3, f"{s_out}\n{s_err}"
    assert "COUNT 0" in s_out
    assert all(p.poll() is not None for p in procs)


def _fastdds_segments() -> set[str]:
    from ros_harness import FASTDDS_SEGMENT

    return {p.name for p in Path("/dev/shm").glob("fastdds_*") if FASTDDS_SEGMENT.fullmatch(p.name)}


def _segments_of(pid: int) -> set[str]:
    """The Fast DDS segments whose lock file process ``pid`` holds open (other processes on this
    machine create and drop segments meanwhile: a difference of /dev/shm listings is not ours)."""
    from ros_harness import FASTDDS_SEGMENT

    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        name = target.name[: -len("_el")]
        if target.parent == Path("/dev/shm") and target.name.endswith("_el") and FASTDDS_SEGMENT.fullmatch(name):
            found.add(name)
    return found


def test_dead_fastdds_segments_removed_live_ones_kept(ros_node_env):
    """The session's clean-up (conftest) deletes the shared-memory segment a SIGKILLed participant
    left behind, not that of a live one: the live publisher still reaches a new subscriber."""
    from ros_harness import remove_dead_fastdds_segments

    _, env = ros_node_env(53)
    token = uuid.uuid4().hex
    topic = f"/tocpl_test_shm_{token[:8]}"
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, topic, token, "120"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while not all(_segments_of(p.pid) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        live, dead = (_segments_of(p.pid) for p in procs)
        assert len(live) == len(dead) == 1, f"expected a segment per publisher, got {live}, {dead}"
        procs[1].kill()
        procs[1].wait(timeout=10)
        assert remove_dead_fastdds_segments(min_age=0.0, only=live | dead) == 1
        assert live <= _fastdds_segments() and not dead & _fastdds_segments()
        listener = subprocess.run([sys.executable, "-c", SUBSCRIBER, topic, token, "3", "20"], env=env,
                                  capture_output=True, text=True, timeout=60)
        assert listener.returncode == 0, listener.stdout + listener.stderr
    finally:
        for proc in procs:
            _stop(proc)


def test_wait_for_timeout_reports_where_a_stuck_node_is(tmp_path):
    """A node process that never gets ready: wait_for's error carries its Python stack."""
    from ros_harness import node_env, wait_for

    log = tmp_path / "stuck.log"
    script = "import time\ndef stuck_in_startup():\n    time.sleep(60)\nstuck_in_startup()\n"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], env=node_env(1), stdout=out, stderr=subprocess.STDOUT)
    try:
        with pytest.raises(AssertionError, match="(?s)waiting for readiness.*stuck_in_startup"):
            wait_for(lambda: False, 1.0, "readiness", proc, log)
        assert proc.poll() is not None  # aborted, not left running
    finally:
        proc.kill()
        proc.wait()


def test_communicate_timeout_reports_where_a_stuck_node_is():
    """The same for a node whose exit a test waits for (communicate): the stack is in the error."""
    from ros_harness import communicate, node_env

    script = "import time\ndef stuck_refusing():\n    time.sleep(60)\nstuck_refusing()\n"
    proc = subprocess.Popen([sys.executable, "-c", script], env=node_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(AssertionError, match="(?s)waiting for the refusal.*stuck_refusing"):
            communicate(proc, 1.0, "the refusal")
        assert proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()
