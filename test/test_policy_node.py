"""policy_node end to end: the real node in a subprocess, driven by an in-process rclpy
test node (joint-state publisher, command/diagnostics subscriber, service client).

DDS stays on loopback (conftest) and each test uses its own ROS_DOMAIN_ID; every wait
is bounded and every process is killed on leaving its test (ros_harness.running).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pinocchio as pin
import pytest
import torch
import yaml

from tocpl_ros.policy_file import OnnxPolicy, read_onnx_metadata
from tocpl_ros.tasks import load_task
from tocpl_training.export import export_onnx
from tocpl_training.learning.policy import make_policy

from ros_harness import (
    UR5_Q0 as Q0,
    JointStateFeed,
    assert_node_imports_none,
    node_command,
    refuse_to_start,
    running,
    target_param,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
TARGET = [0.5, 0.1, 0.4]
RATE = 500.0
STALE_PERIODS = 5
FADE_IN = 0.2
EFFORT_TOPIC = "/forward_effort_controller/commands"
NODE_COMMAND = node_command("policy_node")


# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    task = load_task("ur5_reach")
    folder = tmp_path_factory.mktemp("node_policies")
    policy = make_policy(task, seed=11)
    with torch.no_grad():
        policy.net[-1].weight.mul_(4.0)
    good = export_onnx(policy.eval(), task, folder / "good.onnx")
    md = read_onnx_metadata(good)
    renamed = dataclasses.replace(md, joint_names=[("elbow" if n == "elbow_joint" else n) for n in md.joint_names])
    model = onnx.load(str(good))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, renamed.to_props())
    onnx.save(model, str(folder / "renamed.onnx"))
    return {"good": good, "renamed": folder / "renamed.onnx", "missing": folder / "does_not_exist.onnx"}


def gravity(q) -> np.ndarray:
    model = pin.buildModelFromUrdf(str(ROOT / "urdf" / "ur5.urdf"))
    return pin.computeGeneralizedGravity(model, model.createData(), np.asarray(q, dtype=float)).copy()


class Harness(JointStateFeed):
    """The robot for the policy node (joint states at RATE), recording its effort commands and
    /diagnostics; ``call`` its ~/start and ~/stop services."""

    def __init__(self, domain: int):
        super().__init__(domain, "policy_node_test_harness", EFFORT_TOPIC, RATE)
        self.record_diagnostics()
        self.start_spinning()

    def call(self, name: str) -> tuple[bool, str]:
        return self.call_trigger(f"/policy_node/{name}")

    def last_diagnostics(self) -> dict[str, str]:
        return self.last_diag("policy_node") or {}


# ------------------------------------------------------------------------ tests


def test_params_file_matches_node_parameters():
    from tocpl_ros.control.config import ControllerConfig
    from tocpl_ros.robot import load_robot
    from tocpl_ros.ros.nodes.policy_node import NODE_PARAMETERS, ROBOT_DEFAULTS

    data = yaml.safe_load((ROOT / "config" / "policy_node.yaml").read_text())
    params = data["policy_node"]["ros__parameters"]
    # the parameters the robot description gives are left unset (a value there would override it)
    assert list(params) and set(params) == set(NODE_PARAMETERS) - set(ROBOT_DEFAULTS)
    for name, (default, description) in NODE_PARAMETERS.items():
        assert description, name
        if name in ROBOT_DEFAULTS:
            continue
        value = params[name]
        if default is None:
            assert value == [], name  # an unset array
        else:
            assert value == default, (name, value, default)
    assert ControllerConfig().for_robot(load_robot("ur5")).rate == 500.0


def test_node_process_does_not_import_torch():
    assert_node_imports_none("policy_node", ("torch", "crocoddyl"))


def test_node_refuses_to_start_on_bad_policy(policies, ros_node_env, tmp_path):
    """Missing file, joint names differing from the robot's, a bad parameter: exit status 2
    and stderr says what is wrong. The three run concurrently (one start-up time)."""
    _, env = ros_node_env(41)
    cases = {
        "missing": (["-p", f"policy_path:={policies['missing']}"], ["policy file not found", str(policies["missing"])]),
        "renamed": (["-p", f"policy_path:={policies['renamed']}"], ["joint names differ", "['elbow_joint']", "['elbow']"]),
        "bad_param": (["-p", f"policy_path:={policies['good']}", "-p", "output_mode:=torque"], ["output_mode", "torque"]),
        "unknown_param": (["-p", f"policy_path:={policies['good']}", "-p", "rat:=1000"], ["unknown parameter 'rat'"]),
    }
    results = refuse_to_start({name: NODE_COMMAND + ["--ros-args", *args] for name, (args, _) in cases.items()}, env)
    for name, (code, out, err) in results.items():
        assert code == 2, f"{name}: exit {code}\n{out}\n{err}"
        assert "refusing to start" in err, f"{name}: {err}"
        for fragment in cases[name][1]:
            assert fragment in err, f"{name}: {fragment!r} not in stderr:\n{err}"


def test_every_node_exits_2_on_a_start_up_error(policies, ros_node_env):
    """The three nodes share one exit convention (tocpl_ros.ros.runtime.run_node): a bad parameter or
    an unusable policy file is exit status 2 and one 'refusing to start' line."""
    _, env = ros_node_env(47)
    cases = {
        "ur5_sim": node_command("ur5_sim") + ["--ros-args", "-p", "backend:=bogus"],
        "policy_node": NODE_COMMAND + ["--ros-args", "-p", f"policy_path:={policies['missing']}"],
        "mpc_node": node_command("mpc_node") + ["--ros-args", "-p", f"policy_path:={policies['missing']}"],
    }
    for name, (code, out, err) in refuse_to_start(cases, env).items():
        assert code == 2, f"{name}: exit {code}\n{out}\n{err}"
        assert "refusing to start" in err, f"{name}: {err}"


def test_node_runs_policy_safely(policies, ros_node_env, tmp_path):
    domain, env = ros_node_env(53)
    md = read_onnx_metadata(policies["good"])
    policy = OnnxPolicy(policies["good"])
    u_policy = np.clip(policy(np.concatenate([Q0, np.zeros(6), TARGET])), md.u_min, md.u_max)
    g0 = gravity(Q0)
    assert np.abs(u_policy - g0).max() > 1.0, "the test needs the policy and safe commands to differ"
    period = 1.0 / RATE
    stale_limit = STALE_PERIODS * period

    def near(values, want, tol=1e-5):
        return np.abs(values - want).max() <= tol * max(1.0, np.abs(want).max())

    log = tmp_path / "policy_node.log"
    args = [
        "--ros-args",
        "--params-file", str(ROOT / "config" / "policy_node.yaml"),
        "-p", f"policy_path:={policies['good']}",
        "-p", f"rate:={RATE}",
        "-p", f"stale_periods:={STALE_PERIODS}",
        "-p", f"fade_in:={FADE_IN}",
        "-p", "safe_mode:=hold",
        "-p", target_param(TARGET),
    ]
    with running(NODE_COMMAND + args, env, log) as proc, Harness(domain) as harness:
        harness.publishing.set()
        # 1. commands arrive, converge to the policy's after the fade-in
        wait_for(lambda: len(harness.commands) > 50, 30, "first commands", proc, log)
        time.sleep(FADE_IN + 0.1)
        t0 = time.monotonic()
        time.sleep(2.0)
        window = [v for tc, v in harness.commands_since(t0) if tc < t0 + 2.0]
        rate = len(window) / 2.0  # printed, not asserted: it depends on this machine's load
        assert window, "no commands in 2 s"
        values = np.array(window)
        assert np.isfinite(values).all()
        assert (values >= md.u_min).all() and (values <= md.u_max).all()
        with harness.lock:
            sent = np.array([t for t in harness.js_sent if t0 - 0.05 <= t <= t0 + 2.0])
        max_gap = float(np.diff(sent).max())
        matching = sum(near(v, u_policy) for v in values)
        print(f"steady state: {rate:.0f} Hz, {matching}/{len(values)} policy commands, max joint-state gap {max_gap * 1e3:.1f} ms")
        assert matching == len(values), (matching, len(values), max_gap)

        # 2. diagnostics: loop statistics and safety state
        wait_for(lambda: any(d.get("state") == "running" for d in harness.diags_since("policy_node")), 5, "diagnostics")
        diag = harness.last_diagnostics()
        for key in ("loop_period_p50_ms", "loop_period_p99_ms", "loop_period_max_ms", "inference_p50_us", "rejected_inputs", "overruns"):
            assert key in diag, key
        assert 0 < float(diag["loop_period_p50_ms"]) < math.inf, diag

        # 3. ~/stop -> safe command (hold at a fresh, still posture: g(q)); ~/start -> fade-in
        ok, message = harness.call("stop")
        assert ok, message
        wait_for(lambda: near(harness.last_command(), g0), 5, "the safe command after ~/stop", proc, log)
        t_start = time.monotonic()
        assert harness.call("start")[0]
        wait_for(lambda: near(harness.last_command(), u_policy), 10, "the policy's command after ~/start", proc, log)
        ramp = np.array([v for _, v in harness.commands_since(t_start)])
        joint = int(np.argmax(np.abs(u_policy - g0)))
        moves = np.diff(ramp[:, joint]) * np.sign(u_policy[joint] - g0[joint])
        assert (moves >= -1e-9).all(), "the fade-in is monotonic"
        between = [v for v in ramp if not near(v, g0, 1e-3) and not near(v, u_policy, 1e-3)]
        assert len(between) >= 2, f"only {len(between)} intermediate commands"

        # 4. the joint-state publisher stops -> safe command within the stale limit: the hold on
        # the predicted state (the arm was pushed by the policy's torque since the last state),
        # which comes to rest at the held posture Q0: g(Q0)
        # (the exact limit in control periods is the controller's, test_controller.py; received here,
        # it would carry this process's backlog on a loaded machine: the latency is printed only)
        harness.publishing.clear()
        t_clear = time.monotonic()

        def first_safe_after(last_js: float) -> float | None:
            return next((tc for tc, v in harness.commands_since(last_js) if not near(v, u_policy)), None)

        def settled() -> bool:  # a safe command, and commands 0.7 s after it
            with harness.lock:
                last_js = harness.js_sent[-1]
            first = first_safe_after(last_js)
            return first is not None and time.monotonic() > t_clear + 0.1 and harness.commands[-1][0] > first + 0.7

        wait_for(settled, 15, "safe commands for 0.7 s after the joint states stopped", proc, log)
        with harness.lock:
            last_js = harness.js_sent[-1]
        after = harness.commands_since(last_js)
        first_safe = first_safe_after(last_js)
        print(f"first safe command {1e3 * (first_safe - last_js):.1f} ms after the last joint state "
              f"(stale limit {1e3 * stale_limit:.0f} ms)")
        stale = np.array([v for tc, v in after if tc >= first_safe])
        assert not any(near(v, u_policy) for v in stale), "the policy's command came back while the data was stale"
        assert np.isfinite(stale).all() and (stale >= md.u_min).all() and (stale <= md.u_max).all()
        late = [v for tc, v in after if tc > first_safe + 0.7]
        assert late and all(near(v, g0, 1e-3) for v in late), late[-1] if late else None
        wait_for(lambda: int(harness.last_diagnostics().get("safe.stale", 0)) > 0, 5, "safe.stale ticks in diagnostics", proc, log)

        # 5. fresh data again -> the policy resumes (after a fade-in) without a restart
        harness.publishing.set()
        wait_for(lambda: near(harness.last_command(), u_policy), 10, "the policy's command on fresh data", proc, log)

        # 6. bad inputs: NaN/Inf/huge joint states, NaN and far targets -> finite, in limits
        t_bad = time.monotonic()
        harness.bad_burst = 60
        harness.send_target([math.nan, 0.0, 0.4])
        harness.send_target([50.0, -50.0, 50.0])  # clamped into target_limits
        wait_for(lambda: harness.bad_burst == 0, 10, "the bad joint states sent", proc, log)
        time.sleep(0.1)
        bad = np.array([v for _, v in harness.commands_since(t_bad)])
        assert len(bad) > 0
        assert np.isfinite(bad).all() and (bad >= md.u_min).all() and (bad <= md.u_max).all()

        # 7. SIGINT: clean exit, the last command sent is the safe one
        harness.send_target(TARGET)
        time.sleep(FADE_IN + 0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        assert proc.returncode == 0, log.read_text()[-3000:]
        time.sleep(0.1)
        assert near(harness.last_command(), g0), harness.last_command()
        text = log.read_text()
        assert "rejected" in text and "clamped" in text, text[-3000:]


def test_node_input_edge_cases_logged_per_reason_and_sigterm(policies, ros_node_env, tmp_path):
    """Backwards time stamps (a flood) and wrong-length joint states, a NaN and a far target
    with target_out_of_limits 'reject': commands keep coming, finite and in the limits; every
    reason is logged, each at most once a second (with the count of the suppressed ones), the
    flood of one never hiding the other; SIGTERM: exit 0 after the safe command."""
    domain, env = ros_node_env(59)
    md = read_onnx_metadata(policies["good"])
    g0 = gravity(Q0)
    log = tmp_path / "policy_node.log"
    args = [
        "--ros-args", "--params-file", str(ROOT / "config" / "policy_node.yaml"),
        "-p", f"policy_path:={policies['good']}", "-p", "fade_in:=0.05", "-p", "diagnostics_period:=0.5",
        "-p", "target_out_of_limits:=reject", "-p", target_param(TARGET),
    ]
    with running(NODE_COMMAND + args, env, log) as proc, Harness(domain) as harness:
        harness.publishing.set()
        wait_for(lambda: harness.last_diagnostics().get("state") == "running", 30, "running", proc, log)

        t_bad = time.monotonic()
        diag_before = harness.last_diagnostics()
        harness.backwards, harness.wrong_length_every = True, 7
        harness.send_target([math.nan, 0.0, 0.4])
        harness.send_target([5.0, 5.0, 5.0])
        time.sleep(2.5)
        bad = np.array([v for _, v in harness.commands_since(t_bad)])
        assert len(bad) > 0
        assert np.isfinite(bad).all() and (bad >= md.u_min).all() and (bad <= md.u_max).all()
        wait_for(lambda: int(harness.last_diagnostics().get("rejected.backwards_stamp", 0)) > 500, 5, "diagnostics")
        diag = harness.last_diagnostics()
        # no gap: the safe command on every tick while every state is rejected, by the node's own count
        published = int(diag["commands_published"]) - int(diag_before["commands_published"])
        ticks = int(diag["ticks"]) - int(diag_before["ticks"])
        assert published >= ticks - 2, (published, ticks)
        assert int(diag["rejected.length"]) > 50 and diag["state"] == "safe", diag
        assert int(diag["rejected.target_nonfinite"]) == 1 and int(diag["rejected.target_out_of_limits"]) == 1
        assert diag["target"] == " ".join(f"{x:.4f}" for x in TARGET)  # both targets rejected

        harness.backwards, harness.wrong_length_every = False, 0
        flood_s = time.monotonic() - t_bad
        wait_for(lambda: harness.last_diagnostics().get("state") == "running", 5, "running again", proc, log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.returncode == 0, log.read_text()[-3000:]
        time.sleep(0.1)
        assert np.abs(harness.last_command() - g0).max() < 1e-5 * np.abs(g0).max(), harness.last_command()
    text = log.read_text()
    backwards = [line for line in text.splitlines() if "rejected (backwards_stamp)" in line]
    length = [line for line in text.splitlines() if "rejected (length)" in line]
    print(f"{len(backwards)} backwards_stamp and {len(length)} length log lines in {flood_s:.1f} s; last: {backwards[-1][-120:]}")
    # at most one line a second per reason (+ the first, + one for the report that ended the flood)
    limit = int(flood_s) + 2
    assert 1 <= len(backwards) <= limit and 1 <= len(length) <= limit, text[-3000:]
    assert any("more 'joint_states.backwards_stamp' since the last report" in line for line in backwards), backwards
    assert "rejected (target_nonfinite)" in text and "rejected (target_out_of_limits)" in text
    assert "Traceback" not in text


class PlanHarness(Harness):
    """The Harness plus a fake MPC: while ``plan_u`` is set, a constant plan (ū = plan_u, K = 0,
    x̄ = (Q0, 0), for TARGET) is published on /mpc/plan at 100 Hz, stamped with the node clock
    (the joint states' clock); ``send_plan(array)`` publishes any array once."""

    def __init__(self, domain: int):
        from std_msgs.msg import Float64MultiArray

        self.Float64MultiArray = Float64MultiArray
        self.plan_u: np.ndarray | None = None
        self._sequence = 0
        super().__init__(domain)

    def start_spinning(self) -> None:  # called by Harness.__init__: add the plan publisher first
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.plan_pub = self.node.create_publisher(self.Float64MultiArray, "/mpc/plan", reliable)
        self.node.create_timer(0.01, self._publish_plan)
        super().start_spinning()

    def plan(self, u: np.ndarray, status: str = "converged", target=TARGET) -> np.ndarray:
        from tocpl_ros.control.plan import Plan, encode_plan

        stamp = self.node.get_clock().now().nanoseconds * 1e-9
        self._sequence += 1
        if status != "converged":
            return encode_plan(Plan(status, stamp, 0.02, np.asarray(target, float), np.zeros((0, 6)), np.zeros((0, 6, 12)),
                                    np.zeros((0, 12)), sequence=self._sequence))
        x_bar = np.tile(np.concatenate([Q0, np.zeros(6)]), (6, 1))
        return encode_plan(Plan("converged", stamp, 0.02, np.asarray(target, float), np.tile(u, (5, 1)),
                                np.zeros((5, 6, 12)), x_bar, sequence=self._sequence))

    def send_plan(self, data: np.ndarray) -> None:
        msg = self.Float64MultiArray()
        msg.data = [float(x) for x in data]
        self.plan_pub.publish(msg)

    def _publish_plan(self):
        if self.plan_u is not None:
            self.send_plan(self.plan(self.plan_u))


def test_node_follows_mpc_plans_and_rejects_bad_ones(policies, ros_node_env, tmp_path):
    """use_mpc:=true with a fake MPC on /mpc/plan: no plan → the policy's command; constant plans →
    the plan's command (clamped to the limits), reached through a blend of mpc_blend_periods
    commands; NaN / wrong-size plans rejected (counted, logged) without disturbing the plan held;
    plans stop → the policy's command through the same blend; a failure report → the policy at
    once; every command finite and inside the limits."""
    from tocpl_ros.control.plan import PLAN_HEADER

    domain, env = ros_node_env(63)
    md = read_onnx_metadata(policies["good"])
    u_policy = np.clip(OnnxPolicy(policies["good"])(np.concatenate([Q0, np.zeros(6), TARGET])), md.u_min, md.u_max)
    u_plan = gravity(Q0) + np.array([3.0, -2.0, 1.0, 0.5, -0.5, 40.0])  # wrist_3 beyond its 28 N·m
    u_plan_clamped = np.clip(u_plan, md.u_min, md.u_max)
    blend = 3

    def near(v, want, tol=1e-5):
        return np.abs(np.asarray(v) - want).max() <= tol * max(1.0, np.abs(want).max())

    log = tmp_path / "policy_node.log"
    args = ["--ros-args", "--params-file", str(ROOT / "config" / "policy_node.yaml"), "-p", f"policy_path:={policies['good']}",
            "-p", "use_mpc:=true", "-p", "mpc_max_age:=0.1", "-p", f"mpc_blend_periods:={blend}", "-p", f"fade_in:={FADE_IN}",
            "-p", "stale_periods:=25", "-p", "diagnostics_period:=0.25", "-p", target_param(TARGET)]
    with running(NODE_COMMAND + args, env, log) as proc, PlanHarness(domain) as harness:
        harness.publishing.set()
        # 1. no plan: the policy
        wait_for(lambda: len(harness.commands) > 50 and near(harness.last_command(), u_policy), 30, "the policy's command", proc, log)
        wait_for(lambda: harness.last_diagnostics().get("mpc_source") == "policy", 10, "diagnostics: on the policy", proc, log)
        # 2. plans: the plan's command (clamped), after a blend
        t_plan = time.monotonic()
        harness.plan_u = u_plan
        wait_for(lambda: near(harness.last_command(), u_plan_clamped), 10, "the plan's command", proc, log)
        values = [v for _, v in harness.commands_since(t_plan)]
        first = next(i for i, v in enumerate(values) if near(v, u_plan_clamped))
        d = u_policy - u_plan_clamped
        for j in range(1, blend):
            assert near(values[first - blend + j], u_plan_clamped + (blend - j) / blend * d, 1e-4), (j, values[first - blend + j])
        # 3. bad plans between good ones: rejected, the plan's command throughout
        t_bad = time.monotonic()
        good = harness.plan(u_plan)
        nan = good.copy()
        nan[-1] = math.nan
        harness.send_plan(nan)
        harness.send_plan(good[:-7])
        harness.send_plan(good[: len(PLAN_HEADER) - 2])
        time.sleep(0.5)
        assert all(near(v, u_plan_clamped) for _, v in harness.commands_since(t_bad + 0.05))
        wait_for(lambda: int(harness.last_diagnostics().get("mpc_rejected.nonfinite", 0)) >= 1
                 and int(harness.last_diagnostics().get("mpc_rejected.size", 0)) >= 1
                 and int(harness.last_diagnostics().get("mpc_rejected.malformed", 0)) >= 1, 5, "rejected plans counted", proc, log)
        # 4. the plans stop: the policy's command, blended
        t_stop = time.monotonic()
        harness.plan_u = None
        wait_for(lambda: near(harness.last_command(), u_policy), 5, "the policy's command after the plans stopped", proc, log)
        time.sleep(0.1)
        values = [v for _, v in harness.commands_since(t_stop)]
        first = next(i for i, v in enumerate(values) if near(v, u_policy))
        assert first >= blend, "the plan was still followed for max_age"
        for j in range(1, blend):
            assert near(values[first - blend + j], u_policy - (blend - j) / blend * d, 1e-4), (j, values[first - blend + j])
        steps = np.abs(np.diff(np.array(values), axis=0)).max(axis=1)
        assert steps.max() <= np.abs(d).max() / blend + 1e-6
        wait_for(lambda: harness.last_diagnostics().get("mpc_reason", "").startswith("the MPC plan is"), 5, "reason: plan old", proc, log)
        # 5. plans again, then a failure report: the policy at once (no ageing)
        harness.plan_u = u_plan
        wait_for(lambda: near(harness.last_command(), u_plan_clamped), 10, "the plan's command again", proc, log)
        harness.plan_u = None
        t_fail = time.monotonic()
        harness.send_plan(harness.plan(u_plan, status="max_iter"))
        wait_for(lambda: near(harness.last_command(), u_policy), 5, "the policy after a failure report", proc, log)
        wait_for(lambda: "max_iter" in harness.last_diagnostics().get("mpc_reason", ""), 5, "reason: failed", proc, log)
        reported = harness.commands_since(t_fail)
        diag = harness.last_diagnostics()
        print(f"\nfake MPC: {diag['mpc_plan_ticks']} plan ticks, {diag['mpc_policy_ticks']} policy ticks, switches "
              f"{diag['mpc_switches_to_plan']} to the plan / {diag['mpc_switches_to_policy']} to the policy; "
              f"{len(reported)} commands from the failure report to the policy's; "
              + ", ".join(f"{k} {v}" for k, v in diag.items() if k.startswith(("mpc_rejected", "mpc_fallback", "mpc_mpc_reported"))))
        assert int(diag["mpc_switches_to_plan"]) >= 2 and int(diag["mpc_switches_to_policy"]) >= 2
        values = np.array([v for _, v in harness.commands_since(-math.inf)])
        assert np.isfinite(values).all() and (values >= md.u_min).all() and (values <= md.u_max).all()
        text = log.read_text()
        assert "/mpc/plan rejected (nonfinite)" in text and "/mpc/plan rejected (size)" in text
        assert "switched to the policy" in text and "switched to the MPC plan" in text and "Traceback" not in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, log.read_text()[-3000:]
