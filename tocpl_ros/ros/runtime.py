"""What the ROS nodes share: start-up, the spin loop, parameter declaration, input callbacks.

:func:`run_node` is every node's ``main``: loopback DDS defaults, ``rclpy.init``, the node
built (a start-up error: a bad parameter or an unusable policy file → one clear fatal line and
exit status 2 in every node, no traceback; an unexpected exception → its traceback, exit 1), an
executor spun until SIGINT/SIGTERM, the node's own shutdown step (the policy node publishes
its safe command), clean teardown, exit status 0. A callback that raises is logged and the
loop goes on: a robot-facing node that dies leaves the forward controller holding its last
command.

rclpy is imported inside the functions, so importing this module needs no ROS.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from tocpl_ros.config import ConfigError
from tocpl_ros.interfaces import TARGET_POSE_TOPIC, TARGET_TOPIC
from tocpl_ros.ros.environment import apply_loopback_defaults

EXECUTORS = ("events", "single")
REALTIME_PRIORITY_MAX = 99
"""Highest SCHED_FIFO priority (Linux: 1..99)."""
REALTIME_PRIORITY_DOC = (
    "SCHED_FIFO priority (1-99) of every thread of the node's process (executor, timers, DDS), set at start-up, "
    "as ros2_control's controller_manager does for its control loop (its thread_priority, 50); 0: normal "
    "scheduling. Needs CAP_SYS_NICE or an RLIMIT_RTPRIO at least this high (ulimit -r): otherwise a warning and "
    "the node runs at normal priority. The kernel's RT throttling (sched_rt_runtime_us) bounds what it may take."
)


class StartupError(RuntimeError):
    """The node cannot start: bad parameter, unusable policy file, metadata mismatch."""


class ThrottledLog:
    """Warnings rate-limited per reason: at most one line per ``period`` s for each key, with
    the number of suppressed ones, so a flood of one kind never hides another kind."""

    def __init__(self, logger, period: float = 1.0):
        self.logger = logger
        self.period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged less than ``period`` ago; True if logged."""
        suffix = self._due(key)
        if suffix is None:
            return False
        self.logger.warning(message + suffix)
        return True

    def info(self, key: str, message: str) -> bool:
        """As :meth:`warning`, at info level. (rclpy refuses two severities from one call site:
        each level has its own call.)"""
        suffix = self._due(key)
        if suffix is None:
            return False
        self.logger.info(message + suffix)
        return True

    def _due(self, key: str) -> str | None:
        """None if ``key`` was logged less than ``period`` ago (counted), else the suffix to add."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        skipped = self._suppressed.pop(key, 0)
        self._last[key] = now
        return f" [{skipped} more '{key}' since the last report]" if skipped else ""


# ---------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class RobotDefault:
    """The default of a parameter that the robot description gives (config/robots/<robot>.yaml):
    declared unset, so a value is the user's and None means "the robot's". ``kind`` is the type
    a value must have (float, str or bool)."""

    kind: type


_EXAMPLES = {float: 0.0, str: "", bool: False}


def check_type(name: str, value: Any, default: Any) -> Any:
    """``value`` of parameter ``name`` converted to the type of its default; StartupError if it
    cannot be (ints are accepted for floats; an unset/empty array is None; an unset
    :class:`RobotDefault` parameter is None)."""
    if isinstance(default, RobotDefault):
        return None if value is None else check_type(name, value, _EXAMPLES[default.kind])

    def bad(expected: str) -> StartupError:
        return StartupError(f"parameter '{name}': expected {expected}, got {value!r} ({type(value).__name__})")

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


def declare_parameters(node, specs: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Declare every parameter of ``specs`` (name → (default, description)) read-only with its
    description, and check its type (StartupError naming the parameter). Declared with dynamic
    typing so that ``rate:=1000`` (an integer) is accepted for a float. Unknown overrides, a
    bad 'executor' or 'diagnostics_period' (when declared) are refused too."""
    from rcl_interfaces.msg import ParameterDescriptor

    values: dict[str, Any] = {}
    for name, (default, doc) in specs.items():
        descriptor = ParameterDescriptor(description=doc, read_only=True, dynamic_typing=True)
        try:
            initial = None if isinstance(default, RobotDefault) else default
            value = node.declare_parameter(name, initial, descriptor).value
        except Exception as exc:
            raise StartupError(f"parameter '{name}': {exc}") from exc
        values[name] = check_type(name, value, default)
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    unknown = sorted(k for k in overrides if not node.has_parameter(k) and not k.startswith("qos_overrides."))
    if unknown:
        raise StartupError(
            f"unknown parameter '{unknown[0]}'" + (f" (and {unknown[1:]})" if unknown[1:] else "")
            + f"; known: {', '.join(specs)}"
        )
    if "executor" in values and values["executor"] not in EXECUTORS:
        raise StartupError(f"parameter 'executor': must be one of {', '.join(EXECUTORS)}, got {values['executor']!r}")
    if "diagnostics_period" in values and not values["diagnostics_period"] > 0:
        raise StartupError(f"parameter 'diagnostics_period': must be > 0, got {values['diagnostics_period']}")
    if "realtime_priority" in values:
        check_realtime_priority(values["realtime_priority"])
    return values


# ---------------------------------------------------------------------- real-time priority


def check_realtime_priority(priority: Any, name: str = "realtime_priority") -> int:
    """``priority`` if it is an integer in 0..99 (0: off), else StartupError naming the parameter."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= REALTIME_PRIORITY_MAX:
        raise StartupError(
            f"parameter '{name}': must be an integer in 0..{REALTIME_PRIORITY_MAX} "
            f"(0: normal scheduling, 1-{REALTIME_PRIORITY_MAX}: SCHED_FIFO priority), got {priority!r}"
        )
    return priority


def apply_realtime_priority(priority: int, logger=None) -> bool:
    """Put every thread of this process under SCHED_FIFO at ``priority`` (threads started later
    inherit it from their creator); 0 does nothing. Not permitted (no CAP_SYS_NICE, RLIMIT_RTPRIO
    too low) or not supported: a warning on ``logger`` and the process stays at normal priority,
    never an exception. True if applied."""
    priority = check_realtime_priority(priority)
    if priority == 0:
        return False

    def warn(message: str) -> bool:
        if logger is not None:
            logger.warning(f"realtime_priority {priority}: {message}; running at normal priority")
        return False

    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_FIFO"):
        return warn("SCHED_FIFO is not available on this system")
    param = os.sched_param(priority)
    try:  # this thread first: if it is refused, nothing was changed
        os.sched_setscheduler(0, os.SCHED_FIFO, param)
    except PermissionError as exc:
        return warn(
            f"not permitted to use SCHED_FIFO ({exc.strerror or exc}): give the process CAP_SYS_NICE or an "
            f"RLIMIT_RTPRIO >= {priority} (ulimit -r, limits.conf 'rtprio', docker --ulimit rtprio=99)"
        )
    except OSError as exc:
        return warn(f"SCHED_FIFO refused ({exc.strerror or exc})")
    me = threading.get_native_id()
    try:
        others = [int(tid) for tid in os.listdir("/proc/self/task") if int(tid) != me]
    except OSError:
        others = []
    changed = 1
    for tid in others:  # threads started before (DDS, rclpy)
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, param)
            changed += 1
        except ProcessLookupError:  # ended meanwhile
            pass
        except OSError as exc:
            if logger is not None:
                logger.warning(f"realtime_priority {priority}: thread {tid} left at normal priority ({exc.strerror or exc})")
    if logger is not None:
        logger.info(f"real-time scheduling: SCHED_FIFO priority {priority} on the {changed} threads of process {os.getpid()}")
    return True


# ---------------------------------------------------------------------- input callbacks


def take_joint_state(controller, lock: threading.Lock, log: ThrottledLog, msg) -> None:
    """A /joint_states message into a PolicyController (by joint name; rejections logged per reason)."""
    received = time.monotonic()
    stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
    with lock:
        reason = controller.update_joint_state(msg.name, msg.position, msg.velocity, stamp, received)
        key = controller.last_rejected
    if reason:
        log.warning(f"joint_states.{key}", f"/joint_states rejected ({key}): {reason}")


def take_target(controller, lock: threading.Lock, log: ThrottledLog, msg) -> None:
    """A /target (PointStamped) or /target_pose (PoseStamped) message into a PolicyController:
    header.frame_id must be the robot's base frame (empty: taken as the base frame; another one
    is rejected: nothing here transforms), NaN/Inf rejected, outside target_limits clamped or
    rejected (target_out_of_limits); every outcome logged, rejections rate-limited per reason and
    counted on /diagnostics. A pose policy takes a PoseStamped whole (a quaternion with NaN/Inf or
    zero norm rejected, normalised otherwise) and of a PointStamped the position, keeping its
    target's orientation; a position policy takes the position of either (said once)."""
    pose = hasattr(msg, "pose")
    p = msg.pose.position if pose else msg.point
    topic = TARGET_POSE_TOPIC if pose else TARGET_TOPIC
    with lock:
        before = controller.target
        rejected_before = controller.stats.rejected_total
        if pose:
            o = msg.pose.orientation
            reason = controller.update_pose_target((p.x, p.y, p.z), (o.x, o.y, o.z, o.w), frame=msg.header.frame_id)
        else:
            reason = controller.update_target((p.x, p.y, p.z), frame=msg.header.frame_id)
        rejected = controller.stats.rejected_total > rejected_before
        key = controller.last_rejected if rejected else "clamped"
        target = describe_target(controller)
    if reason:
        log.warning(f"target.{key}", f"{topic} {'rejected' if rejected else 'clamped'} ({key}): {reason}")
    if not rejected and pose != controller.pose_targets:
        note = ("the policy takes position targets: the orientation is ignored" if pose else
                "the policy takes pose targets: the position replaces its target's, the orientation is kept "
                f"(send a pose on {TARGET_POSE_TOPIC} to change it)")
        log.logger.info(f"{topic}: {note}", once=True)
    if not reason and controller.target is not before:
        log.logger.info(f"{topic}: {target}", throttle_duration_sec=0.5)


def describe_target(controller) -> str:
    """A PolicyController's target for the log: its position (m), a pose's orientation as a
    quaternion (x y z w)."""
    values = controller.target_diagnostics()
    if values["target"] == "none":
        return "none"
    orientation = values.get("target_orientation")
    return f"[{values['target']}]" + (f" orientation (x y z w) [{orientation}]" if orientation else "")


def log_policy_version(logger, path, metadata) -> None:
    """Warn when a policy file is older than its contract's robot keys (read with defaults)."""
    if metadata.defaults_used:
        logger.warning(
            f"policy {path} was written by tocpl_ros {metadata.version}, before the robot keys of the policy file: "
            f"{', '.join(metadata.defaults_used)} taken as defaults (robot '{metadata.robot or 'from its URDF'}', "
            "no locked joints, the robot's frames); re-export its checkpoint with tocpl-export to record them"
        )


# ---------------------------------------------------------------------- control timer


class PeriodMonitor:
    """The periods of a node's control timer: each tick's time since the previous tick goes
    into ``stats`` (a tocpl_ros.control.stats.PeriodStats, passed in so that this module does not import the
    controller), and one longer than 1.5 nominal periods counts as an overrun."""

    def __init__(self, period: float, stats):
        self.period = period
        self.stats = stats
        self.overruns = 0
        self._last_tick: float | None = None

    def tick(self, now: float) -> None:
        if self._last_tick is not None:
            period = now - self._last_tick
            self.stats.add(period)
            if period > 1.5 * self.period:
                self.overruns += 1
        self._last_tick = now


# ---------------------------------------------------------------------- main loop


def make_executor(kind: str):
    """'events' (rclpy.experimental.EventsExecutor, lowest overhead) or 'single'."""
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor()
    from rclpy.executors import SingleThreadedExecutor

    return SingleThreadedExecutor()


def _destroy_half_built(exc: BaseException) -> None:
    """Destroy the node whose constructor raised ``exc`` (found on the traceback), in rclpy's order.
    Left to the garbage collector, its publishers and services were freed in any order when the
    exception went away, and the process could segfault on its way out of a refused start."""
    from rclpy.node import Node

    tb = exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, Node):
            try:
                candidate.destroy_node()
            except Exception:  # a constructor that failed before the base class was built
                pass
            return
        tb = tb.tb_next


def run_node(
    name: str,
    make_node: Callable[[], Any],
    args: list[str] | None = None,
    *,
    startup_errors: tuple[type[BaseException], ...] = (StartupError, ConfigError),
    startup_exit_code: int = 2,
) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit status.

    ``make_node()`` builds the node after ``rclpy.init``; an exception of ``startup_errors``
    → "refusing to start: <message>" and ``startup_exit_code`` (any other exception: the same
    plus its traceback, exit 1). The node may define ``executor_kind`` ('events' | 'single',
    default 'single'), ``realtime_priority`` (SCHED_FIFO priority of the process, applied once the
    node is built, before the executor exists: :func:`apply_realtime_priority`; default 0, off),
    ``on_shutdown(executor)`` (called after the stop signal, the executor still spinnable) and
    ``exit_summary()`` (a line logged after the node is destroyed)."""
    apply_loopback_defaults()  # before rclpy.init: the middleware reads them there
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    logger = rclpy.logging.get_logger(name)
    # Our own SIGINT/SIGTERM handling: the loop ends, then the node's shutdown step runs
    # (rclpy's handlers would shut the context down first, with no chance to publish).
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # malformed --ros-args (e.g. a mixed-type array)
        print(f"[FATAL] [{name}]: refusing to start: invalid arguments: {exc}", file=sys.stderr, flush=True)
        return startup_exit_code
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = executor = None
    summary = ""
    try:
        try:
            node = make_node()
        except startup_errors as exc:
            logger.fatal(f"refusing to start: {exc}")
            _destroy_half_built(exc)
            return startup_exit_code
        except Exception as exc:
            logger.fatal(f"refusing to start: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            _destroy_half_built(exc)
            return 1
        apply_realtime_priority(getattr(node, "realtime_priority", 0), node.get_logger())
        executor = make_executor(getattr(node, "executor_kind", "single"))
        executor.add_node(node)
        callback_errors = 0
        while not stop.is_set() and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except (KeyboardInterrupt, ExternalShutdownException):
                break
            except Exception as exc:  # a callback raised: log it, keep the node alive
                callback_errors += 1
                node.get_logger().error(
                    f"callback failed ({callback_errors} so far): {type(exc).__name__}: {exc}", throttle_duration_sec=1.0
                )
        node.get_logger().info("shutting down")
        shutdown = getattr(node, "on_shutdown", None)
        if shutdown is not None and rclpy.ok():
            try:
                shutdown(executor)
            except Exception as exc:
                node.get_logger().error(f"shutdown step failed: {type(exc).__name__}: {exc}")
        exit_summary = getattr(node, "exit_summary", None)
        summary = exit_summary() if exit_summary is not None else ""
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        if summary:
            logger.info(summary)
        rclpy.try_shutdown()
    return 0
