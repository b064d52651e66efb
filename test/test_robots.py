"""Bringing another arm with a robot YAML only: the shipped panda and kinova descriptions
(example-robot-data models), the fields of config/robots/*.yaml (validation naming key and file,
locked joints, offsets, sampling ranges clipped to the limits, limit overrides), continuous joints
(cos/sin in q) through task, OCP, gains, simulator, and a small training of the generic 'reach'
task exporting a policy file."""

from __future__ import annotations

import math
from pathlib import Path

import crocoddyl
import numpy as np
import pinocchio as pin
import pytest
import yaml

from tocpl_ros.config import ConfigError, read_yaml
from tocpl_ros.robot import load_robot
from tocpl_ros.sim import make_simulator
from tocpl_ros.sim.config import SimConfig
from tocpl_ros.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
PANDA_ARM = [f"panda_joint{i}" for i in range(1, 8)]
KINOVA = [f"j2s6s200_joint_{i}" for i in range(1, 7)]


def robot_file(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of config/robots/<name>.yaml with ``changes``, in tmp_path."""
    data = {**read_yaml(ROOT / "config" / "robots" / f"{name}.yaml"), **changes}
    path = tmp_path / f"{name}_changed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def solve(task, problems, max_iter=200):
    """Crocoddyl's SolverBoxFDDP on each problem: final states [N, nx]."""
    shooting = task.build_problem(problems[0])
    ends = []
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        solver = crocoddyl.SolverBoxFDDP(shooting)
        solver.solve([], [], max_iter)
        ends.append(np.array(solver.xs[-1]))
    return np.array(ends)


# ------------------------------------------------------------------------------ the robot YAML


def test_the_panda_from_example_robot_data_controls_its_arm_with_the_fingers_locked():
    robot = load_robot("panda")
    assert robot.joint_names == PANDA_ARM and robot.nq == robot.nv == 7
    assert robot.locked_joints == {"panda_finger_joint1": 0.0, "panda_finger_joint2": 0.0}
    assert robot.joint_encodings == ["angle"] * 7
    assert robot.urdf_file.name == "panda.urdf" and robot.urdf_file.is_file()
    assert any((d / "example-robot-data").is_dir() for d in robot.package_dirs)  # package:// of its meshes
    np.testing.assert_array_equal(robot.effort_limit, [87, 87, 87, 87, 12, 12, 12])
    assert (robot.compensates_gravity, robot.control_rate, robot.end_effector_frame) == (True, 1000.0, "panda_hand_tcp")
    # joint 4 lives in [-3.07, -0.07]: its soft range (factor 0.9) keeps 5 % of that away from either end
    lo, hi = robot.lower_position_limit[3], robot.upper_position_limit[3]
    assert hi < 0 and robot.soft_lower_limit[3] == pytest.approx(lo + 0.05 * (hi - lo))
    assert robot.soft_upper_limit[3] == pytest.approx(hi - 0.05 * (hi - lo))


@pytest.mark.parametrize("changes, key, words", [
    ({"urdf": {"example_robot_data": "no_such_arm"}}, "urdf", ["no_such_arm", "panda"]),
    ({"urdf": {"robot_data": "panda"}}, "urdf", ["example_robot_data"]),
    ({"locked_joints": {"panda_joint1": 0.0}}, "locked_joints", ["controlled"]),
    ({"sampling_ranges": {"panda_joint9": [0, 1]}}, "sampling_ranges", ["panda_joint9"]),
    ({"sampling_ranges": {"panda_joint4": [0.0, 1.0]}}, "sampling_ranges.panda_joint4", ["soft limits"]),
    ({"sampling_ranges": {"panda_joint4": [1.0, 0.0]}}, "sampling_ranges.panda_joint4", ["lower < upper"]),
    ({"position_limits": {"panda_joint1": [0.0]}}, "position_limits.panda_joint1", ["lower < upper"]),
    ({"effort_limits": {"panda_joint1": -1.0}}, "effort_limits.panda_joint1", ["> 0"]),
    ({"end_effector_offset": [0.0, 0.1]}, "end_effector_offset", ["3 values"]),
    ({"soft_limit_factor": 0.0}, "soft_limit_factor", ["(0, 1]"]),
    ({"armature": {"panda_joint1": -0.1}}, "armature.panda_joint1", [">= 0"]),
    ({"end_effector_frame": "tool0"}, "end_effector_frame", ["tool0"]),
    ({"nominal_posture": {**dict.fromkeys(PANDA_ARM, 0.0)}}, "nominal_posture", ["panda_joint4", "limits"]),
])
def test_a_wrong_robot_yaml_names_the_key_and_the_file(tmp_path, changes, key, words):
    path = robot_file(tmp_path, "panda", **changes)
    with pytest.raises(ConfigError) as info:
        load_robot(path)
    assert info.value.key == key and str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_a_continuous_joint_has_no_position_limits_to_override(tmp_path):
    path = robot_file(tmp_path, "kinova", position_limits={"j2s6s200_joint_1": [-1.0, 1.0]})
    with pytest.raises(ConfigError, match="continuous joint has no position limits") as info:
        load_robot(path)
    assert info.value.key == "position_limits.j2s6s200_joint_1"


def test_limit_overrides_reach_the_model_the_ocp_and_the_simulator(tmp_path):
    path = robot_file(tmp_path, "panda", effort_limits={"panda_joint1": 50.0}, velocity_limits={"panda_joint7": 1.0},
                      position_limits={"panda_joint2": [-1.0, 1.0]})
    robot = load_robot(path)
    assert robot.effort_limit[0] == 50.0 and robot.model.effortLimit[0] == 50.0
    assert robot.velocity_limit[6] == 1.0 and list(robot.lower_position_limit[1:2]) == [-1.0]
    task = load_task("reach", {"robot": str(path)})
    assert task.u_max[0] == 50.0 and task.build_problem().runningModels[0].u_ub[0] == 50.0
    assert make_simulator(SimConfig(robot=str(path))).effort_limit[0] == 50.0


def test_armature_adds_to_the_joint_inertia_the_ocp_and_the_rollouts_see(tmp_path):
    plain = load_task("reach", {"robot": str(robot_file(tmp_path, "kinova", armature={}))})
    task = load_task("reach", {"robot": "kinova"})
    armature = np.array(task.robot.model.armature)
    assert (armature > 0).all()
    q = task.q_nominal_model
    np.testing.assert_allclose(task.robot.mass_matrix(q), plain.robot.mass_matrix(q) + np.diag(armature), atol=1e-12)
    # the rollout's step and Crocoddyl's dynamics agree with it
    x, u = np.concatenate([q, np.full(6, 0.1)]), np.full(6, 0.5)
    model = task.build_problem().runningModels[0]
    data = model.createData()
    model.calc(data, x, u)
    np.testing.assert_allclose(task.step(x[None], u[None])[0], data.xnext, atol=1e-12)
    assert not np.allclose(plain.step(x[None], u[None])[0], data.xnext, atol=1e-3)


def test_an_end_effector_offset_is_a_frame_of_the_model(tmp_path):
    offset = [0.0, 0.0, 0.05]
    robot = load_robot(robot_file(tmp_path, "panda", end_effector_offset=offset))
    plain = load_robot("panda")
    assert robot.end_effector_frame == "panda_hand_tcp_offset"
    q = plain.nominal_q + 0.1
    pin.framesForwardKinematics(plain.model, plain.data, q)
    expected = plain.data.oMf[plain.end_effector_id].act(np.array(offset))
    np.testing.assert_allclose(robot.end_effector_position(q), expected, atol=1e-14)
    assert np.linalg.norm(expected - plain.end_effector_position(q)) == pytest.approx(0.05)


def test_sampled_postures_stay_within_the_soft_limits_and_the_sampling_ranges(tmp_path):
    """A half-width far beyond joint 4's range: every posture within its soft limits, spread over
    them (not piled up at the bounds); a sampling range narrows a joint further."""
    task = load_task("reach", {"robot": "panda", "sampling.q0_halfwidth": 2.0})
    robot = task.robot
    q = task.sample(400, 0).x0[:, :7]
    assert (q >= robot.soft_lower_limit).all() and (q <= robot.soft_upper_limit).all()
    assert q[:, 3].min() < robot.soft_lower_limit[3] + 0.2 and q[:, 3].max() > robot.soft_upper_limit[3] - 0.2
    assert len(np.unique(q[:, 3])) == 400
    path = robot_file(tmp_path, "panda", sampling_ranges={"panda_joint1": [-0.1, 0.2]})
    q = load_task("reach", {"robot": str(path), "sampling.q0_halfwidth": 2.0}).sample(200, 0).x0[:, 0]
    assert q.min() >= -0.1 and q.max() <= 0.2 and q.max() - q.min() > 0.25


def test_a_robot_that_cuts_nothing_samples_exactly_as_before():
    """The UR5 (limits ±2π) keeps q_nominal + U(-h, h): the ur5_reach seeds reproduce."""
    task = load_task("ur5_reach")
    rng = np.random.default_rng(7)
    s = task.config.sampling
    expected = task.q_nominal + rng.uniform(-s.q0_halfwidth, s.q0_halfwidth, (5, 6))
    np.testing.assert_array_equal(task.sample(5, 7).x0[:, :6], expected)


def test_targets_are_in_the_base_frame_wherever_it_is(tmp_path):
    """The UR5's 'base' frame is turned by π about z from the world origin: its targets are the
    tool's positions in that frame, and the OCP brings the tool there."""
    path = tmp_path / "ur5_base.yaml"
    data = read_yaml(ROOT / "config" / "robots" / "ur5.yaml")
    path.write_text(yaml.safe_dump({**data, "urdf": str(ROOT / "urdf" / "ur5.urdf"), "base_frame": "base"}))
    task = load_task("ur5_reach", {"robot": str(path)})
    problems = task.sample(2, 0)
    assert (problems.target[:, 0] < 0).all()  # in front of the UR5 is -x in its 'base' frame
    ends = solve(task, problems)
    assert (task.final_error(ends, problems.target) < 1e-3).all()
    reference = load_task("ur5_reach")  # the same problems in the world frame
    np.testing.assert_allclose(ends, solve(reference, reference.sample(2, 0)), atol=1e-6)


def test_the_generic_reach_task_needs_a_robot():
    with pytest.raises(ConfigError, match="--robot") as info:
        load_task("reach")
    assert info.value.key == "robot" and "reach.yaml" in info.value.source


# ------------------------------------------------------------------------------ continuous joints


def test_continuous_joints_are_cos_sin_in_q_and_one_angle_in_joint_states():
    robot = load_robot("kinova")
    assert robot.joint_names == KINOVA and (robot.nq, robot.nv) == (9, 6)
    assert robot.joint_kinds == ["continuous", "revolute", "revolute", "continuous", "revolute", "continuous"]
    assert robot.joint_encodings == ["cos_sin", "angle", "angle", "cos_sin", "angle", "cos_sin"]
    assert np.isinf(robot.lower_position_limit[[0, 3, 5]]).all() and np.isfinite(robot.lower_position_limit[[1, 2, 4]]).all()
    positions = np.array([[3.0, 2.0, 4.0, -3.0, 2.5, 7.0], robot.nominal_posture])
    q = robot.q_from_positions(positions)
    assert q.shape == (2, 9)
    np.testing.assert_allclose(q[0, :2], [math.cos(3.0), math.sin(3.0)])
    assert q[0, 2] == 2.0
    back = robot.positions_from_q(q)
    wrapped = np.angle(np.exp(1j * positions))  # continuous joints come back in (−π, π]
    np.testing.assert_allclose(back[:, [0, 3, 5]], wrapped[:, [0, 3, 5]], atol=1e-12)
    np.testing.assert_array_equal(back[:, [1, 2, 4]], positions[:, [1, 2, 4]])
    # the model's q is Pinocchio's own: the same forward kinematics as its integrate from the neutral
    q_pin = pin.integrate(robot.model, pin.neutral(robot.model), positions[0] - robot.positions_from_q(pin.neutral(robot.model)))
    np.testing.assert_allclose(robot.end_effector_position(q_pin), robot.end_effector_position(q[0]), atol=1e-12)


def test_a_state_difference_is_crocoddyls_and_a_state_reads_as_joint_positions():
    """The MPC loop's feedback u − K (x ⊖ x̄) needs Crocoddyl's tangent difference; /mpc/plan and
    /mpc/feedback carry (joint positions, v), 2 nv values."""
    robot = load_robot("kinova")
    state = crocoddyl.StateMultibody(robot.model)
    rng = np.random.default_rng(5)
    q, v = robot.nominal_posture + rng.uniform(-0.3, 0.3, robot.nv), rng.uniform(-0.5, 0.5, robot.nv)
    q_ref, v_ref = q + 0.05, v - 0.1
    q[0], q_ref[0] = np.pi - 0.02, -np.pi + 0.03  # across ±π
    x, x_ref = (np.concatenate([robot.q_from_positions(a), b]) for a, b in ((q, v), (q_ref, v_ref)))
    np.testing.assert_allclose(robot.state_difference(x, x_ref), state.diff(x_ref, x), atol=1e-12)
    wrapped = np.where(robot.is_continuous, np.arctan2(np.sin(q), np.cos(q)), q)  # in (−π, π]
    np.testing.assert_allclose(robot.positions_state(x), np.concatenate([wrapped, v]), atol=1e-12)
    np.testing.assert_allclose(robot.positions_state(np.stack([x, x_ref]))[1], np.concatenate([robot.positions_from_q(x_ref[:9]), v_ref]))


def test_a_task_on_continuous_joints_observes_cos_sin_and_its_ocp_reaches_the_targets():
    task = load_task("reach", {"robot": "kinova"})
    assert (task.nq, task.nv, task.nx, task.nu) == (9, 6, 15, 6)
    assert task.obs_layout == [("q", 9), ("v", 6), ("target", 3)] and task.obs_dim == 18
    problems = task.sample(3, 0)
    q0 = problems.x0[:, :9]
    np.testing.assert_allclose(q0[:, 0] ** 2 + q0[:, 1] ** 2, 1.0)  # a valid configuration
    obs = task.observation(problems.x0, problems.target)
    np.testing.assert_array_equal(obs[:, :9], q0)
    ends = solve(task, problems)
    assert (task.final_error(ends, problems.target) < 1e-3).all()
    # the rollout integrator is the OCP's: the solver's controls replayed give its states
    shooting = task.build_problem(problems[0])
    solver = crocoddyl.SolverBoxFDDP(shooting)
    solver.solve([], [], 100)
    xs = task.open_loop(problems.x0[:1], np.array(solver.us)[None])[0]
    np.testing.assert_allclose(xs, np.array(solver.xs), atol=1e-8)


def test_gains_per_tangent_become_jacobians_per_state_that_agree_along_the_motions():
    """The Sobolev target: K is per dx (2 nv), the policy's input per x (nq + nv); (J·E⁺)·E = J."""
    task = load_task("reach", {"robot": "kinova"})
    x = task.sample(4, 1).x0
    jac = np.random.default_rng(0).normal(size=(4, 6, 12))
    per_state = task.state_jacobian(x, jac)
    assert per_state.shape == (4, 6, 15)
    for i in range(4):
        # E = ∂x/∂dx by finite differences of Crocoddyl's own integrate
        E = np.stack([(task.state.integrate(x[i], 1e-7 * e) - x[i]) / 1e-7 for e in np.eye(12)], axis=1)
        np.testing.assert_allclose(per_state[i] @ E, jac[i], atol=1e-5)
    ur5 = load_task("ur5_reach")
    assert ur5.state_jacobian(None, jac) is jac


def test_the_simulator_steps_continuous_joints_like_the_task():
    """Joint positions in the simulator (one angle per joint, as /joint_states), the same
    semi-implicit Euler as the task's model q, effort commands, no losses."""
    task = load_task("reach", {"robot": "kinova"})
    sim = make_simulator(SimConfig(robot="kinova", physics_rate=1.0 / task.dt, hold_until_command=False,
                                   command_mode="effort"))
    assert (sim.nq, sim.nv) == (6, 6)
    x = np.concatenate([task.q_nominal_model, np.zeros(6)])[None]
    rng = np.random.default_rng(0)
    for _ in range(15):  # small torques beyond gravity: the light wrist must not spin up
        u = task.gravity(x[:, :9])[0] + rng.uniform(-0.05, 0.05, 6)
        sim.set_command(u)
        sim.step()
        x = task.step(x, u[None])
    np.testing.assert_allclose(sim.v, x[0, 9:], atol=1e-9)
    np.testing.assert_allclose(task.robot.q_from_positions(sim.q), x[0, :9], atol=1e-9)
    assert np.abs(sim.q - task.robot.nominal_posture).max() > 0.01  # it moved
    # the position servo takes the short way round a continuous joint
    sim = make_simulator(SimConfig(robot="kinova", command_mode="position"))
    target = sim.q.copy()
    target[0] += 2 * math.pi + 0.1
    sim.set_command(target)
    for _ in range(2000):
        sim.step()
    assert abs(sim.q[0] - (task.robot.nominal_posture[0] + 0.1)) < 1e-3


# ------------------------------------------------------------------------------ the panda end to end


def test_a_panda_ocp_brings_the_tool_to_its_targets():
    task = load_task("reach", {"robot": "panda"})
    assert task.joint_names == PANDA_ARM and task.obs_dim == 17
    problems = task.sample(4, 0)
    ends = solve(task, problems)
    assert (task.final_error(ends, problems.target) < 1e-3).all()
    assert (np.abs(ends[:, 7:]) < 0.05).all()  # and stops there


@pytest.mark.parametrize("robot", ["panda", "kinova"])
def test_a_small_training_of_the_reach_task_exports_a_policy_for_its_robot(tmp_path, robot):
    from tocpl_ros.policy_file import OnnxPolicy
    from tocpl_training.cli import main as train_main

    out = tmp_path / "run"
    code = train_main(["--task", "reach", "--robot", robot, "--iterations", "2", "--problems", "6",
                       "--eval-problems", "6", "--validation-problems", "6", "--supervised-steps", "30",
                       "--workers", "1", "--out", str(out), "--quiet"])
    assert code == 0
    policy = OnnxPolicy(out / "policy.onnx")
    task = load_task("reach", {"robot": robot})
    md = policy.metadata
    assert md.joint_names == task.joint_names and md.task_config["robot"] == robot
    assert dict(md.obs_layout) == dict(task.obs_layout)
    problems = task.sample(3, 5)
    u = policy(task.observation(problems.x0, problems.target).astype(np.float32))
    assert u.shape == (3, task.nu) and np.isfinite(u).all()
    assert (np.abs(u) <= task.u_max + 1e-4).all()


SLIDER_ARM_URDF = """<robot name="slider_arm">
  <link name="base"/>
  <joint name="slide" type="prismatic"><parent link="base"/><child link="carriage"/><axis xyz="1 0 0"/>
    <limit lower="-0.4" upper="0.4" effort="200" velocity="1.0"/></joint>
  <link name="carriage"><inertial><mass value="3.0"/><inertia ixx="0.02" iyy="0.02" izz="0.02" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <joint name="elbow" type="revolute"><parent link="carriage"/><child link="arm"/><axis xyz="0 1 0"/>
    <limit lower="-2.5" upper="2.5" effort="60" velocity="3.0"/></joint>
  <link name="arm"><inertial><origin xyz="0 0 0.2"/><mass value="1.0"/>
    <inertia ixx="0.02" iyy="0.02" izz="0.002" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <joint name="tool_joint" type="fixed"><parent link="arm"/><child link="tool"/><origin xyz="0 0 0.4"/></joint>
  <link name="tool"/>
</robot>
"""


def test_a_prismatic_joint_runs_from_the_robot_yaml_to_the_policy_file_and_the_controller(tmp_path):
    """issue 25: revolute, prismatic and continuous joints end to end. A slider carrying an arm: its
    OCP reaches the targets, its policy file says 'linear' for the slide, and the controller the
    nodes run reads that file and commands the robot from a joint state."""
    from tocpl_ros.control.config import ControllerConfig
    from tocpl_ros.control.controller import PolicyController
    from tocpl_ros.policy_file import JOINT_ENCODINGS, read_onnx_metadata
    from tocpl_ros.robot import ENCODINGS
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    (tmp_path / "slider_arm.urdf").write_text(SLIDER_ARM_URDF)
    robot_yaml = tmp_path / "slider_arm.yaml"
    robot_yaml.write_text(yaml.safe_dump({
        "urdf": "slider_arm.urdf", "controlled_joints": ["slide", "elbow"], "end_effector_frame": "tool",
        "base_frame": "base", "nominal_posture": {"slide": 0.0, "elbow": 0.3},
        "target_workspace": {"x": [-1.0, 1.0], "y": [-0.1, 0.1], "z": [-0.5, 0.5]},
        "command_interface": "effort", "control_rate": 100.0, "compensates_gravity": False,
    }))
    robot = load_robot(robot_yaml)
    assert robot.joint_kinds == ["prismatic", "revolute"] and robot.joint_encodings == ["linear", "angle"]
    task = load_task("reach", {"robot": str(robot_yaml)})
    problems = task.sample(3, 7)
    ends = solve(task, problems)
    assert (task.final_error(ends, problems.target) < 1e-3).all()

    policy = export_onnx(make_policy(task, seed=0).eval(), task, tmp_path / "slider_arm.onnx")
    assert read_onnx_metadata(policy).joint_encodings == ["linear", "angle"]
    # the file reader (no Pinocchio) knows every encoding a robot model can give
    assert set(JOINT_ENCODINGS) == set(ENCODINGS.values())
    controller = PolicyController(policy, ControllerConfig(fade_in=0.0, initial_target=problems.target[0].tolist()))
    controller.start()
    assert controller.update_joint_state(["elbow", "slide"], [0.3, 0.1], [0.0, 0.0], 1.0) is None
    command = controller.compute(1.0)
    assert not command.safe, command.reason
    assert command.values.shape == (2,) and (np.abs(command.values) <= robot.effort_limit + 1e-9).all()


def test_algorithms_with_terms_inside_the_ocp_refuse_continuous_joints(tmp_path):
    from tocpl_training.config import TrainConfig
    from tocpl_training.trainer import Trainer

    for algo in ("plal", "pods"):
        with pytest.raises(ConfigError, match="continuous joints") as info:
            Trainer(TrainConfig(task="reach", robot="kinova", algo=algo, problems=2, workers=1), tmp_path / algo)
        assert info.value.key == "algo"


@pytest.mark.parametrize("backend", ["pinocchio", "mujoco"])
def test_the_simulator_adds_gravity_for_a_robot_whose_controller_does(backend):
    """A Franka's controller adds g(q) to the commanded torques (panda.yaml: compensates_gravity),
    so the policy node sends u − g(q): the simulated Panda must add it back, and hold still under
    a zero torque command; the UR5 (compensates_gravity false) falls under the same command."""
    held = {}
    for robot in ("panda", "ur5"):
        sim = make_simulator(SimConfig(robot=robot, backend=backend, hold_until_command=False, damping=1.0))
        q0 = sim.q.copy()
        sim.set_command(np.zeros(sim.nv), "effort")
        for _ in range(300):  # 0.3 s
            sim.step()
        held[robot] = float(np.abs(sim.q - q0).max())
        assert np.allclose(sim.effort, sim.gravity() if robot == "panda" else 0.0, atol=1e-9), robot
    assert held["panda"] < 1e-6, held
    assert held["ur5"] > 1e-2, held
