"""``mpc_node``: receding-horizon Crocoddyl MPC warm-started from the ONNX policy (thin rclpy
layer over :class:`tocpl_ros.mpc.RecedingHorizonMPC`).

Subscribes ``/joint_states`` (sensor_msgs/JointState, sensor-data QoS, taken by joint
name) and ``/target`` (geometry_msgs/PointStamped, base frame). At ``rate`` (default
100 Hz, steady-clock timer) it solves the task's OCP from the latest state and publishes,
reliable QoS:

- ``/mpc/command`` (std_msgs/Float64MultiArray): the torque to apply now, [nu], clamped to
  the torque limits: the solution's first control, or the policy's own command for the
  current state when the solve missed its deadline or failed (never a gap while the state
  is fresh);
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
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import fields
from typing import Any

import numpy as np

from ..config import ConfigError, FieldError, field_docs
from ..controller import ControllerConfig, PeriodStats, PolicyController
from ..mpc import MPCConfig, RecedingHorizonMPC
from ..policy_file import PolicyFileError
from ..ros_env import apply_loopback_defaults
from .policy_node import EXECUTORS, StartupError, _check_type

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
            self.counts["no_command_ticks"] += 1
            self.last_status = "no_command"
            return None
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
                    "no_command_ticks")
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
    from rcl_interfaces.msg import ParameterDescriptor
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
            self.params = self._declare_parameters(ParameterDescriptor)
            p = self.params
            if not p["policy_path"]:
                raise StartupError("parameter 'policy_path' is not set (the .onnx policy file)")
            try:
                mpc_config = MPCConfig(**{f.name: p[f.name] for f in fields(MPCConfig)})
                controller_config = ControllerConfig(
                    rate=mpc_config.rate, output_mode="effort", fade_in=0.0,
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

        def _declare_parameters(self, ParameterDescriptor) -> dict[str, Any]:
            values: dict[str, Any] = {}
            for name, (default, doc) in NODE_PARAMETERS.items():
                descriptor = ParameterDescriptor(description=doc, read_only=True, dynamic_typing=True)
                try:
                    value = self.declare_parameter(name, default, descriptor).value
                except Exception as exc:
                    raise StartupError(f"parameter '{name}': {exc}") from exc
                values[name] = _check_type(name, value, default)
            overrides = getattr(self, "_parameter_overrides", {}) or {}
            unknown = sorted(k for k in overrides if not self.has_parameter(k) and not k.startswith("qos_overrides."))
            if unknown:
                raise StartupError(
                    f"unknown parameter '{unknown[0]}'" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                    + f"; known: {', '.join(NODE_PARAMETERS)}"
                )
            if values["executor"] not in EXECUTORS:
                raise StartupError(f"parameter 'executor': must be one of {', '.join(EXECUTORS)}, got {values['executor']!r}")
            if not values["diagnostics_period"] > 0:
                raise StartupError(f"parameter 'diagnostics_period': must be > 0, got {values['diagnostics_period']}")
            if not values["initial_target"]:
                values["initial_target"] = None
            if values["target_limits"] is None:
                raise StartupError("parameter 'target_limits': needs 6 values [x_min, x_max, y_min, y_max, z_min, z_max]")
            return values

        def _on_joint_state(self, msg) -> None:
            received = time.monotonic()
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            with self.lock:
                reason = self.controller.update_joint_state(msg.name, msg.position, msg.velocity, stamp, received)
            if reason:
                self.get_logger().warning(f"/joint_states rejected: {reason}", throttle_duration_sec=1.0)

        def _on_target(self, msg) -> None:
            pt = msg.point
            with self.lock:
                reason = self.controller.update_target((pt.x, pt.y, pt.z))
                target = None if self.controller.target is None else self.controller.target.tolist()
            if reason:
                self.get_logger().warning(f"/target: {reason}", throttle_duration_sec=0.5)
            else:
                self.get_logger().info(f"/target: {target}", throttle_duration_sec=0.5)

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
                except Exception as exc:  # last line of defence (mpc.solve itself never raises)
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
    apply_loopback_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # malformed --ros-args
        print(f"[FATAL] [{NODE_NAME}]: refusing to start: invalid arguments: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = None
    try:
        try:
            node = _make_node_class()()
        except StartupError as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"refusing to start: {exc}")
            return 1
        if node.params["executor"] == "events":
            from rclpy.experimental import EventsExecutor

            executor = EventsExecutor()
        else:
            executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
            node.get_logger().info("shutting down")
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
