"""mpc_node end to end: the real node in a subprocess, driven by an in-process rclpy test
node (fake /joint_states publisher, /mpc/command + /mpc/feedback + /diagnostics subscriber).

DDS stays on loopback (conftest) and each test uses its own ROS_DOMAIN_ID; every wait is
bounded and every process is killed on leaving its test (ros_harness.running). The policy is
an untrained export: these tests are about the node's behaviour and fallback, not precision.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tocpl_ros.policy_file import OnnxPolicy, read_onnx_metadata
from tocpl_ros.tasks import load_task

from ros_harness import (
    UR5_JOINTS as JOINTS,
    UR5_Q0 as Q0,
    JointStateFeed,
    assert_node_imports_none,
    node_command,
    running,
    target_param,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
TARGET = [0.5, 0.1, 0.4]
RATE = 100.0
JS_RATE = 500.0
NODE_COMMAND = node_command("mpc_node")
STALE_PERIODS = 5
FEEDBACK_SIZE = 6 + 12 + 6 * 12


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task("ur5_reach")
    return export_onnx(make_policy(task, seed=11).eval(), task, tmp_path_factory.mktemp("mpc_node") / "policy.onnx")


class Harness(JointStateFeed):
    """The robot for the MPC node (joint states at JS_RATE), recording /mpc/command, /mpc/feedback,
    /mpc/plan, /diagnostics."""

    def __init__(self, domain: int):
        super().__init__(domain, "mpc_node_test_harness", "/mpc/command", JS_RATE)
        self.record_arrays(["/mpc/feedback", "/mpc/plan"])
        self.feedback, self.plans = self.received["/mpc/feedback"], self.received["/mpc/plan"]
        self.record_diagnostics()
        self.start_spinning()

    def diag_after(self, t: float) -> list[dict[str, str]]:
        return self.diags_since("mpc_node", t)


def node_args(policy_file: Path, *extra: str) -> list[str]:
    return NODE_COMMAND + ["--ros-args", "--params-file", str(ROOT / "config" / "mpc_node.yaml"),
                           "-p", f"policy_path:={policy_file}", "-p", target_param(TARGET), *extra]


def steady_commands(harness: Harness, proc: subprocess.Popen, log: Path, label: str = "", seconds: float = 2.0) -> np.ndarray:
    """Joint states on, the node's first commands awaited, then /mpc/command over ``seconds``: its
    values (some must arrive; the rate is printed, not asserted: it depends on this machine's load)."""
    harness.publishing.set()
    wait_for(lambda: len(harness.commands) > 20, 60, "first /mpc/command", proc, log)
    t0 = time.monotonic()
    time.sleep(seconds)
    window = harness.commands_between(t0, t0 + seconds)
    print(f"/mpc/command{label} at {len(window) / seconds:.1f} Hz")
    assert window, f"no /mpc/command in {seconds} s\n{log.read_text()[-2000:]}"
    return np.array(window)


# ------------------------------------------------------------------------ tests


def test_params_file_matches_node_parameters():
    from tocpl_ros.mpc.config import MPCConfig
    from tocpl_ros.ros.nodes.mpc_node import NODE_PARAMETERS

    data = yaml.safe_load((ROOT / "config" / "mpc_node.yaml").read_text())
    params = data["mpc_node"]["ros__parameters"]
    assert set(params) == set(NODE_PARAMETERS)
    for name, (default, description) in NODE_PARAMETERS.items():
        assert description, name
        assert params[name] == ([] if default is None else default), (name, params[name], default)
    assert MPCConfig().rate == params["rate"] == 100.0
    assert MPCConfig().warm_start == "policy" and params["warm_start"] == "hybrid"  # the node's: see its description
    # a plan is published whenever its solve ends within the deadline, and each plan outlasts the
    # policy node's age limit: a late MPC means older plans, not the policy
    from tocpl_ros.ros.nodes.policy_node import NODE_PARAMETERS as POLICY_PARAMETERS

    max_age = POLICY_PARAMETERS["mpc_max_age"][0]
    assert params["deadline"] < max_age < params["plan_duration"]
    assert yaml.safe_load((ROOT / "config" / "policy_node.yaml").read_text())["policy_node"]["ros__parameters"]["mpc_max_age"] == max_age


@pytest.fixture(scope="module")
def nan_policy_file(policy_file, tmp_path_factory) -> Path:
    """The same policy with NaN output biases: a real ONNX graph whose output is NaN."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(policy_file))
    last_bias = [i for i in model.graph.initializer if i.name.endswith(".bias")][-1]
    last_bias.CopyFrom(numpy_helper.from_array(np.full(tuple(last_bias.dims), np.nan, dtype=np.float32), last_bias.name))
    path = tmp_path_factory.mktemp("mpc_node_nan") / "nan.onnx"
    onnx.save(model, str(path))
    return path


def make_loop(policy_path: Path, **mpc_config):
    """The node's ROS-free tick logic with the real controller, Crocoddyl MPC and ONNX policy,
    solving inline (deterministic: every tick gets the result of its own solve)."""
    from tocpl_ros.control.config import ControllerConfig
    from tocpl_ros.control.controller import PolicyController
    from tocpl_ros.mpc.config import MPCConfig
    from tocpl_ros.mpc.loop import MPCLoop
    from tocpl_ros.mpc.solver import InlineSolver, RecedingHorizonMPC

    task = load_task("ur5_reach")
    config = MPCConfig(**mpc_config)
    controller = PolicyController(
        policy_path, ControllerConfig(rate=config.rate, output_mode="effort", fade_in=0.0, initial_target=TARGET)
    )
    controller.start()
    return MPCLoop(InlineSolver(RecedingHorizonMPC(task, controller.policy, config)), controller, STALE_PERIODS)


V0 = np.array([0.1, -0.2, 0.3, 0.0, 0.5, 3.0])


def loop_commands(loop, ticks: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ticks at the MPC period, a fresh joint state before each; every tick must publish."""
    out = []
    for k in range(ticks):
        t = k / RATE
        assert loop.controller.update_joint_state(JOINTS, Q0, V0, t, t) is None
        result = loop.tick(t)
        assert result is not None, f"tick {k}: nothing published ({loop.last_status}: {loop.last_message})"
        out.append(result)
    return out


@pytest.mark.parametrize("failure", ["max_iter", "deadline", "error"])
def test_mpc_loop_failed_solves_publish_the_policy_command(policy_file, failure):
    """A solve that does not converge, misses its deadline or raises inside the solver: the
    policy's command for the current state is published that same tick (K = 0), never a gap."""
    if failure == "max_iter":
        loop = make_loop(policy_file, warm_start="cold", max_iter=1, deadline=math.inf)
    elif failure == "deadline":
        loop = make_loop(policy_file, deadline=1e-6)
    else:
        loop = make_loop(policy_file, deadline=math.inf)
        loop.solver.mpc.shooting = None  # the solver's problem is gone: set_problem raises inside solve()
    x = np.concatenate([Q0, V0])
    u_policy = loop.solver.policy_command(x, np.array(TARGET))
    for command, feedback in loop_commands(loop):
        np.testing.assert_allclose(command, u_policy, atol=1e-12)
        np.testing.assert_allclose(feedback[:6], u_policy, atol=1e-12)
        np.testing.assert_allclose(feedback[6:18], x)
        assert not feedback[18:].any()
    assert loop.counts["fallbacks"] == loop.counts["solves"] == 10
    assert loop.counts[f"fallback.{failure}"] == 10, loop.counts
    assert loop.last_status == "fallback" and loop.counts["converged"] == 0


def test_mpc_loop_nonfinite_policy_and_solve_publish_braking(nan_policy_file):
    """The policy's output is NaN (so its warm start and its fallback are useless): the tick
    publishes the braking command g(q) − M(q)·kd·v, inside the limits, never NaN, never a gap."""
    import pinocchio as pin

    loop = make_loop(nan_policy_file, deadline=math.inf)
    c = loop.controller
    model = pin.buildModelFromUrdf(str(ROOT / "urdf" / "ur5.urdf"))
    data = model.createData()
    upper = pin.crba(model, data, Q0)
    M = np.triu(upper) + np.triu(upper, 1).T
    brake = np.clip(pin.computeGeneralizedGravity(model, data, Q0) - M @ (40.0 * V0), c.u_lo, c.u_hi)
    assert brake[5] < -0.5, "the wrist spinning at +3 rad/s is braked"
    for command, feedback in loop_commands(loop):
        np.testing.assert_allclose(command, brake, atol=1e-9)
        assert np.isfinite(feedback).all() and not feedback[18:].any()
    assert loop.counts["brake_ticks"] == 10 and loop.counts["fallbacks"] == 10, loop.counts
    assert loop.last_status == "brake"


def test_mpc_loop_follows_a_fresh_plan_and_drops_it_after_a_failure(policy_file):
    """A converged solve is published as ū_0 (its own state, K in the feedback); a later tick whose
    solve fails publishes the policy's command even though the older plan is still fresh (the
    newest result governs); once solving works again the MPC's command is back."""
    loop = make_loop(policy_file, warm_start="cold", max_iter=500, deadline=0.5)
    c = loop.controller
    x = np.concatenate([Q0, np.zeros(6)])
    target = np.array(TARGET)
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 0.0, 0.0) is None
    command, feedback = loop.tick(0.0)
    plan = loop.plan
    assert plan is not None and loop.last_status == "mpc" and loop.counts["mpc_ticks"] == 1, loop.last_message
    np.testing.assert_allclose(command, np.clip(plan.u_bar, c.u_lo, c.u_hi))
    np.testing.assert_allclose(feedback[6:18], x)
    np.testing.assert_allclose(feedback[18:], plan.K.reshape(-1))
    assert np.abs(feedback[18:]).max() > 0

    shooting, loop.solver.mpc.shooting = loop.solver.mpc.shooting, None  # set_problem raises: a failed solve
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 0.01, 0.01) is None
    command, feedback = loop.tick(0.01)
    assert loop.plan is None and loop.last_status == "fallback" and loop.counts["fallback.error"] == 1
    np.testing.assert_allclose(command, loop.solver.policy_command(x, target), atol=1e-12)
    assert not feedback[18:].any()

    loop.solver.mpc.shooting = shooting
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 0.02, 0.02) is None
    loop.tick(0.02)
    assert loop.last_status == "mpc" and loop.counts["mpc_ticks"] == 2 and loop.counts["policy_ticks"] == 1


def test_mpc_loop_queues_a_plan_per_solve(policy_file):
    """Every result taken becomes one /mpc/plan message (tocpl_ros.control.plan layout): a converged
    solve with the joint state's stamp, the target, the steps covering plan_duration (ū_0 = the
    command of its own tick, x̄_0 = its state); a failed one as a failure report."""
    from tocpl_ros.control.plan import decode_plan

    loop = make_loop(policy_file, warm_start="cold", max_iter=500, deadline=0.5)
    c = loop.controller
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 1234.5, 0.0) is None  # stamp 1234.5, received at 0.0
    command, _ = loop.tick(0.0)
    assert loop.counts["plans_published"] == 1 and len(loop.plans) == 1
    plan = decode_plan(loop.plans.pop(), 6, 12, 3)
    assert plan.ok and plan.stamp == 1234.5 and plan.dt == 0.02 and plan.sequence == 1 and plan.warm_start == "cold"
    assert plan.steps == loop.solver.mpc.plan_steps >= int(math.ceil(loop.config.plan_duration / 0.02))
    assert plan.x_bar.shape == (plan.steps + 1, 12)
    np.testing.assert_allclose(plan.target, TARGET)
    np.testing.assert_allclose(plan.u_bar[0], command)
    np.testing.assert_allclose(plan.x_bar[0], np.concatenate([Q0, np.zeros(6)]))
    np.testing.assert_allclose(plan.K[0], loop.plan.K)
    loop.solver.mpc.shooting = None  # the next solve fails
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 1234.51, 0.01) is None
    loop.tick(0.01)
    report = decode_plan(loop.plans.pop(), 6, 12, 3)
    assert report.status == "error" and report.steps == 0 and report.stamp == 1234.51


def test_node_process_does_not_import_torch():
    assert_node_imports_none("mpc_node", ("torch",))


def test_mpc_node_commands_feedback_and_diagnostics(policy_file, ros_node_env, tmp_path):
    domain, env = ros_node_env(61)
    md = read_onnx_metadata(policy_file)
    log = tmp_path / "mpc_node.log"
    with running(node_args(policy_file), env, log) as proc, Harness(domain) as harness:
        # 1. commands at ~100 Hz, finite, within the torque limits; feedback alongside
        values = steady_commands(harness, proc, log)
        assert values.shape[1] == 6 and np.isfinite(values).all()
        assert (values >= md.u_min).all() and (values <= md.u_max).all()
        with harness.lock:
            feedback = [v for _, v in harness.feedback[-50:]]
        assert feedback and all(v.shape == (FEEDBACK_SIZE,) and np.isfinite(v).all() for v in feedback)
        x_bar = feedback[-1][6:18]
        assert np.allclose(x_bar, np.concatenate([Q0, np.zeros(6)]))
        # one /mpc/plan per solve, in the plan follower's layout, stamped with the joint states' clock
        from tocpl_ros.control.plan import PlanError, decode_plan

        with harness.lock:
            plans = [v for _, v in harness.plans[-50:]]
        assert plans, "no /mpc/plan"
        decoded = []
        for data in plans:
            try:
                decoded.append(decode_plan(data, 6, 12, 3))
            except PlanError as exc:
                raise AssertionError(f"a /mpc/plan the policy node cannot read: {exc}") from None
        ok = [p for p in decoded if p.ok]
        print(f"/mpc/plan: {len(ok)} of the last {len(decoded)} converged")
        wall = time.time()
        assert all(abs(p.stamp - wall) < 30 for p in decoded), "plan stamps are not the joint states' (wall clock) stamps"
        assert all(np.allclose(p.target, TARGET) for p in decoded)
        if ok:
            assert np.allclose(ok[-1].x_bar[0], np.concatenate([Q0, np.zeros(6)])) and ok[-1].steps >= 2

        # 2. diagnostics report solve statistics
        t_diag = time.monotonic()
        wait_for(lambda: len(harness.diag_after(t_diag)) >= 1, 5, "diagnostics")
        diag = harness.diag_after(t_diag)[-1]
        print({k: diag[k] for k in ("solves", "converged", "fallbacks", "solve_time_p50_ms", "iterations_p50", "warm_start")})
        for key in ("solve_time_p50_ms", "solve_time_p99_ms", "solve_time_max_ms", "iterations_p50", "iterations_max",
                    "solves", "converged", "fallbacks", "warm_start", "deadline_ms", "loop_period_p50_ms", "stale_ticks"):
            assert key in diag, key
        solves = int(diag["solves"])
        assert solves > 20 and int(diag["converged"]) + int(diag["fallbacks"]) == solves  # solving on, each counted once
        assert math.isfinite(float(diag["solve_time_p50_ms"])) and float(diag["solve_time_p50_ms"]) > 0
        # the node's default 'hybrid': the policy's rollout from scratch, the shifted converged plan otherwise
        used = int(diag.get("warm_start.policy", 0)) + int(diag.get("warm_start.shifted", 0))
        assert diag["warm_start"] == "hybrid" and int(diag.get("warm_start.policy", 0)) > 0 and used == solves
        from tocpl_ros.ros.nodes.mpc_node import NODE_PARAMETERS

        assert float(diag["deadline_ms"]) == 1e3 * NODE_PARAMETERS["deadline"][0]

        # 3. NaN/Inf/huge joint states are ignored: commands stay finite and in limits. The burst
        # (0.2 s, every message bad) outlasts the stale limit (50 ms): the node publishes nothing
        # meanwhile, then resumes with the fresh data.
        t_bad = time.monotonic()
        harness.bad_burst = 100
        time.sleep(0.7)
        bad = np.array(harness.commands_between(t_bad, time.monotonic()))
        assert len(bad) > 20 and np.isfinite(bad).all() and (bad >= md.u_min).all() and (bad <= md.u_max).all()
        t_after = time.monotonic()
        wait_for(lambda: len(harness.commands_between(t_after, math.inf)) > 10, 5, "commands after the bad burst")
        wait_for(lambda: any(int(d.get("rejected_inputs", 0)) > 0 for d in harness.diag_after(t_bad)), 5, "rejected inputs")

        # 4. stale joint states -> no solve, nothing published; fresh again -> commands resume
        # (by the node's own counts: while its stale ticks grow, its published commands do not)
        harness.publishing.clear()
        t_stale = time.monotonic()

        def stale_between_two_reports() -> bool:
            # stale ticks between the last three reports: stale from before the second one on (the
            # bad burst's stale ticks came before t_stale, fresh data between)
            found = harness.diag_after(t_stale)
            return len(found) >= 3 and int(found[-3]["stale_ticks"]) < int(found[-2]["stale_ticks"]) < int(found[-1]["stale_ticks"])

        wait_for(stale_between_two_reports, 15, "diagnostics reports during stale ticks")
        before, after = harness.diag_after(t_stale)[-2:]
        assert after["commands_published"] == before["commands_published"], (before, after)
        harness.publishing.set()
        t_fresh = time.monotonic()
        wait_for(lambda: len(harness.commands_between(t_fresh, math.inf)) > 20, 5, "commands after fresh data")


def test_mpc_node_impossible_deadline_falls_back_to_the_policy(policy_file, ros_node_env, tmp_path):
    domain, env = ros_node_env(67)
    md = read_onnx_metadata(policy_file)
    u_policy = np.clip(OnnxPolicy(policy_file)(np.concatenate([Q0, np.zeros(6), TARGET])), md.u_min, md.u_max)
    log = tmp_path / "mpc_node.log"
    with running(node_args(policy_file, "-p", "deadline:=0.000001"), env, log) as proc, Harness(domain) as harness:
        values = steady_commands(harness, proc, log, " (all fallbacks)")
        assert np.abs(values - u_policy).max() < 1e-4 * max(1.0, np.abs(u_policy).max()), "the fallback is the policy's command"
        with harness.lock:
            feedback = harness.feedback[-1][1]
        assert np.allclose(feedback[:6], u_policy, atol=1e-4) and not feedback[18:].any()  # K = 0 on a fallback

        t0 = time.monotonic()
        wait_for(lambda: len(harness.diag_after(t0)) >= 2, 5, "two diagnostics messages")
        first, second = harness.diag_after(t0)[:2]
        print({k: second[k] for k in ("solves", "converged", "fallbacks", "fallback.deadline", "reason")})
        assert int(second["fallbacks"]) > int(first["fallbacks"]) > 0
        assert int(second["converged"]) == 0 and int(second["fallback.deadline"]) == int(second["fallbacks"])
        assert "deadline" in second["reason"]
        with harness.lock:
            levels = [level for _, name, _, level in harness.diagnostics if name == "mpc_node"]
        from diagnostic_msgs.msg import DiagnosticStatus

        assert levels[-1] == DiagnosticStatus.WARN

        # SIGTERM: a clean exit (status 0) through the shared runtime
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert proc.returncode == 0 and "shutting down" in log.read_text(), log.read_text()[-3000:]


def test_mpc_node_shifted_warm_start_converges(policy_file, ros_node_env, tmp_path):
    """With the robot held still, the shifted warm start refines the previous solution cycle
    after cycle: converged solves get published with their feedback gain (K != 0).
    The solver at the nodes' priority (solver_nice 0): this test is about the warm start, and
    beside a training the niced solver misses the deadline whatever its start (the deadline
    fallback has its own tests)."""
    domain, env = ros_node_env(71)
    md = read_onnx_metadata(policy_file)
    log = tmp_path / "mpc_node.log"
    with running(node_args(policy_file, "-p", "warm_start:=shifted", "-p", "solver_nice:=0"), env, log) as proc, Harness(domain) as harness:
        values = steady_commands(harness, proc, log, " (shifted)")
        assert np.isfinite(values).all() and (values >= md.u_min).all() and (values <= md.u_max).all()
        t0 = time.monotonic()
        wait_for(lambda: len(harness.diag_after(t0)) >= 1, 5, "diagnostics")
        diag = harness.diag_after(t0)[-1]
        shown = {k: v for k, v in diag.items() if k.startswith(("fallback", "warm_start.")) or k in (
            "solves", "converged", "mpc_ticks", "policy_ticks", "busy_ticks", "solve_time_p50_ms", "solve_time_max_ms",
            "iterations_p50", "state", "reason")}
        print(shown)
        assert int(diag["converged"]) > 0.5 * int(diag["solves"]), shown
        assert int(diag["warm_start.shifted"]) > 0
        with harness.lock:
            feedback = [v for _, v in harness.feedback[-20:]]
        with_gain = [v for v in feedback if np.abs(v[18:]).max() > 0]
        assert with_gain, "no MPC solution (K != 0) among the last feedback messages"
        # (x̄ is the plan's state at the solution's age, a later step than the robot's state once
        # the solve takes more than one dt: x̄ = the robot's state is asserted on the policy warm start)
        assert all(np.isfinite(v).all() and (v[:6] >= md.u_min).all() and (v[:6] <= md.u_max).all() for v in with_gain)
