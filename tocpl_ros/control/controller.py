"""The policy controller: an ONNX policy made safe to drive a robot (ROS-free).

:class:`PolicyController` is everything the ``policy_node`` does except ROS: it
checks a policy file against the robot (:mod:`tocpl_ros.robot`: the robot YAML the policy's
task names, its URDF and controlled joints), takes joint states by joint *name*
(rejecting malformed ones), keeps the target inside a workspace box, and turns the
policy's torque into the command of an output mode, with the safety layer around it:

- the policy's torque is always clamped to [u_min, u_max] ∩ [−effort, effort] (URDF);
- joint states with NaN/Inf, wrong lengths, unknown/missing/duplicate joints,
  timestamps going backwards, or positions/velocities beyond sanity bounds are
  rejected (each with a reason string and a counter) and never reach the policy;
- no fresh joint state for ``stale_periods`` control periods, the controller being
  stopped, a non-finite policy output or any internal error → the *safe command* of
  the output mode (see :class:`ControllerConfig` ``safe_mode``);
- a *rejected* joint state counts as a missing one, deliberately: for up to
  ``stale_periods`` periods the policy keeps running on the last accepted state (one bad
  message must not jerk the robot into the safe command), after that the safe command;
- the effort safe commands are computed-torque laws (joint-space accelerations through
  M(q)), so one pair of gains is well-damped on every joint, from the heavy shoulder to the
  light last wrist joint. While the data is stale they run on a *prediction* of the
  state: the last accepted state rolled forward through the model under the torques sent
  since, so a moving arm is still braked to rest instead of being left to coast on
  gravity compensation;
- on start, and whenever the policy takes over again after a safe command, the command
  ramps linearly from the safe command to the policy's over ``fade_in`` seconds;
- every command returned is finite and inside the output mode's limits;
- with :meth:`PolicyController.follow_plans` (the policy node's ``use_mpc``), the torque of a
  running tick is the newest usable MPC plan's u = ū_k − K_k (x − x̄(t)) instead of the policy's
  (:mod:`tocpl_ros.control.plan_follower`: the policy as its fallback, blended at each switch), through
  the same clamp, output conversion, fade-in and safe command.

Continuous joints (a Kinova's): the state kept is the joint positions of /joint_states (one angle
per joint); the observation, g(q), M(q) and the dynamics take the model's q (cos θ, sin θ,
:meth:`PolicyController.model_q`), a continuous joint has no position limits, and the hold command
and the plan feedback take its difference the short way round (pin.difference). A robot without
them runs the same arithmetic as before.

Times (``stamp``, ``received``, ``now``) are seconds as floats; ``received`` and
``now`` must come from the same clock (the node uses ``time.monotonic()``).

The settings a robot implies (rate, output mode, gravity exclusion, target box) default to its
robot YAML's (:meth:`ControllerConfig.for_robot`).

Only numpy, pinocchio (through :mod:`tocpl_ros.robot`) and onnxruntime (through
:mod:`tocpl_ros.policy_file`) are imported: no torch, no rclpy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pinocchio as pin

from tocpl_ros.config import FieldError
from tocpl_ros.control.config import Command, ControllerConfig
from tocpl_ros.control.plan_follower import PlanFollower, wrap_angles
from tocpl_ros.control.policy_check import check_policy_model, name_difference, policy_robot
from tocpl_ros.control.stats import ControllerStats
from tocpl_ros.control.targets import TargetKeeper
from tocpl_ros.policy_file import INPUT_NAME, OUTPUT_NAME, OnnxPolicy, PolicyFileError, PolicyMetadata
from tocpl_ros.robot import RobotModel

PREDICTION_MAX_STEPS = 50
"""Most integration steps (of at most one period) of the stale-state prediction per call."""


class PolicyController:
    """An ONNX policy plus the robot model, safety layer and output conversion.

    ``policy``: a policy file path or an :class:`OnnxPolicy`; ``robot``: a
    :class:`~tocpl_ros.robot.RobotModel`, or a robot name / YAML path, overriding the one the
    policy's metadata names (:func:`policy_robot`); ``urdf``: a URDF path or file name replacing
    the robot's URDF file. ``config``'s settings left None come from the robot's description.
    Raises :class:`PolicyFileError` when the file is unusable or inconsistent with the robot
    (joint names/order, bounds, obs layout), FieldError when a setting the robot should give is
    missing; :meth:`check_metadata` also compares it with an expected joint list and dt.
    Starts *stopped*: call :meth:`start`.
    """

    def __init__(self, policy: str | Path | OnnxPolicy, config: ControllerConfig | None = None,
                 urdf: str | Path | None = None, robot: RobotModel | str | Path | None = None):
        self.policy = policy if isinstance(policy, OnnxPolicy) else OnnxPolicy(policy)
        self.metadata: PolicyMetadata = self.policy.metadata
        md = self.metadata
        source = self.policy.path.name

        # -- robot model -----------------------------------------------------
        if isinstance(robot, RobotModel):
            self.robot = robot
        else:
            self.robot = policy_robot(md, robot, urdf, source)
        self.config = (config or ControllerConfig()).for_robot(self.robot)
        self.model, self.urdf_file = self.robot.model, self.robot.urdf_file
        self.data = self.model.createData()
        self.robot_joint_names = list(self.robot.joint_names)
        self.nq, self.nv = self.model.nq, self.model.nv
        """The model's q size (a continuous joint has two entries, cos θ and sin θ) and the joint count."""
        self._continuous = np.asarray(self.robot.is_continuous, dtype=bool)
        self._has_continuous = bool(self._continuous.any())
        self._check_model()

        self.joint_names = list(md.joint_names)
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        effort = self.robot.effort_limit
        self.u_lo = np.maximum(md.u_min, -effort)
        self.u_hi = np.minimum(md.u_max, effort)
        self.v_lim = np.minimum(self.robot.velocity_limit, self.config.max_joint_velocity)
        self.q_lo = self.robot.lower_position_limit.copy()
        self.q_hi = self.robot.upper_position_limit.copy()
        margin = self.config.joint_position_margin
        self._q_ok_lo, self._q_ok_hi = self.q_lo - margin, self.q_hi + margin

        # -- observation assembly ----------------------------------------------
        self._obs = np.zeros((1, md.obs_dim), dtype=np.float32)
        self._slices: list[tuple[str, slice]] = []
        start = 0
        for block, size in md.obs_layout:
            self._slices.append((block, slice(start, start + size)))
            start += size
        self._needs_target = any(b == "target" for b, _ in md.obs_layout)
        self.target_dim = dict(md.obs_layout).get("target", 0)
        """Values of the target: 3 (a position), 9 (a pose: :mod:`tocpl_ros.pose`) or 0 (none)."""
        self.pose_targets = md.target_kind == "pose"
        """The policy takes pose targets (tocpl.target_kind 'pose'): a position and an orientation."""
        # the frame the policy was trained to move: its file's, else its task's, else the robot's end effector
        frame = md.task_config.get("frame") if isinstance(md.task_config, dict) else None
        frame = md.end_effector_frame or frame or self.robot.end_effector_frame
        self.base_frame = md.base_frame or self.robot.config.base_frame
        """The frame targets are taken in (a /target in another frame is rejected)."""
        self.frame_id: int | None = None
        if self.model.existFrame(frame):
            self.frame_id = self.model.getFrameId(frame)
        initial = self.config.initial_target
        # a pose policy given a position alone takes the frame's orientation at the first joint state
        from_posture = initial is None or (self.pose_targets and len(initial) == 3)
        if self._needs_target and from_posture and self.frame_id is None:
            raise PolicyFileError(
                f"{source}: the observation has a target but frame '{frame}' (the task's or the robot's end effector) "
                f"is not in {self.urdf_file.name}: set initial_target explicitly"
                + (" (with an orientation: x, y, z, qx, qy, qz, qw)" if self.pose_targets else "")
            )
        limits = self.config.target_limits
        if limits is None and self._needs_target:
            raise FieldError("target_limits", f"robot '{self.robot.name}' has no target_workspace: set target_limits")
        unbounded = [-math.inf, math.inf] * 3  # no target in the observation: nothing to keep in a box
        self.targets = TargetKeeper(md.target_kind, self.base_frame, (limits or unbounded)[0::2],
                                    (limits or unbounded)[1::2], self.config.target_out_of_limits)

        # -- state ------------------------------------------------------------
        self.stats = ControllerStats()
        self._q: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._stamp: float | None = None
        self._received: float | None = None
        self._restart_stamp: float | None = None  # first older stamp after the stream went stale
        self._ticks_since_state = 0
        if initial is not None:
            rejected = self.stats.rejected_total
            reason = self.update_target(initial) if len(initial) == 3 else self.update_pose_target(initial[:3], initial[3:])
            if self.stats.rejected_total > rejected:
                raise PolicyFileError(f"initial_target {initial}: {reason}")
        self._running = False
        self._fade_start: float | None = None
        self._q_hold: np.ndarray | None = None
        self._last_was_policy = False
        # stale-data prediction for the effort safe command: state, time, torque being applied
        self._pred: tuple[np.ndarray, np.ndarray, float] | None = None
        self._last_u: np.ndarray | None = None
        self.last_rejected: str = ""
        """Key of the last rejected input (a ``stats.rejected`` key), for per-reason logging."""
        self.state = "stopped"
        """'stopped', 'waiting' (no joint state yet), 'safe', 'fading_in' or 'running'."""
        self.last_reason = "stopped"
        self.follower = None
        """A :class:`tocpl_ros.control.plan_follower.PlanFollower` once :meth:`follow_plans` was called:
        the policy's torque is then replaced by the MPC plan's while one is usable."""

    def follow_plans(self, config=None):
        """Follow MPC plans (``tocpl_ros.control.plan_follower``): from now on the torque of a running tick
        is the newest usable plan's u = ū_k − K_k (x − x̄(t)), else the policy's, blended at each
        switch; everything else (clamp, output mode, fade-in, stale data, safe command) is unchanged.
        Returns the :class:`~tocpl_ros.control.plan_follower.PlanFollower` (feed it with ``offer``)."""
        self.follower = PlanFollower(self.nv, 2 * self.nv, self.target_dim, config, self.u_lo, self.u_hi,
                                     continuous=self._continuous)
        return self.follower

    # ------------------------------------------------------------------ metadata
    def _check_model(self) -> None:
        check_policy_model(self.metadata, self.policy.path.name, self.robot)

    def check_metadata(self, joint_names: Sequence[str] | None = None, dt: float | None = None) -> None:
        """Raise :class:`PolicyFileError` (a ValueError) saying exactly what differs between the
        policy's metadata and the robot: the URDF (joint names, order, count, torque bounds vs
        effort limits), ``joint_names`` (the expected joints in order, if given) and ``dt``
        (if given, else ``config.expected_dt`` if set)."""
        self._check_model()
        source = self.policy.path.name
        if joint_names is not None:
            problem = name_difference(self.metadata.joint_names, list(joint_names), "policy (tocpl.joint_names)", "expected joint_names")
            if problem:
                raise PolicyFileError(f"{source}: joint names differ: {problem}")
        if dt is None:
            dt = self.config.expected_dt
        if dt is not None:
            if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
                raise ValueError(f"expected dt must be a number > 0, got {dt!r}")
            if abs(self.metadata.dt - dt) > 1e-9 * max(1.0, abs(dt)):
                raise PolicyFileError(
                    f"{source}: policy dt (tocpl.dt) is {self.metadata.dt:g} s but the configured control period is {dt:g} s"
                )

    # ------------------------------------------------------------------ inputs

    def _reject(self, key: str, message: str) -> str:
        self.stats.rejected[key] += 1
        self.last_rejected = key
        return message

    def update_joint_state(
        self,
        names: Sequence[str],
        position: Sequence[float],
        velocity: Sequence[float],
        stamp: float,
        received: float | None = None,
    ) -> str | None:
        """Take a joint state (any joint order). Returns None if accepted, else why it was
        rejected (and counts it in ``stats.rejected``); never raises.

        ``stamp``: the message's time stamp (s); a stamp older than the last accepted one is
        rejected, unless the stream had gone stale and the next message's stamp goes forward
        from it (a restarted publisher: its second message is the first one accepted). ``received``: when
        it arrived, on the clock of :meth:`compute`'s ``now`` (default: ``stamp``).
        """
        try:
            try:
                stamp = float(stamp)
                received = stamp if received is None else float(received)
            except (TypeError, ValueError):
                return self._reject("bad_stamp", f"time stamp is not a number: {stamp!r}")
            if not (math.isfinite(stamp) and math.isfinite(received)):
                return self._reject("bad_stamp", f"time stamp is not finite: {stamp!r}")
            try:
                names = list(names)
                n = len(names)
                pos = np.asarray(position, dtype=float).reshape(-1)
                vel = np.asarray(velocity, dtype=float).reshape(-1)
            except (TypeError, ValueError) as exc:
                return self._reject("malformed", f"malformed joint state ({exc})")
            if len(pos) != n or len(vel) != n:
                return self._reject(
                    "length", f"lengths differ: {n} names, {len(pos)} positions, {len(vel)} velocities"
                )
            if not all(isinstance(name, str) for name in names):
                return self._reject("malformed", "joint names must be strings")
            if len(set(names)) != n:
                dup = sorted({x for x in names if names.count(x) > 1})
                return self._reject("duplicate_joint", f"duplicate joint names {dup}")
            index = self._index
            unknown = [x for x in names if x not in index]
            if unknown and not self.config.allow_extra_joints:
                return self._reject("unknown_joint", f"unknown joints {unknown[:6]} (policy joints: {self.joint_names})")
            if n - len(unknown) != self.nv:
                missing = [x for x in self.joint_names if x not in set(names)]
                return self._reject("missing_joint", f"missing joints {missing}")
            order = np.fromiter((index.get(x, -1) for x in names), dtype=np.int64, count=n)
            used = order >= 0
            q = np.empty(self.nv)
            v = np.empty(self.nv)
            q[order[used]] = pos[used]
            v[order[used]] = vel[used]
            if not (np.isfinite(q).all() and np.isfinite(v).all()):
                bad = [self.joint_names[i] for i in range(self.nv) if not (math.isfinite(q[i]) and math.isfinite(v[i]))]
                return self._reject("nonfinite", f"NaN/Inf in the state of {bad}")
            if (q < self._q_ok_lo).any() or (q > self._q_ok_hi).any():
                bad = [self.joint_names[i] for i in np.flatnonzero((q < self._q_ok_lo) | (q > self._q_ok_hi))]
                return self._reject("position_bound", f"positions beyond the URDF limits of {bad}")
            vmax = self.config.max_joint_velocity
            if (np.abs(v) > vmax).any():
                bad = [self.joint_names[i] for i in np.flatnonzero(np.abs(v) > vmax)]
                return self._reject("velocity_bound", f"|velocity| > max_joint_velocity {vmax:g} rad/s for {bad}")
            if self._stamp is not None and stamp < self._stamp:
                # Older than the last accepted: out of order, or a restarted publisher (new clock).
                # A restart is believed only once the stream had gone stale and a second message
                # confirms that the new stamps go forward: a clock running backwards never is.
                gone_stale = self._received is not None and received - self._received > self._stale_limit()
                candidate = self._restart_stamp
                if not (gone_stale and candidate is not None and candidate <= stamp):
                    self._restart_stamp = stamp if gone_stale else None
                    return self._reject(
                        "backwards_stamp", f"time stamp {stamp:.6f} is older than the last accepted {self._stamp:.6f}"
                        + (" (a restarted publisher? accepted once the next stamp goes forward)" if gone_stale else "")
                    )
                self.stats.stamp_resets += 1
            self._restart_stamp = None
            self._q, self._v, self._stamp, self._received = q, v, stamp, received
            self._ticks_since_state = 0
            self._pred = None  # measured again: no prediction needed
            self.stats.accepted_states += 1
            if self.target is None and self._needs_target:
                self._target_from_posture()
            return None
        except Exception as exc:  # never let a malformed message escape
            return self._reject("malformed", f"malformed joint state ({type(exc).__name__}: {exc})")

    def _target_from_posture(self) -> None:
        placement = self.robot.frame_placement(self.model_q(self._q), self.frame_id)
        self.targets.hold(placement.translation, placement.rotation)

    @property
    def target(self) -> np.ndarray | None:
        """The target [target_dim] in the base frame (a pose's: :mod:`tocpl_ros.pose`), or None."""
        return self.targets.value

    def update_target(self, xyz: Sequence[float], frame: str = "") -> str | None:
        """Set the target position [x, y, z], expressed in ``frame`` ("" : the base frame). A pose
        policy keeps its target's orientation (before the first joint state: the frame's orientation
        there). Returns None if taken as is, else what happened: rejected (a frame other than the
        base frame: there are no transforms here; NaN/Inf, wrong length, outside target_limits with
        'reject': the old target is kept) or clamped into target_limits (with 'clamp'). Counted in
        ``stats``; never raises."""
        return self._counted(self.targets.take(xyz, None, frame))

    def update_pose_target(self, xyz: Sequence[float], quaternion: Sequence[float], frame: str = "") -> str | None:
        """Set a target pose: position [x, y, z] and orientation (quaternion x, y, z, w, normalised
        here) of the end-effector frame in ``frame``. A pose policy takes both (a quaternion with
        NaN/Inf or zero norm is rejected, the old target kept), a position policy the position
        alone. The position as in :meth:`update_target`; never raises."""
        return self._counted(self.targets.take(xyz, quaternion, frame))

    def _counted(self, update) -> str | None:
        if update.rejected:
            return self._reject(update.rejected, update.message)
        if update.clamped:
            self.stats.targets_clamped += 1
        return update.message

    def target_diagnostics(self) -> dict[str, str]:
        """The target for /diagnostics: its position (m), and a pose's orientation as a quaternion."""
        return self.targets.diagnostics()

    # ------------------------------------------------------------------ start/stop

    def start(self, now: float | None = None) -> None:
        """Let the policy drive (after a fade-in from the safe command)."""
        if not self._running:
            self._running = True
            self._fade_start = None  # the ramp starts at the first policy tick

    def stop(self) -> None:
        """Send the safe command from the next compute() on."""
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def q(self) -> np.ndarray | None:
        """Joint positions of the last accepted state (policy joint order), or None."""
        return None if self._q is None else self._q.copy()

    @property
    def x(self) -> np.ndarray | None:
        """The OCP's state of the last accepted state: (the model's q [nq], v [nv]), or None."""
        return None if self._q is None else np.concatenate([self.model_q(self._q), self._v])

    def model_q(self, positions: np.ndarray) -> np.ndarray:
        """The model's q [nq] of joint positions [nv] (a continuous joint's cos θ, sin θ): what the
        dynamics and the policy's observation take. The positions themselves without continuous joints."""
        return self.robot.q_from_positions(positions) if self._has_continuous else positions

    def position_difference(self, q: np.ndarray, q_ref: np.ndarray) -> np.ndarray:
        """q ⊖ q_ref of joint positions [nv]: a continuous joint's difference wrapped to [−π, π] (the
        short way round, as pin.difference), the others' plain."""
        d = q - q_ref
        return wrap_angles(d, self._continuous) if self._has_continuous else d

    @property
    def v(self) -> np.ndarray | None:
        """Joint velocities of the last accepted state, or None."""
        return None if self._v is None else self._v.copy()

    @property
    def stamp(self) -> float | None:
        """Time stamp (s) of the last accepted joint state, or None."""
        return self._stamp

    @property
    def held_posture(self) -> np.ndarray | None:
        """The posture the safe command holds ('hold' effort, position mode), or None."""
        return None if self._q_hold is None else self._q_hold.copy()

    # ------------------------------------------------------------------ compute

    def _stale_limit(self) -> float:
        return self.config.stale_periods * self.config.period + 1e-9

    def age(self, now: float) -> float:
        """Seconds since the last accepted joint state was received (inf if none)."""
        return math.inf if self._received is None else now - self._received

    def gravity(self, q: np.ndarray) -> np.ndarray:
        """g(q) [nv] at the model's q [nq] (:meth:`model_q` of positions)."""
        return self.robot.gravity(q)

    def output_limits(self, q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of what this controller may publish in its output mode. Effort with
        exclude_gravity: the torque limits minus g(q) (q: the current state by default)."""
        mode = self.config.output_mode
        if mode == "velocity":
            return -self.v_lim, self.v_lim.copy()
        if mode == "position":
            return self.q_lo.copy(), self.q_hi.copy()
        if self.config.exclude_gravity:
            q = self._q if q is None else q
            g = self.gravity(self.model_q(q))
            return self.u_lo - g, self.u_hi - g
        return self.u_lo.copy(), self.u_hi.copy()

    def mass_matrix(self, q: np.ndarray) -> np.ndarray:
        """M(q) [nv, nv] at the model's q [nq]."""
        return self.robot.mass_matrix(q)

    def _predicted_state(self, now: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(q, v) rolled forward from the last accepted state (at its arrival) to ``now`` through
        the model, under the torque sent meanwhile: a forward controller holds the last command,
        and the policy's command on an unchanged state is unchanged. At most
        PREDICTION_MAX_STEPS periods are integrated per call (a longer stall is skipped)."""
        if now is None:
            return self._q, self._v
        if self._pred is None:
            self._pred = (self._q.copy(), self._v.copy(), min(self._received, now))
        q, v, then = self._pred
        u = self._last_u
        elapsed = max(0.0, now - then)
        if u is not None and elapsed > 0:
            steps = min(PREDICTION_MAX_STEPS, max(1, math.ceil(elapsed / self.config.period - 1e-9)))
            h = min(elapsed / steps, self.config.period)
            for _ in range(steps):  # semi-implicit Euler, as the simulator and the OCP
                # positions integrate as angles (a continuous joint's too); the dynamics take the model's q
                v = v + h * np.asarray(pin.aba(self.model, self.data, self.model_q(q), v, u))
                q = np.clip(q + h * v, self.q_lo, self.q_hi)
        self._pred = (q, v, now)
        return q, v

    def _safe_values(self, fresh: bool, now: float | None = None) -> np.ndarray | None:
        """The safe command in the output mode (None if no state was ever accepted)."""
        cfg = self.config
        if self._q is None:
            return None
        if self._q_hold is None:
            self._q_hold = self._q.copy()
        if cfg.output_mode == "velocity":
            return np.zeros(self.nv)
        if cfg.output_mode == "position":
            return np.clip(self._q_hold, self.q_lo, self.q_hi)
        if cfg.safe_mode == "gravity":
            q = self._q
            g = self.gravity(self.model_q(q))
            u = g
        else:
            q, v = (self._q, self._v) if fresh else self._predicted_state(now)
            if cfg.safe_mode == "hold":
                # wrapped for a continuous joint: θ and θ + 2π are one posture, held the short way round
                a = cfg.hold_kp * self.position_difference(self._q_hold, q) - cfg.hold_kd * v
            else:  # zero_velocity
                a = -cfg.hold_kd * v
            mq = self.model_q(q)
            g = self.gravity(mq)
            u = g + self.mass_matrix(mq) @ a
        u = np.clip(u, self.u_lo, self.u_hi)
        self._last_u = u  # the torque the robot will hold: what the prediction integrates
        return u - g if cfg.exclude_gravity else u

    def _policy_torque(self) -> np.ndarray | None:
        """The policy's torque (clamped to the limits), or None if its output is not finite."""
        q, v = self._q, self._v
        obs = self._obs[0]
        for block, sl in self._slices:
            obs[sl] = self.model_q(q) if block == "q" else v if block == "v" else self.target
        t0 = time.perf_counter()
        out = self.policy.session.run([OUTPUT_NAME], {INPUT_NAME: self._obs})[0]
        self.stats.inference.add(time.perf_counter() - t0)
        u = np.asarray(out, dtype=float).reshape(-1)
        if u.shape != (self.nv,) or not np.isfinite(u).all():
            return None
        clamped = np.clip(u, self.u_lo, self.u_hi)
        if (clamped != u).any():
            self.stats.clamped_ticks += 1
        return clamped

    def _policy_values(self) -> tuple[np.ndarray | None, str]:
        """The command in the output mode (the policy's torque, or with plan following the MPC
        plan's / the policy's torque from the follower), or (None, reason) if unusable."""
        u = self._policy_torque()
        follower = self.follower
        if follower is not None:
            u = follower.command(self._stamp, np.concatenate([self._q, self._v]), self.target, u)
            if u is None:
                return None, "policy_nonfinite"
        elif u is None:
            return None, "policy_nonfinite"
        return self._torque_values(u), ""

    def _torque_values(self, u: np.ndarray) -> np.ndarray:
        """A torque inside the limits as the command of the output mode."""
        cfg, q, v = self.config, self._q, self._v
        u = np.clip(u, self.u_lo, self.u_hi)
        if cfg.output_mode == "effort":
            return u - self.gravity(self.model_q(q)) if cfg.exclude_gravity else u
        dt = cfg.period
        a = pin.aba(self.model, self.data, self.model_q(q), v, u)
        v_next = np.clip(v + dt * np.asarray(a, dtype=float), -self.v_lim, self.v_lim)
        if cfg.output_mode == "velocity":
            return v_next
        return np.clip(q + dt * v_next, self.q_lo, self.q_hi)

    def compute(self, now: float) -> Command:
        """The command for time ``now`` (same clock as ``received``). Never raises; the values
        are finite and inside :meth:`output_limits` (or None before the first joint state)."""
        t0 = time.perf_counter()
        try:
            command = self._compute(float(now))
        except Exception as exc:  # last line of defence: a bug must not stop the commands
            command = self._unsafe("internal_error", f"internal error: {type(exc).__name__}: {exc}", fresh=False, now=now)
        command = self._finalise(command)
        self.stats.compute.add(time.perf_counter() - t0)
        return command

    def _unsafe(self, key: str, reason: str, fresh: bool, now: float | None = None) -> Command:
        if self._last_was_policy and self._q is not None:
            self._q_hold = self._q.copy()  # hold where the policy left the robot
        self._last_was_policy = False
        self._fade_start = None
        self.stats.safe_reasons[key] += 1
        if self.follower is not None:
            self.follower.interrupt()  # the fade-in ramps from the safe command, no blend from the plan
        try:
            values = self._safe_values(fresh, now)
        except Exception:
            values = self._fallback()
        self.state = "stopped" if key == "stopped" else "waiting" if key == "no_joint_state" else "safe"
        self.last_reason = reason
        return Command(values, True, reason)

    def _fallback(self) -> np.ndarray | None:
        """Last-resort safe command without any model computation."""
        if self._q is None:
            return None
        if self.config.output_mode == "position":
            hold = self._q_hold if self._q_hold is not None else self._q
            return np.clip(hold, self.q_lo, self.q_hi)
        return np.zeros(self.nv)

    def _finalise(self, command: Command) -> Command:
        """Every published value finite and inside the output limits."""
        values = command.values
        if values is None:
            self.stats.safe_ticks += 1
            return command
        ok = values.shape == (self.nv,) and np.isfinite(values).all()
        if not ok:
            self.stats.safe_reasons["nonfinite_output"] += 1
            values = self._fallback()
            command = Command(values, True, "non-finite command replaced by the fallback")
            if values is None:
                self.stats.safe_ticks += 1
                return command
        try:
            lo, hi = self.output_limits()
            values = np.clip(values, lo, hi)
        except Exception:  # limits not computable: the model-free fallback (inside the limits)
            values = self._fallback()
            command = Command(values, True, "output limits not computable: fallback command")
        if command.safe:
            self.stats.safe_ticks += 1
        else:
            self.stats.policy_ticks += 1
        return Command(values, command.safe, command.reason)

    def _compute(self, now: float) -> Command:
        cfg = self.config
        self.stats.ticks += 1
        self._ticks_since_state += 1
        age = self.age(now)
        # stale: too old in time AND more than stale_periods steps computed without new data
        fresh = -self._stale_limit() <= age <= self._stale_limit() or self._ticks_since_state <= cfg.stale_periods
        if self._q is None:
            return self._unsafe("no_joint_state", "no joint state received yet", fresh=False)
        if not self._running:
            return self._unsafe("stopped", "stopped", fresh, now)
        if not fresh:
            return self._unsafe(
                "stale",
                f"stale joint_states: last accepted {age * 1e3:.1f} ms ago "
                f"(limit {cfg.stale_periods} periods = {cfg.stale_periods * cfg.period * 1e3:.1f} ms)",
                fresh=False,
                now=now,
            )
        if self._needs_target and self.target is None:
            return self._unsafe("no_target", "no target", fresh, now)
        values, key = self._policy_values()
        if values is None:
            return self._unsafe(key, "policy output is not finite", fresh, now)
        if self._fade_start is None:
            self._fade_start = now
        alpha = 1.0 if cfg.fade_in <= 0 else min(max((now - self._fade_start) / cfg.fade_in, 0.0), 1.0)
        reason = ""
        if alpha < 1.0:
            safe = self._safe_values(fresh=True)
            values = (1.0 - alpha) * safe + alpha * values
            reason = "fading in"
            self.state = "fading_in"
        else:
            self.state = "running"
        if cfg.output_mode == "effort":  # the torque the robot holds if the data stops now
            self._last_u = values + self.gravity(self.model_q(self._q)) if cfg.exclude_gravity else values
        self._last_was_policy = True
        self.last_reason = reason
        return Command(values, False, reason)

    # ------------------------------------------------------------------ reporting

    def diagnostics(self) -> dict[str, str]:
        """Flat key → value strings of the safety state and counters (for DiagnosticArray)."""
        s = self.stats
        inf = s.inference.summary()
        comp = s.compute.summary()
        out = {
            "state": self.state,
            "reason": self.last_reason,
            "output_mode": self.config.output_mode,
            "ticks": str(s.ticks),
            "policy_ticks": str(s.policy_ticks),
            "safe_ticks": str(s.safe_ticks),
            "clamped_ticks": str(s.clamped_ticks),
            "accepted_joint_states": str(s.accepted_states),
            "rejected_inputs": str(s.rejected_total),
            "targets_clamped": str(s.targets_clamped),
            "stamp_resets": str(s.stamp_resets),
            "inference_p50_us": f"{inf['p50'] * 1e6:.1f}",
            "inference_p99_us": f"{inf['p99'] * 1e6:.1f}",
            "inference_max_us": f"{inf['max'] * 1e6:.1f}",
            "compute_p50_us": f"{comp['p50'] * 1e6:.1f}",
            "compute_p99_us": f"{comp['p99'] * 1e6:.1f}",
            **self.target_diagnostics(),
        }
        for key, count in sorted(s.rejected.items()):
            out[f"rejected.{key}"] = str(count)
        for key, count in sorted(s.safe_reasons.items()):
            out[f"safe.{key}"] = str(count)
        if self.follower is not None:
            out.update(self.follower.diagnostics())
        return out
