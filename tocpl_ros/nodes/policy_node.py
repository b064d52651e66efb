"""``policy_node``: runs an ONNX policy on a robot through ROS 2 (thin layer over
:class:`tocpl_ros.controller.PolicyController`).

Subscribes ``/joint_states`` (sensor_msgs/JointState, sensor-data QoS, taken by joint
name) and ``/target`` (geometry_msgs/PointStamped, in the robot's base frame); publishes
std_msgs/Float64MultiArray on the output mode's forward-controller topic
(``/forward_{effort,velocity,position}_controller/commands``, reliable QoS) at ``rate``
from a steady-clock timer, and diagnostic_msgs/DiagnosticArray on ``/diagnostics``
(loop period p50/p99/max, inference time, safety state, rejected-input counters).
Services ``~/start`` and ``~/stop`` (std_srvs/Trigger): stop → safe command, start →
fade-in to the policy.

Refuses to start (error on stderr, exit status 1) when the policy file is missing or
corrupt, a parameter is invalid, or the policy's metadata does not match the robot.

Run::

    policy_node --ros-args --params-file config/policy_node.yaml -p policy_path:=policy.onnx

DDS stays on loopback unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is set explicitly
(:func:`tocpl_ros.ros_env.apply_loopback_defaults`).
"""

from __future__ import annotations

import array
import signal
import sys
import threading
import time
from dataclasses import fields
from typing import Any

from ..config import FieldError, field_docs
from ..controller import ControllerConfig, PeriodStats, PolicyController
from ..policy_file import PolicyFileError
from ..ros_env import apply_loopback_defaults

NODE_NAME = "policy_node"
COMMAND_TOPICS = {
    "effort": "/forward_effort_controller/commands",
    "velocity": "/forward_velocity_controller/commands",
    "position": "/forward_position_controller/commands",
}
JOINT_STATES_TOPIC = "/joint_states"
TARGET_TOPIC = "/target"
DIAGNOSTICS_TOPIC = "/diagnostics"
EXECUTORS = ("events", "single")

_CONFIG_DOCS = field_docs(ControllerConfig)
# name -> (default, description). ControllerConfig fields take their default and their
# attribute docstring; optional ones (None) are unset array parameters / 0.0.
NODE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "policy_path": ("", "Policy file (.onnx written by tocpl-export). Required."),
    "urdf_path": ("", "Robot URDF (path or file name in the package's urdf/); empty: the one named in the policy's metadata."),
    "joint_names": (None, "Expected joints in order; empty/unset: take the policy's (checked against the URDF either way)."),
    "autostart": (True, "Start driving with the policy (after fade_in) as soon as joint states arrive; false: wait for ~/start."),
    "diagnostics_period": (1.0, "Seconds between /diagnostics messages."),
    "executor": ("events", "rclpy executor: 'events' (rclpy.experimental.EventsExecutor, lowest overhead) or 'single' (SingleThreadedExecutor)."),
}
for _f in fields(ControllerConfig):
    _default = _f.default_factory() if callable(_f.default_factory) else _f.default  # type: ignore[misc]
    if _f.name == "expected_dt":
        _default = 0.0
        _doc = _CONFIG_DOCS[_f.name] + " 0: not checked."
    else:
        _doc = _CONFIG_DOCS[_f.name]
    NODE_PARAMETERS[_f.name] = (_default, _doc)


class StartupError(RuntimeError):
    """The node cannot start: bad parameter, unusable policy file, metadata mismatch."""


def _check_type(name: str, value: Any, default: Any) -> Any:
    """``value`` of parameter ``name`` converted to the type of its default; StartupError if it
    cannot be (ints are accepted for floats; an unset/empty array is None)."""

    def kind(v: Any) -> str:
        return type(v).__name__

    def bad(expected: str) -> StartupError:
        return StartupError(f"parameter '{name}': expected {expected}, got {value!r} ({kind(value)})")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    # arrays: joint_names (strings), the others numbers; unset or empty -> None
    if value is None:
        return None if default is None else list(default)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise bad("a list")
    items = list(value)
    if not items:
        return None
    if name == "joint_names":
        if not all(isinstance(v, str) for v in items):
            raise bad("a list of strings")
        return items
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise bad("a list of numbers")
    return [float(v) for v in items]


def _make_node_class():
    """The Node subclass (built lazily so that importing this module needs no rclpy)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PointStamped
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.clock import Clock, ClockType
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    class PolicyNode(Node):
        def __init__(self, **kwargs):
            super().__init__(NODE_NAME, **kwargs)
            self.params = self._declare_parameters(ParameterDescriptor)
            config = self._controller_config()
            path = self.params["policy_path"]
            if not path:
                raise StartupError("parameter 'policy_path' is not set (the .onnx policy file to run)")
            try:
                self.controller = PolicyController(path, config, urdf=self.params["urdf_path"] or None)
                self.controller.check_metadata(self.params["joint_names"] or None, config.expected_dt)
            except (PolicyFileError, ValueError, OSError) as exc:
                raise StartupError(f"policy '{path}' rejected: {exc}") from exc
            self.config = config
            md = self.controller.metadata
            self.lock = threading.Lock()  # joint-state/target callbacks vs the control tick

            steady = Clock(clock_type=ClockType.STEADY_TIME)
            self.command_topic = COMMAND_TOPICS[config.output_mode]
            command_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
            self.command_pub = self.create_publisher(Float64MultiArray, self.command_topic, command_qos)
            self.diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
            inputs = MutuallyExclusiveCallbackGroup()
            self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_state, qos_profile_sensor_data, callback_group=inputs)
            self.create_subscription(PointStamped, TARGET_TOPIC, self._on_target, 10, callback_group=inputs)
            self.create_service(Trigger, "~/start", self._on_start, callback_group=inputs)
            self.create_service(Trigger, "~/stop", self._on_stop, callback_group=inputs)

            self.period_stats = PeriodStats(capacity=max(1000, int(4 * config.rate)))
            self.overruns = 0
            self.publish_errors = 0
            self.published = 0
            self._last_tick: float | None = None
            self._msg = Float64MultiArray()
            self.control_timer = self.create_timer(
                config.period, self._tick, callback_group=MutuallyExclusiveCallbackGroup(), clock=steady
            )
            self.create_timer(self.params["diagnostics_period"], self._publish_diagnostics, clock=steady)
            self._diag_types = (DiagnosticArray, DiagnosticStatus, KeyValue)

            if self.params["autostart"]:
                self.controller.start()
            target = "end effector at the first joint state" if self.controller.target is None else self.controller.target.tolist()
            self.get_logger().info(
                f"policy {path} (task {md.task}, {len(md.joint_names)} joints, trained dt {md.dt:g} s) -> "
                f"{self.command_topic} at {config.rate:g} Hz, output {config.output_mode}"
                f"{' without gravity' if config.exclude_gravity and config.output_mode == 'effort' else ''}, "
                f"safe mode {config.safe_mode}, stale after {config.stale_periods} periods, fade-in {config.fade_in:g} s, "
                f"initial target {target}, {'running' if self.params['autostart'] else 'stopped (call ~/start)'}"
            )

        # -- parameters -------------------------------------------------------------
        def _declare_parameters(self, ParameterDescriptor) -> dict[str, Any]:
            """Declare every parameter (read-only, with its description) and check its type.

            Declared with dynamic typing so that ``rate:=1000`` (an integer) is accepted for
            a float; the types are checked here instead, naming the parameter."""
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
            return values

        def _controller_config(self) -> ControllerConfig:
            kwargs = {f.name: self.params[f.name] for f in fields(ControllerConfig)}
            if not kwargs["initial_target"]:
                kwargs["initial_target"] = None
            if not kwargs["expected_dt"]:
                kwargs["expected_dt"] = None
            try:
                return ControllerConfig(**kwargs)
            except FieldError as exc:
                raise StartupError(f"parameter '{exc.field}': {exc.message}") from exc
            except (TypeError, ValueError) as exc:
                raise StartupError(f"invalid parameters: {exc}") from exc

        # -- callbacks --------------------------------------------------------------
        def _on_joint_state(self, msg) -> None:
            received = time.monotonic()
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            with self.lock:
                reason = self.controller.update_joint_state(msg.name, msg.position, msg.velocity, stamp, received)
            if reason:
                self.get_logger().warning(f"/joint_states rejected: {reason}", throttle_duration_sec=1.0)

        def _on_target(self, msg) -> None:
            p = msg.point
            with self.lock:
                before = self.controller.target
                reason = self.controller.update_target((p.x, p.y, p.z))
                taken = self.controller.target is not before
                target = None if self.controller.target is None else self.controller.target.tolist()
            # one throttled log line per outcome: a rejection never hides a clamp or vice versa
            if reason and not taken:
                self.get_logger().warning(f"/target: {reason}", throttle_duration_sec=0.5)
            elif reason:
                self.get_logger().warning(f"/target: {reason}", throttle_duration_sec=0.5)
            else:
                self.get_logger().info(f"/target: {target}", throttle_duration_sec=0.5)

        def _on_start(self, request, response):
            with self.lock:
                was = self.controller.running
                self.controller.start()
            response.success = True
            response.message = "already running" if was else f"started: fading in over {self.config.fade_in:g} s"
            self.get_logger().info(f"~/start: {response.message}")
            return response

        def _on_stop(self, request, response):
            with self.lock:
                was = self.controller.running
                self.controller.stop()
            response.success = True
            response.message = f"stopped: sending the safe command ({self.config.safe_mode})" if was else "already stopped"
            self.get_logger().info(f"~/stop: {response.message}")
            return response

        def _tick(self) -> None:
            now = time.monotonic()
            if self._last_tick is not None:
                period = now - self._last_tick
                self.period_stats.add(period)
                if period > 1.5 * self.config.period:
                    self.overruns += 1
            self._last_tick = now
            with self.lock:
                command = self.controller.compute(now)
            if command.values is None:
                return
            try:
                self._msg.data = array.array("d", command.values.tobytes())
                self.command_pub.publish(self._msg)
                self.published += 1
            except Exception as exc:  # e.g. during shutdown
                self.publish_errors += 1
                self.get_logger().error(f"publishing the command failed: {exc}", throttle_duration_sec=1.0)

        def _publish_diagnostics(self) -> None:
            DiagnosticArray, DiagnosticStatus, KeyValue = self._diag_types
            with self.lock:
                values = self.controller.diagnostics()
                state, reason = self.controller.state, self.controller.last_reason
            loop = self.period_stats.summary()
            self.period_stats.clear()
            values.update(
                {
                    "loop_period_p50_ms": f"{loop['p50'] * 1e3:.3f}",
                    "loop_period_p99_ms": f"{loop['p99'] * 1e3:.3f}",
                    "loop_period_max_ms": f"{loop['max'] * 1e3:.3f}",
                    "loop_period_samples": str(loop["n"]),
                    "loop_period_max_ever_ms": f"{self.period_stats.max_ever * 1e3:.3f}",
                    "overruns": str(self.overruns),
                    "commands_published": str(self.published),
                    "rate_hz": f"{self.config.rate:g}",
                    "command_topic": self.command_topic,
                }
            )
            if state == "running" or state == "fading_in":
                level, message = DiagnosticStatus.OK, state
            elif state == "stopped":
                level, message = DiagnosticStatus.OK, "stopped (safe command)"
            else:
                level, message = DiagnosticStatus.WARN, f"{state}: {reason}"
            status = DiagnosticStatus(
                level=level,
                name=f"{self.get_name()}: policy control loop",
                message=message,
                hardware_id=self.controller.metadata.task,
                values=[KeyValue(key=k, value=v) for k, v in values.items()],
            )
            msg = DiagnosticArray(status=[status])
            msg.header.stamp = self.get_clock().now().to_msg()
            self.diag_pub.publish(msg)

        def safe_shutdown(self, executor, linger: float = 0.1) -> None:
            """Stop the policy and keep publishing the safe command for ``linger`` s."""
            with self.lock:
                self.controller.stop()
            deadline = time.monotonic() + linger
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.01)

    return PolicyNode


def main(args: list[str] | None = None) -> int:
    apply_loopback_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    # Our own SIGINT/SIGTERM handling: the node publishes the safe command before it exits
    # (a forward controller holds the last command it received).
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # malformed --ros-args (e.g. a mixed-type array)
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
            node.get_logger().info("shutting down: publishing the safe command")
            node.safe_shutdown(executor)
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
