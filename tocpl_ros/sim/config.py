"""The simulated arm's configuration: ``config/ur5_sim.yaml``, a ROS 2 params file (ROS-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tocpl_ros.config import ConfigError, FieldError, load_dataclass, read_yaml
from tocpl_ros.interfaces import OUTPUT_MODES, SIM_BACKENDS, SIM_NODE
from tocpl_ros.resources import config_path

Scalars = float | list[float]
"""One value for every joint, or one value per joint (the robot's joint order)."""


@dataclass
class SimConfig:
    """Simulated arm (``config/ur5_sim.yaml``, a ROS 2 params file of the ``ur5_sim`` node)."""

    robot: str = "ur5"
    """Robot description: a name in config/robots/ (or a robot YAML path): its URDF, the
    joints simulated (the others locked), nominal posture and end effector."""
    urdf: str = ""
    """URDF replacing the robot description's (a file name in urdf/, with or without .urdf, or a
    path), e.g. a copy of the same robot with meshes or calibrated; empty: the robot's."""
    backend: str = "pinocchio"
    """Physics backend: 'pinocchio' (ABA, the model the policies are trained on) or 'mujoco'
    (MuJoCo built from the same URDF: an independent simulator to test a policy against)."""
    physics_rate: float = 1000.0
    """Physics steps per simulated second (Hz); the step is h = 1/physics_rate."""
    publish_rate: float = 500.0
    """Rate of /joint_states (Hz); the node also advances the physics at each publication."""
    max_catchup: float = 0.05
    """Most simulated time (s) the node integrates in one timer tick; a longer stall of the
    process is dropped (simulated time then lags real time) instead of being caught up in a burst."""
    command_mode: str = "effort"
    """Active command interface: 'effort' (N·m), 'velocity' (rad/s) or 'position' (rad)."""
    initial_positions: list[float] | None = None
    """Initial (and reset) joint positions in the robot's joint order (rad); None (or an empty
    list): the robot's nominal posture."""
    initial_velocities: list[float] | None = None
    """Initial (and reset) joint velocities in the robot's joint order (rad/s); None (or an empty
    list): zero."""
    damping: Scalars = 0.0
    """Viscous joint damping d (N·m·s/rad): torque −d·v; a scalar or one value per joint."""
    friction: Scalars = 0.0
    """Coulomb friction f_c (N·m): torque −f_c·tanh(v/ε); a scalar or one value per joint."""
    friction_smoothing: float = 0.01
    """ε of the smooth Coulomb friction (rad/s): the friction reaches 76 % of f_c at |v| = ε."""
    payload_mass: float = 0.0
    """Point mass (kg) rigidly attached at payload_frame (added to the inertia of its link)."""
    payload_frame: str = ""
    """Frame of the URDF the payload is attached to; empty: the robot's end-effector frame. Checked
    only when payload_mass > 0 (a URDF without that frame simulates fine with no payload)."""
    payload_com: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """Position of the payload's centre of mass in payload_frame (m)."""
    velocity_kv: Scalars = 50.0
    """Velocity servo gain kv (1/s): a_ref = kv·(v_cmd − v); also the velocity loop's bandwidth (rad/s)."""
    position_kp: Scalars = 900.0
    """Position servo stiffness kp (1/s²): a_ref = kp·(q_cmd − q) − kd·v; natural frequency √kp."""
    position_kd: Scalars = 60.0
    """Position servo damping kd (1/s); kd = 2·√kp is critically damped."""
    hold_until_command: bool = True
    """Before the first command (and after a reset) hold the posture with the position servo;
    False: zero torque (effort), zero velocity (velocity) or the reset posture (position)."""
    realtime_priority: int = 0
    """The node process's SCHED_FIFO priority (1-99), as a real arm's driver runs real-time;
    0: normal scheduling. Not permitted (no CAP_SYS_NICE, RLIMIT_RTPRIO too low): a warning, normal
    priority (tocpl_ros.ros.runtime.apply_realtime_priority). Not used by the simulation itself."""

    def __post_init__(self) -> None:
        if self.backend not in SIM_BACKENDS:
            raise FieldError(
                "backend", f"unknown physics backend '{self.backend}' (available: {', '.join(SIM_BACKENDS)})"
            )
        if self.command_mode not in OUTPUT_MODES:
            raise FieldError(
                "command_mode", f"unknown command mode '{self.command_mode}' (known: {', '.join(OUTPUT_MODES)})"
            )
        for name in ("physics_rate", "publish_rate", "max_catchup", "friction_smoothing"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise FieldError(name, f"must be a finite value > 0, got {value}")
        if not (math.isfinite(self.payload_mass) and self.payload_mass >= 0):
            raise FieldError("payload_mass", f"must be a finite value >= 0, got {self.payload_mass}")
        if len(self.payload_com) != 3 or not all(math.isfinite(x) for x in self.payload_com):
            raise FieldError("payload_com", f"needs 3 finite values (x, y, z in m), got {self.payload_com}")
        for name in ("damping", "friction"):
            _check_values(name, getattr(self, name), lambda x: x >= 0, ">= 0")
        for name in ("velocity_kv", "position_kp", "position_kd"):
            _check_values(name, getattr(self, name), lambda x: x > 0, "> 0")
        for name in ("initial_positions", "initial_velocities"):
            if getattr(self, name) == []:  # a ROS params file cannot say None: [] means unset
                setattr(self, name, None)
            values = getattr(self, name)
            if values is not None:
                _check_values(name, values, lambda x: True, "finite")
        if not 0 <= self.realtime_priority <= 99:
            raise FieldError("realtime_priority", f"must be in 0..99 (0: normal scheduling), got {self.realtime_priority}")


def _check_values(name: str, value, ok, what: str) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not values:
        raise FieldError(name, "needs at least one value")
    for x in values:
        if not (math.isfinite(x) and ok(x)):
            raise FieldError(name, f"every value must be finite and {what}, got {value}")


def _params_of(data: dict, node_name: str, source: str) -> dict | None:
    """The ``ros__parameters`` of ``node_name`` in a ROS 2 params file (``/**`` first,
    then the node's own section), or None if ``data`` is not in that format."""
    sections = [key for key in ("/**", node_name, f"/{node_name}") if key in data]
    if not sections:
        return None
    params: dict = {}
    for key in sections:
        section = data[key]
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise ConfigError(source, key, "a ROS 2 params file section needs a 'ros__parameters' mapping")
        params.update(section["ros__parameters"])
    return params


def load_sim_config(path: str | Path | None = None, node_name: str = SIM_NODE) -> SimConfig:
    """A :class:`SimConfig` from a YAML file (default ``config/ur5_sim.yaml``).

    The file is either a ROS 2 params file (``ur5_sim: ros__parameters: {...}``, also
    ``/**``) or a plain mapping of the fields. Errors are :class:`ConfigError`\\ s naming
    the file and the key.
    """
    path = Path(path) if path is not None else config_path(f"{SIM_NODE}.yaml")
    data = read_yaml(path)
    params = _params_of(data, node_name, str(path))
    return load_dataclass(SimConfig, data if params is None else params, source=str(path))


def default_sim_config() -> SimConfig:
    """``config/ur5_sim.yaml`` if the package's share files are found, else ``SimConfig()``."""
    try:
        path = config_path(f"{SIM_NODE}.yaml")
    except FileNotFoundError:
        return SimConfig()
    return load_sim_config(path)
