"""The MuJoCo physics backend (tocpl_ros.sim.mujoco_backend) against the Pinocchio one, and the
ur5_sim node running on it. The checks every backend passes (holding, servo modes, limits,
commands, reset, configuration errors) are parametrised over both in test_sim.py.

Measured on this machine (urdf/ur5.urdf, random configurations, with and without payload):
M(q), b(q, v) and g(q) agree to ~5e-15 relative (asserted: 1e-10); a 0.5 s free fall from
a moving posture (1 kHz, both semi-implicit Euler) agrees to ~1e-15 rad in q and ~1e-13
rad/s in v (asserted: 1e-9), while MuJoCo's RK4 on the same model differs by ~7e-3 rad
(the comparison sees integration differences) and MuJoCo's dry friction differs by ~4e-2
rad (it sees model differences).
"""

from __future__ import annotations

import time
from pathlib import Path

import mujoco
import numpy as np
import pinocchio as pin
import pytest
from test_sim import LIMITS, Q0, V0, run  # the shared set-up of the simulator tests

from tocpl_ros.interfaces import SIM_BACKENDS
from tocpl_ros.resources import urdf_path
from tocpl_ros.sim import make_simulator
from tocpl_ros.sim.config import SimConfig, load_sim_config
from tocpl_ros.sim.mujoco_backend import MujocoArmSimulator, build_mujoco_spec
from tocpl_ros.sim.pinocchio_backend import ArmSimulator

ROOT = Path(__file__).resolve().parents[1]
PAYLOADS = [
    {},
    {"payload_mass": 2.0},
    {"payload_mass": 2.0, "payload_com": [0.05, -0.02, 0.1]},
    {"payload_mass": 1.0, "payload_frame": "forearm_link", "payload_com": [0.0, 0.03, 0.2]},
]


def pair(**kw) -> tuple[ArmSimulator, MujocoArmSimulator]:
    kw.setdefault("initial_positions", Q0)
    a = make_simulator(SimConfig(backend="pinocchio", **kw))
    b = make_simulator(SimConfig(backend="mujoco", **kw))
    assert type(a) is ArmSimulator and type(b) is MujocoArmSimulator
    return a, b


def mj(**kw) -> MujocoArmSimulator:
    kw.setdefault("initial_positions", Q0)
    return make_simulator(SimConfig(backend="mujoco", **kw))


def rel(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(x - ref).max() / np.abs(ref).max())


# ------------------------------------------------------------------------- model vs Pinocchio


def test_model_is_built_as_specified():
    sim = mj(physics_rate=2000.0, damping=[1, 2, 3, 4, 5, 6], friction=0.5)
    m = sim.mj_model
    assert sim.backend == "mujoco" and m.nq == m.nv == m.nu == 6 and m.ngeom == 0
    assert sim.joint_names == ArmSimulator(SimConfig()).joint_names
    assert [m.actuator(i).name for i in range(6)] == sim.joint_names
    assert (m.actuator_trntype == mujoco.mjtTrn.mjTRN_JOINT).all()
    assert list(m.actuator_trnid[:, 0]) == list(range(6))
    np.testing.assert_array_equal(m.actuator_gear[:, 0], np.ones(6))
    np.testing.assert_array_equal(m.actuator_gainprm[:, 0], np.ones(6))
    assert (m.actuator_biastype == mujoco.mjtBias.mjBIAS_NONE).all()
    for rng in (m.actuator_ctrlrange, m.actuator_forcerange):
        np.testing.assert_array_equal(rng, np.stack([-LIMITS, LIMITS], axis=1))
    assert m.actuator_ctrllimited.all() and m.actuator_forcelimited.all()
    np.testing.assert_array_equal(sim.effort_limit, LIMITS)
    np.testing.assert_array_equal(sim.velocity_limit, [3.15, 3.15, 3.15, 3.2, 3.2, 3.2])
    np.testing.assert_array_equal(m.dof_damping, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(m.dof_frictionloss, np.full(6, 0.5))
    assert m.opt.timestep == 1.0 / 2000.0
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    np.testing.assert_array_equal(m.opt.gravity, [0.0, 0.0, -9.81])
    assert m.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CONTACT
    assert m.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_LIMIT


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: str(p.get("payload_mass", 0)) + str(p.get("payload_frame", "")))
def test_mass_matrix_and_bias_equal_pinocchio(payload):
    a, b = pair(**payload)
    # raw MuJoCo quantities (not only the simulator's wrappers)
    m, d = b.mj_model, mujoco.MjData(b.mj_model)
    full = np.zeros((6, 6))
    rng = np.random.default_rng(7)
    worst = {"M": 0.0, "b": 0.0, "g": 0.0, "rnea": 0.0}
    for _ in range(100):
        q, v, acc = rng.uniform(-np.pi, np.pi, 6), rng.uniform(-3.0, 3.0, 6), rng.uniform(-10, 10, 6)
        d.qpos[:], d.qvel[:] = q, v
        mujoco.mj_forward(m, d)
        mujoco.mj_fullM(m, d, full)
        worst["M"] = max(worst["M"], rel(full, a.mass_matrix(q)))
        worst["b"] = max(worst["b"], rel(d.qfrc_bias, pin.nonLinearEffects(a.model, a.data, q, v)))
        worst["g"] = max(worst["g"], rel(b.gravity(q), pin.computeGeneralizedGravity(a.model, a.data, q)))
        worst["rnea"] = max(worst["rnea"], rel(b.inverse_dynamics(q, v, acc), pin.rnea(a.model, a.data, q, v, acc)))
        np.testing.assert_allclose(b.mass_matrix(q), full, rtol=0, atol=1e-15)
        np.testing.assert_allclose(b.bias(q, v), d.qfrc_bias, rtol=0, atol=1e-12)
    print(f"payload {payload}: worst relative differences {worst}")
    assert max(worst.values()) < 1e-10, worst


def test_the_model_comparison_can_fail():
    # control for the test above: a payload moved by 1 cm, or a different mass, is seen
    q = np.array(Q0)
    a = ArmSimulator(SimConfig(payload_mass=2.0, payload_com=[0.0, 0.0, 0.01]))
    b = mj(payload_mass=2.0)
    assert rel(b.gravity(q), a.gravity(q)) > 1e-3
    assert rel(b.mass_matrix(q), a.mass_matrix(q)) > 1e-4
    assert rel(mj(payload_mass=2.1).gravity(q), mj(payload_mass=2.0).gravity(q)) > 1e-3


def test_locked_joints_are_fixed_where_the_reduced_model_locks_them(tmp_path):
    """A robot whose description locks joints (a revolute one away from 0 here, the Panda's
    fingers below): MuJoCo fixes them at those positions, as Pinocchio's reduced model does."""
    import example_robot_data
    import yaml

    from tocpl_ros.config import read_yaml

    data = read_yaml(ROOT / "config" / "robots" / "ur5.yaml")
    data.update(urdf=str(urdf_path("ur5")), locked_joints={"elbow_joint": 1.1})
    data["controlled_joints"].remove("elbow_joint")
    del data["nominal_posture"]["elbow_joint"]
    ur5 = tmp_path / "ur5_locked_elbow.yaml"
    ur5.write_text(yaml.safe_dump(data))
    arm = [f"panda_joint{i}" for i in range(1, 8)]
    panda = tmp_path / "panda.yaml"
    panda.write_text(yaml.safe_dump(dict(
        urdf=example_robot_data.load("panda").urdf, controlled_joints=arm, end_effector_frame="panda_hand_tcp",
        base_frame="panda_link0", nominal_posture=dict(zip(arm, [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])),
        target_workspace=None, command_interface="effort", control_rate=1000.0, compensates_gravity=True,
        locked_joints={"panda_finger_joint1": 0.03, "panda_finger_joint2": 0.03},
    )))
    rng = np.random.default_rng(5)
    for robot, n in ((ur5, 5), (panda, 7)):
        a = make_simulator(SimConfig(backend="pinocchio", robot=str(robot), payload_mass=1.5))
        b = make_simulator(SimConfig(backend="mujoco", robot=str(robot), payload_mass=1.5))
        assert a.joint_names == b.joint_names and a.nv == b.mj_model.nv == n
        for _ in range(3):
            q, v = a.initial_q + rng.uniform(-0.4, 0.4, n), rng.uniform(-1, 1, n)
            assert rel(b.gravity(q), a.gravity(q)) < 1e-10
            assert rel(b.mass_matrix(q), a.mass_matrix(q)) < 1e-10
            assert rel(b.bias(q, v), a.bias(q, v)) < 1e-10


def test_urdf_meshes_are_stripped(tmp_path):
    text = urdf_path("ur5").read_text()
    mesh = '<visual><geometry><mesh filename="package://ur_description/meshes/ur5/visual/base.dae"/></geometry></visual>'
    collision = '<collision><geometry><mesh filename="meshes/missing.stl"/></geometry></collision>'
    patched = text.replace('<link name="shoulder_link">', f'<link name="shoulder_link">{mesh}{collision}', 1)
    assert patched != text
    path = tmp_path / "ur5_meshes.urdf"
    path.write_text(patched)
    with pytest.raises(ValueError):  # MuJoCo itself cannot load it...
        mujoco.MjSpec.from_file(str(path)).compile()
    spec, _, _ = build_mujoco_spec(path)  # ...once stripped it can
    assert spec.compile().ngeom == 0
    sim = mj(urdf=str(path))
    np.testing.assert_allclose(sim.gravity(), mj().gravity(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ trajectories


@pytest.mark.parametrize("kw", [{}, {"damping": 2.0}, {"payload_mass": 2.0, "payload_com": [0.05, -0.02, 0.1]}])
def test_free_fall_agrees_with_the_pinocchio_backend(kw):
    a, b = pair(initial_velocities=V0, **kw)
    for sim in (a, b):
        sim.set_command(np.zeros(6))
    run(a, 0.5)
    run(b, 0.5)
    assert np.abs(a.q - np.array(Q0)).max() > 0.1  # it really fell
    dq, dv = np.abs(a.q - b.q).max(), np.abs(a.v - b.v).max()
    print(f"free fall 0.5 s {kw}: |dq| {dq:.2e} rad, |dv| {dv:.2e} rad/s")
    assert dq < 1e-9 and dv < 1e-9
    assert b.energy() == pytest.approx(a.energy(), abs=1e-9)
    assert b.time == pytest.approx(0.5) and b.steps == 500
    np.testing.assert_array_equal(b.effort, np.zeros(6))


def test_free_fall_comparison_sees_integrator_and_friction_differences():
    a = ArmSimulator(SimConfig(initial_positions=Q0, initial_velocities=V0))
    rk4 = MujocoArmSimulator(SimConfig(backend="mujoco", initial_positions=Q0, initial_velocities=V0), integrator="RK4")
    for sim in (a, rk4):
        sim.set_command(np.zeros(6))
        run(sim, 0.5)
    assert np.abs(a.q - rk4.q).max() > 1e-3
    # friction: Pinocchio's smooth Coulomb model vs MuJoCo's dry-friction constraint
    a, b = pair(initial_velocities=V0, friction=2.0)
    for sim in (a, b):
        sim.set_command(np.zeros(6))
        run(sim, 0.5)
    assert np.abs(a.q - b.q).max() > 1e-3
    with pytest.raises(ValueError, match="integrator"):
        MujocoArmSimulator(SimConfig(backend="mujoco"), integrator="Verlet")


def test_gravity_compensation_is_what_mujoco_applies():
    """(Holding the pose on every backend: test_sim.py.) With a payload, the torque MuJoCo applies is
    the gravity torque; the Pinocchio model's gravity torques hold MuJoCo's arm too."""
    a = ArmSimulator(SimConfig(initial_positions=Q0))
    sim = mj(hold_until_command=False, payload_mass=1.0)
    sim.set_command(sim.gravity())
    run(sim, 1.0)
    assert np.abs(sim.q - np.array(Q0)).max() < 1e-6 and np.abs(sim.v).max() < 1e-6
    np.testing.assert_allclose(sim.mj_data.actuator_force, sim.gravity(Q0), rtol=0, atol=1e-12)
    sim = mj(hold_until_command=False)
    sim.set_command(a.gravity(Q0))
    run(sim, 1.0)
    assert np.abs(sim.q - np.array(Q0)).max() < 1e-6


def test_the_clamped_effort_is_what_mujoco_applies():
    """(The effort limits on every backend: test_sim.py.) MuJoCo applies the clamped effort, and
    clamps by itself too (ctrlrange/forcerange), even when handed raw controls."""
    sim = mj()
    sim.set_command([1e4, -1e4, 1e4, -1e4, 1e4, -1e4])
    sim.step()
    sign = np.array([1, -1, 1, -1, 1, -1])
    np.testing.assert_array_equal(sim.mj_data.actuator_force, LIMITS * sign)
    np.testing.assert_array_equal(sim.mj_data.qfrc_actuator, LIMITS * sign)
    d = sim.mj_data
    d.ctrl[:] = 1e4 * sign
    mujoco.mj_forward(sim.mj_model, d)
    np.testing.assert_array_equal(d.actuator_force, LIMITS * sign)
    for mode, cmd in (("position", np.array(Q0) + 2.0), ("velocity", np.full(6, 3.0))):
        sim = mj(command_mode=mode, payload_mass=5.0)
        sim.set_command(cmd)
        forces = np.array(run(sim, 0.3, lambda s: (s.effort.copy(), s.mj_data.actuator_force.copy())))
        assert (np.abs(forces[:, 0]) == LIMITS).any()  # saturation really engaged
        np.testing.assert_array_equal(forces[:, 0], forces[:, 1])  # effort = what MuJoCo applied


# ------------------------------------------------------------------------------- servo modes


def test_servo_inverse_dynamics_is_mass_matrix_plus_bias_without_losses():
    sim = mj(command_mode="velocity", payload_mass=1.5)
    rng = np.random.default_rng(3)
    full = np.zeros((6, 6))
    for _ in range(20):
        sim.reset(q=rng.uniform(-2, 2, 6), v=rng.uniform(-1, 1, 6))
        a_ref = rng.uniform(-5, 5, 6)
        d = mujoco.MjData(sim.mj_model)
        d.qpos[:], d.qvel[:] = sim.q, sim.v
        mujoco.mj_forward(sim.mj_model, d)
        mujoco.mj_fullM(sim.mj_model, d, full)
        np.testing.assert_allclose(sim.servo_torque(a_ref), full @ a_ref + d.qfrc_bias, rtol=0, atol=1e-10)


def test_config_selects_the_backend():
    """(Configuration errors on every backend: test_sim.py.)"""
    assert SIM_BACKENDS == ("pinocchio", "mujoco")
    assert type(make_simulator(SimConfig())) is ArmSimulator
    # a joint name is a frame too (the frame of the link it moves), as in Pinocchio
    a, b = pair(payload_mass=1.0, payload_frame="elbow_joint", payload_com=[0.0, 0.0, 0.1])
    assert rel(b.gravity(), a.gravity()) < 1e-10


# ---------------------------------------------------------------------------------- the node


def test_ur5_sim_node_runs_on_mujoco(ros_node_env):
    from ros_harness import EFFORT_TOPIC, SimProbe, check_sim_exit, sim_process

    domain, env = ros_node_env(71)  # own domain
    q_initial = ArmSimulator(load_sim_config()).initial_q  # the robot's nominal posture
    names = ArmSimulator(SimConfig()).joint_names

    node = sim_process(env, "backend:=mujoco", "command_mode:=effort", "payload_mass:=0.0")
    probe = None
    try:
        probe = SimProbe(domain, "ur5_sim_mujoco_test_probe")
        assert probe.wait_for(lambda: probe.states or node.proc.poll() is not None, 30.0)
        assert node.proc.poll() is None, f"ur5_sim exited with {node.proc.returncode}:\n{node.text}"
        assert node.wait_for_line(r"simulating ur5\.urdf \(mujoco\)", 5.0), node.text

        time.sleep(0.3)
        probe.clear()
        assert probe.wait_for(lambda: len(probe.states) > 10, 12.0), "the joint states stopped"
        time.sleep(2.0)
        got = probe.messages()
        # the publication rate is load-dependent (tocpl-load-bench measures it): a stream, printed
        print(f"/joint_states from the MuJoCo backend: {len(got)} received in ~2 s")
        stamps = np.array([m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in got])
        assert (np.diff(stamps) > 0).all()
        assert all(list(m.name) == names for m in got)
        np.testing.assert_allclose(got[0].position, q_initial, atol=1e-9)  # held until the first command

        # the Pinocchio model's gravity torques hold the MuJoCo arm; the effort is reported
        g0 = ArmSimulator(SimConfig()).gravity(q_initial)
        probe.publish(EFFORT_TOPIC, g0)
        assert probe.wait_for(lambda: np.allclose(probe.latest().effort, g0, atol=1e-9), 5.0)
        time.sleep(0.5)
        last = probe.latest()
        assert np.abs(np.array(last.position) - q_initial).max() < 1e-6
        np.testing.assert_allclose(last.effort, g0, atol=1e-9)
        # a torque beyond gravity moves it
        probe.publish(EFFORT_TOPIC, g0 + [0, 0, 0, 0, 0, 0.5])
        assert probe.wait_for(lambda: abs(probe.latest().position[5] - q_initial[5]) > 0.02, 5.0)
    finally:
        if probe is not None:
            probe.close()
        code = node.stop()
    check_sim_exit(node, code)


@pytest.mark.parametrize("robot", ["panda", "kinova"])
def test_another_arms_mujoco_model_is_its_pinocchio_model(robot):
    """issue 25: arm_sim's MuJoCo backend for any robot YAML: the Panda (fingers locked, gravity
    added by its controller) and the Kinova (three continuous joints, one angle each in MuJoCo,
    armature from its YAML) have the dynamics of the model the policies are trained on."""
    a = make_simulator(SimConfig(robot=robot, backend="pinocchio"))
    b = make_simulator(SimConfig(robot=robot, backend="mujoco"))
    rng = np.random.default_rng(3)
    lo = np.where(np.isfinite(a.robot.lower_position_limit), a.robot.lower_position_limit, -np.pi)
    hi = np.where(np.isfinite(a.robot.upper_position_limit), a.robot.upper_position_limit, np.pi)
    for _ in range(20):
        q, v = rng.uniform(lo, hi), rng.uniform(-1.0, 1.0, a.robot.nv)
        assert rel(b.mass_matrix(q), a.mass_matrix(q)) < 1e-10
        assert rel(b.bias(q, v), a.bias(q, v)) < 1e-10
