"""Driving a running node graph from outside, as an operator would (``tocpl-demo``,
``tocpl-mpc-loop-bench`` and the bring-up tests): a probe node that records ``/joint_states``,
``/diagnostics`` and commands and sends targets, the end effector's position (and orientation,
for pose targets) from the joint states, and the held-out targets of the demo's task.

A target is a task's: 3 values (a position, m, base frame) or 9 (a pose, :mod:`tocpl_ros.pose`);
the errors are the end effector's distance to its position and, for a pose, the angle of the
rotation to its orientation."""

from __future__ import annotations

import threading
import time

import numpy as np

from tocpl_ros.interfaces import COMMAND_TOPICS, DIAGNOSTICS_TOPIC, JOINT_STATES_TOPIC, TARGET_POSE_TOPIC, TARGET_TOPIC
from tocpl_ros.pose import quaternion_from_rotation, rotation_angle, target_rotation

TASK = "ur5_reach"
HELD_OUT_SEED = 1_000_003
"""TrainConfig.eval_seed: the trainer's held-out problems come from this seed, never its training ones."""


def demo_robot() -> str:
    """The robot of the demo's task (its ``robot`` key: a name in config/robots/)."""
    from tocpl_ros.tasks import load_task_config

    return load_task_config(TASK)[1].robot


class ToolKinematics:
    """Pose of the robot's end effector (in its base frame) from joint states given by name
    (:class:`tocpl_ros.robot.RobotModel`, ROS-free). ``robot``: a robot name or YAML path; None:
    the demo task's robot."""

    def __init__(self, robot: str | None = None):
        from tocpl_ros.robot import load_robot

        self.robot = load_robot(robot or demo_robot())
        self.frame = self.robot.end_effector_frame
        self.joint_names = list(self.robot.joint_names)

    def q_of(self, names, positions) -> np.ndarray:
        """The controlled joints' positions (one per joint, as /joint_states), in the robot's order."""
        by_name = dict(zip(names, positions))
        return np.array([by_name[name] for name in self.joint_names], dtype=float)

    def position(self, q: np.ndarray) -> np.ndarray:
        """The end effector's position [3] at joint positions q [nv] (/joint_states')."""
        return self.robot.end_effector_position(self.robot.q_from_positions(q))

    def rotation(self, q: np.ndarray) -> np.ndarray:
        """The end effector's rotation matrix [3, 3] in the base frame at joint positions q [nv]."""
        return self.robot.frame_rotation(self.robot.q_from_positions(q))

    def errors(self, q: np.ndarray, target) -> tuple[float, float]:
        """(distance to the target's position (m), angle to a pose target's orientation (rad); nan
        for a position target) at joint positions q."""
        target = np.asarray(target, dtype=float)
        distance = float(np.linalg.norm(self.position(q) - target[:3]))
        angle = rotation_angle(target_rotation(target), self.rotation(q)) if target.size == 9 else float("nan")
        return distance, angle

    def gravity(self, q: np.ndarray) -> np.ndarray:
        return self.robot.gravity(self.robot.q_from_positions(np.asarray(q, dtype=float)))


class SpinningNode:
    """An rclpy node in a context of its own (given domain), spun by a background thread: the
    base of the demo's Probe and of the tests' harness nodes (test/ros_harness.py).

    A subclass calls ``super().__init__(domain_id, name)``, creates its publishers, subscriptions
    and timers on ``self.node``, then calls ``self.start_spinning()``: the executor starts once
    everything exists. ``self.lock`` guards what the callbacks record.

    ``events_executor``: rclpy's EventsExecutor (half the CPU of SingleThreadedExecutor).
    ``record_errors``: an exception from the executor is kept in ``self.errors`` (see
    check_alive()) and spinning goes on; otherwise it ends the spin thread (once stopping: quietly).
    """

    def __init__(self, domain_id: int, name: str, *, events_executor: bool = False, record_errors: bool = False):
        import rclpy
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        # no signal handlers: this process (the demo, pytest) keeps its own Ctrl-C handling
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.events_executor = events_executor
        self.record_errors = record_errors
        self.errors: list[str] = []
        self._thread: threading.Thread | None = None
        self._clients: dict[str, object] = {}

    def start_spinning(self) -> None:
        if self.events_executor:
            from rclpy.experimental import EventsExecutor as Executor
        else:
            from rclpy.executors import SingleThreadedExecutor as Executor
        self.executor = Executor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{self.node.get_name()}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as exc:
                if self._stop.is_set():  # shutting down
                    return
                if not self.record_errors:
                    raise
                self.errors.append(repr(exc))  # reported by check_alive(), never silent
                if len(self.errors) > 100:
                    return

    def check_alive(self) -> None:
        assert not self.errors and self._thread.is_alive(), f"spinning failed: {self.errors[:3]}"

    def other_nodes(self) -> set[str]:
        """The names of the ROS nodes this one sees on its domain, itself left out."""
        return set(self.node.get_node_names()) - {self.node.get_name()}

    def wait_for(self, predicate, timeout: float, poll: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll)
        return bool(predicate())

    def call_trigger(self, service: str, timeout: float = 10.0) -> tuple[bool, str]:
        """Call a std_srvs/Trigger service (e.g. /policy_node/start, /ur5_sim/reset):
        (success, message). Raises RuntimeError if it is not available or does not answer."""
        from std_srvs.srv import Trigger

        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = self.node.create_client(Trigger, service)
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"service {service} not available after {timeout:g} s")
        future = client.call_async(Trigger.Request())
        if not self.wait_for(future.done, timeout, poll=0.005):
            raise RuntimeError(f"service {service} did not answer within {timeout:g} s")
        response = future.result()
        return bool(response.success), str(response.message)

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        try:
            if self._thread is not None:
                self.executor.shutdown()
            self.node.destroy_node()
        finally:
            self.context.try_shutdown()


class Probe(SpinningNode):
    """rclpy in this process (own context, no signal handlers): records /joint_states,
    /diagnostics of the policy node and (optionally) the effort commands, each with the
    ``time.monotonic()`` of reception; publishes targets. Spins in a background thread."""

    def __init__(self, domain_id: int, record_commands: bool = False, name: str = "tocpl_demo_probe",
                 base_frame: str | None = None):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PointStamped, PoseStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        self.PointStamped, self.PoseStamped = PointStamped, PoseStamped
        if base_frame is None:  # the frame the targets are in: the demo robot's base
            from tocpl_ros.robot_config import load_robot_config

            base_frame = load_robot_config(demo_robot())[1].base_frame
        self.base_frame = base_frame
        super().__init__(domain_id, name, events_executor=True)
        self.joint_states: list[tuple[float, list[str], np.ndarray, np.ndarray]] = []
        self.diagnostics: list[tuple[float, dict[str, str], str]] = []
        self.mpc_diagnostics: list[tuple[float, dict[str, str], str]] = []
        self.commands: list[tuple[float, np.ndarray]] = []
        self.node.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joint_state, qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, 10)
        if record_commands:
            self.node.create_subscription(
                Float64MultiArray, COMMAND_TOPICS["effort"], self._on_command,
                QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE),
            )
        self.target_pub = self.node.create_publisher(PointStamped, TARGET_TOPIC, 10)
        self.target_pose_pub = self.node.create_publisher(PoseStamped, TARGET_POSE_TOPIC, 10)
        self.start_spinning()

    def _on_joint_state(self, msg) -> None:
        now = time.monotonic()
        with self.lock:
            self.joint_states.append((now, list(msg.name), np.array(msg.position), np.array(msg.velocity)))
            if len(self.joint_states) > 20000:
                del self.joint_states[:10000]

    def _on_diagnostics(self, msg) -> None:
        now = time.monotonic()
        with self.lock:
            for status in msg.status:
                if status.name.startswith("policy_node"):
                    self.diagnostics.append((now, {kv.key: kv.value for kv in status.values}, status.message))
                elif status.name.startswith("mpc_node"):
                    self.mpc_diagnostics.append((now, {kv.key: kv.value for kv in status.values}, status.message))
                    del self.mpc_diagnostics[:-100]

    def _on_command(self, msg) -> None:
        now = time.monotonic()
        with self.lock:
            self.commands.append((now, np.array(msg.data)))

    # -- queries ---------------------------------------------------------------------------
    def last_joint_state(self):
        with self.lock:
            return self.joint_states[-1] if self.joint_states else None

    def last_diagnostics(self):
        with self.lock:
            return self.diagnostics[-1] if self.diagnostics else None

    def last_mpc_diagnostics(self):
        with self.lock:
            return self.mpc_diagnostics[-1] if self.mpc_diagnostics else None

    def send_target(self, xyz, frame_id: str | None = None, timeout: float = 10.0) -> None:
        """Publish a target (in ``frame_id``, default the robot's base frame) once a subscriber
        (the policy node) is matched (reliable QoS)."""
        if not self.wait_for(lambda: self.target_pub.get_subscription_count() > 0, timeout):
            raise RuntimeError(f"no subscriber on {TARGET_TOPIC} after {timeout:g} s (is policy_node running?)")
        msg = self.PointStamped()
        msg.header.frame_id = frame_id or self.base_frame
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.point.x, msg.point.y, msg.point.z = (float(v) for v in xyz)
        self.target_pub.publish(msg)

    def send_target_pose(self, xyz, quaternion=(0.0, 0.0, 0.0, 1.0), frame_id: str | None = None,
                         timeout: float = 10.0) -> None:
        """Publish a target pose on /target_pose (position ``xyz``, orientation ``quaternion`` x, y, z, w;
        in ``frame_id``, default the robot's base frame) once a subscriber is matched."""
        if not self.wait_for(lambda: self.target_pose_pub.get_subscription_count() > 0, timeout):
            raise RuntimeError(f"no subscriber on {TARGET_POSE_TOPIC} after {timeout:g} s (is policy_node running?)")
        msg = self.PoseStamped()
        msg.header.frame_id = frame_id or self.base_frame
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in xyz)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quaternion)
        self.target_pose_pub.publish(msg)

    def send_task_target(self, target, frame_id: str | None = None, timeout: float = 10.0) -> None:
        """A task's target as the nodes take it: 3 values (a position) on /target, 9 (a pose) on
        /target_pose, its orientation as a quaternion."""
        target = np.asarray(target, dtype=float).reshape(-1)
        if target.size == 9:
            self.send_target_pose(target[:3], quaternion_from_rotation(target_rotation(target)), frame_id, timeout)
        else:
            self.send_target(target, frame_id, timeout)


def demo_targets(n: int, seed: int = HELD_OUT_SEED) -> np.ndarray:
    """``n`` targets of the ur5_reach task's distribution, [n, 3] (m, base frame)."""
    from tocpl_ros.tasks import load_task

    return load_task(TASK).sample(n, seed).target


def tool_error(probe: Probe, kin: ToolKinematics, target: np.ndarray) -> float:
    """The end effector's distance (m) to the target's position at the last joint state."""
    return tool_errors(probe, kin, target)[0]


def tool_errors(probe: Probe, kin: ToolKinematics, target: np.ndarray) -> tuple[float, float]:
    """(distance (m), orientation error (rad; nan for a position target)) at the last joint state."""
    state = probe.last_joint_state()
    return kin.errors(kin.q_of(state[1], state[2]), target)


def follow(probe: Probe, kin: ToolKinematics, target, duration: float, within: float = 0.01,
           within_deg: float = 2.0) -> dict[str, float]:
    """Follow the end effector's distance to ``target`` for ``duration`` s: the error at 1 s (the trained horizon)
    and at the end, the best error, the time after which it stayed within ``within`` m (and, for a
    pose target, ``within_deg`` degrees; nan if it did not), and the largest joint speed at the end.
    For a pose target also the orientation error (degrees) at 1 s, at the end and the best
    (``orientation_*_deg``; nan for a position target)."""
    target = np.asarray(target, dtype=float)
    started = time.monotonic()
    error, angle = tool_errors(probe, kin, target)
    best, best_angle = error, angle
    settled_at, at_1s, angle_1s = float("nan"), float("nan"), float("nan")
    while time.monotonic() - started < duration:
        time.sleep(0.01)
        error, angle = tool_errors(probe, kin, target)
        best, best_angle = min(best, error), min(best_angle, angle)
        elapsed = time.monotonic() - started
        if np.isnan(at_1s) and elapsed >= 1.0:
            at_1s, angle_1s = error, angle
        if error <= within and not np.degrees(angle) > within_deg:  # (nan: a position target)
            if np.isnan(settled_at):
                settled_at = elapsed
        else:
            settled_at = float("nan")
    speed = float(np.abs(probe.last_joint_state()[3]).max())
    return {"error_1s": at_1s, "final_error": error, "best_error": best, "settled_at": settled_at,
            "max_joint_speed": speed, "orientation_1s_deg": float(np.degrees(angle_1s)),
            "final_orientation_deg": float(np.degrees(angle)), "best_orientation_deg": float(np.degrees(best_angle))}


def reach(probe: Probe, kin: ToolKinematics, target, duration: float, within: float = 0.01,
          before=None, after=None) -> dict[str, float]:
    """Send ``target`` (:meth:`Probe.send_task_target`) and follow the end effector for ``duration`` s
    (see ``follow``; also the start errors). ``before()`` runs just before the target is sent (e.g.
    reset the simulator; the start error is measured after it), ``after()`` just after (e.g. start
    the policy)."""
    target = np.asarray(target, dtype=float)
    if before is not None:
        before()
        done = time.monotonic()
        probe.wait_for(lambda: probe.last_joint_state()[0] > done + 0.003, 2.0, poll=0.002)
    start_error, start_angle = tool_errors(probe, kin, target)
    probe.send_task_target(target)
    if after is not None:
        after()
    return {"start_error": start_error, "start_orientation_deg": float(np.degrees(start_angle)),
            **follow(probe, kin, target, duration, within)}
