"""The robot a policy file runs on, and the checks that the file fits it (ROS-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tocpl_ros.config import ConfigError
from tocpl_ros.control.config import OBS_BLOCKS
from tocpl_ros.policy_file import PolicyFileError, PolicyMetadata
from tocpl_ros.robot import RobotModel, load_robot
from tocpl_ros.robot_config import find_robot, robot_config_file


def policy_robot(metadata: PolicyMetadata, robot: str | Path | None = None, urdf: str | Path | None = None,
                 source: str = "") -> RobotModel:
    """The robot a policy runs on: ``robot`` (a robot name or YAML path) if given, else the one its
    task config names (``tocpl.task_config.robot``), else, for files written before the robot
    YAMLs, the shipped robot YAML of its URDF file and joints, else its URDF alone (every movable
    joint). ``urdf`` replaces the robot's URDF file. PolicyFileError if none can be loaded."""
    where = f"{source}: " if source else ""
    task_config = metadata.task_config if isinstance(metadata.task_config, dict) else {}
    # the task config's robot first: on the machine that trained it, it may be a robot YAML's path
    # (tocpl.robot is that file's name, found in config/robots/ on another machine)
    task_robot = task_config.get("robot")
    trained_on = task_robot if task_robot and _robot_file_exists(task_robot) else metadata.robot or task_robot
    if robot and metadata.robot and Path(str(robot)).stem != metadata.robot:
        # a policy knows one robot: another one's joints, masses and limits are not what it was trained on
        raise PolicyFileError(f"{where}the policy was trained for robot '{metadata.robot}' (tocpl.robot) but the robot "
                              f"given is '{robot}': use a policy trained for it, or leave the robot unset (the "
                              "policy's); a calibrated copy of the same robot goes in urdf_path")
    named = robot if robot else trained_on
    try:
        if robot or (named and _robot_file_exists(named)):
            return load_robot(named, urdf=urdf)
        # no robot given, or the task's robot YAML is not on this machine (a path of the machine
        # that trained it, or a file written before the robot YAMLs): by its URDF and joints
        shipped = find_robot(metadata.urdf, metadata.joint_names) if metadata.urdf else None
        if shipped is not None:
            return load_robot(shipped, urdf=urdf)
        name = str(urdf) if urdf else metadata.urdf
        if not name:
            raise PolicyFileError(f"{where}policy for task '{metadata.task}' names no robot and no URDF "
                                  "(tocpl.urdf is empty); give one explicitly")
        return RobotModel.from_urdf(name, task_config.get("frame"))
    except (ConfigError, FileNotFoundError) as exc:
        raise PolicyFileError(f"{where}cannot load the robot: {exc}") from exc


def _robot_file_exists(name_or_path: str | Path) -> bool:
    try:
        robot_config_file(name_or_path)
    except ConfigError:
        return False
    return True


def check_policy_model(md: PolicyMetadata, source: str, robot: RobotModel) -> None:
    """Raise PolicyFileError unless the policy file (metadata ``md`` of file ``source``) is consistent
    with the robot: joint names and order, torque bounds within the effort limits, observation blocks."""
    model, urdf = robot.model, robot.urdf_file.name
    problem = name_difference(
        md.joint_names, list(robot.joint_names), "policy (tocpl.joint_names)", f"robot {robot.name} ({urdf})"
    )
    if problem:
        raise PolicyFileError(f"{source}: joint names differ from the robot's: {problem}")
    if md.nu != model.nv:
        raise PolicyFileError(f"{source}: policy outputs {md.nu} torques but {urdf} has {model.nv} joints")
    effort = np.asarray(model.effortLimit, dtype=float)
    tol = 1e-6 * np.maximum(1.0, effort)
    over = [
        f"{n}: policy [{lo:g}, {hi:g}] vs URDF effort limit {e:g}"
        for n, lo, hi, e, t in zip(md.joint_names, md.u_min, md.u_max, effort, tol)
        if hi > e + t or lo < -e - t
    ]
    if over:
        raise PolicyFileError(
            f"{source}: torque bounds (tocpl.u_min/u_max) exceed the URDF effort limits of {urdf}: " + "; ".join(over)
        )
    check_policy_description(md, source, robot)
    # a pose target: position and the rotation's first two columns (tocpl_ros.pose)
    sizes = {"q": model.nq, "v": model.nv, "target": 9 if md.target_kind == "pose" else 3}
    for block, size in md.obs_layout:
        if block not in sizes:
            raise PolicyFileError(
                f"{source}: observation block '{block}' (tocpl.obs_layout) is not supported (known: {', '.join(OBS_BLOCKS)})"
            )
        if size != sizes[block]:
            raise PolicyFileError(f"{source}: observation block '{block}' has size {size}, expected {sizes[block]}")


def check_policy_description(md: PolicyMetadata, source: str, robot: RobotModel) -> None:
    """Raise PolicyFileError unless the robot keys of the policy file (tocpl.robot, locked_joints,
    base_frame, end_effector_frame, joint_encodings) fit the robot and this node.
    A key an older file did not carry (``md.defaults_used``) is not compared."""
    known = [k for k in ("robot", "locked_joints", "base_frame", "end_effector_frame") if k not in md.defaults_used]
    # a robot of a robot YAML has its name; one built from a URDF alone (older files) has none to compare
    robot_name = robot.name if Path(robot.source).suffix in (".yaml", ".yml") else ""
    if "robot" in known and md.robot and robot_name and md.robot != robot_name:
        raise PolicyFileError(f"{source}: the policy was trained for robot '{md.robot}' (tocpl.robot), "
                              f"not '{robot.name}' ({robot.source})")
    locked = getattr(robot, "locked_joints", {}) or {}
    if "locked_joints" in known:
        differ = sorted(n for n in set(md.locked_joints) | set(locked)
                        if n not in md.locked_joints or n not in locked
                        or abs(md.locked_joints[n] - locked[n]) > 1e-9 * max(1.0, abs(locked[n])))
        if differ:
            raise PolicyFileError(
                f"{source}: locked joints differ from robot {robot.name}'s on {differ}: policy (tocpl.locked_joints) "
                f"{md.locked_joints}, robot {dict(locked)}: the policy was trained on another arm configuration"
            )
    base = robot.config.base_frame
    if "base_frame" in known and md.base_frame and md.base_frame != base:
        raise PolicyFileError(f"{source}: the policy's targets are in frame '{md.base_frame}' (tocpl.base_frame), "
                              f"robot {robot.name}'s base frame is '{base}'")
    if "end_effector_frame" in known and md.end_effector_frame and not robot.model.existFrame(md.end_effector_frame):
        raise PolicyFileError(f"{source}: the policy's end-effector frame '{md.end_effector_frame}' "
                              f"(tocpl.end_effector_frame) is not in {robot.urdf_file.name}")
    # the observation is built with the robot's encoding: a file that says otherwise was trained on another one
    if "joint_encodings" not in md.defaults_used and list(md.joint_encodings) != list(robot.joint_encodings):
        differ = [f"{n}: policy '{a}', robot '{b}'" for n, a, b in
                  zip(robot.joint_names, md.joint_encodings, robot.joint_encodings) if a != b]
        raise PolicyFileError(f"{source}: joint encodings (tocpl.joint_encodings) differ from robot {robot.name}'s: "
                              + ("; ".join(differ) or f"{list(md.joint_encodings)} vs {list(robot.joint_encodings)}"))


def name_difference(got: Sequence[str], want: Sequence[str], got_label: str, want_label: str) -> str:
    """'' if equal, else a message saying exactly how two joint name lists differ."""
    got, want = list(got), list(want)
    if got == want:
        return ""
    parts = []
    if len(got) != len(want):
        parts.append(f"{got_label} has {len(got)} joints, {want_label} has {len(want)}")
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if missing:
        parts.append(f"missing from {got_label}: {missing}")
    if extra:
        parts.append(f"not in {want_label}: {extra}")
    if not missing and not extra:
        where = [f"#{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(got, want)) if a != b]
        parts.append(f"same joints in a different order ({'; '.join(where)})")
    return "; ".join(parts) + f" [{got_label}: {got}; {want_label}: {want}]"
