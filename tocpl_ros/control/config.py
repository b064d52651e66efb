"""The policy controller's settings (:class:`ControllerConfig`) and its output (:class:`Command`) (ROS-free)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from tocpl_ros.config import FieldError
from tocpl_ros.interfaces import OUTPUT_MODES
from tocpl_ros.robot import RobotModel

SAFE_MODES = ("hold", "gravity", "zero_velocity")
TARGET_POLICIES = ("clamp", "reject")
OBS_BLOCKS = ("q", "v", "target")
"""Observation blocks this controller can assemble (``tocpl.obs_layout`` names)."""

HOLD_MAX_OMEGA_DT = 0.25
HOLD_MAX_KD_DT = 0.5
"""Upper bounds of hold_kp·period² (as ω·period) and hold_kd·period. With one period of delay
between measurement and torque, a damping gain of kd·period ≥ 1 makes the discrete loop
oscillate and ≥ 2 diverge (the old uniform PD had 10 N·m·s/rad / 0.017 kg·m² · 2 ms = 1.2 on
the lightest wrist joint at 500 Hz); these bounds keep it well inside."""


@dataclass
class ControllerConfig:
    """Settings of the policy controller (the ``policy_node`` parameters of the same names)."""

    rate: float | None = None
    """Control rate (Hz): one command every 1/rate s. 1/rate is also the step used to turn
    torques into velocity/position commands. None: the robot's control_rate."""
    output_mode: str | None = None
    """'effort' (torque for a forward effort controller), 'velocity' (v + dt·aba(q, v, u)) or
    'position' (q + dt·that velocity), dt = 1/rate. None: the robot's command_interface."""
    exclude_gravity: bool | None = None
    """effort mode: publish u − g(q) instead of u, for drivers that add gravity compensation
    themselves (UR direct torque control). Limits still apply to the total torque u.
    None: the robot's compensates_gravity."""
    stale_periods: int = 5
    """No accepted joint state for more than stale_periods control periods → safe command.
    Counted both in time and in control steps: a step that runs late because this process was
    held up (its joint states still queued) does not count as missing data."""
    safe_mode: str = "hold"
    """Command sent while unsafe (stopped, stale/invalid data, bad policy output).
    effort mode: 'hold' → g(q) + M(q)·(hold_kp·(q_hold − q) − hold_kd·v), to the posture held
    when the controller went safe; 'zero_velocity' → g(q) − M(q)·hold_kd·v (brake to rest where
    the arm stops); 'gravity' → g(q) only (passive: a moving arm keeps moving). With stale data,
    hold/zero_velocity use the state predicted from the last accepted one, gravity the last
    accepted posture. Always clamped to the torque limits. velocity mode: zeros (every
    safe_mode). position mode: the held posture."""
    fade_in: float = 0.5
    """Seconds over which the command ramps linearly from the safe command to the policy's,
    after start and after every safe period. 0: no ramp."""
    target_limits: list[float] | None = None
    """Workspace box of the target, [x_min, x_max, y_min, y_max, z_min, z_max] (m, base frame).
    None: the robot's target_workspace."""
    target_out_of_limits: str = "clamp"
    """A target outside target_limits is 'clamp'ed into the box or 'reject'ed (kept the old one)."""
    initial_target: list[float] | None = None
    """Target [x, y, z] (m, base frame), or a pose [x, y, z, qx, qy, qz, qw] (the quaternion of
    the end-effector frame's orientation), until one arrives; None: where the end effector is at
    the first accepted joint state (hold there). A pose policy given [x, y, z] takes the frame's
    orientation at the first joint state; a position policy takes the position of a pose. Clamped
    or rejected like any target."""
    max_joint_velocity: float = 10.0
    """Sanity bound (rad/s): joint states with |v| above it are rejected; velocity commands are
    also clamped to it (besides the URDF velocity limits)."""
    joint_position_margin: float = 0.1
    """Joint states with a position beyond the URDF limits by more than this (rad) are rejected."""
    hold_kp: float = 400.0
    """'hold' safe mode, effort output: stiffness as an acceleration gain (1/s², = ω²; 400:
    ω = 20 rad/s), multiplied by M(q), so the same on every joint whatever its inertia.
    At most (0.25·rate)² (ω·period ≤ 0.25: well-damped in discrete time)."""
    hold_kd: float = 40.0
    """'hold'/'zero_velocity' safe modes, effort output: damping as an acceleration gain (1/s,
    = 2ζω; 40 with hold_kp 400: critically damped), multiplied by M(q). At most 0.5·rate."""
    allow_extra_joints: bool = False
    """Accept joint states that also name joints the policy does not use (e.g. a gripper's);
    False rejects them as unknown joints."""
    expected_dt: float | None = None
    """If set, the policy's tocpl.dt must equal it (s), else the metadata check fails."""

    def __post_init__(self) -> None:
        def number(name: str, value, lo=None, hi=None, lo_open=False) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FieldError(name, f"must be a finite number, got {value!r}")
            if lo is not None and (value <= lo if lo_open else value < lo):
                raise FieldError(name, f"must be {'>' if lo_open else '>='} {lo}, got {value}")
            if hi is not None and value > hi:
                raise FieldError(name, f"must be <= {hi}, got {value}")

        if self.rate is not None:
            number("rate", self.rate, 0.0, 10000.0, lo_open=True)
        for name, options in (
            ("output_mode", OUTPUT_MODES),
            ("safe_mode", SAFE_MODES),
            ("target_out_of_limits", TARGET_POLICIES),
        ):
            if name == "output_mode" and self.output_mode is None:
                continue
            if getattr(self, name) not in options:
                raise FieldError(name, f"must be one of {', '.join(options)}, got {getattr(self, name)!r}")
        if isinstance(self.stale_periods, bool) or not isinstance(self.stale_periods, int) or self.stale_periods < 1:
            raise FieldError("stale_periods", f"must be an integer >= 1, got {self.stale_periods!r}")
        number("fade_in", self.fade_in, 0.0, 60.0)
        number("max_joint_velocity", self.max_joint_velocity, 0.0, lo_open=True)
        number("joint_position_margin", self.joint_position_margin, 0.0)
        # the gains' bounds depend on the rate: checked again once it is known (for_robot)
        number("hold_kp", self.hold_kp, 0.0, None if self.rate is None else (HOLD_MAX_OMEGA_DT * self.rate) ** 2)
        number("hold_kd", self.hold_kd, 0.0, None if self.rate is None else HOLD_MAX_KD_DT * self.rate)
        if self.target_limits is not None:
            limits = list(self.target_limits)
            if len(limits) != 6:
                raise FieldError("target_limits", f"needs 6 values [x_min, x_max, y_min, y_max, z_min, z_max], got {len(limits)}")
            for i, value in enumerate(limits):
                number(f"target_limits[{i}]", value)
            for axis, (lo, hi) in zip("xyz", zip(limits[0::2], limits[1::2])):
                if lo > hi:
                    raise FieldError("target_limits", f"{axis}_min {lo} > {axis}_max {hi}")
        if self.initial_target is not None:
            if len(self.initial_target) not in (3, 7):
                raise FieldError("initial_target", "needs 3 values [x, y, z] or 7 [x, y, z, qx, qy, qz, qw], "
                                                   f"got {len(self.initial_target)}")
            for i, value in enumerate(self.initial_target):
                number(f"initial_target[{i}]", value)
        if self.expected_dt is not None:
            number("expected_dt", self.expected_dt, 0.0, lo_open=True)

    @property
    def period(self) -> float:
        """Control period 1/rate (s)."""
        if self.rate is None:
            raise ValueError("the control rate is not known yet (rate None: the robot's, see for_robot)")
        return 1.0 / self.rate

    def for_robot(self, robot: RobotModel) -> ControllerConfig:
        """This config with the settings left None taken from the robot's description (rate,
        output_mode, exclude_gravity, target_limits), checked again. FieldError naming the field
        if the robot does not say (a robot built from a URDF alone has no control rate)."""
        rate = self.rate if self.rate is not None else robot.control_rate
        if rate is None:
            raise FieldError("rate", f"robot '{robot.name}' has no control_rate (built from {robot.urdf_file.name} "
                                     "alone, no robot YAML): set the rate")
        return dataclasses.replace(
            self,
            rate=rate,
            output_mode=self.output_mode if self.output_mode is not None else robot.command_interface,
            exclude_gravity=self.exclude_gravity if self.exclude_gravity is not None else robot.compensates_gravity,
            target_limits=self.target_limits if self.target_limits is not None else robot.target_limits,
        )


@dataclass
class Command:
    """One control step's output."""

    values: np.ndarray | None
    """The command to publish (joint order of the policy), or None: nothing to publish yet
    (no joint state ever accepted: even a 'hold' posture is unknown)."""
    safe: bool
    """True when this is the safe command (not the policy's)."""
    reason: str
    """Why the command is safe ('' for a policy command; 'fading in' while ramping)."""
