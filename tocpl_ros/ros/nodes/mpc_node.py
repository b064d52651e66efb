"""``mpc_node``: receding-horizon Crocoddyl MPC warm-started from the ONNX policy (thin rclpy
layer over :class:`tocpl_ros.mpc.loop.MPCLoop` and :class:`tocpl_ros.mpc.worker.MPCWorker`, which runs
:class:`tocpl_ros.mpc.solver.RecedingHorizonMPC` in a solver process).

Subscribes ``/joint_states`` (sensor_msgs/JointState, sensor-data QoS, taken by joint
name), ``/target`` (geometry_msgs/PointStamped) and ``/target_pose`` (geometry_msgs/PoseStamped), in
the robot's base frame (another frame_id is rejected), taken as the policy node takes them (a pose
policy's target: position and orientation, :func:`tocpl_ros.ros.runtime.take_target`). The OCP is the one the
policy was trained on (its file's ``tocpl.task_config``) unless ``task`` names another; it is solved in a solver
process of the node's own (:class:`tocpl_ros.mpc.worker.MPCWorker`; Crocoddyl keeps the GIL for whole
iterations, so a thread would still hold up the timer), so a solve never delays a command (its
priority: ``solver_nice``). At
``rate`` (default 100 Hz, steady-clock timer) the node hands the latest state to the solver
when it is idle, waits for that solve at most until its deadline or the end of the period, and
publishes, reliable QoS, on every tick (:class:`tocpl_ros.mpc.loop.MPCLoop`):

- ``/mpc/command`` (std_msgs/Float64MultiArray): the torque to apply now, [nu], clamped to
  the torque limits: the newest solution while its state is not older than ``deadline``
  (its plan followed with the feedback law at the current state; from this tick's own state,
  its first control), else the policy's own command for the current state (the solve missed its
  deadline, failed: exception, non-finite, not converged by max_iter or stalled before it; is
  still running; or the solver process is down and being restarted), and should the policy's
  output not be finite either,
  the braking command g(q) − M(q)·40·v: never a gap while the state is fresh;
- ``/mpc/feedback`` (std_msgs/Float64MultiArray, empty layout), for a fast loop applying
  Crocoddyl's law u = ū − K (x − x̄): data = [ū (nu), x̄ (nx = 2 nu: q then v),
  K row-major (nu × nx)], 90 values for the UR5 (the plan step the command came from); on a
  fallback ū is the policy's command, x̄ the current state and K = 0;
- ``/mpc/plan`` (std_msgs/Float64MultiArray, layout of :mod:`tocpl_ros.control.plan`), once per
  solve, right when it is taken: what a fast loop (the policy node with ``use_mpc:=true``)
  follows between solves. A converged solve: its stamp (the header stamp of the joint state it
  started from), step dt, target, ū_k and K_k of the steps covering ``plan_duration`` and x̄ of
  those steps + 1, whatever its age (the fast loop judges it by the joint-state stamps); a failed
  one: its status only (steps = 0);
- ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period``: solve time
  and iteration statistics (measured in the solver process), warm starts used, fallback counts
  by reason ('late': converged, but after its deadline), ticks with the MPC's / the policy's
  command, ticks while the solver was busy or down, the solver process (status, pid, deaths,
  restarts), stale ticks, loop period and rejected inputs.

Inputs go through :class:`tocpl_ros.control.controller.PolicyController`'s checks (joint names,
NaN/Inf, sanity bounds, target box): a rejected joint state is ignored. No accepted joint
state for ``stale_periods`` periods → no solve and nothing published (counted) until fresh
data arrives.

Run::

    mpc_node --ros-args --params-file config/mpc_node.yaml -p policy_path:=policy.onnx

DDS stays on loopback unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is set explicitly
(:func:`tocpl_ros.ros.environment.apply_loopback_defaults`).
"""

from __future__ import annotations

import array
import math
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

from tocpl_ros.config import ConfigError, FieldError, field_docs
from tocpl_ros.control.config import HOLD_MAX_KD_DT, HOLD_MAX_OMEGA_DT, ControllerConfig
from tocpl_ros.control.controller import PolicyController
from tocpl_ros.control.stats import PeriodStats
from tocpl_ros.interfaces import (
    DIAGNOSTICS_TOPIC,
    JOINT_STATES_TOPIC,
    MPC_COMMAND_TOPIC,
    MPC_FEEDBACK_TOPIC,
    MPC_NODE,
    MPC_PLAN_TOPIC,
    TARGET_POSE_TOPIC,
    TARGET_TOPIC,
)
from tocpl_ros.mpc.config import MPCConfig
from tocpl_ros.mpc.loop import TICK_MARGIN, MPCLoop
from tocpl_ros.mpc.worker import MPCWorker, WorkerError, load_task_spec
from tocpl_ros.policy_file import OnnxPolicy, PolicyFileError
from tocpl_ros.ros import diagnostics
from tocpl_ros.ros.runtime import (
    PeriodMonitor,
    StartupError,
    ThrottledLog,
    declare_parameters,
    log_policy_version,
    run_node,
    take_joint_state,
    take_target,
)

_MPC_DOCS = field_docs(MPCConfig)
_CONTROLLER_DOCS = field_docs(ControllerConfig)
CONTROLLER_PARAMETERS = (
    "stale_periods", "initial_target", "target_limits", "target_out_of_limits",
    "max_joint_velocity", "joint_position_margin", "allow_extra_joints",
)
"""ControllerConfig fields the node exposes (input checks; periods are MPC periods)."""

NODE_DEFAULTS: dict[str, tuple[Any, str]] = {
    "warm_start": ("hybrid", "the policy's rollout where a solve starts from scratch, the cheap shift in between"),
    "deadline": (0.1, "a late solution is still a plan the policy node can follow (it judges the age, mpc_max_age 0.2 s)"),
    "plan_duration": (0.3, "each plan outlasts the policy node's mpc_max_age, so a late MPC never leaves it without one"),
    "solver_nice": (10, "on a busy CPU the fast loop and the robot's driver come first; the MPC gets late instead"),
}
"""Where the node's defaults differ from MPCConfig's (the ROS-free MPC's): it runs beside a fast loop
that follows its plans (docs/mpc.md has the measurements behind each)."""
NODE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "policy_path": ("", "Policy file (.onnx written by tocpl-export): warm starts and fallback commands. Required."),
    "task": (
        "",
        "Task whose OCP is solved; empty: the one the policy was trained on (its file's tocpl.task_config). Set: an "
        "explicit override (config/tasks/<name>.yaml, or a YAML path) the policy must fit (robot, joints, dt, "
        "observation), e.g. ur5_reach_fixed_horizon for a ur5_reach policy (docs/mpc.md).",
    ),
}
for _f in fields(MPCConfig):
    _default = _f.default
    _doc = _MPC_DOCS[_f.name]
    if _f.name == "horizon":
        _default, _doc = 0, _doc.replace("None (or 0)", "0")
    if _f.name in NODE_DEFAULTS:
        _default, _why = NODE_DEFAULTS[_f.name]
        _doc += f" mpc_node default {_default!r} (MPCConfig's: {_f.default!r}): {_why}."
    NODE_PARAMETERS[_f.name] = (_default, _doc)
for _name in CONTROLLER_PARAMETERS:
    _f = next(f for f in fields(ControllerConfig) if f.name == _name)
    _default = _f.default_factory() if callable(_f.default_factory) else _f.default  # type: ignore[misc]
    _doc = _CONTROLLER_DOCS[_name].replace("None: the robot's", "Unset: the robot's")
    if _name == "stale_periods":
        _doc = "No accepted joint state for more than stale_periods MPC periods → no solve, nothing published."
    NODE_PARAMETERS[_name] = (_default, _doc)
NODE_PARAMETERS["diagnostics_period"] = (1.0, "Seconds between /diagnostics messages.")
NODE_PARAMETERS["executor"] = (
    "events", "rclpy executor: 'events' (rclpy.experimental.EventsExecutor) or 'single' (SingleThreadedExecutor)."
)


class MPCNode(Node):
    """The ``mpc_node``. Raises StartupError on a bad parameter or an unusable policy file."""

    def __init__(self, **kwargs):
        super().__init__(MPC_NODE, **kwargs)
        self.params = p = self._declare_parameters()
        self.executor_kind = p["executor"]
        if not p["policy_path"]:
            raise StartupError("parameter 'policy_path' is not set (the .onnx policy file)")
        try:
            mpc_config = MPCConfig(**{f.name: p[f.name] for f in fields(MPCConfig)})
            # braking gains of the last-resort command, kept within the bounds for this rate
            controller_config = ControllerConfig(
                rate=mpc_config.rate, output_mode="effort", exclude_gravity=False, fade_in=0.0, safe_mode="zero_velocity",
                hold_kp=min(ControllerConfig.hold_kp, (HOLD_MAX_OMEGA_DT * mpc_config.rate) ** 2),
                hold_kd=min(ControllerConfig.hold_kd, HOLD_MAX_KD_DT * mpc_config.rate),
                **{name: p[name] for name in CONTROLLER_PARAMETERS},
            )
        except FieldError as exc:
            raise StartupError(f"parameter '{exc.field}': {exc.message}") from exc
        try:
            policy = OnnxPolicy(p["policy_path"])
        except PolicyFileError as exc:
            raise StartupError(f"policy '{p['policy_path']}' rejected: {exc}") from exc
        md = policy.metadata
        # the OCP: the policy's own task unless one is given explicitly
        task_spec = p["task"] or {"name": md.task, "config": md.task_config, "source": p["policy_path"]}
        what = f"task '{p['task']}'" if p["task"] else f"the policy's task '{md.task}' (tocpl.task_config)"
        try:
            task = load_task_spec(task_spec)
        except (ConfigError, OSError, ValueError) as exc:
            raise StartupError(f"{what}: {exc}") from exc
        try:
            # the task's robot (its description gives the target box unless target_limits is set); a
            # policy trained for another robot, or other joints, is refused here
            controller = PolicyController(policy, controller_config, robot=getattr(task, "robot", None))
            controller.check_metadata(dt=task.dt)
            # the solves run in a process of their own (MPCWorker: Crocoddyl keeps the GIL for
            # whole iterations); this process keeps the policy for the fallback command
            solver = MPCWorker(task_spec, p["policy_path"], mpc_config, task_object=task, policy=controller.policy)
        except FieldError as exc:  # a setting the robot description does not give
            raise StartupError(f"parameter '{exc.field}': {exc.message}") from exc
        except (PolicyFileError, ValueError, OSError) as exc:
            raise StartupError(f"policy '{p['policy_path']}' rejected: {exc}") from exc
        self.solver = solver
        try:
            solver.wait_ready()
        except WorkerError as exc:
            raise StartupError(f"MPC solver process: {exc}") from exc
        controller.start()
        self.loop = MPCLoop(solver, controller, p["stale_periods"])
        self.controller, self.config = controller, mpc_config
        self._warm_up(task)
        self.lock = threading.Lock()
        self.input_log = ThrottledLog(self.get_logger(), period=1.0)

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.command_pub = self.create_publisher(Float64MultiArray, MPC_COMMAND_TOPIC, qos)
        self.feedback_pub = self.create_publisher(Float64MultiArray, MPC_FEEDBACK_TOPIC, qos)
        self.plan_pub = self.create_publisher(Float64MultiArray, MPC_PLAN_TOPIC, qos)
        self._plan_msg = Float64MultiArray()
        self.diag_pub = self.create_publisher(diagnostics.DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_state, qos_profile_sensor_data, callback_group=inputs)
        self.create_subscription(PointStamped, TARGET_TOPIC, self._on_target, 10, callback_group=inputs)
        self.create_subscription(PoseStamped, TARGET_POSE_TOPIC, self._on_target, 10, callback_group=inputs)
        self.periods = PeriodMonitor(mpc_config.period, PeriodStats(capacity=max(1000, int(4 * mpc_config.rate))))
        self.published = 0
        self.publish_errors = 0
        self._command_msg, self._feedback_msg = Float64MultiArray(), Float64MultiArray()
        self.control_timer = self.create_timer(
            mpc_config.period, self._tick, callback_group=MutuallyExclusiveCallbackGroup(), clock=steady
        )
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics, clock=steady)
        log_policy_version(self.get_logger(), p["policy_path"], md)
        own = "" if p["task"] else " (the policy's own)"
        deadline = "none" if math.isinf(mpc_config.deadline) else f"{mpc_config.deadline * 1e3:g} ms"
        self.get_logger().info(
            f"MPC on task {task.name}{own}, robot {controller.robot.name} (horizon {solver.horizon} x {task.dt:g} s, "
            f"solver process {solver.pid}) "
            f"at {mpc_config.rate:g} Hz, warm start {mpc_config.warm_start}, max_iter {mpc_config.max_iter}, deadline {deadline}, "
            f"policy {p['policy_path']} (fallback) -> {MPC_COMMAND_TOPIC}, {MPC_FEEDBACK_TOPIC}, {MPC_PLAN_TOPIC}; "
            f"{'pose' if controller.pose_targets else 'position'} targets on {TARGET_TOPIC}, {TARGET_POSE_TOPIC}"
        )

    def _warm_up(self, task) -> None:
        """The fallback policy once (onnxruntime allocates on first use; the solver process
        has warmed up its own)."""
        nominal = task.nominal_problem() if hasattr(task, "nominal_problem") else task.sample(1, 0)
        self.solver.policy_command(nominal.x0[0], nominal.target[0])

    def on_shutdown(self, executor) -> None:
        self.solver.close()

    def destroy_node(self):
        solver = getattr(self, "solver", None)
        if solver is not None:
            solver.close()
        return super().destroy_node()

    def _declare_parameters(self) -> dict[str, Any]:
        values = declare_parameters(self, NODE_PARAMETERS)
        if not values["initial_target"]:
            values["initial_target"] = None
        return values

    def _on_joint_state(self, msg) -> None:
        take_joint_state(self.controller, self.lock, self.input_log, msg)

    def _on_target(self, msg) -> None:
        take_target(self.controller, self.lock, self.input_log, msg)

    def _tick(self) -> None:
        now = time.monotonic()
        self.periods.tick(now)
        budget = self._budget()
        with self.lock:
            try:
                out = self.loop.tick(now, budget)
            except Exception as exc:  # only before a state exists (tick() falls back itself after)
                self.get_logger().error(f"MPC tick failed: {type(exc).__name__}: {exc}", throttle_duration_sec=1.0)
                self.loop.counts["tick_errors"] += 1
                out = None
            plans, self.loop.plans = self.loop.plans, []
        for plan in plans:  # first: the fast loop following the plan waits for it
            try:
                self._plan_msg.data = array.array("d", plan.tobytes())
                self.plan_pub.publish(self._plan_msg)
            except Exception as exc:
                self.publish_errors += 1
                self.get_logger().error(f"publishing the plan failed: {exc}", throttle_duration_sec=1.0)
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
        """Seconds until the next tick is due, minus a margin for publishing: the longest this
        tick may wait for its solve (which goes on in the solver process regardless)."""
        try:
            remaining = self.control_timer.time_until_next_call()
        except Exception:
            return None
        if remaining is None:
            return None
        return max(0.0, 1e-9 * remaining - TICK_MARGIN)

    def _publish_diagnostics(self) -> None:
        with self.lock:
            values = self.loop.diagnostics()
        values.update(diagnostics.period_values(self.periods))
        values.update(
            {
                "commands_published": str(self.published),
                "publish_errors": str(self.publish_errors),
            }
        )
        state = values["state"]
        if state == "mpc":
            level, message = diagnostics.OK, "MPC solutions"
        elif state == "fallback":
            level, message = diagnostics.WARN, f"policy fallback: {values['reason']}"
        else:
            level, message = diagnostics.WARN, f"{state}: {values['reason']}"
        self.diag_pub.publish(diagnostics.diagnostic_array(self, "MPC loop", level, message, self.solver.task_name, values))


def main(args: list[str] | None = None) -> int:
    """Entry point of ``mpc_node`` (``ros2 run tocpl_ros mpc_node``); see :func:`run_node`."""
    return run_node(MPC_NODE, MPCNode, args)


if __name__ == "__main__":
    sys.exit(main())
