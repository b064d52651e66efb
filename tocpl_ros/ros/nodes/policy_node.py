"""``policy_node``: runs an ONNX policy on a robot through ROS 2 (thin layer over
:class:`tocpl_ros.control.controller.PolicyController`).

Subscribes ``/joint_states`` (sensor_msgs/JointState, sensor-data QoS, taken by joint
name), ``/target`` (geometry_msgs/PointStamped) and ``/target_pose`` (geometry_msgs/PoseStamped), both
in the robot's base frame (header.frame_id empty or the base frame; another frame is rejected,
logged and counted): a position policy takes the position of either; a pose policy
(``tocpl.target_kind: pose``) takes a PoseStamped whole (its quaternion normalised; NaN/Inf or
zero norm rejected) and of a PointStamped the position, its target's orientation kept; publishes
std_msgs/Float64MultiArray on the output mode's forward-controller topic
(``/forward_{effort,velocity,position}_controller/commands``, reliable QoS) at ``rate``
from its own thread at absolute steady-clock deadlines (:mod:`tocpl_ros.ros.fast_loop`), and
diagnostic_msgs/DiagnosticArray on ``/diagnostics``
(loop period p50/p99/max, inference time, safety state, rejected-input counters, publish()
stalls: calls the middleware held longer than PUBLISH_STALL, also logged as warnings; commands
sent more than 2 periods after the previous one, ``command_gaps_over_2_periods``).
``realtime_priority`` > 0 puts the process under SCHED_FIFO (:func:`tocpl_ros.ros.runtime.apply_realtime_priority`).
Services ``~/start`` and ``~/stop`` (std_srvs/Trigger): stop → safe command, start →
fade-in to the policy.

With ``use_mpc:=true`` it is the fast loop of the MPC: it subscribes ``mpc_plan_topic``
(``/mpc/plan``, published by ``mpc_node`` once per solve) and, at its own rate, applies the
newest usable plan with its feedback, u = ū_k − K_k (x − x̄(t)), k from the joint-state stamps
(:class:`tocpl_ros.control.plan_follower.PlanFollower`); without a usable plan (none yet, older than
``mpc_max_age``, the MPC's newest solve failed, another target, a malformed message) the
policy's command, each switch blended over ``mpc_blend_periods`` periods, logged and counted on
/diagnostics (``mpc_*`` keys). The torque goes through the same safety layer as the policy's
(clamp, output mode, stale data, fade-in, safe command).

Refuses to start (error on stderr, exit status 2) when the policy file is missing or
corrupt, a parameter is invalid, or the policy's metadata does not match the robot.

Run::

    policy_node --ros-args --params-file config/policy_node.yaml -p policy_path:=policy.onnx

DDS stays on loopback unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is set explicitly
(:func:`tocpl_ros.ros.environment.apply_loopback_defaults`).

What "does not match the robot" covers: the robot the policy was trained for (``tocpl.robot``
against ``robot``), its controlled joints (names, order), locked joints (names, values), base and
end-effector frames, torque bounds, observation layout, and ``joint_names`` / ``expected_dt`` when set.
"""

from __future__ import annotations

import array
import sys
import threading
import time
from dataclasses import fields
from typing import Any

from geometry_msgs.msg import PointStamped, PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from tocpl_ros.config import FieldError, field_docs
from tocpl_ros.control.config import ControllerConfig
from tocpl_ros.control.controller import PolicyController
from tocpl_ros.control.plan_follower import PlanFollowerConfig
from tocpl_ros.control.stats import PeriodStats
from tocpl_ros.interfaces import (
    COMMAND_TOPICS,
    DIAGNOSTICS_TOPIC,
    JOINT_STATES_TOPIC,
    MPC_PLAN_TOPIC,
    POLICY_NODE,
    TARGET_POSE_TOPIC,
    TARGET_TOPIC,
)
from tocpl_ros.policy_file import PolicyFileError
from tocpl_ros.ros import diagnostics
from tocpl_ros.ros.fast_loop import FastLoop
from tocpl_ros.ros.runtime import (
    REALTIME_PRIORITY_DOC,
    PeriodMonitor,
    RobotDefault,
    StartupError,
    ThrottledLog,
    declare_parameters,
    describe_target,
    log_policy_version,
    run_node,
    take_joint_state,
    take_target,
)

PUBLISH_STALL = 0.1
"""Seconds a publish() call may take before the node warns and counts a publish stall: far above the
scheduling hiccups of a loaded machine, far below the middleware's own stalls (docs/ros.md)."""

_CONFIG_DOCS = field_docs(ControllerConfig)
ROBOT_DEFAULTS = {"rate": RobotDefault(float), "output_mode": RobotDefault(str), "exclude_gravity": RobotDefault(bool)}
"""Parameters the robot description gives unless they are set (its control_rate,
command_interface, compensates_gravity); target_limits too, as an unset array (target_workspace)."""
# name -> (default, description). ControllerConfig fields take their default and their
# attribute docstring; optional ones (None) are unset array parameters / 0.0.
NODE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "policy_path": ("", "Policy file (.onnx written by tocpl-export). Required."),
    "robot": ("", "Robot description (a name in the package's config/robots/, or a robot YAML path); empty: the one "
                  "the policy's task names (for older policy files: the shipped one of its URDF and joints)."),
    "urdf_path": ("", "Robot URDF (path or file name in the package's urdf/) replacing the robot description's; "
                      "empty: the robot's."),
    "joint_names": (None, "Expected joints in order; empty/unset: take the policy's (checked against the URDF either way)."),
    "autostart": (True, "Start driving with the policy (after fade_in) as soon as joint states arrive; false: wait for ~/start."),
    "diagnostics_period": (1.0, "Seconds between /diagnostics messages."),
    "executor": ("events", "rclpy executor: 'events' (rclpy.experimental.EventsExecutor, lowest overhead) "
                           "or 'single' (SingleThreadedExecutor)."),
    "realtime_priority": (0, REALTIME_PRIORITY_DOC),
}
for _f in fields(ControllerConfig):
    _default = _f.default_factory() if callable(_f.default_factory) else _f.default  # type: ignore[misc]
    if _f.name == "expected_dt":
        _default = 0.0
        _doc = _CONFIG_DOCS[_f.name] + " 0: not checked."
    else:
        _doc = _CONFIG_DOCS[_f.name].replace("None: the robot's", "Unset: the robot's")
    _default = ROBOT_DEFAULTS.get(_f.name, _default)
    NODE_PARAMETERS[_f.name] = (_default, _doc)
NODE_PARAMETERS["use_mpc"] = (
    False, "Follow the MPC node's plans (mpc_plan_topic) with feedback, the policy as the fallback; false: the policy alone."
)
NODE_PARAMETERS["mpc_plan_topic"] = (MPC_PLAN_TOPIC, "Topic of the MPC plans (std_msgs/Float64MultiArray, tocpl_ros.control.plan layout).")
_FOLLOWER_DOCS = field_docs(PlanFollowerConfig)
for _f in fields(PlanFollowerConfig):
    NODE_PARAMETERS[f"mpc_{_f.name}"] = (_f.default, _FOLLOWER_DOCS[_f.name] + " (use_mpc)")


class PolicyNode(Node):
    """The ``policy_node``. Raises StartupError on a bad parameter or an unusable policy file."""

    def __init__(self, **kwargs):
        super().__init__(POLICY_NODE, **kwargs)
        self.params = declare_parameters(self, NODE_PARAMETERS)
        self.executor_kind = self.params["executor"]
        self.realtime_priority = self.params["realtime_priority"]  # applied by run_node
        config = self._controller_config()
        path = self.params["policy_path"]
        if not path:
            raise StartupError("parameter 'policy_path' is not set (the .onnx policy file to run)")
        try:
            self.controller = PolicyController(
                path, config, urdf=self.params["urdf_path"] or None, robot=self.params["robot"] or None
            )
            self.controller.check_metadata(self.params["joint_names"] or None, config.expected_dt)
        except FieldError as exc:  # a setting the robot description does not give
            raise StartupError(f"parameter '{exc.field}': {exc.message}") from exc
        except (PolicyFileError, ValueError, OSError) as exc:
            raise StartupError(f"policy '{path}' rejected: {exc}") from exc
        self.config = config = self.controller.config  # the robot's settings filled in
        md = self.controller.metadata
        self.follower = None
        if self.params["use_mpc"]:
            try:
                follower_config = PlanFollowerConfig(**{f.name: self.params[f"mpc_{f.name}"] for f in fields(PlanFollowerConfig)})
            except FieldError as exc:
                raise StartupError(f"parameter 'mpc_{exc.field}': {exc.message}") from exc
            self.follower = self.controller.follow_plans(follower_config)
        self.lock = threading.Lock()  # joint-state/target callbacks vs the control tick
        self.input_log = ThrottledLog(self.get_logger(), period=1.0)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.command_topic = COMMAND_TOPICS[config.output_mode]
        command_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.command_pub = self.create_publisher(Float64MultiArray, self.command_topic, command_qos)
        self.diag_pub = self.create_publisher(diagnostics.DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_state, qos_profile_sensor_data, callback_group=inputs)
        self.create_subscription(PointStamped, TARGET_TOPIC, self._on_target, 10, callback_group=inputs)
        self.create_subscription(PoseStamped, TARGET_POSE_TOPIC, self._on_target, 10, callback_group=inputs)
        if self.follower is not None:
            self.create_subscription(Float64MultiArray, self.params["mpc_plan_topic"], self._on_plan, command_qos,
                                     callback_group=inputs)
        self.create_service(Trigger, "~/start", self._on_start, callback_group=inputs)
        self.create_service(Trigger, "~/stop", self._on_stop, callback_group=inputs)

        self.periods = PeriodMonitor(config.period, PeriodStats(capacity=max(1000, int(4 * config.rate))))
        self.publish_errors = 0
        self.published = 0
        self.publish_stalls = 0  # publish() calls that took longer than PUBLISH_STALL
        self.publish_max = 0.0  # longest publish() call (s) since the last diagnostics
        self._last_publish: float | None = None
        self.command_gaps = 0  # commands published more than 2 periods after the previous one
        self.command_gap_max = 0.0  # longest time between two commands (s) since the last diagnostics
        self._logged_state = self.controller.state
        self._msg = Float64MultiArray()
        self.create_timer(self.params["diagnostics_period"], self._publish_diagnostics, clock=steady)
        # The commands' timing is the robot's: its own thread, not an executor timer (fast_loop.py).
        self.fast_loop = FastLoop(config.period, self._tick, self._on_tick_error)

        if self.params["autostart"]:
            self.controller.start()
        target = "end effector at the first joint state" if self.controller.target is None else describe_target(self.controller)
        mpc = ""
        if self.follower is not None:
            fc = self.follower.config
            mpc = (f"following the MPC plans of {self.params['mpc_plan_topic']} (at most {fc.max_age * 1e3:g} ms old, "
                   f"switches blended over {fc.blend_periods} periods; the policy as the fallback), ")
        log_policy_version(self.get_logger(), path, md)
        self.get_logger().info(
            f"{mpc}policy {path} (task {md.task}, robot {self.controller.robot.name}, {len(md.joint_names)} joints, "
            f"trained dt {md.dt:g} s) -> "
            f"{self.command_topic} at {config.rate:g} Hz, output {config.output_mode}"
            f"{' without gravity' if config.exclude_gravity and config.output_mode == 'effort' else ''}, "
            f"safe mode {config.safe_mode}, stale after {config.stale_periods} periods, fade-in {config.fade_in:g} s, "
            f"{'pose' if self.controller.pose_targets else 'position'} targets, initial target {target} "
            f"(base frame {self.controller.base_frame}: {TARGET_TOPIC}, {TARGET_POSE_TOPIC}), "
            f"{'running' if self.params['autostart'] else 'stopped (call ~/start)'}"
        )
        # Started by the executor's first callback: until then the process's start-up (imports,
        # the executor) holds the GIL for tens of ms, which the loop would count as gaps.
        self._loop_starter = self.create_timer(0.0, self._start_fast_loop, clock=steady)

    # -- parameters -------------------------------------------------------------
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
        take_joint_state(self.controller, self.lock, self.input_log, msg)

    def _on_target(self, msg) -> None:
        take_target(self.controller, self.lock, self.input_log, msg)

    def _on_plan(self, msg) -> None:
        with self.lock:
            reason = self.follower.offer(msg.data)
        if reason:
            key = reason.split("(", 1)[1].split(")", 1)[0] if "(" in reason else "rejected"
            self.input_log.warning(f"mpc_plan.{key}", reason)

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
        with self.lock:
            self.periods.tick(now)
            command = self.controller.compute(now)
            state, reason = self.controller.state, self.controller.last_reason
            events = None
            if self.follower is not None and self.follower.events:
                events, self.follower.events = self.follower.events, []
        if state != self._logged_state:  # transitions only, safe ones rate-limited
            if state == "safe":
                self.input_log.warning("state.safe", f"safe command ({self.config.safe_mode}): {reason}")
            else:
                self.get_logger().info(f"state: {state}{f' ({reason})' if reason else ''}", throttle_duration_sec=1.0)
            self._logged_state = state
        if command.values is not None:
            try:
                self._msg.data = array.array("d", command.values.tobytes())
                t_publish = time.monotonic()
                self.command_pub.publish(self._msg)
                with self.lock:  # the counters /diagnostics reads (another thread)
                    self.published += 1
                    self._count_gap(t_publish)
                    self._check_publish_time(time.monotonic() - t_publish)
            except Exception as exc:  # e.g. during shutdown
                self.publish_errors += 1
                self.get_logger().error(f"publishing the command failed: {exc}", throttle_duration_sec=1.0)
        if events:  # after the command went out
            self._log_switches(events)

    def _start_fast_loop(self) -> None:
        self._loop_starter.cancel()
        if not self.fast_loop.running:
            self.fast_loop.start()

    def _on_tick_error(self, exc: BaseException) -> None:
        self.get_logger().error(f"control tick failed: {type(exc).__name__}: {exc}", throttle_duration_sec=1.0)

    def _log_switches(self, events: list[str]) -> None:
        """Every plan/policy switch, rate-limited per direction (all counted on /diagnostics)."""
        try:
            for line in events:
                if "to the policy" in line:
                    self.input_log.warning("mpc.to_policy", line)
                else:
                    self.input_log.info("mpc.to_plan", line)
        except Exception as exc:  # logging must never stop the loop
            self.get_logger().error(f"logging a plan switch failed: {exc}", throttle_duration_sec=1.0)

    def _count_gap(self, t_publish: float) -> None:
        """The time since the previous command, as sent (what a subscriber can get at best)."""
        if self._last_publish is not None:
            gap = t_publish - self._last_publish
            self.command_gap_max = max(self.command_gap_max, gap)
            if gap > 2.0 * self.config.period:
                self.command_gaps += 1
        self._last_publish = t_publish

    def _check_publish_time(self, seconds: float) -> None:
        # Fast DDS 3.2 can hold publish() for seconds after a subscriber of the topic was
        # SIGKILLed (docs/ros.md, test_node_faults.py): no command goes out meanwhile, which
        # the operator must hear about; the node itself cannot send around the middleware.
        self.publish_max = max(self.publish_max, seconds)
        if seconds > PUBLISH_STALL:
            self.publish_stalls += 1
            self.get_logger().warning(
                f"publishing the command blocked for {seconds * 1e3:.0f} ms in the middleware "
                f"({seconds / self.config.period:.0f} periods): no command went out meanwhile; "
                f"{self.publish_stalls} such stalls so far",
                throttle_duration_sec=1.0,
            )

    def _publish_diagnostics(self) -> None:
        with self.lock:
            values = self.controller.diagnostics()
            state, reason = self.controller.state, self.controller.last_reason
            publish_max, self.publish_max = self.publish_max, 0.0
            gap_max, self.command_gap_max = self.command_gap_max, 0.0
            values.update(diagnostics.period_values(self.periods))
        values.update(
            {
                "commands_published": str(self.published),
                "command_gaps_over_2_periods": str(self.command_gaps),
                "command_gap_max_ms": f"{gap_max * 1e3:.3f}",
                "publish_max_ms": f"{publish_max * 1e3:.3f}",
                "publish_stalls": str(self.publish_stalls),
                "rate_hz": f"{self.config.rate:g}",
                "command_topic": self.command_topic,
                "use_mpc": str(self.follower is not None).lower(),
            }
        )
        if (state == "running" or state == "fading_in") and self.follower is not None:
            if values.get("mpc_source") == "plan":
                level, message = diagnostics.OK, f"{state}: MPC plan"
            else:
                level, message = diagnostics.WARN, f"{state}: policy fallback ({values.get('mpc_reason', '')})"
        elif state == "running" or state == "fading_in":
            level, message = diagnostics.OK, state
        elif state == "stopped":
            level, message = diagnostics.OK, "stopped (safe command)"
        else:
            level, message = diagnostics.WARN, f"{state}: {reason}"
        self.diag_pub.publish(
            diagnostics.diagnostic_array(self, "policy control loop", level, message, self.controller.metadata.task, values)
        )

    def on_shutdown(self, executor, linger: float = 0.1) -> None:
        """Stop the policy and keep publishing the safe command for ``linger`` s (a forward
        controller holds the last command it received)."""
        self.get_logger().info("publishing the safe command before exiting")
        with self.lock:
            self.controller.stop()
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)

    def destroy_node(self) -> None:
        loop = getattr(self, "fast_loop", None)  # None: the constructor refused to start
        if loop is not None:
            loop.stop()  # no tick may publish through a destroyed publisher
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``policy_node`` (``ros2 run tocpl_ros policy_node``); see :func:`run_node`."""
    return run_node(POLICY_NODE, PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
