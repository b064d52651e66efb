"""The robot description: ``config/robots/<name>.yaml`` (:class:`RobotConfig`) and the files it names.

A robot YAML says which URDF, which of its joints the policy controls (the others are locked),
the end-effector and base frames, the nominal posture, the box the targets live in, and how the
robot is driven (command interface, control rate, whether its effort interface adds gravity
compensation itself). This module reads and validates it and finds its URDF; the Pinocchio model
built from it is :mod:`tocpl_ros.robot`'s. It imports no Pinocchio, numpy, rclpy or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tocpl_ros.config import ConfigError, FieldError, load_dataclass, read_yaml
from tocpl_ros.interfaces import OUTPUT_MODES
from tocpl_ros.resources import config_path, urdf_path

__all__ = [
    "RobotConfig",
    "WorkspaceBox",
    "available_robots",
    "example_robot_urdf",
    "find_robot",
    "find_urdf",
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
