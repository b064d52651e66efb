"""A simulated arm for the ``ur5_sim`` node: forward dynamics of a robot description (ROS-free).

The robot is ``config/robots/<robot>.yaml`` (:mod:`tocpl_ros.robot`): its URDF, the joints it
controls (the others locked), its nominal posture (where the simulation starts) and end effector
(where a payload goes by default).

Two physics backends share one interface (:class:`SimulatorBase`: state, commands, modes,
servo, saturation, step loop); :func:`make_simulator` picks one by ``SimConfig.backend``:

- ``pinocchio`` (:class:`ArmSimulator`, default): Pinocchio's ABA, described below; it is
  the model the OCPs and the policies are built on;
- ``mujoco`` (:class:`tocpl_ros.sim.mujoco_backend.MujocoArmSimulator`): MuJoCo built from the
  same URDF, an independent implementation to test a policy against a simulator it was
  not trained on (its own rigid-body code, MuJoCo's dry-friction constraint instead of the
  smooth Coulomb model below; see that module). Imported only when selected.

Physics of the Pinocchio backend (one step of length h):

- motor torque τ: the command of the active mode (see below), saturated at the URDF
  effort limits; this is what a JointState reports as ``effort``;
- joint losses: viscous damping ``d·v`` and smooth Coulomb friction ``f_c·tanh(v/ε)``
  (both per joint, both always opposing v, so they never inject energy);
- semi-implicit Euler like Crocoddyl's ``IntegratedActionModelEuler``:
  ``v' = v + h·a``, ``q' = q ⊕ h·v'``. Without losses ``a = aba(q, v, τ)`` exactly; with
  losses the dissipative terms are taken linearly implicit,
  ``a = (M + h·D(v))⁻¹ (τ − b(q, v) − d·v − f_c·tanh(v/ε))`` with
  ``D(v) = diag(d + f_c/ε·sech²(v/ε))``, which stays stable for any damping, friction,
  link inertia and step (an explicit treatment blows up once h·d/M > 2).

Command modes, like the ros2_control forward controllers of a UR:

- ``effort``: the commanded torque is applied (saturated) and held until the next command;
- ``velocity`` / ``position``: a joint servo inside the simulator turns the held command
  into torques. It is a model-based (computed-torque) servo, the model being the
  simulator's own (payload included):
  ``τ = rnea(q, v, a_ref) + losses(v + h·a_ref)`` (losses linearised as above, so that
  the unsaturated step gives exactly a = a_ref) saturated at the effort limits, with
  ``a_ref = kv·(v_cmd − v)`` (velocity) or ``a_ref = kp·(q_cmd ⊖ q) − kd·v`` (position).
  Every joint thus behaves like a first-order velocity loop with bandwidth kv (default
  50 rad/s, 20 ms time constant) or a critically damped second-order position loop of
  natural frequency √kp (defaults kp = 900 s⁻², kd = 60 s⁻¹: ω = 30 rad/s, ζ = 1),
  independently of the posture, with zero steady-state error for a constant command
  unless a torque limit saturates.

Until the first command arrives (and after :meth:`SimulatorBase.reset`) the simulator holds
its posture with the position servo (``hold_until_command``), as a UR does when its
brakes are released and no program runs; set it to False to get zero torque / zero
velocity instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pinocchio as pin

from tocpl_ros.config import ConfigError, FieldError, load_dataclass, read_yaml
from tocpl_ros.resources import config_path
from tocpl_ros.robot import RobotModel, load_robot, robot_config_file

__all__ = [
    "ArmSimulator",
    "SimulatorBase",
    "make_simulator",
    "load_sim_robot",
    "SimConfig",
    "CommandError",
    "COMMAND_MODES",
    "BACKENDS",
    "NODE_NAME",
    "load_sim_config",
    "default_sim_config",
]

COMMAND_MODES = ("effort", "velocity", "position")
"""Command interfaces, as the ros2_control forward controllers name them."""
BACKENDS = ("pinocchio", "mujoco")
"""Physics backends (:func:`make_simulator`): Pinocchio (ABA) or MuJoCo, from the same URDF."""
NODE_NAME = "ur5_sim"
"""Node name under which config/ur5_sim.yaml keeps its ``ros__parameters``."""

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
    """Frame of the URDF the payload is attached to; empty: the robot's end-effector frame."""
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

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise FieldError(
                "backend", f"unknown physics backend '{self.backend}' (available: {', '.join(BACKENDS)})"
            )
        if self.command_mode not in COMMAND_MODES:
            raise FieldError(
                "command_mode", f"unknown command mode '{self.command_mode}' (known: {', '.join(COMMAND_MODES)})"
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


def load_sim_config(path: str | Path | None = None, node_name: str = NODE_NAME) -> SimConfig:
    """A :class:`SimConfig` from a YAML file (default ``config/ur5_sim.yaml``).

    The file is either a ROS 2 params file (``ur5_sim: ros__parameters: {...}``, also
    ``/**``) or a plain mapping of the fields. Errors are :class:`ConfigError`\\ s naming
    the file and the key.
    """
    path = Path(path) if path is not None else config_path(f"{NODE_NAME}.yaml")
    data = read_yaml(path)
    params = _params_of(data, node_name, str(path))
    return load_dataclass(SimConfig, data if params is None else params, source=str(path))


def default_sim_config() -> SimConfig:
    """``config/ur5_sim.yaml`` if the package's share files are found, else ``SimConfig()``."""
    try:
        path = config_path(f"{NODE_NAME}.yaml")
    except FileNotFoundError:
        return SimConfig()
    return load_sim_config(path)


class CommandError(ValueError):
    """A command the simulator refuses (wrong length, non-finite values, unknown mode)."""


def load_sim_robot(config: SimConfig) -> RobotModel:
    """The robot of a SimConfig, a fresh model (the payload is added to it): FieldError naming
    'robot' or 'urdf' if the file is missing; a wrong robot YAML raises its ConfigError."""
    try:
        robot_config_file(config.robot)
    except ConfigError as exc:
        raise FieldError("robot", str(exc)) from exc
    try:
        return load_robot(config.robot, urdf=config.urdf or None)
    except FileNotFoundError as exc:
        raise FieldError("urdf", str(exc)) from exc


class SimulatorBase:
    """What every physics backend shares: configuration, state, commands, the command
    modes with their computed-torque servo, saturation and the step loop.

    A backend implements :meth:`_load` (its model of ``robot``, limits, payload),
    :meth:`_advance` (one step of length h under a motor torque), :meth:`mass_matrix`,
    :meth:`bias` (Coriolis/centrifugal + gravity), :meth:`gravity` and :meth:`energy`;
    it may override :meth:`inverse_dynamics` and :meth:`_difference`.

    State: ``q``, ``v`` (the robot's joint order, ``joint_names``); ``effort`` is the motor
    torque applied during the last step; ``time`` the simulated time (s). See the module
    docstring for the command modes and the servo.
    """

    backend = ""
    urdf_file: Path
    joint_names: list[str]
    effort_limit: np.ndarray
    velocity_limit: np.ndarray

    def __init__(self, config: SimConfig | None = None):
        self.config = config = config if config is not None else SimConfig()
        self.dt = 1.0 / config.physics_rate
        self.payload_mass = config.payload_mass
        self.robot = load_sim_robot(config)
        self.urdf_file = self.robot.urdf_file
        self.joint_names = list(self.robot.joint_names)
        self.payload_frame = config.payload_frame or self.robot.end_effector_frame
        self._load(config)
        self.nq = self.nv = len(self.joint_names)
        self.effort_limit = np.asarray(self.effort_limit, dtype=float)
        if self.effort_limit.shape != (self.nv,) or not (self.effort_limit > 0).all():
            raise FieldError("urdf", f"every joint needs an effort limit > 0 in {self.urdf_file}, got {self.effort_limit}")
        self.velocity_limit = np.asarray(self.velocity_limit, dtype=float)
        self.damping = self._per_joint("damping", config.damping)
        self.friction = self._per_joint("friction", config.friction)
        self.friction_smoothing = config.friction_smoothing
        self.kv = self._per_joint("velocity_kv", config.velocity_kv)
        self.kp = self._per_joint("position_kp", config.position_kp)
        self.kd = self._per_joint("position_kd", config.position_kd)
        self.hold_until_command = config.hold_until_command
        self.initial_q = self._vector("initial_positions", config.initial_positions, self.robot.nominal_posture)
        self.initial_v = self._vector("initial_velocities", config.initial_velocities, np.zeros(self.nv))
        self._mode = config.command_mode
        self._configure_losses()
        self.reset()

    # -- backend hooks ---------------------------------------------------------------------
    def _load(self, config: SimConfig) -> None:
        """Build the model of ``robot`` (``joint_names``, the payload attached at
        ``payload_frame``); set ``effort_limit``, ``velocity_limit``."""
        raise NotImplementedError

    def _configure_losses(self) -> None:
        """Hand the joint losses (``damping``, ``friction``) to the physics, if it models them."""

    def _advance(self, tau: np.ndarray, h: float) -> None:
        """One step of length h under motor torque ``tau`` (already saturated): update q, v."""
        raise NotImplementedError

    def mass_matrix(self, q: Sequence[float] | None = None) -> np.ndarray:
        """Joint-space mass matrix M(q) of the simulated model (payload included)."""
        raise NotImplementedError

    def bias(self, q: Sequence[float] | None = None, v: Sequence[float] | None = None) -> np.ndarray:
        """Bias torques b(q, v) = C(q, v)·v + g(q) (M·a + b = τ without losses)."""
        raise NotImplementedError

    def gravity(self, q: Sequence[float] | None = None) -> np.ndarray:
        """Gravity torques g(q) of the simulated model (payload included)."""
        raise NotImplementedError

    def energy(self) -> float:
        """Kinetic + potential energy of the current state (J)."""
        raise NotImplementedError

    def inverse_dynamics(self, q: np.ndarray, v: np.ndarray, a: np.ndarray) -> np.ndarray:
        """τ = M(q)·a + b(q, v) (no losses)."""
        return self.mass_matrix(q) @ a + self.bias(q, v)

    def _difference(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        """q1 ⊖ q0 (revolute/prismatic joints: a plain difference)."""
        return q1 - q0

    # -- construction helpers ------------------------------------------------------------
    def _per_joint(self, name: str, value) -> np.ndarray:
        values = np.array(value if isinstance(value, (list, tuple)) else [value], dtype=float)
        if values.size == 1:
            return np.full(self.nv, values[0])
        if values.shape != (self.nv,):
            raise FieldError(name, f"needs 1 value or {self.nv} (one per joint: {', '.join(self.joint_names)}), got {len(values)}")
        return values

    def _vector(self, name: str, value, default: np.ndarray) -> np.ndarray:
        if value is None:
            return default.copy()
        values = np.array(value, dtype=float)
        if values.shape != (self.nv,):
            raise FieldError(name, f"needs {self.nv} values (one per joint: {', '.join(self.joint_names)}), got {len(values)}")
        return values

    # -- state and commands --------------------------------------------------------------
    def reset(self, q: Sequence[float] | None = None, v: Sequence[float] | None = None) -> None:
        """Back to ``(q, v)`` (default: the initial state); clears the held command and
        the simulated time."""
        self.q = self.initial_q.copy() if q is None else self._state_vector("q", q)
        self.v = self.initial_v.copy() if v is None else self._state_vector("v", v)
        self.hold_q = self.q.copy()
        self.command: np.ndarray | None = None
        self.effort = np.zeros(self.nv)
        self.time = 0.0
        self.steps = 0

    def _state_vector(self, what: str, values) -> np.ndarray:
        x = np.array(values, dtype=float)
        if x.shape != (self.nv,) or not np.isfinite(x).all():
            raise ValueError(f"{what} needs {self.nv} finite values, got {values}")
        return x

    @property
    def mode(self) -> str:
        """The active command mode."""
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch the command interface (like switching forward controllers): the held
        command is cleared, the arm holds its current posture until the next command."""
        if mode not in COMMAND_MODES:
            raise CommandError(f"unknown command mode '{mode}' (known: {', '.join(COMMAND_MODES)})")
        self._mode = mode
        self.command = None
        self.hold_q = self.q.copy()

    def validate_command(self, values: Sequence[float]) -> np.ndarray:
        """The command as an array, or CommandError (wrong length, NaN/Inf)."""
        cmd = np.asarray(values, dtype=float).reshape(-1)
        if cmd.shape != (self.nv,):
            raise CommandError(
                f"expected {self.nv} values (one per joint: {', '.join(self.joint_names)}), got {cmd.size}"
            )
        bad = np.flatnonzero(~np.isfinite(cmd))
        if bad.size:
            raise CommandError(f"non-finite value(s) at index {bad.tolist()}: {cmd[bad].tolist()}")
        return cmd

    def set_command(self, values: Sequence[float], mode: str | None = None) -> None:
        """Hold a new command of the active mode (torques in N·m, velocities in rad/s or
        positions in rad, URDF order) until the next one. A wrong-length or non-finite
        command raises CommandError and the previous command is kept. ``mode``, if given,
        must be the active mode."""
        if mode is not None and mode != self._mode:
            raise CommandError(f"a '{mode}' command while the command mode is '{self._mode}'")
        self.command = self.validate_command(values)

    # -- losses, servo, saturation -----------------------------------------------------------
    def losses(self, v: np.ndarray) -> np.ndarray:
        """Joint loss torques d·v + f_c·tanh(v/ε) (they oppose v: the applied torque is −losses)."""
        return self.damping * v + self.friction * np.tanh(v / self.friction_smoothing)

    def _loss_slope(self, v: np.ndarray) -> np.ndarray:
        t = np.tanh(v / self.friction_smoothing)
        return self.damping + self.friction / self.friction_smoothing * (1.0 - t * t)

    @property
    def has_losses(self) -> bool:
        return bool((self.damping > 0).any() or (self.friction > 0).any())

    def servo_torque(self, a_ref: np.ndarray, h: float | None = None) -> np.ndarray:
        """Unsaturated torque giving acceleration a_ref over the next step of length h:
        inverse dynamics plus the losses at the step's end velocity v + h·a_ref (linearised
        like :meth:`ArmSimulator.acceleration` treats them), so that a = a_ref exactly when
        unsaturated (for a backend whose losses are those of the model)."""
        tau = self.inverse_dynamics(self.q, self.v, a_ref)
        if self.has_losses:
            h = self.dt if h is None else h
            tau = tau + self.losses(self.v) + h * self._loss_slope(self.v) * a_ref
        return tau

    def motor_torque(self, h: float | None = None) -> np.ndarray:
        """Torque the drives apply in the current state (for a step of length h): the
        active mode's command through the servo where needed, saturated at the effort limits."""
        cmd, mode = self.command, self._mode
        if cmd is None:
            if self.hold_until_command or mode == "position":
                mode, cmd = "position", self.hold_q
            elif mode == "effort":
                return np.zeros(self.nv)
            else:
                cmd = np.zeros(self.nv)
        if mode == "effort":
            tau = cmd
        elif mode == "velocity":
            tau = self.servo_torque(self.kv * (cmd - self.v), h)
        else:
            error = self._difference(self.q, cmd)
            tau = self.servo_torque(self.kp * error - self.kd * self.v, h)
        return np.clip(tau, -self.effort_limit, self.effort_limit)

    def step(self, dt: float | None = None, substeps: int = 1) -> None:
        """Advance by ``dt`` (default 1/physics_rate) in ``substeps`` equal steps; the
        motor torque is re-evaluated (servo, saturation) at every substep."""
        dt = self.dt if dt is None else float(dt)
        if not dt > 0 or substeps < 1:
            raise ValueError(f"need dt > 0 and substeps >= 1, got dt={dt}, substeps={substeps}")
        h = dt / substeps
        for _ in range(substeps):
            tau = self.motor_torque(h)
            self._advance(tau, h)
            self.effort = tau
            self.time += h
            self.steps += 1


class ArmSimulator(SimulatorBase):
    """The Pinocchio backend (``backend: pinocchio``): the robot's controlled joints
    (revolute/prismatic; the others locked), simulated by ABA and semi-implicit Euler
    (see the module docstring for the physics)."""

    backend = "pinocchio"

    # -- construction --------------------------------------------------------------------
    def _load(self, config: SimConfig) -> None:
        self.model = self.robot.model  # the simulator's own copy (load_sim_robot): the payload goes into it
        self.effort_limit = self.robot.effort_limit.copy()
        self.velocity_limit = self.robot.velocity_limit.copy()
        self._attach_payload(config.payload_mass, self.payload_frame, np.array(config.payload_com, dtype=float))
        self.data = self.model.createData()

    def _attach_payload(self, mass: float, frame: str, com: np.ndarray) -> None:
        if not self.model.existFrame(frame):
            raise FieldError("payload_frame", f"frame '{frame}' is not in {self.urdf_file}")
        if mass == 0:
            return
        f = self.model.frames[self.model.getFrameId(frame)]
        payload = pin.Inertia(mass, com, np.zeros((3, 3)))  # point mass, in the frame
        joint = f.parentJoint
        self.model.inertias[joint] = self.model.inertias[joint] + f.placement.act(payload)

    # -- dynamics --------------------------------------------------------------------------
    def acceleration(self, q: np.ndarray, v: np.ndarray, tau: np.ndarray, h: float | None = None) -> np.ndarray:
        """Joint acceleration for motor torque ``tau`` (losses linearly implicit over ``h``)."""
        if not self.has_losses:
            return pin.aba(self.model, self.data, q, v, tau).copy()
        h = self.dt if h is None else h
        mass = self.mass_matrix(q)
        bias = pin.nonLinearEffects(self.model, self.data, q, v)
        return np.linalg.solve(mass + h * np.diag(self._loss_slope(v)), tau - bias - self.losses(v))

    def mass_matrix(self, q: Sequence[float] | None = None) -> np.ndarray:
        q = self.q if q is None else np.asarray(q, dtype=float)
        mass = pin.crba(self.model, self.data, q)
        return np.triu(mass) + np.triu(mass, 1).T

    def bias(self, q: Sequence[float] | None = None, v: Sequence[float] | None = None) -> np.ndarray:
        q = self.q if q is None else np.asarray(q, dtype=float)
        v = self.v if v is None else np.asarray(v, dtype=float)
        return pin.nonLinearEffects(self.model, self.data, q, v).copy()

    def gravity(self, q: Sequence[float] | None = None) -> np.ndarray:
        q = self.q if q is None else np.asarray(q, dtype=float)
        return pin.computeGeneralizedGravity(self.model, self.data, q).copy()

    def energy(self) -> float:
        kinetic = pin.computeKineticEnergy(self.model, self.data, self.q, self.v)
        return float(kinetic + pin.computePotentialEnergy(self.model, self.data, self.q))

    def inverse_dynamics(self, q: np.ndarray, v: np.ndarray, a: np.ndarray) -> np.ndarray:
        return pin.rnea(self.model, self.data, q, v, a).copy()

    def _difference(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        return pin.difference(self.model, q0, q1)

    def _advance(self, tau: np.ndarray, h: float) -> None:
        """Semi-implicit Euler: v' = v + h·a, q' = q ⊕ h·v'."""
        a = self.acceleration(self.q, self.v, tau, h)
        self.v = self.v + h * a
        self.q = pin.integrate(self.model, self.q, h * self.v)


def make_simulator(config: SimConfig | None = None) -> SimulatorBase:
    """The simulator of ``config.backend``: :class:`ArmSimulator` ('pinocchio') or
    :class:`tocpl_ros.sim.mujoco_backend.MujocoArmSimulator` ('mujoco', imported only then)."""
    config = config if config is not None else SimConfig()
    if config.backend == "mujoco":
        try:
            from tocpl_ros.sim.mujoco_backend import MujocoArmSimulator
        except ImportError as exc:
            raise FieldError("backend", f"'mujoco' needs the mujoco package (requirements.txt): {exc}") from exc
        return MujocoArmSimulator(config)
    return ArmSimulator(config)
