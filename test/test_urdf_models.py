"""Checks for the robot models in urdf/.

* ur5.urdf must reproduce the reference example_robot_data UR5 (kinematics of
  tool0, dynamics, joint names/order and limits).
* pendulum.urdf / double_pendulum.urdf: structure, limits, and q = 0 being the
  upright (unstable) equilibrium.
"""

import pathlib

import example_robot_data
import numpy as np
import pinocchio
import pytest

URDF_DIR = pathlib.Path(__file__).resolve().parents[1] / "urdf"

UR5_JOINTS = [
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
]
TOL = 1e-6
N_SAMPLES = 50


def _joint_names(model):
    return list(model.names)[1:]  # drop "universe"


# --------------------------------------------------------------------------- UR5


@pytest.fixture(scope="module")
def ur5_pair():
    ours = pinocchio.buildModelFromUrdf(str(URDF_DIR / "ur5.urdf"))
    ref = example_robot_data.load("ur5").model
    return ours, ref


def test_ur5_structure_and_limits(ur5_pair):
    ours, ref = ur5_pair
    assert ours.nq == ours.nv == 6
    assert ref.nq == ref.nv == 6
    assert _joint_names(ours) == UR5_JOINTS
    assert _joint_names(ours) == _joint_names(ref)
    assert np.array_equal(ours.effortLimit, ref.effortLimit)
    assert np.array_equal(ours.velocityLimit, ref.velocityLimit)
    assert np.array_equal(ours.lowerPositionLimit, ref.lowerPositionLimit)
    assert np.array_equal(ours.upperPositionLimit, ref.upperPositionLimit)
    assert np.array_equal(ours.effortLimit, [150.0, 150.0, 150.0, 28.0, 28.0, 28.0])
    assert np.array_equal(ours.velocityLimit, [3.15, 3.15, 3.15, 3.2, 3.2, 3.2])
    assert np.array_equal(ours.damping, np.zeros(6))
    assert np.array_equal(ours.friction, np.zeros(6))
    for name in ["base_link", "shoulder_link", "upper_arm_link", "forearm_link",
                 "wrist_1_link", "wrist_2_link", "wrist_3_link", "ee_link",
                 "base", "tool0"]:
        assert ours.existFrame(name), name


def test_ur5_body_inertias_match(ur5_pair):
    ours, ref = ur5_pair
    for j in range(1, ours.njoints):
        assert np.allclose(ours.inertias[j].toDynamicParameters(),
                           ref.inertias[j].toDynamicParameters(), atol=TOL, rtol=0), j


def test_ur5_kinematics_and_dynamics_match(ur5_pair):
    ours, ref = ur5_pair
    d_ours, d_ref = ours.createData(), ref.createData()
    fid_ours, fid_ref = ours.getFrameId("tool0"), ref.getFrameId("tool0")
    assert fid_ours < len(ours.frames) and fid_ref < len(ref.frames)

    rng = np.random.default_rng(1234)
    lo, hi = ref.lowerPositionLimit, ref.upperPositionLimit
    zero = np.zeros(6)
    worst = dict(pos=0.0, rot=0.0, M=0.0, g=0.0, nle=0.0)
    for _ in range(N_SAMPLES):
        q = rng.uniform(lo, hi)
        v = rng.uniform(-ref.velocityLimit, ref.velocityLimit)

        pinocchio.framesForwardKinematics(ours, d_ours, q)
        pinocchio.framesForwardKinematics(ref, d_ref, q)
        P, R = d_ours.oMf[fid_ours], d_ref.oMf[fid_ref]
        worst["pos"] = max(worst["pos"], np.abs(P.translation - R.translation).max())
        worst["rot"] = max(worst["rot"], np.abs(P.rotation - R.rotation).max())

        M1 = pinocchio.crba(ours, d_ours, q).copy()
        M2 = pinocchio.crba(ref, d_ref, q).copy()
        M1 = np.triu(M1) + np.triu(M1, 1).T
        M2 = np.triu(M2) + np.triu(M2, 1).T
        worst["M"] = max(worst["M"], np.abs(M1 - M2).max())

        g1 = pinocchio.computeGeneralizedGravity(ours, d_ours, q).copy()
        g2 = pinocchio.computeGeneralizedGravity(ref, d_ref, q).copy()
        worst["g"] = max(worst["g"], np.abs(g1 - g2).max())

        n1 = pinocchio.rnea(ours, d_ours, q, v, zero).copy()
        n2 = pinocchio.rnea(ref, d_ref, q, v, zero).copy()
        worst["nle"] = max(worst["nle"], np.abs(n1 - n2).max())

    # sanity: the quantities compared are not trivially zero
    assert np.abs(g2).max() > 1.0 and np.abs(M2).max() > 0.1
    print("UR5 max abs differences:", worst)
    for key, val in worst.items():
        assert val < TOL, (key, val)


# ------------------------------------------------------------------- pendulums

PENDULUMS = [
    # file, joint names, effort, tip height at q=0
    ("pendulum.urdf", ["joint1"], 3.0, 0.5),
    ("double_pendulum.urdf", ["joint1", "joint2"], 5.0, 1.0),
]


@pytest.mark.parametrize("fname,joints,effort,tip_height", PENDULUMS)
def test_pendulum_structure(fname, joints, effort, tip_height):
    model = pinocchio.buildModelFromUrdf(str(URDF_DIR / fname))
    n = len(joints)
    assert model.nq == model.nv == n
    assert _joint_names(model) == joints
    assert np.array_equal(model.effortLimit, np.full(n, effort))
    assert np.array_equal(model.velocityLimit, np.full(n, 10.0))
    assert np.array_equal(model.lowerPositionLimit, np.full(n, -6.2831853))
    assert np.array_equal(model.upperPositionLimit, np.full(n, 6.2831853))
    assert model.existFrame("base_link") and model.existFrame("tip")
    # total mass: 1 kg per link
    data = model.createData()
    assert pinocchio.computeTotalMass(model, data) == pytest.approx(float(n), abs=1e-12)


@pytest.mark.parametrize("fname,joints,effort,tip_height", PENDULUMS)
def test_pendulum_upright_equilibrium_and_tip(fname, joints, effort, tip_height):
    model = pinocchio.buildModelFromUrdf(str(URDF_DIR / fname))
    data = model.createData()
    n = model.nq
    q0 = np.zeros(n)

    # tip straight above the pivot at q = 0
    pinocchio.framesForwardKinematics(model, data, q0)
    tip = data.oMf[model.getFrameId("tip")].translation
    assert np.allclose(tip, [0.0, 0.0, tip_height], atol=1e-12), tip

    # q = 0 is an equilibrium
    g0 = pinocchio.computeGeneralizedGravity(model, data, q0)
    assert np.abs(g0).max() < 1e-12, g0

    # ... and it is unstable: a small positive tilt accelerates further away
    q = np.zeros(n)
    q[0] = 0.05
    ddq = pinocchio.aba(model, data, q, np.zeros(n), np.zeros(n))
    assert ddq[0] > 0.1, ddq

    # hanging down (q = pi) is also an equilibrium, and it is stable
    q_down = np.zeros(n)
    q_down[0] = np.pi
    g_down = pinocchio.computeGeneralizedGravity(model, data, q_down)
    assert np.abs(g_down).max() < 1e-9, g_down
    q_down[0] += 0.05
    ddq_down = pinocchio.aba(model, data, q_down, np.zeros(n), np.zeros(n))
    assert ddq_down[0] < -0.1, ddq_down


def test_pendulum_gravity_torque_value():
    # point mass at the tip: tau_g = m g l sin(q) about +y
    model = pinocchio.buildModelFromUrdf(str(URDF_DIR / "pendulum.urdf"))
    data = model.createData()
    q = np.array([0.3])
    g = pinocchio.computeGeneralizedGravity(model, data, q)
    assert g[0] == pytest.approx(-1.0 * 9.81 * 0.5 * np.sin(0.3), abs=1e-9)
