"""The robot description (config/robots/*.yaml, tocpl_ros.robot): validation naming file and key,
the reduced model of the controlled joints, and the robot each consumer gets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import example_robot_data
import numpy as np
import pinocchio as pin
import pytest
import yaml

from tocpl_ros.config import ConfigError, FieldError, field_docs, load_dataclass, read_yaml, to_dict
from tocpl_ros.control.config import ControllerConfig
from tocpl_ros.control.policy_check import policy_robot
from tocpl_ros.policy_file import PolicyMetadata
from tocpl_ros.robot import RobotModel, load_robot
from tocpl_ros.robot_config import RobotConfig, WorkspaceBox, available_robots, find_robot
from tocpl_ros.tasks import load_task, make_task
from tocpl_ros.tasks.config import CostConfig, TaskConfig

ROOT = Path(__file__).resolve().parents[1]
UR5_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]
Q_NOMINAL = [0.0, -1.2, 1.6, -0.4, 1.57, 0.0]
PANDA_ARM = [f"panda_joint{i}" for i in range(1, 8)]
PANDA_FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
PANDA_REST = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]  # example-robot-data's SRDF reference posture


def ur5_data() -> dict:
    return read_yaml(ROOT / "config" / "robots" / "ur5.yaml")


def write_robot(tmp_path: Path, data: dict, name: str = "robot.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def panda_data(**changes) -> dict:
    data = dict(
        urdf=example_robot_data.load("panda").urdf,
        controlled_joints=PANDA_ARM,
        end_effector_frame="panda_hand_tcp",
        base_frame="panda_link0",
        nominal_posture=dict(zip(PANDA_ARM, PANDA_REST)),
        target_workspace=None,
        command_interface="effort",
        control_rate=1000.0,
        compensates_gravity=True,
        locked_joints={"panda_finger_joint1": 0.03},
    )
    data.update(changes)
    return data


# ------------------------------------------------------------------------------ the UR5


def test_ur5_description():
    robot = load_robot("ur5")
    assert robot.name == "ur5" and robot.urdf_file == ROOT / "urdf" / "ur5.urdf"
    assert robot.joint_names == UR5_JOINTS and robot.nq == robot.nv == 6 and not robot.locked_joints
    assert (robot.end_effector_frame, robot.base_frame) == ("tool0", "base_link")
    np.testing.assert_array_equal(robot.nominal_posture, Q_NOMINAL)
    assert robot.target_limits == [0.25, 0.85, -0.30, 0.50, -0.15, 0.80]
    assert (robot.command_interface, robot.control_rate, robot.compensates_gravity) == ("effort", 500.0, False)
    np.testing.assert_array_equal(robot.effort_limit, [150, 150, 150, 28, 28, 28])
    # nothing locked: the model is the URDF's own
    full = pin.buildModelFromUrdf(str(ROOT / "urdf" / "ur5.urdf"))
    data = full.createData()
    q = np.array(Q_NOMINAL) + 0.1
    pin.framesForwardKinematics(full, data, q)
    np.testing.assert_array_equal(robot.end_effector_position(q), data.oMf[full.getFrameId("tool0")].translation)
    np.testing.assert_array_equal(robot.gravity(q), pin.computeGeneralizedGravity(full, data, q))
    mass = robot.mass_matrix(q)
    np.testing.assert_array_equal(mass, mass.T)
    np.testing.assert_allclose(mass @ np.ones(6), pin.rnea(full, data, q, np.zeros(6), np.ones(6)) - robot.gravity(q), atol=1e-12)


def test_every_field_is_documented_and_every_shipped_robot_loads():
    docs = field_docs(RobotConfig)
    assert all(docs.get(name) for name in RobotConfig.__dataclass_fields__)
    assert all(field_docs(WorkspaceBox).get(axis) for axis in "xyz")
    assert {"ur5", "pendulum", "double_pendulum"} <= set(available_robots())
    for name in available_robots():
        robot = load_robot(name)
        assert robot.joint_names == robot.config.controlled_joints


def test_the_tasks_take_joints_posture_and_frame_from_the_robot():
    for name in ("ur5_reach", "ur5_reach_fixed_horizon"):
        task = load_task(name)
        assert task.config.robot == "ur5" and task.config.urdf is None and task.config.sampling.q_nominal is None
        assert task.joint_names == UR5_JOINTS and task.frame == "tool0"
        np.testing.assert_array_equal(task.q_nominal, Q_NOMINAL)
    for name in ("pendulum", "double_pendulum"):
        task = load_task(name)
        assert task.config.robot == name and task.frame == "tip"


def test_a_task_config_naming_a_urdf_still_loads():
    """Task configs written before config/robots/ (checkpoints, policy files) name urdf, frame and
    q_nominal: the same task."""
    task = load_task("ur5_reach")
    data = to_dict(task.config)
    data.update(robot=None, urdf="ur5.urdf", frame="tool0")
    data["sampling"]["q_nominal"] = Q_NOMINAL
    old = make_task("ur5_reach", load_dataclass(TaskConfig, data, source="old config"))
    assert old.joint_names == task.joint_names
    a, b = old.sample(50, seed=4), task.sample(50, seed=4)
    np.testing.assert_array_equal(a.x0, b.x0)
    np.testing.assert_array_equal(a.target, b.target)


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (lambda d: d.update(end_efector_frame="tool0"), "end_efector_frame", ["unknown key"]),
        (lambda d: d.pop("base_frame"), "base_frame", ["missing required key"]),
        (lambda d: d["nominal_posture"].pop("elbow_joint"), "nominal_posture", ["elbow_joint"]),
        (lambda d: d["nominal_posture"].update(gripper=0.0), "nominal_posture", ["gripper"]),
        (lambda d: d["nominal_posture"].update(elbow_joint="bent"), "nominal_posture.elbow_joint", ["expected float"]),
        (lambda d: d.update(controlled_joints=UR5_JOINTS + ["gripper_joint"]), "nominal_posture", ["gripper_joint"]),
        (lambda d: d.update(controlled_joints=UR5_JOINTS[:5] + ["wrist_1_joint"]), "controlled_joints", ["duplicate"]),
        (lambda d: d["target_workspace"].update(x=[0.9, 0.2]), "target_workspace.x", ["x_min 0.9 > x_max 0.2"]),
        (lambda d: d["target_workspace"].update(z=[0.1]), "target_workspace.z", ["2 values"]),
        (lambda d: d.update(command_interface="torque"), "command_interface", ["effort", "velocity", "position"]),
        (lambda d: d.update(control_rate=0.0), "control_rate", ["> 0"]),
        (lambda d: d.update(compensates_gravity="yes"), "compensates_gravity", ["expected bool"]),
        (lambda d: d.update(locked_joints={"elbow_joint": 0.0}), "locked_joints", ["controlled"]),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, edit, key, words):
    data = ur5_data()
    edit(data)
    path = write_robot(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_robot(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (lambda d: d.update(urdf="ur10_nowhere.urdf"), "urdf", ["ur10_nowhere.urdf", "not found"]),
        (lambda d: d.update(end_effector_frame="gripper"), "end_effector_frame", ["gripper", "ur5.urdf"]),
        (lambda d: d.update(base_frame="wrist_1_link"), "base_frame", ["wrist_1_link", "fixed to the world"]),
        (lambda d: (d.update(controlled_joints=UR5_JOINTS[:5] + ["elbow"]),
                    d["nominal_posture"].pop("wrist_3_joint"), d["nominal_posture"].update(elbow=0.0)),
         "controlled_joints", ["'elbow'", "not movable joints of ur5.urdf"]),
        (lambda d: d.update(controlled_joints=[UR5_JOINTS[1], UR5_JOINTS[0], *UR5_JOINTS[2:]]),
         "controlled_joints", ["URDF's joint order"]),
        (lambda d: d.update(locked_joints={"gripper_joint": 0.0}), "locked_joints", ["gripper_joint"]),
    ],
)
def test_model_errors_name_the_file_and_the_key(tmp_path, edit, key, words):
    """What only the URDF can tell (files, frames, joints) is checked on load too."""
    data = ur5_data()
    data["urdf"] = str(ROOT / "urdf" / "ur5.urdf")
    edit(data)
    path = write_robot(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_robot(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message, message
    for word in words:
        assert word in message, message


def test_unknown_robot_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        load_robot("ur10_juggling")
    assert "ur10_juggling" in str(info.value) and "ur5" in str(info.value)


def test_urdf_paths_relative_to_the_robot_file_and_replacing_the_urdf(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "arm.urdf").write_text((ROOT / "urdf" / "ur5.urdf").read_text())
    data = ur5_data()
    data["urdf"] = "models/arm.urdf"
    robot = load_robot(write_robot(tmp_path, data))
    assert robot.urdf_file == tmp_path / "models" / "arm.urdf" and robot.joint_names == UR5_JOINTS
    replaced = load_robot("ur5", urdf=tmp_path / "models" / "arm.urdf")
    assert replaced.urdf_file == tmp_path / "models" / "arm.urdf"
    with pytest.raises(FileNotFoundError):
        load_robot("ur5", urdf="nowhere.urdf")


def test_positions_are_in_the_base_frame(tmp_path):
    """A base frame away from the world origin (the UR5's 'base' is turned by π about z)."""
    data = ur5_data()
    data["urdf"] = str(ROOT / "urdf" / "ur5.urdf")
    data["base_frame"] = "base"
    robot, world = load_robot(write_robot(tmp_path, data)), load_robot("ur5")
    base = world.model.frames[world.model.getFrameId("base")].placement
    assert not np.allclose(base.rotation, np.eye(3))
    q = world.nominal_posture
    np.testing.assert_allclose(robot.end_effector_position(q), base.actInv(world.end_effector_position(q)), atol=1e-14)


# ------------------------------------------------------------------------------ locking joints


def test_the_reduced_model_locks_the_panda_fingers(tmp_path):
    robot = load_robot(write_robot(tmp_path, panda_data()))
    assert robot.joint_names == PANDA_ARM and robot.nq == robot.nv == 7
    assert robot.locked_joints == {"panda_finger_joint1": 0.03, "panda_finger_joint2": 0.0}
    assert robot.full_model.nq == 9
    np.testing.assert_array_equal(robot.effort_limit, [87, 87, 87, 87, 12, 12, 12])
    np.testing.assert_array_equal(robot.nominal_posture, PANDA_REST)
    # the same robot as the full model with the fingers held where they are locked
    full, q = robot.full_model, robot.nominal_posture + 0.2
    data, q_full = full.createData(), np.concatenate([q, [0.03, 0.0]])
    pin.framesForwardKinematics(full, data, q_full)
    np.testing.assert_allclose(robot.end_effector_position(q), data.oMf[full.getFrameId("panda_hand_tcp")].translation, atol=1e-14)
    np.testing.assert_allclose(robot.gravity(q), pin.computeGeneralizedGravity(full, data, q_full)[:7], atol=1e-12)
    mass = pin.crba(full, data, q_full)
    mass = np.triu(mass) + np.triu(mass, 1).T
    np.testing.assert_allclose(robot.mass_matrix(q), mass[:7, :7], atol=1e-12)
    # whereas the URDF alone takes the fingers as actuated joints (what made every rollout diverge)
    assert RobotModel.from_urdf(example_robot_data.load("panda").urdf).joint_names == PANDA_ARM + PANDA_FINGERS


def test_a_task_on_the_panda_controls_the_arm_only(tmp_path):
    path = write_robot(tmp_path, panda_data())
    config = TaskConfig(kind="reach", dt=0.02, horizon=10, robot=str(path),
                        costs=CostConfig(running={"position": 1.0, "control_gravity": 1e-3}, terminal={"position": 1e3}))
    task = make_task("panda_reach", config)
    assert task.joint_names == PANDA_ARM and task.nu == 7 and task.obs_dim == 7 + 7 + 3
    np.testing.assert_array_equal(task.u_max, [87, 87, 87, 87, 12, 12, 12])
    problems = task.sample(4, seed=0)
    assert np.abs(problems.x0[:, :7] - PANDA_REST).max() <= 0.0 + 1e-15  # default halfwidths: 0
    x = task.step(problems.x0, task.gravity(problems.x0[:, :7]))
    np.testing.assert_allclose(x, problems.x0, atol=1e-9)  # gravity compensation holds it


# ------------------------------------------------------------------------------ consumers


def metadata(**task_config) -> PolicyMetadata:
    return PolicyMetadata(task="ur5_reach", joint_names=list(UR5_JOINTS), obs_layout=[("q", 6), ("v", 6), ("target", 3)],
                          u_min=-np.ones(6), u_max=np.ones(6), dt=0.02, horizon=50, urdf="ur5.urdf", version="0.1.0",
                          task_config=task_config)


def test_policy_files_find_their_robot(tmp_path):
    assert find_robot("ur5.urdf", UR5_JOINTS) == "ur5" and find_robot("ur5.urdf", UR5_JOINTS[:5]) is None
    assert policy_robot(metadata(robot="ur5")).name == "ur5"
    # written before the robot YAMLs: urdf, frame and q_nominal in the task config only
    old = policy_robot(metadata(urdf="ur5.urdf", frame="tool0", sampling={"q_nominal": Q_NOMINAL}))
    assert old.name == "ur5" and old.target_limits == load_robot("ur5").target_limits
    # a robot YAML path of the machine that trained it: by URDF and joints as well
    assert policy_robot(metadata(robot=str(tmp_path / "elsewhere" / "ur5.yaml"))).name == "ur5"
    # no robot YAML for it: the URDF alone, which says no control rate
    other = metadata()
    other.joint_names = ["shoulder_pan_joint"]
    alone = policy_robot(other)
    assert alone.joint_names == UR5_JOINTS and alone.control_rate is None and alone.target_limits is None
    with pytest.raises(FieldError, match="no control_rate"):
        ControllerConfig().for_robot(alone)


def test_controller_settings_default_to_the_robot(tmp_path):
    ur5 = ControllerConfig().for_robot(load_robot("ur5"))
    assert (ur5.rate, ur5.output_mode, ur5.exclude_gravity) == (500.0, "effort", False)
    assert ur5.target_limits == [0.25, 0.85, -0.30, 0.50, -0.15, 0.80]
    panda = load_robot(write_robot(tmp_path, panda_data()))
    config = ControllerConfig(output_mode="velocity").for_robot(panda)
    assert (config.rate, config.output_mode, config.exclude_gravity, config.target_limits) == (1000.0, "velocity", True, None)
    with pytest.raises(FieldError, match="hold_kp"):  # the rate-dependent bounds are checked once the rate is known
        ControllerConfig(hold_kp=1e6).for_robot(load_robot("ur5"))


def test_robot_module_is_ros_and_crocoddyl_free():
    code = ("import sys, tocpl_ros.robot; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'crocoddyl', 'torch', 'mujoco')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_only_the_robot_yaml_names_the_ur5_joints_posture_and_frames():
    """Code and configuration take them from the robot YAMLs, config/robots/*.yaml (ur5.yaml; the
    UR10's shares the names); tests and docs may name them."""
    names = [*UR5_JOINTS, "tool0", "wrist_3_link", "ee_link"]
    posture = re.compile(r"-1\.2,\s*1\.6,\s*-0\.4,\s*1\.57")
    files = [p for folder in ("tocpl_ros", "training", "config", "launch") for p in (ROOT / folder).rglob("*")
             if p.suffix in (".py", ".yaml", ".yml") and p.parent != ROOT / "config" / "robots"]
    assert files
    offenders = [f"{p.relative_to(ROOT)}: {n}" for p in files for n in names if n in p.read_text()]
    offenders += [f"{p.relative_to(ROOT)}: posture" for p in files if posture.search(p.read_text())]
    assert not offenders, offenders
