"""The Pinocchio model of a robot, built from its description (:mod:`tocpl_ros.robot_config`).

:func:`load_robot` turns ``config/robots/<name>.yaml`` into a :class:`RobotModel`: the Pinocchio
model of the controlled joints (the others locked) with their limits, frame ids, gravity, mass
matrix, end-effector forward kinematics, and the conversions between joint positions and the
model's q.

This module and :mod:`tocpl_ros.robot_config` are the one place that loads URDFs: the tasks, the
simulators, the policy controller, the MPC and the demo take their model from here. It imports
numpy and Pinocchio only (no rclpy, no Crocoddyl, no torch).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pinocchio as pin

from tocpl_ros.config import ConfigError
from tocpl_ros.robot_config import RobotConfig, find_urdf, load_robot_config, resolve_urdf

__all__ = ["ENCODINGS", "JOINT_KINDS", "RobotModel", "load_robot"]


JOINT_KINDS = {
    "JointModelRX": "revolute", "JointModelRY": "revolute", "JointModelRZ": "revolute",
    "JointModelRevoluteUnaligned": "revolute",
    "JointModelRUBX": "continuous", "JointModelRUBY": "continuous", "JointModelRUBZ": "continuous",
    "JointModelRevoluteUnboundedUnaligned": "continuous",
    "JointModelPX": "prismatic", "JointModelPY": "prismatic", "JointModelPZ": "prismatic",
    "JointModelPrismaticUnaligned": "prismatic",
}
"""Pinocchio joint types the robots may control, by kind."""
ENCODINGS = {"revolute": "angle", "prismatic": "linear", "continuous": "cos_sin"}
"""How a joint's position enters the model's q, hence the policy's observation: one angle (rad),
one length (m), or (cos θ, sin θ) for a continuous joint (Pinocchio's q of it: no wrap at ±π)."""


class RobotModel:
    """The Pinocchio model of a robot's controlled joints, from its :class:`RobotConfig`.

    ``model`` has the controlled joints only (the other movable joints locked at
    ``locked_joints`` with ``pin.buildReducedModel``); ``joint_names`` are its joints in order
    (= ``config.controlled_joints``). Limits are the URDF's, replaced by the config's overrides.
    Positions are in the base frame.

    Two coordinates of a posture: the *positions*, one per joint (what /joint_states carries, what
    the YAML's postures and limits say; per-joint arrays have nv entries), and the model's ``q``
    (nq entries: a continuous joint has two, cos θ and sin θ). :meth:`q_from_positions` and
    :meth:`positions_from_q` convert; for a robot without continuous joints they are the same.

    ``urdf``, if given, replaces the config's URDF file (e.g. a calibrated copy of the same
    robot). Errors name the robot file and the key (:class:`ConfigError`); a URDF that cannot be
    found raises FileNotFoundError.
    """

    def __init__(self, config: RobotConfig, name: str = "", source: str = "", urdf: str | Path | None = None,
                 folder: Path | None = None):
        self.config = config
        self.name = name
        self.source = source
        """Where the description comes from (the robot YAML, or the URDF of :meth:`from_urdf`)."""

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(source, key, message)

        if urdf is None:  # the description's own URDF: a missing one is an error of the robot file
            try:
                self.urdf_file, packages = resolve_urdf(config.urdf, folder)
            except FileNotFoundError as exc:
                raise fail("urdf", str(exc)) from exc
        else:
            self.urdf_file, packages = find_urdf(urdf, folder), []
        self.package_dirs = [Path(d) if Path(d).is_absolute() or folder is None else folder / d
                             for d in config.package_dirs] + packages
        """Where ``package://`` URIs of the URDF resolve (mesh files)."""
        try:
            full = pin.buildModelFromUrdf(str(self.urdf_file))
        except (ValueError, RuntimeError) as exc:
            raise fail("urdf", f"cannot build a model from {self.urdf_file}: {exc}") from exc
        self.full_model = full
        """The model of every URDF joint (nothing locked)."""
        urdf_joints = [n for n, j in zip(full.names[1:], full.joints[1:]) if j.nq > 0]
        unknown = [n for n in config.controlled_joints if n not in urdf_joints]
        if unknown:
            raise fail("controlled_joints", f"joints {unknown} are not movable joints of {self.urdf_file.name} "
                                            f"(it has: {urdf_joints})")
        in_urdf_order = [n for n in urdf_joints if n in config.controlled_joints]
        if in_urdf_order != list(config.controlled_joints):
            raise fail("controlled_joints", f"must follow the URDF's joint order {in_urdf_order}, "
                                            f"got {config.controlled_joints}")
        unsupported = [f"{n} ({full.joints[full.getJointId(n)].shortname()})" for n in config.controlled_joints
                       if full.joints[full.getJointId(n)].shortname() not in JOINT_KINDS]
        if unsupported:
            raise fail("controlled_joints", f"{self.urdf_file.name}: joints {unsupported} are not revolute, "
                                            "continuous or prismatic (one degree of freedom each)")
        unknown = [n for n in config.locked_joints if n not in urdf_joints]
        if unknown:
            raise fail("locked_joints", f"joints {unknown} are not movable joints of {self.urdf_file.name}")
        self.locked_joints = {n: float(config.locked_joints.get(n, 0.0)) for n in urdf_joints
                              if n not in config.controlled_joints}
        """Locked joint name -> position (rad or m; the angle of a continuous joint)."""
        model = self._reduced(full) if self.locked_joints else full.copy()
        self.joint_names = list(model.names)[1:]
        self.joint_kinds = [JOINT_KINDS[j.shortname()] for j in model.joints[1:]]
        """Per controlled joint: 'revolute', 'continuous' or 'prismatic'."""
        self.joint_encodings = [ENCODINGS[k] for k in self.joint_kinds]
        """Per controlled joint, its entries in q and in the policy's observation: 'angle',
        'linear' or 'cos_sin' (two entries, continuous joints)."""
        self.q_index = np.array([j.idx_q for j in model.joints[1:]])
        """Per joint, its first entry in q (a continuous joint's cos θ; sin θ is the next)."""
        self.is_continuous = np.array([k == "continuous" for k in self.joint_kinds])
        """Per joint, whether it is continuous (two entries in q)."""
        self.nq, self.nv = model.nq, model.nv
        self._override_limits(model, fail)
        self.effort_limit = np.array(model.effortLimit, dtype=float)
        self.velocity_limit = np.array(model.velocityLimit, dtype=float)
        # per joint (nv): a continuous joint has none
        lower, upper = np.array(model.lowerPositionLimit), np.array(model.upperPositionLimit)
        self.lower_position_limit = np.where(self.is_continuous, -np.inf, lower[self.q_index])
        self.upper_position_limit = np.where(self.is_continuous, np.inf, upper[self.q_index])
        self.soft_lower_limit = self.lower_position_limit.copy()
        """Per joint, the lowest position sampled and IK postures may take (soft_limit_factor)."""
        self.soft_upper_limit = self.upper_position_limit.copy()
        """Per joint, the highest position sampled and IK postures may take."""
        if config.soft_limit_factor < 1:
            bounded = ~self.is_continuous
            lo, hi = self.lower_position_limit[bounded], self.upper_position_limit[bounded]
            middle, half = (lo + hi) / 2, config.soft_limit_factor * (hi - lo) / 2
            self.soft_lower_limit[bounded], self.soft_upper_limit[bounded] = middle - half, middle + half
        self.model = model
        self.end_effector_id = self._frame_in(model, config.end_effector_frame, "end_effector_frame")
        if config.end_effector_offset is not None:
            self.end_effector_id = self._add_offset_frame(model, config.end_effector_frame, config.end_effector_offset)
        self.data = model.createData()
        self.base_frame_id = self.frame_id(config.base_frame, "base_frame")
        base = model.frames[self.base_frame_id]
        if base.parentJoint != 0:
            raise fail("base_frame", f"frame '{config.base_frame}' moves with joint "
                                     f"'{model.names[base.parentJoint]}'; the base frame must be fixed to the world")
        # positions are expressed in the base frame; at the world origin (the usual root link)
        # there is nothing to transform, which keeps them the model's own numbers
        placement = base.placement
        at_origin = np.array_equal(placement.rotation, np.eye(3)) and not placement.translation.any()
        self._world_to_base = None if at_origin else placement.inverse()
        self.nominal_posture = np.array([config.nominal_posture[n] for n in self.joint_names], dtype=float)
        """Per joint (positions, nv)."""
        self.nominal_q = self.q_from_positions(self.nominal_posture)
        """The nominal posture as the model's q (nq)."""
        self.sampling_lower, self.sampling_upper = self.soft_lower_limit.copy(), self.soft_upper_limit.copy()
        for name, (lo, hi) in config.sampling_ranges.items():
            j = self.joint_names.index(name)
            self.sampling_lower[j], self.sampling_upper[j] = max(lo, self.sampling_lower[j]), min(hi, self.sampling_upper[j])
            if self.sampling_lower[j] >= self.sampling_upper[j]:
                raise fail(f"sampling_ranges.{name}", f"[{lo}, {hi}] is outside the joint's soft limits "
                                                      f"[{self.soft_lower_limit[j]:.4g}, {self.soft_upper_limit[j]:.4g}]")
        outside = [n for j, n in enumerate(self.joint_names)
                   if not self.lower_position_limit[j] <= self.nominal_posture[j] <= self.upper_position_limit[j]]
        if outside:
            raise fail("nominal_posture", f"joints {outside} are outside their position limits")
        self.target_limits = None if config.target_workspace is None else list(config.target_workspace.limits)
        """[x_min, x_max, y_min, y_max, z_min, z_max] of the target workspace (m), or None."""

    def _override_limits(self, model: pin.Model, fail) -> None:
        """The config's position/velocity/effort limits and armature into the model (Crocoddyl
        reads them too)."""
        c = self.config
        for name, (lo, hi) in c.position_limits.items():
            j = self.joint_names.index(name)
            if self.joint_kinds[j] == "continuous":
                raise fail(f"position_limits.{name}", "a continuous joint has no position limits")
            lower, upper = model.lowerPositionLimit.copy(), model.upperPositionLimit.copy()
            lower[self.q_index[j]], upper[self.q_index[j]] = lo, hi
            model.lowerPositionLimit, model.upperPositionLimit = lower, upper
        for key, attribute in (("velocity_limits", "velocityLimit"), ("effort_limits", "effortLimit"),
                               ("armature", "armature")):
            values = getattr(model, attribute).copy()
            for name, value in getattr(c, key).items():
                values[self.joint_names.index(name)] = value  # one-DoF joints: index in v = joint index
            setattr(model, attribute, values)

    def _frame_in(self, model: pin.Model, name: str, key: str) -> int:
        if not model.existFrame(name):
            raise ConfigError(self.source, key, f"frame '{name}' is not in {self.urdf_file.name}")
        return model.getFrameId(name)

    @staticmethod
    def _add_offset_frame(model: pin.Model, parent_name: str, offset: list[float]) -> int:
        parent_id = model.getFrameId(parent_name)
        parent = model.frames[parent_id]
        placement = parent.placement * pin.SE3(np.eye(3), np.array(offset, dtype=float))
        frame = pin.Frame(f"{parent_name}_offset", parent.parentJoint, parent_id, placement, pin.FrameType.OP_FRAME)
        return model.addFrame(frame)

    @classmethod
    def from_urdf(cls, urdf: str | Path, end_effector_frame: str | None = None) -> RobotModel:
        """A robot of every movable joint of a URDF, without a robot YAML (a task config or a
        policy file that names a URDF only): nominal posture 0, no target workspace, effort
        commands that do not exclude gravity, no known control rate; the base frame is the root
        link. FileNotFoundError if the URDF is missing, ConfigError naming 'urdf' if it is not
        usable."""
        path = find_urdf(urdf)
        try:
            full = pin.buildModelFromUrdf(str(path))
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(str(path), "urdf", f"cannot build a model from {path}: {exc}") from exc
        joints = [n for n, j in zip(full.names[1:], full.joints[1:]) if j.nq > 0]
        root = next(f.name for f in full.frames if f.type == pin.FrameType.BODY)

        def rest(name: str) -> float:  # 0, or the nearest limit to it (a Panda's joint 4 lives in [−3.07, −0.07])
            joint = full.joints[full.getJointId(name)]
            if JOINT_KINDS.get(joint.shortname()) == "continuous":
                return 0.0
            i = joint.idx_q
            return float(np.clip(0.0, full.lowerPositionLimit[i], full.upperPositionLimit[i]))

        config = RobotConfig(
            urdf=str(path), controlled_joints=joints, end_effector_frame=end_effector_frame or root,
            base_frame=root, nominal_posture={n: rest(n) for n in joints}, target_workspace=None,
            command_interface="effort", control_rate=None, compensates_gravity=False,
        )
        return cls(config, name=path.stem, source=str(path))

    def _reduced(self, full: pin.Model) -> pin.Model:
        q_ref = pin.neutral(full)
        for name, value in self.locked_joints.items():
            joint = full.joints[full.getJointId(name)]
            if JOINT_KINDS.get(joint.shortname()) == "continuous":
                q_ref[joint.idx_q:joint.idx_q + 2] = math.cos(value), math.sin(value)
            else:
                q_ref[joint.idx_q:joint.idx_q + joint.nq] = value
        ids = [full.getJointId(name) for name in self.locked_joints]
        return pin.buildReducedModel(full, ids, q_ref)

    # -- positions (one per joint) <-> the model's q ---------------------------------------
    def q_from_positions(self, positions: np.ndarray) -> np.ndarray:
        """The model's q [..., nq] of joint positions [..., nv] (joint_names order; a continuous
        joint's angle becomes cos θ, sin θ)."""
        positions = np.asarray(positions, dtype=float)
        if self.nq == self.nv:
            return positions.copy()
        q = np.empty(positions.shape[:-1] + (self.nq,))
        for j, (i, continuous) in enumerate(zip(self.q_index, self.is_continuous)):
            if continuous:
                q[..., i], q[..., i + 1] = np.cos(positions[..., j]), np.sin(positions[..., j])
            else:
                q[..., i] = positions[..., j]
        return q

    def positions_from_q(self, q: np.ndarray) -> np.ndarray:
        """Joint positions [..., nv] of the model's q [..., nq] (a continuous joint's angle in
        (−π, π])."""
        q = np.asarray(q, dtype=float)
        if self.nq == self.nv:
            return q.copy()
        positions = np.empty(q.shape[:-1] + (self.nv,))
        for j, (i, continuous) in enumerate(zip(self.q_index, self.is_continuous)):
            positions[..., j] = np.arctan2(q[..., i + 1], q[..., i]) if continuous else q[..., i]
        return positions

    def state_difference(self, x: np.ndarray, x_ref: np.ndarray) -> np.ndarray:
        """x ⊖ x_ref [2 nv] of task states (the model's q, v) [nq + nv]: Crocoddyl's
        StateMultibody.diff, the tangent-space difference its feedback gains K multiply (a
        continuous joint's angle difference the short way round)."""
        x, x_ref = np.asarray(x, dtype=float), np.asarray(x_ref, dtype=float)
        if self.nq == self.nv:
            return x - x_ref
        dq = pin.difference(self.model, x_ref[: self.nq], x[: self.nq])
        return np.concatenate([np.asarray(dq, dtype=float), x[self.nq:] - x_ref[self.nq:]])

    def positions_state(self, x: np.ndarray) -> np.ndarray:
        """Task states (the model's q, v) [..., nq + nv] as (joint positions, v) [..., 2 nv]
        (a continuous joint's angle in (−π, π])."""
        x = np.asarray(x, dtype=float)
        if self.nq == self.nv:
            return x
        return np.concatenate([self.positions_from_q(x[..., : self.nq]), x[..., self.nq:]], axis=-1)

    def frame_id(self, name: str, key: str = "frame") -> int:
        """Id of a frame of the model; ConfigError naming ``key`` if there is none of that name."""
        if not self.model.existFrame(name):
            raise ConfigError(self.source, key, f"frame '{name}' is not in {self.urdf_file.name}")
        return self.model.getFrameId(name)

    # -- properties of the description ---------------------------------------------------
    @property
    def end_effector_frame(self) -> str:
        """The controlled point's frame: the config's, or '<it>_offset' with an end_effector_offset."""
        return self.model.frames[self.end_effector_id].name

    @property
    def base_frame(self) -> str:
        return self.config.base_frame

    @property
    def command_interface(self) -> str:
        return self.config.command_interface

    @property
    def control_rate(self) -> float | None:
        """Hz; None for a robot built from a URDF alone."""
        return self.config.control_rate

    @property
    def compensates_gravity(self) -> bool:
        return self.config.compensates_gravity

    # -- kinematics and dynamics (one configuration, joint order of joint_names) ----------
    def frame_placement(self, q: np.ndarray, frame_id: int | None = None) -> pin.SE3:
        """Placement of a frame (default: the end effector) in the base frame at q."""
        pin.framesForwardKinematics(self.model, self.data, q)
        placement = self.data.oMf[self.end_effector_id if frame_id is None else frame_id]
        return placement.copy() if self._world_to_base is None else self._world_to_base * placement

    def frame_position(self, q: np.ndarray, frame_id: int | None = None) -> np.ndarray:
        """Position [3] of a frame (default: the end effector) in the base frame at q."""
        return self.frame_placement(q, frame_id).translation.copy()

    def world_position(self, p: np.ndarray) -> np.ndarray:
        """A position [3] in the base frame as one in the URDF's world frame (Pinocchio's oMf)."""
        return np.asarray(p, dtype=float) if self._world_to_base is None else self._world_to_base.actInv(np.asarray(p, dtype=float))

    def frame_rotation(self, q: np.ndarray, frame_id: int | None = None) -> np.ndarray:
        """Rotation matrix [3, 3] of a frame (default: the end effector) in the base frame at q."""
        return self.frame_placement(q, frame_id).rotation.copy()

    def world_rotation(self, rotation: np.ndarray) -> np.ndarray:
        """A rotation [3, 3] in the base frame as one in the URDF's world frame (Pinocchio's oMf)."""
        rotation = np.asarray(rotation, dtype=float)
        return rotation if self._world_to_base is None else self._world_to_base.rotation.T @ rotation

    def end_effector_position(self, q: np.ndarray) -> np.ndarray:
        """Position [3] of the end-effector frame in the base frame at q."""
        return self.frame_position(q)

    def gravity(self, q: np.ndarray) -> np.ndarray:
        """Gravity torques g(q) [nv]."""
        return np.asarray(pin.computeGeneralizedGravity(self.model, self.data, q), dtype=float).copy()

    def mass_matrix(self, q: np.ndarray) -> np.ndarray:
        """Joint-space mass matrix M(q) [nv, nv] (symmetric)."""
        upper = pin.crba(self.model, self.data, q)
        return np.triu(upper) + np.triu(upper, 1).T

    def __repr__(self) -> str:
        locked = f", locked {list(self.locked_joints)}" if self.locked_joints else ""
        return f"RobotModel({self.name!r}: {self.urdf_file.name}, joints {self.joint_names}{locked})"


def load_robot(name_or_path: str | Path, urdf: str | Path | None = None) -> RobotModel:
    """The robot of config/robots/<name>.yaml (or of a robot YAML path); ``urdf`` replaces its
    URDF file. ConfigError naming the file and the key if the description is wrong;
    FileNotFoundError if the URDF is missing."""
    name, config, path = load_robot_config(name_or_path)
    return RobotModel(config, name=name, source=str(path), urdf=urdf, folder=path.parent)

