"""Faults around the real nodes, each over DDS with real processes (loopback, quiet domain).

Not covered elsewhere (test_bringup.py freezes the simulator with SIGSTOP/SIGCONT and kills it
for good; test_mpc_node.py runs a 1 µs deadline, where every solve is skipped up front):

- ``test_policy_node_survives_simulator_kill_and_restart``: the simulator process
  (``ur5_sim``) is SIGKILLed and a new one started, twice (more if DDS blacks out, see
  BLACKOUT_CYCLES), while ``policy_node`` keeps running. Each time the policy node switches
  to its safe command once and keeps it while the data is stale and says 'safe: stale
  joint_states' on /diagnostics; commands never stop
  (unless the middleware holds publish(), which the node must then report); once the new
  simulator publishes, the policy's command is back (after the fade-in), from the same
  policy-node process.
- ``test_mpc_failures_keep_the_command_stream``: ``mpc_node`` whose solves cannot succeed,
  (a) ``max_iter`` 1 from cold starts (never converges), (b) cold solves against a 2 ms
  ``deadline``. The node publishes a command on every tick with fresh joint states (its own
  counts), the consumer of ``/mpc/command`` (the fast loop) receives them, all finite and
  inside the torque limits, and /diagnostics counts the fallbacks by reason.
- ``test_mpc_iteration_longer_than_the_period_keeps_the_command_stream``: one solver iteration
  (horizon 1000) takes ~85 ms, solves take several periods (1 s deadline): the same stream
  checks, as the solves run in the node's solver process.
- ``test_mpc_solver_process_killed_keeps_the_command_stream``: the node's solver process is
  SIGKILLed twice: the policy's command fills in on every tick, a new solver
  process is started and converged solutions come back, from the same node process.

Rates, gaps and reaction times are printed, not asserted: they depend on this shared machine's
load (tocpl-load-bench and tocpl-mpc-loop-bench measure them); the exact stale limit in control
periods is the controller's, tested in test_controller.py. Here the reception times carry this
process's own backlog: when its executor is held up, reliable commands published before a kill
arrive after the last (keep-last) joint state.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tocpl_ros.resources import console_command

from ros_harness import (
    UR5_JOINTS as JOINTS,
    UR5_Q0 as Q0,
    NodeGroup,
    SpinningTestNode,
    node_command,
    ros_params,
    target_param,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
TARGET = [0.5, 0.1, 0.4]
RATE = 500.0
STALE_PERIODS = 5  # config/policy_node.yaml
FADE_IN = 0.2
WRIST_OFFSET = 2.0
"""N·m the test policy adds on wrist_3 (no gravity load there): its command differs from
every safe command by at least this."""
SIM_DAMPING = 30.0
"""N·m·s/rad in the simulator: the constant-torque test policy holds the arm near Q0 (wrist_3
turns at 2/30 rad/s) for the whole test."""
KILL_CYCLES = 2
BLACKOUT_CYCLES = 10
"""Extra kill cycles allowed for delivery blackouts. After the simulator's SIGKILL, Fast DDS 3.2
here sometimes delivers nothing from the policy node to this harness for ~1 s: either while the
node keeps publishing (its own counters say so), or because it holds the node's publish() for
1-4 s (the node reports a publish stall): 32 of 110 kills measured (default transports, either
executor; UDP only too). Such a cycle cannot time the reaction from here; it is checked on the
node's diagnostics instead, and KILL_CYCLES cycles must be seen in full (10 extra: a 1e-3 chance
to run out if 45 % of the kills were disturbed)."""
MPC_RATE = 100.0


# ------------------------------------------------------------------------ shared helpers


class Harness(SpinningTestNode):
    """Records /joint_states, the Float64MultiArray ``command_topics`` and /diagnostics, each with
    time.monotonic() of reception; optionally publishes valid joint states at 500 Hz. An exception
    while spinning fails check_alive()."""

    def __init__(self, domain: int, command_topics: list[str], publish_joint_states: bool = False):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState

        super().__init__(domain, "faults_harness", record_errors=True)
        self.JointState = JointState
        self.joint_states: list[tuple[float, np.ndarray]] = []
        self.record_arrays(command_topics)
        self.commands = self.received
        self.record_diagnostics()
        if publish_joint_states:
            self.js_pub = self.node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
            self.node.create_timer(1.0 / 500.0, self._publish_joint_state)
        else:
            self.node.create_subscription(JointState, "/joint_states", self._on_joint_state, qos_profile_sensor_data)
        self.start_spinning()

    def _on_joint_state(self, msg):
        q = np.array([msg.position[list(msg.name).index(n)] for n in JOINTS])
        with self.lock:
            self.joint_states.append((time.monotonic(), q))

    def _publish_joint_state(self):
        msg = self.JointState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = JOINTS
        msg.position = [float(x) for x in Q0]
        msg.velocity = [0.0] * 6
        self.js_pub.publish(msg)

    def commands_since(self, topic: str, t: float) -> list[tuple[float, np.ndarray]]:
        return self.arrays_since(topic, t)

    def last_joint_state_time(self) -> float | None:
        with self.lock:
            return self.joint_states[-1][0] if self.joint_states else None


def fresh_published(before: dict[str, str], after: dict[str, str]) -> tuple[int, int]:
    """(commands published, ticks with fresh data) between two diagnostics reports of mpc_node."""
    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    fresh = delta("ticks") - delta("stale_ticks") - delta("no_state_ticks") - delta("no_target_ticks")
    return delta("commands_published"), fresh


# ------------------------------------------------------------------------ (a) simulator killed


@pytest.fixture(scope="module")
def constant_policy(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An exported ur5_reach policy (real ONNX) whose output is constant: gravity compensation at
    Q0 plus WRIST_OFFSET on wrist_3 (last layer's weights zeroed, its bias set through tanh).
    Returns (file, the command as onnxruntime computes it)."""
    return _constant_policy(tmp_path_factory, WRIST_OFFSET, "constant.onnx")


def _constant_policy(tmp_path_factory, wrist_offset: float, name: str) -> tuple[Path, np.ndarray]:
    import pinocchio as pin
    import torch

    from tocpl_ros.policy_file import OnnxPolicy
    from tocpl_ros.tasks import load_task
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task("ur5_reach")
    model = pin.buildModelFromUrdf(str(ROOT / "urdf" / "ur5.urdf"))
    u = pin.computeGeneralizedGravity(model, model.createData(), Q0).copy()
    u[5] += wrist_offset
    policy = make_policy(task, seed=3)
    with torch.no_grad():
        last = policy.net[-1]
        last.weight.zero_()
        z = (torch.as_tensor(u, dtype=torch.float32) - policy.u_mid) / policy.u_half
        last.bias.copy_(torch.atanh(z))
    path = export_onnx(policy.eval(), task, tmp_path_factory.mktemp("faults") / name)
    onnx_policy = OnnxPolicy(path)
    out = np.asarray(onnx_policy(np.concatenate([Q0, np.zeros(6), TARGET])), dtype=float).reshape(-1)
    assert np.abs(out - u).max() < 1e-3, (out, u)
    other = np.asarray(onnx_policy(np.concatenate([Q0 + 0.3, np.ones(6), [0.6, 0.0, 0.3]])), dtype=float).reshape(-1)
    assert np.abs(other - out).max() < 1e-6, "the test policy must not depend on its input"
    return path, out


def test_policy_node_survives_simulator_kill_and_restart(constant_policy, ros_quiet_domain, tmp_path):
    policy_path, u_policy = constant_policy
    effort_topic = "/forward_effort_controller/commands"
    period = 1.0 / RATE
    harness, _, env = ros_quiet_domain(Harness, 89, command_topics=[effort_topic])
    sim_cmd = node_command("ur5_sim") + ["--ros-args", "-p", f"damping:={SIM_DAMPING}"]
    policy_cmd = node_command("policy_node") + [
        "--ros-args", "--params-file", str(ROOT / "config" / "policy_node.yaml"),
        "-p", f"policy_path:={policy_path}", "-p", f"rate:={RATE}", "-p", f"stale_periods:={STALE_PERIODS}",
        "-p", f"fade_in:={FADE_IN}", "-p", "diagnostics_period:=0.25", "-p", target_param(TARGET),
    ]

    def is_policy(v: np.ndarray) -> bool:
        return float(np.abs(v - u_policy).max()) < 1e-6 * max(1.0, float(np.abs(u_policy).max()))

    def policy_driving(since: float) -> bool:
        after = harness.commands_since(effort_topic, since)
        return len(after) >= 20 and all(is_policy(v) for _, v in after[-20:])

    with harness, NodeGroup(env, tmp_path) as nodes:
        procs, logs = nodes.procs, nodes.logs
        nodes.start("ur5_sim", sim_cmd)
        policy_pid = nodes.start("policy_node", policy_cmd).pid
        wait_for(lambda: policy_driving(-math.inf), 60, "the policy driving the simulated arm", procs, logs)
        figures, blackouts = [], []
        cycle = 0
        while len(figures) < KILL_CYCLES:
            cycle += 1
            assert len(blackouts) <= BLACKOUT_CYCLES, f"{len(blackouts)} delivery blackouts in {cycle - 1} kills: {blackouts}"
            # -- kill the simulator while the policy drives the arm (and this harness sees its joint states)
            t_seen = time.monotonic()
            wait_for(lambda: (t := harness.last_joint_state_time()) is not None and t > t_seen, 30,
                       f"cycle {cycle}: the test harness receiving /joint_states", procs, logs)
            wait_for(lambda: harness.last_diag("policy_node", after=t_seen) is not None, 10,
                       f"cycle {cycle}: diagnostics of the policy node before the kill", procs, logs)
            diag_before = harness.last_diag("policy_node")
            t_kill = time.monotonic()
            procs["ur5_sim"].send_signal(signal.SIGKILL)
            procs["ur5_sim"].wait(timeout=10)
            procs["ur5_sim"] = None  # no process of the group until the restart
            time.sleep(0.6)
            harness.check_alive()
            t_last = harness.last_joint_state_time()
            assert t_last is not None and t_last >= t_kill - 0.5, (
                f"no joint state in the 0.5 s before the kill: {len(harness.joint_states)} received, last {t_last}, "
                f"kill at {t_kill}; {len(harness.commands[effort_topic])} commands; publishers of /joint_states: "
                f"{harness.node.count_publishers('/joint_states')}; nodes: {harness.other_nodes()}")
            after = harness.commands_since(effort_topic, t_last + 1e-9)
            dead_time = time.monotonic() - t_last
            # the node's own account of the cycle: its diagnostics 1.5 s on, in the safe state (a held
            # publish() holds the diagnostics too, and the first ones after it may predate the next tick)
            wait_for(lambda: (d := harness.last_diag("policy_node")) is not None
                       and d["stamp"] >= diag_before["stamp"] + 1.5 and d["state"] == "safe", 5,
                       f"cycle {cycle}: diagnostics of the policy node 1.5 s on, saying 'safe'", procs, logs)
            diag = harness.last_diag("policy_node")
            stalls = int(diag["publish_stalls"]) - int(diag_before["publish_stalls"])
            seen_in_full = bool(after) and after[-1][0] >= t_kill + 0.4 and not stalls
            if seen_in_full:
                values = np.array([v for _, v in after])
                assert np.isfinite(values).all()
                # safe = not the policy's command (the safe command itself may vary: 'hold' can follow a
                # predicted state); from the first safe command on, never the policy's again while stale
                safe = [float(np.abs(v - u_policy).max()) >= 0.5 * WRIST_OFFSET for v in values]
                assert safe[-1], f"cycle {cycle}: still the policy's command {dead_time:.2f} s after the last joint state"
                first = safe.index(True)
                assert all(safe[first:]), f"cycle {cycle}: the policy's command came back while the data was stale"
                latency_ms = 1e3 * (after[first][0] - t_last)  # reported, not asserted (see the module's docstring)
            else:
                # nothing received here for the last 0.2 s or more, or the node reports a held publish(): a
                # delivery blackout, or a node that stopped publishing; its own counters tell which
                published = int(diag["commands_published"]) - int(diag_before["commands_published"])
                span = diag["stamp"] - diag_before["stamp"]
                # a node that stopped publishing must have been held in publish() by the middleware,
                # and say so (publish_stalls, and a warning in its log)
                assert published >= 0.6 * RATE * span or stalls > 0, (
                    f"cycle {cycle}: the policy node stopped publishing: {published} commands in {span:.2f} s by "
                    f"its own count, no publish() stall reported ({len(after)} received here, the last "
                    f"{after[-1][0] - t_kill if after else float('nan'):.2f} s after the kill); {diag}")
                blackouts.append(f"cycle {cycle}: {len(after)} commands received here, the node published "
                                 f"{published / span:.0f}/s" + (" (publish() held by DDS)" if stalls else ""))
            assert diag is not None and diag["state"] == "safe" and diag["reason"].startswith("stale joint_states"), diag
            assert procs["policy_node"].poll() is None and procs["policy_node"].pid == policy_pid

            # -- a new simulator process: fresh joint states, the policy takes over again
            t_restart = time.monotonic()
            nodes.start("ur5_sim", sim_cmd)
            t_fresh = wait_for(lambda: (t := harness.last_joint_state_time()) is not None and t > t_restart, 60,
                                 f"cycle {cycle}: joint states of the new simulator", procs, logs)
            t_resumed = wait_for(lambda: policy_driving(t_restart), FADE_IN + 30.0,
                                   f"cycle {cycle}: the policy's command back after the restart", procs, logs)
            resumed = harness.commands_since(effort_topic, t_last)
            values = np.array([v for _, v in resumed])
            assert np.isfinite(values).all() and (np.abs(values) <= np.array([150, 150, 150, 28, 28, 28]) + 1e-9).all()
            # (a late joint state of the new simulator on a loaded machine may make it 'safe' for a tick)
            wait_for(lambda: (d := harness.last_diag("policy_node", after=t_resumed)) is not None
                       and d["state"] in ("running", "fading_in"), 3,
                       "diagnostics saying 'running' after the resume", procs, logs)
            assert procs["policy_node"].poll() is None and procs["policy_node"].pid == policy_pid, "policy node restarted"
            if seen_in_full:
                figures.append((cycle, first, latency_ms, t_fresh - t_restart, t_resumed - t_restart))

        # -- clean exit of the policy node after it all
        assert nodes.stop("policy_node") == 0, nodes.tail("policy_node")
        diag = harness.last_diag("policy_node")
        print(f"\nsimulator SIGKILLed and restarted {cycle}x under one policy node (pid {policy_pid}), "
              f"{len(blackouts)} delivery blackouts ({'; '.join(blackouts) or '-'}); seen in full: " + "; ".join(
            f"cycle {i}: safe after {n} commands / {ms:.1f} ms from the last joint state (limit {STALE_PERIODS} periods = "
            f"{1e3 * STALE_PERIODS * period:.0f} ms), policy's command back {back:.1f} s after the new sim was started "
            f"(its joint states seen here after {up:.1f} s; start-up and DDS discovery included)"
            for i, n, ms, up, back in figures) + f"; safe.stale ticks {diag.get('safe.stale')}, "
            f"stamp_resets {diag.get('stamp_resets')}")


# ------------------------------------------------------------------------ (b) MPC failures


@pytest.fixture(scope="module")
def mpc_policy(tmp_path_factory) -> Path:
    from tocpl_ros.tasks import load_task
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task("ur5_reach")
    return export_onnx(make_policy(task, seed=11).eval(), task, tmp_path_factory.mktemp("faults_mpc") / "policy.onnx")


MPC_CASES = {
    # name: (parameters, fallback reason expected to dominate)
    "max_iter_1": (["warm_start:=cold", "max_iter:=1"], "max_iter"),
    "deadline_2ms": (["warm_start:=cold", "max_iter:=1000", "deadline:=0.002"], "deadline"),
}
SLOW_ITERATIONS = ["warm_start:=cold", "horizon:=1000", "max_iter:=1000", "deadline:=1.0"]
"""One Crocoddyl iteration of the ur5_reach OCP at horizon 1000 takes longer than the 10 ms period
(measured: ~85 ms), and the 1 s deadline lets a solve go on for up to 100 periods."""


def mpc_command(policy: Path, *params: str) -> list[str]:
    return node_command("mpc_node") + [
        "--ros-args", "--params-file", str(ROOT / "config" / "mpc_node.yaml"), "-p", f"policy_path:={policy}",
        "-p", target_param(TARGET), *ros_params(*params)]


def run_mpc_case(case: str, params: list[str], offset: int, ros_quiet_domain, tmp_path, mpc_policy) -> tuple[dict, str]:
    """mpc_node with ``params``, valid joint states at 500 Hz, /mpc/command recorded for 3 s.
    Returns (figures, summary line); asserts what holds whatever the solver does: commands keep
    coming, finite and within the torque limits, no exception, clean exit."""
    topic = "/mpc/command"
    harness, _, env = ros_quiet_domain(Harness, offset, command_topics=[topic], publish_joint_states=True)
    with harness, NodeGroup(env, tmp_path) as nodes:
        procs, logs = nodes.procs, nodes.logs
        nodes.start("mpc_node", mpc_command(mpc_policy, "diagnostics_period:=0.5", *params))
        wait_for(lambda: len(harness.commands_since(topic, -math.inf)) > 30, 120, "first /mpc/command", procs, logs)
        t_diag0 = time.monotonic()
        wait_for(lambda: harness.last_diag("mpc_node", after=t_diag0) is not None, 5, "diagnostics", procs, logs)
        before = harness.last_diag("mpc_node", after=t_diag0)
        t0 = time.monotonic()
        time.sleep(3.0)
        t1 = time.monotonic()
        wait_for(lambda: harness.last_diag("mpc_node", after=t1) is not None, 5, "diagnostics", procs, logs)
        diag = harness.last_diag("mpc_node", after=t1)
        harness.check_alive()
        window = [(tc, v) for tc, v in harness.commands_since(topic, t0) if tc <= t1]
        times = np.array([tc for tc, _ in window])
        values = np.array([v for _, v in window])
        gaps = np.diff(times) if len(times) > 1 else np.array([math.nan])
        period = 1.0 / MPC_RATE

        def delta(key: str) -> int:
            return int(diag.get(key, 0)) - int(before.get(key, 0))

        fresh_ticks = delta("ticks") - delta("stale_ticks") - delta("no_state_ticks") - delta("no_target_ticks")
        figures = {
            "received": len(window), "rate": len(window) / (t1 - t0), "max_gap": float(gaps.max()),
            "p99_gap": float(np.percentile(gaps, 99)), "gaps_over_2": int((gaps > 2 * period).sum()), "gaps": len(gaps),
            "fresh_ticks": fresh_ticks, "published": delta("commands_published"),
        }
        # the longest solve of every diagnostics window since t0 (each covers 0.5 s)
        window_max = [float(d["solve_time_max_ms"]) for d in harness.diags_since("mpc_node", t0)]
        figures["solve_time_max_ms"] = max((m for m in window_max if math.isfinite(m)), default=math.nan)
        summary = (f"{case}: {len(window)} commands in {t1 - t0:.1f} s ({figures['rate']:.1f} Hz), gaps p50 "
                   f"{1e3 * np.median(gaps):.1f} ms, p99 {1e3 * figures['p99_gap']:.1f} ms, max {1e3 * gaps.max():.1f} ms, "
                   f"> 2 periods: {figures['gaps_over_2']}/{len(gaps)}; in the window: {fresh_ticks} ticks with fresh data, "
                   f"{figures['published']} commands published ({delta('mpc_ticks')} MPC, {delta('policy_ticks')} policy), "
                   f"{delta('solves')} solves, {delta('converged')} converged, "
                   f"{delta('fallbacks')} fallbacks ("
                   + ", ".join(f"{k} {delta(k)}" for k in diag if k.startswith("fallback.")) + "), "
                   f"solve time p50 {diag['solve_time_p50_ms']} ms (last window), max {figures['solve_time_max_ms']:.1f} ms, "
                   f"short-budget ticks {delta('short_budget_ticks')}, loop period max {diag['loop_period_max_ms']} ms")
        print("\n" + summary)
        figures["fallbacks"], figures["converged"], figures["solves"] = delta("fallbacks"), delta("converged"), delta("solves")
        figures["mpc_ticks"], figures["policy_ticks"] = delta("mpc_ticks"), delta("policy_ticks")
        figures.update({k: delta(k) for k in diag if k.startswith("fallback.")})
        assert values.shape[1:] == (6,) and np.isfinite(values).all(), summary
        assert (np.abs(values) <= np.array([150, 150, 150, 28, 28, 28]) + 1e-9).all(), summary
        text = nodes.text("mpc_node")
        assert "Traceback" not in text and "MPC tick failed" not in text, nodes.tail("mpc_node")
        assert int(diag.get("tick_errors", 0)) == 0, summary
        assert nodes.stop("mpc_node", timeout=30) == 0, nodes.tail("mpc_node")
        return figures, summary


def check_command_stream(figures: dict, summary: str) -> None:
    """The fast loop's view: a command for every tick with fresh data (the node's own counts), and
    commands received here. The rate and the largest gap depend on this shared, niced machine
    (seen: gaps up to 5 periods with solves of at most 8.8 ms, load average 7 on 2 cores), as does
    the wall time of a solve: reported, not asserted."""
    assert figures["fresh_ticks"] > 0 and figures["received"] > 0, summary
    assert figures["published"] >= figures["fresh_ticks"] - 1, f"ticks with fresh data but no command: {summary}"


@pytest.mark.parametrize("case", list(MPC_CASES))
def test_mpc_failures_keep_the_command_stream(case, mpc_policy, ros_quiet_domain, tmp_path):
    params, reason = MPC_CASES[case]
    offset = 93 + 2 * list(MPC_CASES).index(case)
    figures, summary = run_mpc_case(case, params, offset, ros_quiet_domain, tmp_path, mpc_policy)
    assert figures["fallbacks"] > 0 and figures.get(f"fallback.{reason}", 0) > 0, summary
    assert figures["converged"] <= 0.1 * max(figures["solves"], 1), summary
    check_command_stream(figures, summary)


def test_mpc_iteration_longer_than_the_period_keeps_the_command_stream(mpc_policy, ros_quiet_domain, tmp_path):
    """One solver iteration (~85 ms at horizon 1000) is longer than the 10 ms period and the 1 s
    deadline lets a solve run for many periods: the solves run in mpc_node's solver process, so
    the timer still publishes every period (the policy's command while no fresh solution exists).
    Before the solver process (solves inside the timer callback): 65-88 Hz, gaps of 95-234 ms."""
    figures, summary = run_mpc_case("slow_iterations", SLOW_ITERATIONS, 99, ros_quiet_domain, tmp_path, mpc_policy)
    # the premise: solves took longer than two periods (as reported by the solver process) ...
    assert figures["solve_time_max_ms"] > 2e3 / MPC_RATE, f"no solve longer than 2 periods: {summary}"
    # ... the command stream did not notice ...
    check_command_stream(figures, summary)
    # ... every command is the plan of a fresh solution or the policy's, and the slow solutions
    # (fresh for the 1 s deadline) were used, following their plan between solves
    assert figures["mpc_ticks"] + figures["policy_ticks"] == figures["published"], summary
    assert figures["mpc_ticks"] > 0 and figures["converged"] > 0, summary


SOLVER_KILLS = 2


def test_mpc_solver_process_killed_keeps_the_command_stream(mpc_policy, ros_quiet_domain, tmp_path):
    """The solver process of mpc_node (its child, pid on /diagnostics) is SIGKILLed twice while
    shifted warm starts converge: /mpc/command keeps coming (a command on every tick with fresh
    data, the policy's while there is no solver), a new solver process starts, converged solutions
    are published again; the node process is the same throughout and exits cleanly."""
    topic = "/mpc/command"
    harness, _, env = ros_quiet_domain(Harness, 103, command_topics=[topic], publish_joint_states=True)

    def diag_after(t: float) -> dict[str, str] | None:
        return harness.last_diag("mpc_node", after=t)

    def converging_since(t: float, solver_pid: str | None = None) -> bool:
        found = harness.diags_since("mpc_node", t)
        if solver_pid is not None:
            found = [d for d in found if d.get("solver_pid") == solver_pid]
        return len(found) >= 2 and int(found[-1]["mpc_ticks"]) > int(found[0]["mpc_ticks"])

    with harness, NodeGroup(env, tmp_path) as nodes:
        procs, logs = nodes.procs, nodes.logs
        node_pid = nodes.start("mpc_node", mpc_command(mpc_policy, "diagnostics_period:=0.25", "warm_start:=shifted")).pid
        wait_for(lambda: len(harness.commands_since(topic, -math.inf)) > 30, 120, "first /mpc/command", procs, logs)
        wait_for(lambda: converging_since(time.monotonic() - 0.3), 30, "MPC solutions published", procs, logs)
        figures = []
        for cycle in range(1, SOLVER_KILLS + 1):
            diag = diag_before = diag_after(time.monotonic() - 0.3)
            old_pid = int(diag["solver_pid"])
            stat = Path(f"/proc/{old_pid}/stat").read_text()
            assert old_pid != node_pid and int(stat[stat.rindex(")") + 2:].split()[1]) == node_pid, (
                f"solver pid {old_pid} is not a child of the node ({node_pid})")
            t_kill = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            t_back = wait_for(
                lambda: (d := diag_after(t_kill)) is not None and d["solver_pid"] != str(old_pid) and d["solver"] == "ready"
                and converging_since(t_kill, d["solver_pid"]), 60, f"cycle {cycle}: a new solver converging", procs, logs)
            window = [tc for tc, _ in harness.commands_since(topic, t_kill) if tc <= t_back]
            gaps = np.diff(np.array([t_kill] + window))
            diag = diag_after(t_kill)  # the newest, which saw the new solver converging
            rate = len(window) / (t_back - t_kill)
            published, fresh = fresh_published(diag_before, diag)
            summary = (f"cycle {cycle}: solver {old_pid} killed, new solver {diag['solver_pid']} converging after "
                       f"{t_back - t_kill:.2f} s; meanwhile {len(window)} commands ({rate:.1f} Hz), max gap "
                       f"{1e3 * gaps.max():.1f} ms, {published} published in {fresh} ticks with fresh data; "
                       f"deaths {diag['solver_deaths']}, restarts {diag['solver_restarts']}, "
                       f"solver_down_ticks {diag['solver_down_ticks']}")
            figures.append(summary)
            assert window and fresh > 0 and published >= fresh - 1, summary
            assert int(diag["solver_deaths"]) == cycle and int(diag["solver_restarts"]) >= cycle, summary
            assert int(diag["solver_down_ticks"]) > 0, summary
            assert procs["mpc_node"].poll() is None and procs["mpc_node"].pid == node_pid
            harness.check_alive()
        values = np.array([v for _, v in harness.commands_since(topic, -math.inf)])
        assert np.isfinite(values).all() and (np.abs(values) <= np.array([150, 150, 150, 28, 28, 28]) + 1e-9).all()
        text = nodes.text("mpc_node")
        assert "Traceback" not in text and "MPC tick failed" not in text, nodes.tail("mpc_node")
        last_solver = int(diag_after(-math.inf)["solver_pid"])
        assert nodes.stop("mpc_node", timeout=30) == 0, nodes.tail("mpc_node")
        deadline = time.monotonic() + 10
        while Path(f"/proc/{last_solver}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{last_solver}").exists(), "the solver process outlived the node"
        print("\n" + "\n".join(figures))


# ------------------------------------------------------------------------ load benchmark smoke test


@pytest.mark.slow
def test_load_benchmark_smoke(constant_policy, ros_node_env, tmp_path):
    """``tocpl-load-bench`` for 3 s per run (baseline, then 2 busy processes): the table and the
    JSON figures come out, the policy node ran (a command on every tick), the busy processes are
    gone after. The figures themselves are the benchmark's output, not asserted."""
    import json

    policy_path, _ = constant_policy
    domain, env = ros_node_env(101)
    out = tmp_path / "load.json"
    cmd = console_command("tocpl-load-bench", "tocpl_ros.bench.load") + [
        "--policy", str(policy_path), "--duration", "3", "--both", "--busy", "2", "--domain-id", str(domain),
        "--sim-param", f"damping:={SIM_DAMPING}", "--json", str(out), "--log-dir", str(tmp_path),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print("\n" + result.stdout[result.stdout.index("|"):] if "|" in result.stdout else result.stdout)
    for row in ("loop period p50 / p99 / max (ms)", "missed deadlines (> 2x period)", "inference p50 / p99 / max (us)",
                "RSS start / end / max (MiB)", "/joint_states received / nominal", "| no load", "2 busy processes"):
        assert row in result.stdout, row
    runs = json.loads(out.read_text())["runs"]
    assert [r["load_processes"] for r in runs] == [0, 2]
    for r in runs:
        assert r["ticks"] > 0 and 0 < r["period_ms"]["p50"] < math.inf, (r["ticks"], r["period_ms"])
        assert r["inference_us"]["n"] > 0 and r["policy_ticks"] > 0 and r["commands_published"] == r["ticks"]
        assert 0 < r["rss_mb_start"] <= r["rss_mb_max"] and r["rss_mb_end"] - r["rss_mb_start"] < 50
        assert r["joint_states_received"] > 0
    assert runs[1]["busy_alive_at_end"] == 2, "the load processes were not running for the whole loaded run"
    for pid in runs[1]["busy_pids"]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), (
            f"busy process {pid} still running")


# ------------------------------------------------------------------------ (c) the fast loop following the MPC

EFFORT_TOPIC = "/forward_effort_controller/commands"
PLAN_TOPIC = "/mpc/plan"
BLEND_PERIODS = 3  # config/policy_node.yaml mpc_blend_periods
FOLLOW_MAX_AGE = 0.2
"""mpc_max_age of these tests (config/policy_node.yaml's): the switching bounds checked are in
periods of the fast loop, whatever max_age."""
FOLLOW_STALE_PERIODS = 25
"""Joint states may be 50 ms late before the policy node goes safe (default 10 ms): a safe command
under load on this machine would be a step of its own in the command sequences checked here."""
FOLLOW_MPC_PARAMS = ["warm_start:=cold", "max_iter:=100", "deadline:=0.1", "horizon:=25", "plan_duration:=0.3",
                     "diagnostics_period:=0.25"]
"""These tests are about the switching, not the MPC's precision: cold starts (the constant test
policy is no warm start, and a new solver process has nothing to shift: with shifted starts and
max_iter 20 it never converged again under load), a 0.5 s horizon (solves ~2x shorter), a deadline
that lets a solve from the posture the policy left converge, plans covering more than
FOLLOW_MAX_AGE."""
FOLLOW_MAX_DEVIATION = 0.5
"""rad (default 0.1): late plans on a loaded machine drift from the arm further than on an idle one."""
FOLLOW_WRIST_OFFSET = 0.3
"""N·m on wrist_3 of the fast-loop tests' constant policy: with SIM_DAMPING the wrist turns at
0.01 rad/s while the policy drives, so it stays far from its limit for the length of a test."""


@pytest.fixture(scope="module")
def follow_policy(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The constant policy of the fast-loop tests (FOLLOW_WRIST_OFFSET on wrist_3)."""
    return _constant_policy(tmp_path_factory, FOLLOW_WRIST_OFFSET, "follow.onnx")


class FollowGraph(NodeGroup):
    """ur5_sim (damped) + policy_node (use_mpc, the constant policy) + mpc_node as processes on a
    quiet domain, the harness recording the effort commands, the plans and /diagnostics."""

    def __init__(self, ros_quiet_domain, tmp_path, offset: int, policy_path: Path):
        self.harness, _, env = ros_quiet_domain(Harness, offset, command_topics=[EFFORT_TOPIC, PLAN_TOPIC])
        super().__init__(env, tmp_path)
        self.cmds = {
            "ur5_sim": node_command("ur5_sim") + ["--ros-args", "-p", f"damping:={SIM_DAMPING}"],
            "policy_node": node_command("policy_node") + [
                "--ros-args", "--params-file", str(ROOT / "config" / "policy_node.yaml"), "-p", f"policy_path:={policy_path}",
                "-p", f"rate:={RATE}", "-p", "use_mpc:=true", "-p", f"mpc_max_age:={FOLLOW_MAX_AGE}",
                "-p", f"mpc_max_deviation:={FOLLOW_MAX_DEVIATION}",
                "-p", f"fade_in:={FADE_IN}", "-p", "diagnostics_period:=0.25", "-p", target_param(TARGET),
                "-p", f"stale_periods:={FOLLOW_STALE_PERIODS}"],
            "mpc_node": mpc_command(policy_path, *FOLLOW_MPC_PARAMS),
        }

    def start(self, name: str) -> subprocess.Popen:
        return super().start(name, self.cmds[name])

    def policy_diag(self, after: float = -math.inf) -> dict[str, str] | None:
        return self.harness.last_diag("policy_node", after=after)

    def following_since(self, t: float) -> bool:
        """The policy node's diagnostics since t say it follows the plan, its plan ticks growing."""
        found = self.harness.diags_since("policy_node", t)
        return (len(found) >= 2 and found[-1].get("mpc_source") == "plan"
                and int(found[-1]["mpc_plan_ticks"]) > int(found[0]["mpc_plan_ticks"]))

    def close(self) -> None:
        self.__exit__(None, None, None)
        self.harness.close()


def _is(values: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.abs(values - u).max(axis=-1) < 1e-6 * max(1.0, float(np.abs(u).max()))


def check_fallback(commands: list[tuple[float, np.ndarray]], u_policy: np.ndarray, what: str) -> dict:
    """The commands around a fall-back to the (constant) policy: the run of the policy's command at
    the end is preceded by exactly BLEND_PERIODS − 1 blend commands on the segment from the last
    plan command to the policy's, d/BLEND_PERIODS apart; no step larger than d, no gap in the
    sequence. Returns the figures."""
    values = np.array([v for _, v in commands])
    times = np.array([t for t, _ in commands])
    policy = _is(values, u_policy)
    assert policy[-1], f"{what}: the last command is not the policy's"
    first = len(policy) - int(np.argmin(policy[::-1])) if not policy.all() else 0
    assert first >= BLEND_PERIODS, f"{what}: no plan command before the fall-back ({first} commands)"
    last_plan = values[first - BLEND_PERIODS]
    d = last_plan - u_policy
    for j in range(1, BLEND_PERIODS):  # the blend: u_policy + (N − j)/N · d
        np.testing.assert_allclose(values[first - BLEND_PERIODS + j], u_policy + (BLEND_PERIODS - j) / BLEND_PERIODS * d,
                                   atol=1e-6, err_msg=f"{what}: blend command {j}")
    window = values[first - BLEND_PERIODS: first + 1]
    steps = np.abs(np.diff(window, axis=0)).max(axis=1)
    assert steps.max() <= np.abs(d).max() / BLEND_PERIODS + 1e-6, f"{what}: step {steps.max():.3g} > d/N"
    return {"difference": float(np.abs(d).max()), "step": float(steps.max()), "t_policy": float(times[first]),
            "blend_ms": 1e3 * float(times[first] - times[first - BLEND_PERIODS])}


def test_policy_node_falls_back_when_the_mpc_dies_and_returns(follow_policy, ros_quiet_domain, tmp_path):
    """The policy node follows the MPC's plans (use_mpc) on the simulated arm. (1) The MPC's solver
    process is SIGKILLed, (2) then the MPC node itself: each time the policy node falls back to the
    policy's command through a BLEND_PERIODS blend (each step 1/BLEND_PERIODS of the plan/policy
    difference at the switch), says so on /diagnostics, and publishes on every tick; once plans come
    again (a new solver process, a new MPC node) it follows them again, blended back. The policy
    node is the same process throughout."""
    policy_path, u_policy = follow_policy
    g = FollowGraph(ros_quiet_domain, tmp_path, 109, policy_path)
    figures = []
    try:
        for name in ("ur5_sim", "policy_node", "mpc_node"):
            g.start(name)
        policy_pid = g.procs["policy_node"].pid
        g.wait(lambda: g.following_since(time.monotonic() - 0.6), 180, "the policy node following the MPC's plans")

        def fall_back_and_return(label: str, kill, restart) -> None:
            before = g.policy_diag()
            t_kill = time.monotonic()
            kill()
            g.wait(lambda: (d := g.policy_diag(after=t_kill + 0.3)) is not None and d["mpc_source"] == "policy"
                   and len(g.harness.commands_since(EFFORT_TOPIC, t_kill)) > 50
                   and _is(g.harness.commands_since(EFFORT_TOPIC, t_kill)[-1][1], u_policy), 30,
                   f"{label}: the policy's command")
            time.sleep(0.2)
            commands = g.harness.commands_since(EFFORT_TOPIC, t_kill - 0.5)
            with g.harness.lock:
                plans = [tc for tc, _ in g.harness.commands[PLAN_TOPIC] if tc <= t_kill + 0.5]
            figure = check_fallback(commands, u_policy, label)
            last_plan = max(t for t in plans if t <= figure["t_policy"])
            figure["after_last_plan_ms"] = 1e3 * (figure["t_policy"] - last_plan)
            diag = g.policy_diag()
            assert diag["mpc_reason"].startswith("the MPC plan is") or "failed" in diag["mpc_reason"], diag["mpc_reason"]
            assert int(diag["mpc_switches_to_policy"]) > int(before["mpc_switches_to_policy"]), diag
            assert int(diag["mpc_fallback.plan_old"]) > int(before.get("mpc_fallback.plan_old", 0)), diag
            # -- plans again: followed again, blended
            t_restart = time.monotonic()
            restart()
            t_back = g.wait(lambda: g.following_since(t_restart), 180, f"{label}: the plans followed again")
            diag = g.policy_diag()
            assert int(diag["mpc_switches_to_plan"]) > int(before["mpc_switches_to_plan"]), diag
            window = np.array([v for _, v in g.harness.commands_since(EFFORT_TOPIC, t_restart)])
            back = int(np.argmin(_is(window, u_policy)))  # the first command that is not the policy's
            steps = np.abs(np.diff(window[max(back - 1, 0): back + BLEND_PERIODS + 1], axis=0)).max(axis=1)
            difference = float(diag["mpc_switch_difference_max"])
            # a safe command between them (joint states late on a starved machine: the controller's
            # reaction, not the MPC's) is a step of its own: the step is bounded only without one
            safe_ticks = int(diag["safe_ticks"]) - int(before["safe_ticks"])
            assert safe_ticks > 0 or steps.max() <= difference + 1e-6, (
                f"{label}: a step of {steps.max():.3g} N·m at the return (max difference {difference})")
            # commands on every tick with fresh joint states, by the node's own count
            published = int(diag["commands_published"]) - int(before["commands_published"])
            ticks = int(diag["ticks"]) - int(before["ticks"])
            assert published >= ticks - 2, f"{label}: {published} commands published in {ticks} ticks"
            assert g.procs["policy_node"].poll() is None and g.procs["policy_node"].pid == policy_pid
            figure.update(label=label, back_s=t_back - t_restart, return_step=float(steps.max()))
            figures.append(figure)

        # (1) the MPC's solver process: the node restarts it itself
        g.wait(lambda: (d := g.harness.last_diag("mpc_node")) is not None and d.get("solver") == "ready", 60,
               "the MPC node's diagnostics (solver pid)")
        solver_pid = int(g.harness.last_diag("mpc_node")["solver_pid"])
        fall_back_and_return("solver killed", lambda: os.kill(solver_pid, signal.SIGKILL), lambda: None)
        # (2) the MPC node
        def kill_mpc_node() -> None:
            proc, g.procs["mpc_node"] = g.procs["mpc_node"], None
            proc.kill()
            proc.wait(10)

        fall_back_and_return("mpc_node killed", kill_mpc_node, lambda: g.start("mpc_node"))
        values = np.array([v for _, v in g.harness.commands_since(EFFORT_TOPIC, -math.inf)])
        assert np.isfinite(values).all() and (np.abs(values) <= np.array([150, 150, 150, 28, 28, 28]) + 1e-9).all()
        text = g.logs["policy_node"].read_text()
        assert "Traceback" not in text and "switched to the policy" in text and "switched to the MPC plan" in text
        diag = g.policy_diag()
        print("\n" + "; ".join(
            f"{f['label']}: the policy's command {f['after_last_plan_ms']:.0f} ms after the last plan received here "
            f"(mpc_max_age {1e3 * FOLLOW_MAX_AGE:g} ms), blend of {BLEND_PERIODS} commands over {f['blend_ms']:.1f} ms, "
            f"plan/policy difference {f['difference']:.2f} N·m, largest step {f['step']:.2f}; plans followed again "
            f"{f['back_s']:.1f} s after the restart, largest step at the return {f['return_step']:.2f} N·m" for f in figures)
            + f"; policy node: {diag['mpc_switches_to_policy']} switches to the policy, {diag['mpc_switches_to_plan']} "
            f"to the plan, {diag['mpc_plan_ticks']} plan ticks, {diag['mpc_policy_ticks']} policy ticks ("
            + ", ".join(f"{k[len('mpc_fallback.'):]} {v}" for k, v in diag.items() if k.startswith("mpc_fallback.")) + ")")
        g.procs["policy_node"].send_signal(signal.SIGINT)
        assert g.procs["policy_node"].wait(timeout=20) == 0, g.tail("policy_node")
    finally:
        g.close()


FREEZES = 6
FREEZE_S = 0.3


def test_mpc_deadlines_missed_on_purpose_keep_the_fast_loop_continuous(follow_policy, ros_quiet_domain, tmp_path):
    """The MPC node is frozen (SIGSTOP) for FREEZE_S, FREEZES times, while the policy node follows
    its plans: every frozen period is a row of missed deadlines. The policy node publishes on every
    tick throughout, falls back to the policy each time and follows the plans again after each
    SIGCONT; no command step is larger than the largest plan/policy difference at a switch (node's
    report, over BLEND_PERIODS) plus the largest step seen while following the plan."""
    policy_path, u_policy = follow_policy
    g = FollowGraph(ros_quiet_domain, tmp_path, 113, policy_path)
    try:
        for name in ("ur5_sim", "policy_node", "mpc_node"):
            g.start(name)
        g.wait(lambda: g.following_since(time.monotonic() - 0.6), 180, "the policy node following the MPC's plans")
        t_steady = time.monotonic()
        time.sleep(1.0)
        steady = np.array([v for _, v in g.harness.commands_since(EFFORT_TOPIC, t_steady)])
        steady_step = float(np.abs(np.diff(steady, axis=0)).max()) if len(steady) > 1 else 0.0
        before = g.policy_diag()
        t0 = time.monotonic()
        mpc = g.procs["mpc_node"]
        frozen = 0
        try:
            for _ in range(FREEZES):
                mpc.send_signal(signal.SIGSTOP)
                frozen += 1
                t_stop = time.monotonic()
                time.sleep(FREEZE_S)
                # frozen until the node says it fell back: a plan stays usable for mpc_max_age of the
                # simulated time, which runs slower than the wall clock on a loaded machine
                g.wait(lambda: (d := g.policy_diag(after=t_stop)) is not None and d["mpc_source"] == "policy", 30,
                       "the fallback to the policy while the MPC is frozen")
                mpc.send_signal(signal.SIGCONT)
                t_cont = time.monotonic()
                g.wait(lambda: (d := g.policy_diag(after=t_cont)) is not None and d["mpc_source"] == "plan", 120,
                       "the plans followed again after SIGCONT")
                time.sleep(0.3)
        finally:
            mpc.send_signal(signal.SIGCONT)
        t1 = time.monotonic()
        g.wait(lambda: g.policy_diag(after=t1) is not None, 5, "diagnostics after the freezes")
        diag = g.policy_diag(after=t1)
        g.harness.check_alive()
        commands = [(t, v) for t, v in g.harness.commands_since(EFFORT_TOPIC, t0) if t <= t1]
        values = np.array([v for _, v in commands])
        steps = np.abs(np.diff(values, axis=0)).max(axis=1)
        times = np.array([t for t, _ in commands])
        switches = int(diag["mpc_switches_to_policy"]) - int(before["mpc_switches_to_policy"])
        difference = float(diag["mpc_switch_difference_max"])
        bound = difference / BLEND_PERIODS + max(steady_step, 1e-3)
        published = int(diag["commands_published"]) - int(before["commands_published"])
        ticks = int(diag["ticks"]) - int(before["ticks"])
        summary = (f"{FREEZES} freezes of {FREEZE_S:g} s: {switches} switches to the policy, "
                   f"{int(diag['mpc_switches_to_plan']) - int(before['mpc_switches_to_plan'])} back to the plan; "
                   f"{published} commands published in {ticks} ticks, {len(values)} received here, gaps p99 "
                   f"{1e3 * np.percentile(np.diff(times), 99):.1f} ms, max {1e3 * np.diff(times).max():.1f} ms; "
                   f"largest step {steps.max():.2f} N·m (bound {bound:.2f}: largest difference at a switch "
                   f"{difference:.2f} / {BLEND_PERIODS} + largest steady step {steady_step:.2f}); node's largest blend step "
                   f"{diag['mpc_blend_step_max']}; {int(diag['safe_ticks']) - int(before['safe_ticks'])} safe ticks")
        print("\n" + summary)
        # every freeze ended on the policy (waited for above); a fallback that passed through the safe
        # command (joint states late: the simulator held up while a subscriber of its topic is stopped)
        # restarts without a blend and is not counted as a switch
        safe_ticks = int(diag["safe_ticks"]) - int(before["safe_ticks"])
        assert switches >= FREEZES or (safe_ticks > 0 and switches >= 1), summary
        assert published >= ticks - 2, summary  # a command on every tick (joint states keep coming)
        # the node's own measure of every blend step; the commands seen here too unless a safe command
        # (joint states late by FOLLOW_STALE_PERIODS on a starved machine: the controller's, not the MPC's) came between
        assert float(diag["mpc_blend_step_max"]) <= bound + 1e-6, summary
        if int(diag["safe_ticks"]) == int(before["safe_ticks"]):
            assert steps.max() <= bound + 1e-6, summary
        else:
            print(f"({int(diag['safe_ticks']) - int(before['safe_ticks'])} safe ticks meanwhile: the steps seen here not bounded)")
        assert np.isfinite(values).all() and (np.abs(values) <= np.array([150, 150, 150, 28, 28, 28]) + 1e-9).all()
        assert g.procs["policy_node"].poll() is None and g.procs["mpc_node"].poll() is None
    finally:
        g.close()
