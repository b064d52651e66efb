"""The robot description: ``config/robots/<name>.yaml`` and the Pinocchio model built from it.

A robot YAML (:class:`RobotConfig`) says which URDF, which of its joints the policy controls
(the others are locked), the end-effector and base frames, the nominal posture, the box the
targets live in, and how the robot is driven (command interface, control rate, whether its
effort interface adds gravity compensation itself). :func:`load_robot` turns it into a
:class:`RobotModel`: the Pinocchio model of the controlled joints with their limits, frame ids,
gravity, mass matrix and end-effector forward kinematics.

This module is the one place that loads URDFs: the tasks, the simulators, the policy
controller, the MPC and the demo take their model from here. It imports numpy, yaml and
Pinocchio only (no rclpy, no Crocoddyl, no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pinocchio as pin

from tocpl_ros.config import ConfigError, FieldError, load_dataclass, read_yaml
from tocpl_ros.interfaces import OUTPUT_MODES
from tocpl_ros.resources import config_path, urdf_path

__all__ = [
    "RobotConfig",
    "RobotModel",
    "WorkspaceBox",
    "available_robots",
    "find_robot",
    "example_robot_urdf",
    "find_urdf",
    "load_robot",
    "load_robot_config",
    "resolve_urdf",
    "robot_config_file",
]


@dataclass
class WorkspaceBox:
    """An axis-aligned box in the base frame: [min, max] per axis (m)."""

    x: list[float]
    """[x_min, x_max] (m)."""
    y: list[float]
    """[y_min, y_max] (m)."""
    z: list[float]
    """[z_min, z_max] (m)."""

    def __post_init__(self) -> None:
        for axis in ("x", "y", "z"):
            bounds = getattr(self, axis)
            if len(bounds) != 2:
                raise FieldError(axis, f"needs 2 values [{axis}_min, {axis}_max], got {len(bounds)}")
            if bounds[0] > bounds[1]:
                raise FieldError(axis, f"{axis}_min {bounds[0]} > {axis}_max {bounds[1]}")

    @property
    def limits(self) -> list[float]:
        """[x_min, x_max, y_min, y_max, z_min, z_max], the layout of the nodes' ``target_limits``."""
        return [*self.x, *self.y, *self.z]


@dataclass
class RobotConfig:
    """One robot (``config/robots/<name>.yaml``)."""

    urdf: str | dict[str, str]
    """Robot model: a file name in urdf/ (with or without .urdf), a path (absolute, or
    relative to the robot YAML's folder), or ``{example_robot_data: NAME}``: the URDF of a model
    the example-robot-data package ships (e.g. panda, ur10, kinova, iiwa)."""
    controlled_joints: list[str]
    """The joints the policy drives, in the URDF's order: the state is (q, v) of these, the
    control one torque each. Every other movable joint is locked at ``locked_joints``.
    Revolute, prismatic and continuous joints (a continuous one has two q entries, cos and sin)."""
    end_effector_frame: str
    """Frame whose position the reach tasks control and the nodes report (the tool)."""
    base_frame: str
    """Frame targets are expressed in (a frame fixed to the world, e.g. the robot's base link)."""
    nominal_posture: dict[str, float]
    """Rest posture by joint name (rad or m), one value per controlled joint: where the
    simulator starts, around which the tasks sample."""
    target_workspace: WorkspaceBox | None
    """Box the end-effector targets must stay in (base frame); a target outside is clamped or
    rejected by the nodes. null: the robot takes no position targets."""
    command_interface: str
    """Default command interface: 'effort' (N·m), 'velocity' (rad/s) or 'position' (rad)."""
    control_rate: float | None
    """Default control rate (Hz): one command every 1/control_rate s. null: none known (then
    whoever drives the robot must be given a rate)."""
    compensates_gravity: bool
    """The robot's effort interface adds gravity compensation g(q) itself, so effort commands
    must exclude it (the policy node's exclude_gravity default)."""
    locked_joints: dict[str, float] = field(default_factory=dict)
    """Positions (rad or m) at which the movable joints that are not controlled are locked;
    one not listed is locked at its neutral position (0; angle 0 for a continuous joint)."""
    package_dirs: list[str] = field(default_factory=list)
    """Directories in which ``package://`` mesh URIs are resolved (absolute, or relative to the
    robot YAML's folder), for the MuJoCo simulator and viewers; an example-robot-data model adds
    its own. The dynamics (tasks, OCP, Pinocchio simulator) never read meshes."""
    end_effector_offset: list[float] | None = None
    """Fixed translation [x, y, z] (m) of the controlled point in ``end_effector_frame`` (e.g. a
    tool tip): the model gets a frame '<end_effector_frame>_offset' there, which the tasks use.
    null: the frame's origin."""
    sampling_ranges: dict[str, list[float]] = field(default_factory=dict)
    """Per joint, absolute bounds [lo, hi] (rad or m) of the sampled postures (initial postures
    and target postures of the tasks, which sample nominal ± the task's half-width): the sampled
    interval is the intersection of the two, within the (soft) position limits. Joints not
    listed: the soft position limits only."""
    position_limits: dict[str, list[float]] = field(default_factory=dict)
    """Per joint, [lower, upper] position limits (rad or m) replacing the URDF's."""
    velocity_limits: dict[str, float] = field(default_factory=dict)
    """Per joint, velocity limit (rad/s or m/s) replacing the URDF's."""
    effort_limits: dict[str, float] = field(default_factory=dict)
    """Per joint, effort limit (N·m or N) replacing the URDF's: the OCP's torque box, the
    simulator's saturation."""
    armature: dict[str, float] = field(default_factory=dict)
    """Per joint, the rotor inertia reflected through the gearbox (kg·m², or kg for a prismatic
    joint) added to the joint's inertia (Pinocchio's model.armature: the tasks, the OCP and the
    Pinocchio simulator see it). URDFs leave it out; a light distal link without it needs tiny
    time steps (docs/robots.md, the Kinova)."""
    soft_limit_factor: float = 1.0
    """Share of each position range (about its middle) that sampled and inverse-kinematics
    postures may use, in (0, 1]: 0.9 keeps them 5 % of the range away from either limit."""

    def __post_init__(self) -> None:
        if isinstance(self.urdf, dict):
            if set(self.urdf) != {"example_robot_data"} or not self.urdf["example_robot_data"]:
                raise FieldError("urdf", f"expected a path, a file in urdf/ or {{example_robot_data: NAME}}, "
                                         f"got {self.urdf}")
        elif not self.urdf:
            raise FieldError("urdf", "empty")
        if not self.controlled_joints:
            raise FieldError("controlled_joints", "needs at least one joint")
        duplicates = sorted({n for n in self.controlled_joints if self.controlled_joints.count(n) > 1})
        if duplicates:
            raise FieldError("controlled_joints", f"duplicate joints {duplicates}")
        missing = [n for n in self.controlled_joints if n not in self.nominal_posture]
        extra = [n for n in self.nominal_posture if n not in self.controlled_joints]
        if missing or extra:
            raise FieldError(
                "nominal_posture",
                f"needs one value per controlled joint (missing: {missing}, not controlled: {extra})",
            )
        both = [n for n in self.locked_joints if n in self.controlled_joints]
        if both:
            raise FieldError("locked_joints", f"joints {both} are controlled, they cannot be locked")
        for key in ("sampling_ranges", "position_limits", "velocity_limits", "effort_limits", "armature"):
            unknown = [n for n in getattr(self, key) if n not in self.controlled_joints]
            if unknown:
                raise FieldError(key, f"joints {unknown} are not controlled joints ({self.controlled_joints})")
        for key in ("sampling_ranges", "position_limits"):
            for name, bounds in getattr(self, key).items():
                if len(bounds) != 2 or bounds[0] >= bounds[1]:
                    raise FieldError(f"{key}.{name}", f"needs [lower, upper] with lower < upper, got {bounds}")
        for key in ("velocity_limits", "effort_limits"):
            for name, value in getattr(self, key).items():
                if value <= 0:
                    raise FieldError(f"{key}.{name}", f"must be > 0, got {value}")
        for name, value in self.armature.items():
            if value < 0:
                raise FieldError(f"armature.{name}", f"must be >= 0, got {value}")
        if self.end_effector_offset is not None and len(self.end_effector_offset) != 3:
            raise FieldError("end_effector_offset", f"needs 3 values [x, y, z], got {len(self.end_effector_offset)}")
        if not 0 < self.soft_limit_factor <= 1:
            raise FieldError("soft_limit_factor", f"must be in (0, 1], got {self.soft_limit_factor}")
        if self.command_interface not in OUTPUT_MODES:
            raise FieldError(
                "command_interface",
                f"unknown command interface '{self.command_interface}' (known: {', '.join(OUTPUT_MODES)})",
            )
        if self.control_rate is not None and not (math.isfinite(self.control_rate) and self.control_rate > 0):
            raise FieldError("control_rate", f"must be a finite value > 0, got {self.control_rate}")


# ----------------------------------------------------------------------------- files


def available_robots() -> list[str]:
    """Names of the robot YAMLs shipped in config/robots/."""
    return sorted(p.stem for p in config_path("robots").glob("*.yaml"))


def robot_config_file(name_or_path: str | Path) -> Path:
    """config/robots/<name>.yaml, or the YAML path given (ConfigError if neither exists)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(str(path), "", "robot file not found")
        return path
    try:
        path = config_path("robots") / f"{name_or_path}.yaml"
    except FileNotFoundError as exc:
        raise ConfigError(str(name_or_path), "robot", f"no robot descriptions found ({exc})") from exc
    if not path.is_file():
        raise ConfigError(
            str(path), "robot", f"unknown robot '{name_or_path}' (available: {', '.join(available_robots())})"
        )
    return path


def load_robot_config(name_or_path: str | Path) -> tuple[str, RobotConfig, Path]:
    """(robot name, validated config, its file) of config/robots/<name>.yaml or a YAML path."""
    path = robot_config_file(name_or_path)
    return path.stem, load_dataclass(RobotConfig, read_yaml(path), source=str(path)), path


def find_urdf(name: str | Path, folder: Path | None = None) -> Path:
    """A URDF file: ``name`` as a path, else relative to ``folder``, else in the package's urdf/
    (with or without .urdf). Raises FileNotFoundError naming where it looked."""
    path = Path(name)
    if path.is_file():
        return path
    if folder is not None and not path.is_absolute() and (folder / path).is_file():
        return folder / path
    try:
        return urdf_path(str(name))
    except FileNotFoundError as exc:
        where = f" or {folder / path}" if folder is not None and not path.is_absolute() else ""
        raise FileNotFoundError(f"URDF '{name}' not found (looked at {path}{where}; {exc})") from exc


def example_robot_urdf(name: str) -> tuple[Path, Path]:
    """(URDF file, package directory of its meshes) of a model example-robot-data ships, read from
    its loader without building it (building loads every mesh). FileNotFoundError names the
    known models."""
    try:
        from example_robot_data.robots_loader import ROBOTS, getModelPath
    except ImportError as exc:
        raise FileNotFoundError(f"example-robot-data is not installed ({exc})") from exc
    if name not in ROBOTS:
        raise FileNotFoundError(f"example-robot-data has no model '{name}' (known: {', '.join(sorted(ROBOTS))})")
    loader = ROBOTS[name]
    subpath = Path(loader.path) / loader.urdf_subpath / loader.urdf_filename
    root = Path(getModelPath(str(subpath)))
    # its URDFs say package://example-robot-data/robots/...: the package root is two levels up
    return (root / subpath).resolve(), root.parent.parent.resolve()


def resolve_urdf(urdf: str | dict[str, str], folder: Path | None = None) -> tuple[Path, list[Path]]:
    """(URDF file, package directories it brings) of a RobotConfig's ``urdf`` value."""
    if isinstance(urdf, dict):
        path, package = example_robot_urdf(urdf["example_robot_data"])
        return path, [package]
    return find_urdf(urdf, folder), []


def find_robot(urdf: str, joint_names: list[str]) -> str | None:
    """The name of the shipped robot YAML whose URDF file is named ``urdf`` and whose controlled
    joints are ``joint_names``, or None: how a policy file written before the robot YAMLs finds
    its robot (its metadata names the URDF file and the joints)."""
    try:
        names = available_robots()
    except FileNotFoundError:
        return None
    for name in names:
        try:
            _, config, path = load_robot_config(name)
            urdf_file, _ = resolve_urdf(config.urdf, path.parent)
        except (ConfigError, FileNotFoundError):
            continue
        if urdf_file.name == Path(urdf).name and config.controlled_joints == list(joint_names):
            return name
    return None


# ----------------------------------------------------------------------------- the model


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

