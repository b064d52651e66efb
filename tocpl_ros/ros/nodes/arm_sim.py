"""``arm_sim``: the simulated arm of any robot YAML behind ros2_control-like topics (thin layer
over tocpl_ros.sim.base); ``ur5_sim`` (:mod:`tocpl_ros.ros.nodes.ur5_sim`) is the same node for the UR5.

``robot:=NAME`` picks config/robots/NAME.yaml (or a robot YAML path): its URDF, the controlled
joints (the others locked), the nominal posture it starts in; ``backend:=pinocchio|mujoco``.

Interfaces (as an arm driven through ros2_control's forward controllers):

- subscribes ``std_msgs/Float64MultiArray`` on ``/forward_effort_controller/commands``,
  ``/forward_velocity_controller/commands`` and ``/forward_position_controller/commands``
  (reliable, keep last 10, like ros2_control's system-default QoS). Only the topic of
  the active ``command_mode`` is obeyed; the last valid command is held until the next
  one. A command on another mode's topic is ignored (throttled warning); a wrong-length
  or non-finite command is rejected with a logged error and the previous one is kept;
- publishes ``sensor_msgs/JointState`` on ``/joint_states`` (URDF joint order; position,
  velocity and effort = the applied, saturated motor torque; stamp from the node clock)
  at ``publish_rate`` with sensor-data QoS;
- service ``~/reset`` (``std_srvs/Trigger``): back to the initial state, command cleared.

Timing: one timer at ``publish_rate``. Each tick integrates the wall time elapsed since
the previous tick in fixed physics steps of 1/``physics_rate`` (the remainder carries
over), then publishes, so simulated time follows real time at the physics rate. At most
``max_catchup`` seconds are integrated per tick; a longer stall is dropped and counted.

Parameters: every field of :class:`tocpl_ros.sim.config.SimConfig` (descriptions from its field
docs), defaults from ``config/arm_sim.yaml`` (``config/ur5_sim.yaml`` for ``ur5_sim``); override with ``--ros-args -p k:=v`` or
``--params-file``. They are read-only (restart the node to change them). A ``realtime_priority``
above 0 puts the process under SCHED_FIFO, as a real arm's driver runs. DDS stays on
loopback unless the environment says otherwise (:mod:`tocpl_ros.ros.environment`).
"""

from __future__ import annotations

import array
import dataclasses
import math
import sys
import time
from functools import partial

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from tocpl_ros.config import ConfigError, FieldError, field_docs, load_dataclass
from tocpl_ros.interfaces import ARM_SIM_NODE, COMMAND_TOPICS, JOINT_STATES_TOPIC, OUTPUT_MODES, SIM_BACKENDS
from tocpl_ros.resources import config_path
from tocpl_ros.ros.runtime import run_node
from tocpl_ros.sim import make_simulator
from tocpl_ros.sim.base import CommandError
from tocpl_ros.sim.config import SimConfig, load_sim_config

COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
LOG_THROTTLE_S = 1.0

__all__ = ["ArmSimNode", "main", "node_defaults", "COMMAND_TOPICS", "JOINT_STATES_TOPIC"]


def _plain(value):
    """A parameter value as config data (arrays -> lists)."""
    if isinstance(value, (array.array, tuple, list)):
        return list(value)
    return value


def node_defaults(node_name: str) -> SimConfig:
    """The parameter defaults of a simulator node: its params file ``config/<node_name>.yaml``
    (section ``node_name``) if the package's share files are found, else ``SimConfig()``."""
    try:
        path = config_path(f"{node_name}.yaml")
    except FileNotFoundError:
        return SimConfig()
    return load_sim_config(path, node_name=node_name)


class ArmSimNode(Node):
    """The ``arm_sim`` node (``node_name``: also ``ur5_sim``). Raises ConfigError (naming the
    parameter) on bad parameters."""

    node_name = ARM_SIM_NODE
    """Node name, and the params file (config/<node_name>.yaml) its defaults come from."""
    executor_kind = "events"
    """run_node's executor: the EventsExecutor takes half the CPU of the SingleThreadedExecutor
    for the same 500 Hz timer (docs/ros.md), which the policy and MPC nodes need on 2 cores."""

    def __init__(self, **node_kwargs):
        super().__init__(self.node_name, **node_kwargs)
        self.config = self._read_parameters()
        self.realtime_priority = self.config.realtime_priority  # applied by run_node
        try:
            self.sim = make_simulator(self.config)  # backend 'pinocchio' or 'mujoco'
        except FieldError as exc:
            raise ConfigError(f"{self.node_name} parameters", exc.field, exc.message) from exc
        sim, config = self.sim, self.config

        self._state_msg = JointState()
        self._state_msg.name = list(sim.joint_names)
        self._state_pub = self.create_publisher(JointState, JOINT_STATES_TOPIC, qos_profile_sensor_data)
        self._subs = [
            self.create_subscription(Float64MultiArray, topic, partial(self._on_command, mode), COMMAND_QOS)
            for mode, topic in COMMAND_TOPICS.items()
        ]
        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset)

        # timing: fixed physics steps paying back the elapsed wall time
        self._max_steps = max(1, int(math.floor(config.max_catchup * config.physics_rate)))
        self._debt = 0.0  # wall time not yet simulated (s)
        self._dropped = 0.0  # wall time given up after stalls (s)
        self._published = 0
        self._steps_before_reset = 0  # sim.steps restarts at each reset
        self._start = self._last = time.monotonic()
        self._timer = self.create_timer(1.0 / config.publish_rate, self._tick)
        self.get_logger().info(
            f"simulating {sim.urdf_file.name} ({config.backend}) of robot {sim.robot.name}: {config.physics_rate:g} Hz physics, "
            f"{JOINT_STATES_TOPIC} at {config.publish_rate:g} Hz, command mode '{sim.mode}' "
            f"on {COMMAND_TOPICS[sim.mode]}, joints {', '.join(sim.joint_names)}"
        )

    # -- parameters ------------------------------------------------------------------------
    def _read_parameters(self) -> SimConfig:
        defaults = node_defaults(self.node_name)
        docs = field_docs(SimConfig)
        values = {}
        for f in dataclasses.fields(SimConfig):
            default = getattr(defaults, f.name)
            static = isinstance(default, (str, bool))  # numbers may come as int or double
            descriptor = ParameterDescriptor(
                description=docs.get(f.name, ""), read_only=True, dynamic_typing=not static
            )
            if f.name == "command_mode":
                descriptor.additional_constraints = "one of: " + ", ".join(OUTPUT_MODES)
            elif f.name == "backend":
                descriptor.additional_constraints = "one of: " + ", ".join(SIM_BACKENDS)
            try:
                param = self.declare_parameter(f.name, default, descriptor)
            except (InvalidParameterTypeException, TypeError, ValueError) as exc:
                raise ConfigError(f"{self.node_name} parameters", f.name, str(exc)) from exc
            values[f.name] = _plain(param.value)
        return load_dataclass(SimConfig, values, source=f"{self.node_name} parameters")

    # -- callbacks -------------------------------------------------------------------------
    def _on_command(self, mode: str, msg: Float64MultiArray) -> None:
        if mode != self.sim.mode:
            self.get_logger().warning(
                f"ignoring a command on {COMMAND_TOPICS[mode]}: the command mode is '{self.sim.mode}' "
                f"(commands go to {COMMAND_TOPICS[self.sim.mode]})",
                throttle_duration_sec=LOG_THROTTLE_S,
            )
            return
        try:
            self.sim.set_command(msg.data)
        except CommandError as exc:
            self.get_logger().error(
                f"rejected command on {COMMAND_TOPICS[mode]}: {exc}; keeping the previous command",
                throttle_duration_sec=LOG_THROTTLE_S,
            )

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._steps_before_reset += self.sim.steps
        self.sim.reset()
        response.success = True
        response.message = (
            f"reset to q={[round(x, 6) for x in self.sim.q.tolist()]}, v={self.sim.v.tolist()}; "
            "command cleared"
        )
        self.get_logger().info(response.message)
        return response

    def _tick(self) -> None:
        now = time.monotonic()
        self._debt += now - self._last
        self._last = now
        dt = self.sim.dt
        steps = int(self._debt / dt + 1e-9)
        if steps > self._max_steps:
            self._dropped += (steps - self._max_steps) * dt
            self._debt -= (steps - self._max_steps) * dt
            steps = self._max_steps
            self.get_logger().warning(
                f"physics fell behind real time: dropped {self._dropped:.3f} s so far",
                throttle_duration_sec=5.0,
            )
        for _ in range(steps):
            self.sim.step()
        self._debt -= steps * dt
        self.publish_state()

    def publish_state(self) -> None:
        msg = self._state_msg
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.position = self.sim.q.tolist()
        msg.velocity = self.sim.v.tolist()
        msg.effort = self.sim.effort.tolist()
        self._state_pub.publish(msg)
        self._published += 1

    # -- statistics ------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Achieved rates since start (wall clock)."""
        wall = max(time.monotonic() - self._start, 1e-9)
        return {
            "wall_s": wall,
            "physics_steps": float(self._total_steps),
            "physics_hz": self._total_steps / wall,
            "publish_hz": self._published / wall,
            "dropped_s": self._dropped,
        }

    @property
    def _total_steps(self) -> int:
        return self._steps_before_reset + self.sim.steps

    def exit_summary(self) -> str:
        """Logged by :func:`run_node` after the node is destroyed."""
        return self.stats_line()

    def stats_line(self) -> str:
        s = self.stats()
        return (
            f"ran {s['wall_s']:.2f} s: {int(s['physics_steps'])} physics steps ({s['physics_hz']:.1f} Hz), "
            f"{self._published} joint states ({s['publish_hz']:.1f} Hz), {s['dropped_s']:.3f} s dropped"
        )


def main(args: list[str] | None = None) -> int:
    """Entry point of ``arm_sim`` (``ros2 run tocpl_ros arm_sim --ros-args -p robot:=NAME``).
    SIGINT / SIGTERM stop it cleanly (exit 0, with a rate summary); bad parameters exit with 2 and
    an error naming the parameter (:func:`run_node`)."""
    return run_node(ArmSimNode.node_name, ArmSimNode, args)


if __name__ == "__main__":
    sys.exit(main())
