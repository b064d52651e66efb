"""What every physics backend of the simulated arm shares (ROS-free): state, commands, the
command modes with their computed-torque servo, saturation and the step loop.

Command modes, like the ros2_control forward controllers of a UR:

- ``effort``: the commanded torque is applied (saturated) and held until the next command;
  for a robot whose controller compensates gravity itself (the robot YAML's
  ``compensates_gravity``: a Franka, a UR in direct torque control) the drives add g(q) to it,
  as that controller does, so that a command meant for the real arm (u − g(q)) runs unchanged;
- ``velocity`` / ``position``: a joint servo inside the simulator turns the held command
  into torques. It is a model-based (computed-torque) servo, the model being the
  simulator's own (payload included):
  ``τ = rnea(q, v, a_ref) + losses(v + h·a_ref)`` (losses linearised as in the Pinocchio backend, so that
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

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tocpl_ros.config import ConfigError, FieldError
from tocpl_ros.interfaces import OUTPUT_MODES
from tocpl_ros.robot import RobotModel, load_robot
from tocpl_ros.robot_config import robot_config_file
from tocpl_ros.sim.config import SimConfig


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
        self.compensates_gravity = self.robot.compensates_gravity
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
        """q1 ⊖ q0 of joint positions (a plain difference; a backend may wrap continuous joints)."""
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
        if mode not in OUTPUT_MODES:
            raise CommandError(f"unknown command mode '{mode}' (known: {', '.join(OUTPUT_MODES)})")
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
            else:  # zero torque (effort) or zero velocity
                cmd = np.zeros(self.nv)
        if mode == "effort":
            tau = cmd + self.gravity() if self.compensates_gravity else cmd
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
