"""Fuzz the REAL policy and MPC nodes over DDS with thousands of malformed inputs.

Four node processes run at once on one (quiet, loopback) ROS domain and read the same
``/joint_states`` and ``/target`` streams: ``policy_node`` three times (output modes effort,
velocity and position, each under its own node name) and ``mpc_node``. An in-process rclpy
harness sends a seeded stream of joint states and targets: valid ones (any joint order),
NaN/Inf, huge values, wrong lengths, empty messages, unknown/missing/duplicated/extra joint
names, very long names and arrays, time stamps going backwards / far in the future / zero,
positions and velocities beyond the sanity bounds; NaN/Inf/huge/out-of-box targets; in bursts
(back to back), paced (500 Hz) and with gaps longer than the nodes' stale limits.

Asserted: no node process dies or logs an exception / internal error; EVERY command received
on the command topics is 6 finite values within the limits of ``urdf/ur5.urdf`` (effort:
|u| <= effort limit; velocity: |v| <= velocity limit; position: lower <= q <= upper; the
MPC's command and the ū of its feedback: effort limits); the fuzz reached the policy
(policy commands and safe commands both seen, every rejection class counted); after the
fuzz, valid data brings every node back to publishing (the policy nodes to 'running')
without a restart; SIGINT then exits each node with status 0.
"""

from __future__ import annotations

import math
import signal
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ros_harness import UR5_JOINTS as JOINTS, UR5_Q0 as Q0, NodeGroup, SpinningTestNode, node_command, ros_params, target_param

ROOT = Path(__file__).resolve().parents[1]
TARGET = [0.5, 0.1, 0.4]
SEED = 20240611
N_JOINT_STATES = 3000
N_TARGETS_MIN = 250
POLICY_RATE = 500.0
MPC_RATE = 100.0
TOPICS = {
    "effort": "/forward_effort_controller/commands",
    "velocity": "/forward_velocity_controller/commands",
    "position": "/forward_position_controller/commands",
    "mpc": "/mpc/command",
    "mpc_feedback": "/mpc/feedback",
}
POLICY_NODES = {  # node name -> extra parameters
    "fuzz_effort": ["output_mode:=effort", "safe_mode:=hold", f"initial_target:=[{', '.join(map(str, TARGET))}]"],
    "fuzz_velocity": ["output_mode:=velocity", "safe_mode:=zero_velocity"],  # target: tool0 at the first state
    "fuzz_position": ["output_mode:=position", "safe_mode:=gravity", "target_out_of_limits:=reject",
                      f"initial_target:=[{', '.join(map(str, TARGET))}]"],
}
MODE_OF = {"fuzz_effort": "effort", "fuzz_velocity": "velocity", "fuzz_position": "position"}
ERROR_MARKERS = ("Traceback", "callback failed", "internal error", "MPC tick failed", "publishing failed", "publishing the command failed")


def urdf_limits() -> dict[str, np.ndarray]:
    """effort, velocity, lower, upper of the six joints, read from urdf/ur5.urdf itself."""
    root = ET.parse(ROOT / "urdf" / "ur5.urdf").getroot()
    joints = {j.get("name"): j.find("limit") for j in root.iter("joint")}
    out = {}
    for key in ("effort", "velocity", "lower", "upper"):
        out[key] = np.array([float(joints[name].get(key)) for name in JOINTS])
    return out


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    """An untrained ur5_reach policy exported to ONNX (last layer scaled up so that its
    torques are large and often saturate: the clamps are exercised)."""
    import torch

    from tocpl_ros.tasks import load_task
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task("ur5_reach")
    policy = make_policy(task, seed=5)
    with torch.no_grad():
        policy.net[-1].weight.mul_(8.0)
    return export_onnx(policy.eval(), task, tmp_path_factory.mktemp("fuzz") / "policy.onnx")


class Harness(SpinningTestNode):
    """Publishes the fuzz, records every command and the /diagnostics of each node."""

    def __init__(self, domain: int):
        from geometry_msgs.msg import PointStamped
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState

        super().__init__(domain, "fuzz_harness")
        self.JointState, self.PointStamped = JointState, PointStamped
        self.js_sent = 0  # every joint state published (start-up and recovery included)
        self.targets_sent = 0
        self.js_pub = self.node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.target_pub = self.node.create_publisher(PointStamped, "/target", 10)
        self.record_arrays(TOPICS.values())
        self.record_diagnostics()
        self.start_spinning()

    def now_stamp(self) -> tuple[int, int]:
        t = self.node.get_clock().now().nanoseconds
        return int(t // 1_000_000_000), int(t % 1_000_000_000)

    def send_joint_state(self, names, position, velocity, effort, stamp):
        msg = self.JointState()
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.name = list(names)
        msg.position = [float(x) for x in position]
        msg.velocity = [float(x) for x in velocity]
        msg.effort = [float(x) for x in effort]
        self.js_pub.publish(msg)
        self.js_sent += 1

    def send_target(self, xyz, frame="base_link"):
        msg = self.PointStamped()
        msg.header.frame_id = frame
        msg.point.x, msg.point.y, msg.point.z = (float(v) for v in xyz)
        self.target_pub.publish(msg)
        self.targets_sent += 1

    def received_on(self, key: str) -> list[tuple[float, np.ndarray]]:
        return self.received[TOPICS[key]]

    def count_since(self, key: str, t: float) -> int:
        return len(self.arrays_since(TOPICS[key], t))


# ------------------------------------------------------------------------ the fuzz

CATEGORIES = {  # name -> weight
    "valid": 22, "valid_far": 6, "nan": 6, "inf": 5, "huge": 5, "beyond_limits": 4, "too_fast": 4,
    "len_position": 4, "len_velocity": 4, "no_velocity": 3, "empty": 4, "unknown_joint": 4, "missing_joint": 4,
    "duplicate_joint": 4, "extra_joint": 3, "backwards": 5, "future": 2, "zero_stamp": 3, "long_name": 2,
    "big_arrays": 2, "empty_name": 2,
}


def fuzz_joint_state(rng: np.random.Generator, kind: str, stamp: tuple[int, int], last_stamp: tuple[int, int]):
    """(names, position, velocity, effort, stamp) of one message of the given kind."""
    perm = rng.permutation(6)
    names = [JOINTS[i] for i in perm]
    q = Q0 + rng.uniform(-0.3, 0.3, 6)
    v = rng.uniform(-0.5, 0.5, 6)
    effort = rng.uniform(-10, 10, 6)
    if kind == "valid_far":
        q = rng.uniform(-3.0, 3.0, 6)
        v = rng.uniform(-3.0, 3.0, 6)
    pos, vel = [q[i] for i in perm], [v[i] for i in perm]
    eff = [effort[i] for i in perm]
    bad = int(rng.integers(6))
    if kind == "nan":
        (pos if rng.random() < 0.5 else vel)[bad] = math.nan
    elif kind == "inf":
        (pos if rng.random() < 0.5 else vel)[bad] = math.inf if rng.random() < 0.5 else -math.inf
    elif kind == "huge":
        (pos if rng.random() < 0.5 else vel)[bad] = float(rng.choice([1e300, -1e300, 1e9, -1e18, 1.7e308]))
    elif kind == "beyond_limits":
        pos[bad] = float(rng.choice([-1, 1])) * rng.uniform(6.5, 100.0)
    elif kind == "too_fast":
        vel[bad] = float(rng.choice([-1, 1])) * rng.uniform(10.5, 1e4)
    elif kind == "len_position":
        pos = pos[: int(rng.integers(0, 6))] if rng.random() < 0.5 else pos + list(rng.normal(size=int(rng.integers(1, 5))))
    elif kind == "len_velocity":
        vel = vel[: int(rng.integers(1, 6))] if rng.random() < 0.5 else vel + [0.0]
    elif kind == "no_velocity":
        vel = []
    elif kind == "empty":
        names, pos, vel, eff = [], [], [], []
        if rng.random() < 0.5:
            stamp = (0, 0)
    elif kind == "unknown_joint":
        names[bad] = str(rng.choice(["gripper_joint", "elbow", "Shoulder_Pan_Joint", "joint_7", " wrist_1_joint"]))
    elif kind == "missing_joint":
        del names[bad], pos[bad], vel[bad], eff[bad]
    elif kind == "duplicate_joint":
        names[bad] = names[(bad + 1) % 6]
    elif kind == "extra_joint":
        names.append("finger_joint"), pos.append(0.01), vel.append(0.0), eff.append(0.0)
    elif kind == "backwards":
        back = int(rng.integers(1, 2_000_000_000))
        total = max(last_stamp[0] * 1_000_000_000 + last_stamp[1] - back, 0)
        stamp = (total // 1_000_000_000, total % 1_000_000_000)
    elif kind == "future":
        stamp = (2**31 - 1, int(rng.integers(0, 999_999_999)))
    elif kind == "zero_stamp":
        stamp = (0, 0) if rng.random() < 0.5 else (-int(rng.integers(1, 2**31)), 0)
    elif kind == "long_name":
        names[bad] = names[bad] + "x" * int(rng.integers(1000, 20000))
    elif kind == "big_arrays":
        n = int(rng.integers(100, 5000))
        names = [f"j{i}" for i in range(n)]
        pos, vel, eff = list(rng.normal(size=n)), list(rng.normal(size=n)), []
    elif kind == "empty_name":
        names[bad] = ""
    return names, pos, vel, eff, stamp


def fuzz_target(rng: np.random.Generator) -> tuple[list[float], str]:
    r = rng.random()
    if r < 0.35:
        return list(rng.uniform([0.3, -0.2, 0.0], [0.75, 0.4, 0.7])), "base_link"
    xyz = list(rng.uniform(-1.0, 1.0, 3))
    i = int(rng.integers(3))
    if r < 0.5:
        xyz[i] = math.nan
    elif r < 0.6:
        xyz[i] = math.inf if rng.random() < 0.5 else -math.inf
    elif r < 0.75:
        xyz[i] = float(rng.choice([1e300, -1e300, 1e6, 1.7e308]))
    else:
        xyz = list(rng.uniform(-5.0, 5.0, 3))
    return xyz, str(rng.choice(["base_link", "", "world", "\u00e9\u00e8" * 50]))


def run_fuzz(harness: Harness, rng: np.random.Generator) -> tuple[Counter, int]:
    """Send N_JOINT_STATES joint states (and targets along) in bursts, paced runs and gaps."""
    kinds, weights = list(CATEGORIES), np.array(list(CATEGORIES.values()), dtype=float)
    weights /= weights.sum()
    sent: Counter = Counter()
    targets = 0
    last_stamp = harness.now_stamp()
    i = 0
    while i < N_JOINT_STATES:
        segment = rng.choice(["burst", "paced", "gap"], p=[0.4, 0.45, 0.15])
        if segment == "gap":
            time.sleep(float(rng.uniform(0.02, 0.15)))  # longer than the stale limits (10 ms, 50 ms)
            continue
        n = min(int(rng.integers(5, 120)), N_JOINT_STATES - i)
        for _ in range(n):
            kind = str(rng.choice(kinds, p=weights))
            stamp = harness.now_stamp()
            names, pos, vel, eff, stamp = fuzz_joint_state(rng, kind, stamp, last_stamp)
            harness.send_joint_state(names, pos, vel, eff, stamp)
            last_stamp = harness.now_stamp()
            sent[kind] += 1
            i += 1
            if rng.random() < 0.1:
                xyz, frame = fuzz_target(rng)
                harness.send_target(xyz, frame)
                targets += 1
            if segment == "paced":
                time.sleep(1.0 / POLICY_RATE)
    while targets < N_TARGETS_MIN:  # a burst of targets at the end
        xyz, frame = fuzz_target(rng)
        harness.send_target(xyz, frame)
        targets += 1
    return sent, targets


def send_valid(harness: Harness, seconds: float) -> None:
    """Valid joint states at 500 Hz (at rest at Q0) for ``seconds``; a valid target first."""
    harness.send_target(TARGET)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        harness.send_joint_state(JOINTS, Q0, np.zeros(6), np.zeros(6), harness.now_stamp())
        time.sleep(1.0 / POLICY_RATE)


# ------------------------------------------------------------------------ the test


def test_fuzz_policy_and_mpc_nodes(policy_file, ros_quiet_domain, tmp_path):
    limits = urdf_limits()
    harness, _, env = ros_quiet_domain(Harness, 83)
    t_begin = time.monotonic()
    with harness, NodeGroup(env, tmp_path) as nodes:
        procs, tail = nodes.procs, nodes.tail
        for name, extra in POLICY_NODES.items():
            nodes.start(name, node_command("policy_node") + [
                "--ros-args", "-r", f"__node:={name}", "-p", f"policy_path:={policy_file}", "-p", f"rate:={POLICY_RATE}",
                *ros_params("fade_in:=0.05", "diagnostics_period:=0.5", *extra)])
        nodes.start("mpc_node", node_command("mpc_node") + [
            "--ros-args", "--params-file", str(ROOT / "config" / "mpc_node.yaml"), "-p", f"policy_path:={policy_file}",
            *ros_params(target_param(TARGET), "diagnostics_period:=0.5")])

        # all four up: each publishes commands on valid data
        deadline = time.monotonic() + 60
        keys = {"fuzz_effort": "effort", "fuzz_velocity": "velocity", "fuzz_position": "position", "mpc_node": "mpc"}
        while time.monotonic() < deadline:
            send_valid(harness, 0.2)
            if all(len(harness.received_on(k)) > 5 for k in keys.values()):
                break
            dead = [n for n, p in procs.items() if p.poll() is not None]
            assert not dead, "\n".join(tail(n) for n in dead)
        missing = [n for n, k in keys.items() if len(harness.received_on(k)) <= 5]
        assert not missing, f"no commands from {missing} within 60 s\n" + "\n".join(tail(n) for n in missing)
        t_up = time.monotonic()

        # the fuzz
        rng = np.random.default_rng(SEED)
        t_fuzz = time.monotonic()
        sent, targets = run_fuzz(harness, rng)
        fuzz_seconds = time.monotonic() - t_fuzz
        dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        assert not dead, f"node(s) died during the fuzz: {dead}\n" + "\n".join(tail(n) for n in dead)

        # recovery on valid data, without a restart
        t_valid = time.monotonic()
        send_valid(harness, 1.2)
        for name, key in keys.items():
            n = harness.count_since(key, t_valid + 0.6)
            assert n > 0, f"{name}: no commands in the last 0.6 s of valid data after the fuzz\n{tail(name)}"
        t_diag = time.monotonic()
        end = time.monotonic() + 5
        while time.monotonic() < end and not all(harness.last_diag(n, after=t_diag) for n in keys):
            send_valid(harness, 0.1)
        diags = {n: harness.last_diag(n, after=t_diag) for n in keys}
        assert all(diags.values()), f"no diagnostics after the fuzz from {[n for n, d in diags.items() if not d]}"
        for name in POLICY_NODES:
            assert diags[name]["state"] in ("running", "fading_in"), (name, diags[name]["state"], diags[name]["reason"])
        assert diags["mpc_node"]["state"] in ("mpc", "fallback"), diags["mpc_node"]

        # every command received: 6 finite values within the URDF's limits
        with harness.lock:
            received = {key: list(harness.received[topic]) for key, topic in TOPICS.items()}
        bounds = {
            "effort": (-limits["effort"], limits["effort"]),
            "velocity": (-limits["velocity"], limits["velocity"]),
            "position": (limits["lower"], limits["upper"]),
            "mpc": (-limits["effort"], limits["effort"]),
        }
        checked: dict[str, int] = {}
        for key, (lo, hi) in bounds.items():
            values = [v for _, v in received[key]]
            bad_shape = [v.shape for v in values if v.shape != (6,)]
            assert not bad_shape, f"{key}: commands of shape {bad_shape[:5]}"
            arr = np.array(values)
            nonfinite = int((~np.isfinite(arr)).any(axis=1).sum())
            outside = int(((arr < lo - 1e-9) | (arr > hi + 1e-9)).any(axis=1).sum())
            assert nonfinite == 0, f"{key}: {nonfinite} of {len(arr)} commands not finite"
            assert outside == 0, (f"{key}: {outside} of {len(arr)} commands outside {lo}..{hi}; worst "
                                  f"{arr[((arr < lo - 1e-9) | (arr > hi + 1e-9)).any(axis=1)][:3]}")
            checked[key] = len(arr)
        feedback = [v for _, v in received["mpc_feedback"]]
        assert feedback and all(v.shape == (6 + 12 + 72,) for v in feedback)
        fb = np.array(feedback)
        assert np.isfinite(fb).all(), f"{int((~np.isfinite(fb)).any(axis=1).sum())} /mpc/feedback messages not finite"
        assert (np.abs(fb[:, :6]) <= limits["effort"] + 1e-9).all(), "ū of /mpc/feedback outside the effort limits"
        checked["mpc_feedback"] = len(fb)

        # the fuzz reached the nodes and exercised their paths; no internal error anywhere
        required = {"nonfinite", "length", "unknown_joint", "missing_joint", "duplicate_joint", "backwards_stamp",
                    "position_bound", "velocity_bound", "target_nonfinite"}
        processed = {}
        for name in POLICY_NODES:
            d = diags[name]
            rejected = {k.split(".", 1)[1] for k, v in d.items() if k.startswith("rejected.") and int(v) > 0}
            assert required <= rejected, f"{name}: rejection classes never counted: {required - rejected}; {d}"
            assert int(d["policy_ticks"]) > 0 and int(d["safe_ticks"]) > 0, d
            assert int(d.get("safe.stale", 0)) > 0, f"{name}: the gaps never made the data stale: {d}"
            for key in ("safe.internal_error", "safe.nonfinite_output"):
                assert int(d.get(key, 0)) == 0, f"{name}: {key} = {d[key]}"
            processed[name] = (int(d["accepted_joint_states"]), int(d["rejected_inputs"]))
        d = diags["mpc_node"]
        assert int(d["rejected_inputs"]) > 0 and int(d["solves"]) > 0, d
        processed["mpc_node"] = (int(d["accepted_joint_states"]), int(d["rejected_inputs"]))
        for name in procs:
            text = nodes.text(name)
            found = [m for m in ERROR_MARKERS if m in text]
            assert not found, f"{name} logged {found}\n{tail(name)}"

        # still alive; SIGINT -> clean exit
        dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        assert not dead, f"node(s) died: {dead}"
        for proc in procs.values():
            proc.send_signal(signal.SIGINT)
        for name, proc in procs.items():
            assert proc.wait(timeout=20) == 0, f"{name}: exit status {proc.returncode}\n{tail(name)}"

        total_checked = sum(checked.values())
        print(f"\nfuzz (seed {SEED}): {sum(sent.values())} joint states + {targets} targets sent in {fuzz_seconds:.1f} s "
              f"({t_up - t_begin:.1f} s start-up); by kind: {dict(sorted(sent.items()))}")
        print(f"processed by the nodes of the {harness.js_sent} joint states + {harness.targets_sent} targets sent in all "
              "(fuzz, start-up and recovery; accepted joint states / rejected inputs, the rest dropped by the keep-last-5 "
              "sensor-data queue in bursts): " + ", ".join(f"{n} {a}/{r}" for n, (a, r) in processed.items()))
        print(f"commands checked: {total_checked} ({', '.join(f'{k} {n}' for k, n in checked.items())}); "
              f"all finite and within urdf/ur5.urdf limits; 4 nodes alive, exit 0 on SIGINT")
