"""``mpc_node``: receding-horizon Crocoddyl MPC warm-started from the ONNX policy (thin rclpy
layer over :class:`tocpl_ros.mpc.RecedingHorizonMPC`).

Subscribes ``/joint_states`` (sensor_msgs/JointState, sensor-data QoS, taken by joint
name) and ``/target`` (geometry_msgs/PointStamped, base frame). At ``rate`` (default
100 Hz, steady-clock timer) it solves the task's OCP from the latest state and publishes,
reliable QoS:

- ``/mpc/command`` (std_msgs/Float64MultiArray): the torque to apply now, [nu], clamped to
  the torque limits: the solution's first control, or the policy's own command for the
  current state when the solve missed its deadline or failed (exception, non-finite,
  not converged), and should the policy's output not be finite either, the braking command
  g(q) − M(q)·40·v: never a gap while the state is fresh;
- ``/mpc/feedback`` (std_msgs/Float64MultiArray, empty layout), for a fast loop applying
  Crocoddyl's law u = ū − K (x − x̄): data = [ū (nu), x̄ (nx = 2 nu: q then v),
  K row-major (nu × nx)], 90 values for the UR5; on a fallback ū is the policy's command and
  K = 0;
- ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period``: solve time
  and iteration statistics, warm starts used, fallback counts by reason, stale ticks, loop
  period and rejected inputs.

Inputs go through :class:`tocpl_ros.controller.PolicyController`'s checks (joint names,
NaN/Inf, sanity bounds, target box): a rejected joint state is ignored. No accepted joint
state for ``stale_periods`` periods → no solve and nothing published (counted) until fresh
data arrives.

Run::

    mpc_node --ros-args --params-file config/mpc_node.yaml -p policy_path:=policy.onnx

DDS stays on loopback unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is set explicitly
(:func:`tocpl_ros.ros_env.apply_loopback_defaults`).
"""

from __future__ import annotations

import array
import math
import sys
import threading
import time
from collections import Counter
from dataclasses import fields
from typing import Any

import numpy as np

from ..config import ConfigError, FieldError, field_docs
from ..controller import HOLD_MAX_KD_DT, HOLD_MAX_OMEGA_DT, ControllerConfig, PeriodStats, PolicyController
from ..mpc import MPCConfig, RecedingHorizonMPC
from ..policy_file import PolicyFileError
from .runtime import StartupError, ThrottledLog, declare_parameters, run_node, take_joint_state, take_target

NODE_NAME = "mpc_node"
COMMAND_TOPIC = "/mpc/command"
FEEDBACK_TOPIC = "/mpc/feedback"
JOINT_STATES_TOPIC = "/joint_states"
TARGET_TOPIC = "/target"
DIAGNOSTICS_TOPIC = "/diagnostics"
TICK_MARGIN = 0.001
"""Seconds of each period kept free of solving (publishing, joint-state callbacks)."""

_MPC_DOCS = field_docs(MPCConfig)
_CONTROLLER_DOCS = field_docs(ControllerConfig)
CONTROLLER_PARAMETERS = (
    "stale_periods", "initial_target", "target_limits", "target_out_of_limits",
    "max_joint_velocity", "joint_position_margin", "allow_extra_joints",
)
"""ControllerConfig fields the node exposes (input checks; periods are MPC periods)."""

NODE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "policy_path": ("", "Policy file (.onnx written by tocpl-export): warm starts and fallback commands. Required."),
    "task": ("ur5_reach", "Task whose OCP is solved (config/tasks/<name>.yaml, or a YAML path); the policy must fit it."),
}
for _f in fields(MPCConfig):
    _default = _f.default
    _doc = _MPC_DOCS[_f.name]
    if _f.name == "horizon":
        _default, _doc = 0, _doc.replace("None (or 0)", "0")
    NODE_PARAMETERS[_f.name] = (_default, _doc)
for _name in CONTROLLER_PARAMETERS:
    _f = next(f for f in fields(ControllerConfig) if f.name == _name)
    _default = _f.default_factory() if callable(_f.default_factory) else _f.default  # type: ignore[misc]
    _doc = _CONTROLLER_DOCS[_name]
    if _name == "stale_periods":
        _doc = "No accepted joint state for more than stale_periods MPC periods → no solve, nothing published."
    NODE_PARAMETERS[_name] = (_default, _doc)
NODE_PARAMETERS["diagnostics_period"] = (1.0, "Seconds between /diagnostics messages.")
NODE_PARAMETERS["executor"] = (
    "events", "rclpy executor: 'events' (rclpy.experimental.EventsExecutor) or 'single' (SingleThreadedExecutor)."
)


class MPCLoop:
    """The node's per-tick logic without ROS: input checks (PolicyController), freshness,
    the MPC solve, the command/feedback to publish and the counters."""

    def __init__(self, mpc: RecedingHorizonMPC, controller: PolicyController, stale_periods: int):
        self.mpc = mpc
        self.controller = controller
        self.stale_limit = stale_periods * mpc.config.period + 1e-9
        self.counts: Counter = Counter()
        self.solve_times = PeriodStats(5000)
        self.iterations = PeriodStats(5000)
        self.last_status = "waiting"
        self.last_message = "no joint state received yet"

    def tick(self, now: float, budget: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(command [nu], feedback [nu + nx + nu·nx]) to publish, or None (nothing). ``budget``:
        seconds left for the solve in this period (None: the configured deadline)."""
        c = self.controller
        self.counts["ticks"] += 1
        q, v, target = c.q, c.v, c.target
        if q is None or v is None:
            self.counts["no_state_ticks"] += 1
            self.last_status, self.last_message = "waiting", "no joint state received yet"
            return None
        age = c.age(now)
        if not -self.stale_limit <= age <= self.stale_limit:
            self.counts["stale_ticks"] += 1
            self.mpc.reset()  # a solution from before the gap is no guess for 'shifted'
            self.last_status = "stale"
            self.last_message = f"stale joint_states: last accepted {age * 1e3:.1f} ms ago (limit {self.stale_limit * 1e3:.1f} ms)"
            return None
        if target is None:
            self.counts["no_target_ticks"] += 1
            self.last_status, self.last_message = "waiting", "no target"
            return None
        x = np.concatenate([q, v])
        if budget is not None and budget < self.mpc.config.deadline:
            self.counts["short_budget_ticks"] += 1  # started late: less than the deadline left
        try:
            return self._solve(x, target, now, budget)
        except Exception as exc:  # a bug here must not leave a gap: the policy, else braking
            self.counts["tick_errors"] += 1
            self.last_status, self.last_message = "fallback", f"MPC tick failed: {type(exc).__name__}: {exc}"
            return self._fallback(x, target)

    def _fallback(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The policy's command for x, else (non-finite policy output) the controller's braking
        command g(q) − M(q)·hold_kd·v; either with K = 0 in the feedback."""
        c = self.controller
        command = None
        try:
            command = self.mpc.policy_command(x, target)
        except Exception:
            command = None
        if command is None or command.shape != (c.nq,) or not np.isfinite(command).all():
            self.counts["brake_ticks"] += 1
            self.last_status = "brake"
            q, v = x[: c.nq], x[c.nq:]
            command = c.gravity(q) - c.mass_matrix(q) @ (c.config.hold_kd * v)
            if not np.isfinite(command).all():
                command = np.zeros(c.nq)
        command = np.clip(command, c.u_lo, c.u_hi)
        return command, np.concatenate([command, x, np.zeros(c.nq * x.size)])

    def _solve(self, x: np.ndarray, target: np.ndarray, now: float, budget: float | None) -> tuple[np.ndarray, np.ndarray]:
        c = self.controller
        result = self.mpc.solve(x, target, now, deadline=budget)
        self.counts["solves"] += 1
        self.counts[f"warm_start.{result.warm_start or 'none'}"] += 1
        self.solve_times.add(result.solve_time)
        self.iterations.add(float(result.iterations))
        if result.ok:
            self.counts["converged"] += 1
        else:
            self.counts["fallbacks"] += 1
            self.counts[f"fallback.{result.status}"] += 1
        self.last_status = "mpc" if result.ok else "fallback"
        self.last_message = result.message
        command = result.command
        if command is None or command.shape != (c.nq,) or not np.isfinite(command).all():
            return self._fallback(x, target)
        command = np.clip(command, c.u_lo, c.u_hi)
        K = result.K if result.K is not None else np.zeros((c.nq, x.size))
        x_bar = result.x_bar if result.x_bar is not None else x
        feedback = np.concatenate([command, x_bar, K.reshape(-1)])
        if not np.isfinite(feedback).all():  # cannot happen for a finite result; never publish NaN
            feedback = np.concatenate([command, x, np.zeros(c.nq * x.size)])
        return command, feedback

    def diagnostics(self) -> dict[str, str]:
        """Flat key → value strings (solve statistics of the window since the last call)."""
        st, it = self.solve_times.summary(), self.iterations.summary()
        self.solve_times.clear()
        self.iterations.clear()
        cfg = self.mpc.config
        s = self.controller.stats
        out = {
            "state": self.last_status,
            "reason": self.last_message,
            "warm_start": cfg.warm_start,
            "rate_hz": f"{cfg.rate:g}",
            "deadline_ms": f"{cfg.deadline * 1e3:g}",
            "max_iter": str(cfg.max_iter),
            "horizon": str(self.mpc.horizon),
            "solve_time_p50_ms": f"{st['p50'] * 1e3:.3f}",
            "solve_time_p99_ms": f"{st['p99'] * 1e3:.3f}",
            "solve_time_max_ms": f"{st['max'] * 1e3:.3f}",
            "iterations_p50": f"{it['p50']:g}",
            "iterations_mean": f"{it['mean']:.2f}",
            "iterations_max": f"{it['max']:g}",
            "window_solves": str(st["n"]),
            "accepted_joint_states": str(s.accepted_states),
            "rejected_inputs": str(s.rejected_total),
            "target": "none" if self.controller.target is None else " ".join(f"{x:.4f}" for x in self.controller.target),
        }
        counters = ("ticks", "solves", "converged", "fallbacks", "short_budget_ticks", "stale_ticks", "no_state_ticks",
                    "brake_ticks", "tick_errors")
        for key in counters:
            out[key] = str(self.counts[key])
        for key, count in sorted(self.counts.items()):
            if "." in key:
                out[key] = str(count)
        for key, count in sorted(s.rejected.items()):
            out[f"rejected.{key}"] = str(count)
        return out


def _make_node_class():
    """The Node subclass (built lazily so that importing this module needs no rclpy)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PointStamped
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.clock import Clock, ClockType
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from ..tasks import load_task

    class MPCNode(Node):
        def __init__(self, **kwargs):
            super().__init__(NODE_NAME, **kwargs)
            self.params = p = self._declare_parameters()
            self.executor_kind = p["executor"]
            if not p["policy_path"]:
                raise StartupError("parameter 'policy_path' is not set (the .onnx policy file)")
            try:
                mpc_config = MPCConfig(**{f.name: p[f.name] for f in fields(MPCConfig)})
                # braking gains of the last-resort command, kept within the bounds for this rate
                controller_config = ControllerConfig(
                    rate=mpc_config.rate, output_mode="effort", fade_in=0.0, safe_mode="zero_velocity",
                    hold_kp=min(ControllerConfig.hold_kp, (HOLD_MAX_OMEGA_DT * mpc_config.rate) ** 2),
                    hold_kd=min(ControllerConfig.hold_kd, HOLD_MAX_KD_DT * mpc_config.rate),
                    **{name: p[name] for name in CONTROLLER_PARAMETERS},
                )
            except FieldError as exc:
                raise StartupError(f"parameter '{exc.field}': {exc.message}") from exc
            try:
                task = load_task(p["task"])
            except (ConfigError, OSError, ValueError) as exc:
                raise StartupError(f"task '{p['task']}': {exc}") from exc
            try:
                controller = PolicyController(p["policy_path"], controller_config, urdf=getattr(task, "urdf_file", None))
                controller.check_metadata(dt=task.dt)
                mpc = RecedingHorizonMPC(task, controller.policy, mpc_config)
            except (PolicyFileError, ValueError, OSError) as exc:
                raise StartupError(f"policy '{p['policy_path']}' rejected: {exc}") from exc
            controller.start()
            self.loop = MPCLoop(mpc, controller, p["stale_periods"])
            self.mpc, self.controller, self.config = mpc, controller, mpc_config
            self._warm_up(task)
            self.lock = threading.Lock()
            self.input_log = ThrottledLog(self.get_logger(), period=1.0)

            steady = Clock(clock_type=ClockType.STEADY_TIME)
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
            self.command_pub = self.create_publisher(Float64MultiArray, COMMAND_TOPIC, qos)
            self.feedback_pub = self.create_publisher(Float64MultiArray, FEEDBACK_TOPIC, qos)
            self.diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
            inputs = MutuallyExclusiveCallbackGroup()
            self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_state, qos_profile_sensor_data, callback_group=inputs)
            self.create_subscription(PointStamped, TARGET_TOPIC, self._on_target, 10, callback_group=inputs)
            self.period_stats = PeriodStats(capacity=max(1000, int(4 * mpc_config.rate)))
            self.overruns = 0
            self.published = 0
            self.publish_errors = 0
            self._last_tick: float | None = None
            self._command_msg, self._feedback_msg = Float64MultiArray(), Float64MultiArray()
            self.control_timer = self.create_timer(
                mpc_config.period, self._tick, callback_group=MutuallyExclusiveCallbackGroup(), clock=steady
            )
            self.create_timer(p["diagnostics_period"], self._publish_diagnostics, clock=steady)
            self._diag_types = (DiagnosticArray, DiagnosticStatus, KeyValue)
            deadline = "none" if math.isinf(mpc_config.deadline) else f"{mpc_config.deadline * 1e3:g} ms"
            self.get_logger().info(
                f"MPC on task {task.name} (horizon {mpc.horizon} x {task.dt:g} s) at {mpc_config.rate:g} Hz, warm start "
                f"{mpc_config.warm_start}, max_iter {mpc_config.max_iter}, deadline {deadline}, policy {p['policy_path']} "
                f"(fallback) -> {COMMAND_TOPIC}, {FEEDBACK_TOPIC}"
            )

        def _warm_up(self, task) -> None:
            """One solve of the nominal problem (onnxruntime and Crocoddyl allocate on first use)."""
            nominal = task.nominal_problem() if hasattr(task, "nominal_problem") else task.sample(1, 0)
            for _ in range(2):
                self.mpc.solve(nominal.x0[0], nominal.target[0])
            self.mpc.reset()

        def _declare_parameters(self) -> dict[str, Any]:
            values = declare_parameters(self, NODE_PARAMETERS)
            if not values["initial_target"]:
                values["initial_target"] = None
            if values["target_limits"] is None:
                raise StartupError("parameter 'target_limits': needs 6 values [x_min, x_max, y_min, y_max, z_min, z_max]")
            return values

        def _on_joint_state(self, msg) -> None:
            take_joint_state(self.controller, self.lock, self.input_log, msg)

        def _on_target(self, msg) -> None:
            take_target(self.controller, self.lock, self.input_log, msg)

        def _tick(self) -> None:
            now = time.monotonic()
            if self._last_tick is not None:
                period = now - self._last_tick
                self.period_stats.add(period)
                if period > 1.5 * self.config.period:
                    self.overruns += 1
            self._last_tick = now
            budget = self._budget()
            with self.lock:
                try:
                    out = self.loop.tick(now, budget)
                except Exception as exc:  # only before a state exists (tick() falls back itself after)
                    self.get_logger().error(f"MPC tick failed: {type(exc).__name__}: {exc}", throttle_duration_sec=1.0)
                    self.loop.counts["tick_errors"] += 1
                    out = None
            if out is None:
                return
            command, feedback = out
            try:
                self._command_msg.data = array.array("d", command.tobytes())
                self.command_pub.publish(self._command_msg)
                self._feedback_msg.data = array.array("d", feedback.tobytes())
                self.feedback_pub.publish(self._feedback_msg)
                self.published += 1
            except Exception as exc:  # e.g. during shutdown
                self.publish_errors += 1
                self.get_logger().error(f"publishing failed: {exc}", throttle_duration_sec=1.0)

        def _budget(self) -> float | None:
            """Seconds until the next tick is due, minus a margin for publishing: a tick that
            started late gets a shorter deadline, so the solve never delays the next command."""
            try:
                remaining = self.control_timer.time_until_next_call()
            except Exception:
                return None
            if remaining is None:
                return None
            return max(0.0, 1e-9 * remaining - TICK_MARGIN)

        def _publish_diagnostics(self) -> None:
            DiagnosticArray, DiagnosticStatus, KeyValue = self._diag_types
            with self.lock:
                values = self.loop.diagnostics()
            loop = self.period_stats.summary()
            self.period_stats.clear()
            values.update(
                {
                    "loop_period_p50_ms": f"{loop['p50'] * 1e3:.3f}",
                    "loop_period_p99_ms": f"{loop['p99'] * 1e3:.3f}",
                    "loop_period_max_ms": f"{loop['max'] * 1e3:.3f}",
                    "overruns": str(self.overruns),
                    "commands_published": str(self.published),
                    "publish_errors": str(self.publish_errors),
                }
            )
            state = values["state"]
            if state == "mpc":
                level, message = DiagnosticStatus.OK, "MPC solutions"
            elif state == "fallback":
                level, message = DiagnosticStatus.WARN, f"policy fallback: {values['reason']}"
            else:
                level, message = DiagnosticStatus.WARN, f"{state}: {values['reason']}"
            status = DiagnosticStatus(
                level=level,
                name=f"{self.get_name()}: MPC loop",
                message=message,
                hardware_id=self.mpc.task.name,
                values=[KeyValue(key=k, value=v) for k, v in values.items()],
            )
            msg = DiagnosticArray(status=[status])
            msg.header.stamp = self.get_clock().now().to_msg()
            self.diag_pub.publish(msg)

    return MPCNode


def main(args: list[str] | None = None) -> int:
    return run_node(NODE_NAME, lambda: _make_node_class()(), args)


if __name__ == "__main__":
    sys.exit(main())
