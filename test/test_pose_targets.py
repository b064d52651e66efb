"""Pose targets (target_kind 'pose', config/tasks/reach_pose.yaml): the target vector and the
observation layout, the OCP that brings the Panda's tool to a position and an orientation, the
orientation error, a small training exporting a policy file with target_kind 'pose'; position
targets unchanged."""

from __future__ import annotations

import numpy as np
import pinocchio as pin
import pytest
from test_robots import solve  # Crocoddyl's SolverBoxFDDP on each problem: final states

from tocpl_ros.config import ConfigError
from tocpl_ros.tasks import load_task
from tocpl_ros.tasks.robot import pose_target, target_rotation


@pytest.fixture(scope="module")
def panda_pose():
    return load_task("reach_pose", {"robot": "panda"})


def test_a_pose_target_is_the_position_and_two_rotation_columns_of_a_sampled_posture(panda_pose):
    task = panda_pose
    assert task.config.target_kind == "pose" and task.target_dim == 9
    assert task.obs_layout == [("q", 7), ("v", 7), ("target", 9)] and task.obs_dim == 23
    problems = task.sample(5, 3)
    # the same draws as the position task: x0 and the target posture, then its FK
    position_task = load_task("reach", {"robot": "panda"})
    reference = position_task.sample(5, 3)
    np.testing.assert_array_equal(problems.x0, reference.x0)
    np.testing.assert_array_equal(problems.target[:, :3], reference.target)
    for t in problems.target:
        R = target_rotation(t)
        np.testing.assert_allclose(R[:, :2], np.column_stack([t[3:6], t[6:9]]), atol=1e-12)
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
    obs = task.observation(problems.x0, problems.target)
    np.testing.assert_array_equal(obs[:, :14], problems.x0)
    np.testing.assert_array_equal(obs[:, 14:], problems.target)


def test_the_orientation_error_is_the_rotation_angle_to_the_target(panda_pose):
    task = panda_pose
    q = task.q_nominal_model[None]
    target = task.frame_target(q)
    x = np.concatenate([q, np.zeros((1, 7))], axis=1)
    assert task.orientation_error(x, target)[0] == pytest.approx(0.0, abs=1e-7)
    turned = task.frame_rotation(q)[0] @ pin.exp3(np.array([0.0, 0.0, np.deg2rad(10.0)]))
    other = pose_target(target[:, :3], turned[None])
    assert np.rad2deg(task.orientation_error(x, other)[0]) == pytest.approx(10.0, abs=1e-6)
    assert task.final_error(x, other)[0] == pytest.approx(0.0, abs=1e-12)  # the position part alone


def test_the_target_posture_of_a_pose_puts_the_tool_on_it(panda_pose):
    task = panda_pose
    target = task.sample(3, 11).target
    for t in target:
        q = task.robot.q_from_positions(task.target_posture(t))[None]
        x = np.concatenate([q, np.zeros((1, 7))], axis=1)
        assert task.final_error(x, t[None])[0] < 1e-6
        assert task.orientation_error(x, t[None])[0] < 1e-6


def test_the_pose_ocp_brings_the_panda_tool_to_its_target_poses(panda_pose):
    task = panda_pose
    problems = task.sample(3, 0)
    ends = solve(task, problems)
    assert (task.final_error(ends, problems.target) < 3e-3).all()
    assert (np.rad2deg(task.orientation_error(ends, problems.target)) < 1.5).all()
    assert (np.abs(ends[:, 7:]) < 0.05).all()  # and stops there
    # the position task's OCP on the same problems leaves the orientation where it falls
    position_task = load_task("reach", {"robot": "panda"})
    free = solve(position_task, position_task.sample(3, 0))  # the same x0 and positions
    assert np.rad2deg(task.orientation_error(free, problems.target)).max() > 2.0


def test_pose_settings_are_checked():
    with pytest.raises(ConfigError, match="reach tasks") as info:
        load_task("pendulum", {"target_kind": "pose"})
    assert info.value.key == "target_kind"
    with pytest.raises(ConfigError, match="target_kind: pose") as info:
        load_task("reach", {"robot": "panda", "costs.terminal.orientation": 1.0})
    assert info.value.key == "costs.terminal.orientation"
    assert load_task("reach", {"robot": "panda"}).config.target_kind == "position"


def test_a_small_pose_training_exports_a_policy_with_target_kind_pose(tmp_path):
    from tocpl_ros.control.policy_check import check_policy_model
    from tocpl_ros.policy_file import OnnxPolicy, PolicyFileError
    from tocpl_training.cli import main as train_main

    out = tmp_path / "run"
    code = train_main(["--task", "reach_pose", "--robot", "panda", "--iterations", "2", "--problems", "6",
                       "--eval-problems", "6", "--validation-problems", "6", "--supervised-steps", "30",
                       "--workers", "1", "--out", str(out), "--quiet"])
    assert code == 0
    policy = OnnxPolicy(out / "policy.onnx")
    task = load_task("reach_pose", {"robot": "panda"})
    md = policy.metadata
    assert md.target_kind == "pose" and md.task_config["target_kind"] == "pose"
    assert md.obs_layout == [("q", 7), ("v", 7), ("target", 9)]
    problems = task.sample(3, 5)
    u = policy(task.observation(problems.x0, problems.target).astype(np.float32))
    assert u.shape == (3, 7) and np.isfinite(u).all()
    text = (out / "metrics.csv").read_text()
    assert "orientation_error_mean_deg" in text and "hold_T_orientation_mean_deg" in text
    # the ROS nodes take it (test_pose_ros.py drives them); a target block of another size is refused
    check_policy_model(md, "policy.onnx", task.robot)
    md.obs_layout = [("q", 7), ("v", 7), ("target", 3)]
    with pytest.raises(PolicyFileError, match=r"observation block 'target' has size 3, expected 9"):
        check_policy_model(md, "policy.onnx", task.robot)
