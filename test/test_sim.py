"""The simulated arm behind the ur5_sim node (ROS-free): dynamics, losses, servo, payload, config.

The checks every physics backend must pass are parametrised over BACKENDS (pinocchio, mujoco);
what only the Pinocchio backend does (ABA, its loss models, the payload's lever) is checked here
on it alone; MuJoCo's own (its model against Pinocchio's, its actuators) in test_sim_mujoco.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, replace

import numpy as np
import pinocchio as pin
import pytest
import yaml

from tocpl_ros.config import ConfigError, FieldError, field_docs, read_yaml
from tocpl_ros.interfaces import SIM_BACKENDS
from tocpl_ros.resources import config_path, urdf_path
from tocpl_ros.sim import make_simulator
from tocpl_ros.sim.base import CommandError
from tocpl_ros.sim.config import SimConfig, default_sim_config, load_sim_config
from tocpl_ros.sim.pinocchio_backend import ArmSimulator

Q0 = [0.0, -1.2, 1.6, -0.4, 1.57, 0.0]
V0 = [0.5, -0.5, 1.0, 1.0, -1.0, 1.0]
G = 9.81
LIMITS = np.array([150.0, 150.0, 150.0, 28.0, 28.0, 28.0])
BACKENDS = list(SIM_BACKENDS)


def make(backend: str = "pinocchio", **kw):
    """A simulator of ``backend`` at Q0 (make_simulator: what the node builds)."""
    kw.setdefault("initial_positions", Q0)
    return make_simulator(SimConfig(backend=backend, **kw))


def run(sim: ArmSimulator, seconds: float, record=None) -> list:
    out = []
    for _ in range(int(round(seconds / sim.dt))):
        sim.step()
        if record is not None:
            out.append(record(sim))
    return out


# ------------------------------------------------------------------------------- dynamics


def test_free_fall_matches_aba_integrated_semi_implicitly():
    sim = make(initial_velocities=V0)
    sim.set_command(np.zeros(6))
    model = pin.buildModelFromUrdf(str(urdf_path("ur5")))
    data = model.createData()
    q, v, dt = np.array(Q0), np.array(V0), 1e-3
    for _ in range(500):
        a = pin.aba(model, data, q, v, np.zeros(6))
        v = v + dt * a
        q = pin.integrate(model, q, dt * v)
        sim.step()
    assert np.abs(q - np.array(Q0)).max() > 0.1  # it really fell
    np.testing.assert_allclose(sim.q, q, atol=1e-10)
    np.testing.assert_allclose(sim.v, v, atol=1e-10)
    assert sim.time == pytest.approx(0.5) and sim.steps == 500
    np.testing.assert_array_equal(sim.effort, np.zeros(6))


def test_substeps_split_the_step():
    a, b = make(initial_velocities=V0), make(initial_velocities=V0)
    for sim in (a, b):
        sim.set_command(np.zeros(6))
    for _ in range(50):
        a.step(0.002, substeps=2)
        b.step()
        b.step()
    np.testing.assert_allclose(a.q, b.q, atol=1e-12)
    np.testing.assert_allclose(a.v, b.v, atol=1e-12)
    with pytest.raises(ValueError):
        a.step(0.0)


def test_damping_dissipates_energy_and_without_it_energy_is_kept():
    def energies(**kw):
        sim = make(initial_velocities=V0, **kw)
        sim.set_command(np.zeros(6))
        return np.array([sim.energy()] + run(sim, 1.0, lambda s: s.energy()))

    damped = energies(damping=2.0)
    assert (np.diff(damped) < 0).all()  # decreases at every step
    assert damped[0] - damped[-1] > 20.0
    free = energies()  # control: semi-implicit Euler roughly keeps the energy
    assert abs(free[-1] - free[0]) < 2.0
    assert np.diff(free).max() > 0  # (and does not decrease monotonically by itself)


def test_coulomb_friction_never_injects_energy():
    sim = make(friction=[3.0, 3.0, 3.0, 1.0, 1.0, 1.0], initial_velocities=V0)
    rng = np.random.default_rng(0)
    for v in rng.normal(scale=[1e-3, 1e-2, 1.0, 10.0, 0.1, 1e-4], size=(200, 6)):
        assert (sim.losses(v) * v >= 0).all()
    assert sim.losses(np.full(6, 10.0)) == pytest.approx(sim.friction)  # saturates at f_c
    sim.set_command(np.zeros(6))
    e = np.array([sim.energy()] + run(sim, 1.0, lambda s: s.energy()))
    assert (np.diff(e) < 1e-9).all()
    assert e[0] - e[-1] > 10.0


def test_stiff_damping_stays_stable():
    # h·d/M far above 2 on the wrists: an explicit treatment of the damping would blow up.
    sim = make(damping=[0.0, 0.0, 0.0, 1e4, 1e4, 1e4], initial_velocities=V0)
    sim.set_command(np.zeros(6))
    run(sim, 0.2)
    assert np.isfinite(sim.q).all() and np.abs(sim.v[3:]).max() < 1.0


# ------------------------------------------------------------------------------- payload


@pytest.mark.parametrize("com", [[0.0, 0.0, 0.0], [0.05, -0.02, 0.1]])
def test_payload_adds_m_g_lever_to_the_gravity_torque(com):
    mass, q = 2.0, np.array(Q0)
    plain, loaded = make(), make(payload_mass=mass, payload_com=com)
    delta = loaded.gravity(q) - plain.gravity(q)
    # the lever of every joint, from the plain model's kinematics
    model = pin.buildModelFromUrdf(str(urdf_path("ur5")))
    data = model.createData()
    pin.forwardKinematics(model, data, q)
    pin.updateFramePlacements(model, data)
    tool = data.oMf[model.getFrameId("tool0")]
    p_mass = tool.act(np.array(com))
    axes = {1: [0, 0, 1], 2: [0, 1, 0], 3: [0, 1, 0], 4: [0, 1, 0], 5: [0, 0, 1], 6: [0, 1, 0]}
    for j in range(1, 7):
        joint = data.oMi[j]
        axis = joint.rotation @ np.array(axes[j], dtype=float)
        # g(q) holds the arm against gravity: for a horizontal axis its magnitude is
        # m·g·(horizontal distance of the mass from the axis)
        lever = np.dot(np.cross(p_mass - joint.translation, [0.0, 0.0, 1.0]), axis)
        assert delta[j - 1] == pytest.approx(mass * G * lever, abs=1e-9), model.names[j]
    assert delta[0] == pytest.approx(0.0, abs=1e-9)  # vertical pan axis: no lever
    assert abs(delta[1]) > 0.5 * mass * G  # the shoulder carries it at > 0.5 m


# -------------------------------------------------------------------------------- config


def test_config_file_is_a_ros_params_file_with_every_field():
    raw = read_yaml(config_path("ur5_sim.yaml"))
    params = raw["ur5_sim"]["ros__parameters"]
    assert set(params) == {f.name for f in fields(SimConfig)}
    config = load_sim_config()
    assert config == default_sim_config()
    assert config.physics_rate == 1000.0 and config.publish_rate == 500.0
    assert config.initial_positions is None and config.command_mode == "effort"  # posture: the robot's
    assert ArmSimulator(config).initial_q.tolist() == Q0
    docs = field_docs(SimConfig)
    assert all(docs.get(f.name) for f in fields(SimConfig))


def test_plain_mapping_and_all_sections_load(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("damping: [1, 2, 3, 4, 5, 6]\ncommand_mode: velocity\n")
    config = load_sim_config(plain)
    assert config.damping == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and config.command_mode == "velocity"
    wild = tmp_path / "wild.yaml"
    wild.write_text("/**:\n  ros__parameters:\n    friction: 1.5\nur5_sim:\n  ros__parameters:\n    payload_mass: 2\n")
    config = load_sim_config(wild)
    assert config.friction == 1.5 and config.payload_mass == 2.0


def _variant(tmp_path, **params):
    data = read_yaml(config_path("ur5_sim.yaml"))
    data["ur5_sim"]["ros__parameters"].update(params)
    path = tmp_path / "ur5_sim_variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "params, key, words",
    [
        ({"dampng": 1.0}, "dampng", ["unknown key", "damping"]),
        ({"damping": -1.0}, "damping", [">= 0"]),
        ({"friction": [1.0, -2.0]}, "friction", [">= 0"]),
        ({"command_mode": "torque"}, "command_mode", ["effort", "velocity", "position"]),
        ({"backend": "bullet"}, "backend", ["pinocchio", "mujoco"]),
        ({"physics_rate": 0.0}, "physics_rate", ["> 0"]),
        ({"publish_rate": "fast"}, "publish_rate", ["expected float"]),
        ({"payload_mass": -0.5}, "payload_mass", [">= 0"]),
        ({"payload_com": [0.0, 0.1]}, "payload_com", ["3"]),
        ({"position_kp": 0.0}, "position_kp", ["> 0"]),
        ({"initial_positions": [0.0, float("nan")]}, "initial_positions[1]", ["finite"]),
        ({"realtime_priority": 100}, "realtime_priority", ["0..99"]),
        ({"realtime_priority": 2.5}, "realtime_priority", ["expected int"]),
    ],
)
def test_config_errors_name_the_key(tmp_path, params, key, words):
    path = _variant(tmp_path, **params)
    with pytest.raises(ConfigError) as info:
        load_sim_config(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message, message
    for word in words:
        assert word in message, message


def test_params_file_section_without_ros__parameters(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ur5_sim:\n  damping: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_sim_config(path)
    assert "ros__parameters" in str(info.value) and "'ur5_sim'" in str(info.value)


def test_sim_module_is_free_of_ros_crocoddyl_and_mujoco():
    """tocpl_ros.sim loads neither ROS nor Crocoddyl, and MuJoCo only for the mujoco backend."""
    code = (
        "import sys, tocpl_ros.sim; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rcl', 'rmw', 'crocoddyl', 'mujoco') "
        "or m == 'tocpl_ros.sim.mujoco_backend']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------- every backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_gravity_compensation_holds_the_pose(backend):
    sim = make(backend, hold_until_command=False)
    sim.set_command(sim.gravity())
    run(sim, 1.0)
    assert np.abs(sim.q - np.array(Q0)).max() < 1e-6
    assert np.abs(sim.v).max() < 1e-6
    np.testing.assert_allclose(sim.effort, sim.gravity(Q0))
    # control: 90 % of it does not hold
    weak = make(backend, hold_until_command=False)
    weak.set_command(0.9 * weak.gravity())
    run(weak, 1.0)
    assert np.abs(weak.q - np.array(Q0)).max() > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_hold_until_first_command_and_zero_torque_without_it(backend):
    held = make(backend, damping=0.5, friction=1.0)
    run(held, 1.0)
    assert np.abs(held.q - np.array(Q0)).max() < 1e-9
    np.testing.assert_allclose(held.effort, held.gravity(), atol=1e-9)
    loose = make(backend, hold_until_command=False, initial_velocities=V0)
    run(loose, 0.2)
    assert np.abs(loose.q - np.array(Q0)).max() > 1e-2
    np.testing.assert_array_equal(loose.effort, np.zeros(6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_restores_the_initial_state_and_clears_the_command(backend):
    sim = make(backend, hold_until_command=False, initial_velocities=V0)
    sim.set_command(np.zeros(6))
    run(sim, 0.1)
    sim.reset()
    np.testing.assert_array_equal(sim.q, Q0)
    np.testing.assert_array_equal(sim.v, V0)
    assert sim.command is None and sim.time == 0.0 and sim.steps == 0
    sim.reset(q=np.zeros(6), v=np.zeros(6))
    np.testing.assert_array_equal(sim.q, np.zeros(6))
    with pytest.raises(ValueError):
        sim.reset(q=[0.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_commands_are_validated_and_the_previous_one_is_kept(backend):
    sim = make(backend)
    sim.set_command(np.ones(6))
    for bad in ([1.0] * 5, [1.0] * 7, [1.0, 2.0, float("nan"), 0.0, 0.0, 0.0], [float("inf")] * 6):
        with pytest.raises(CommandError):
            sim.set_command(bad)
    np.testing.assert_array_equal(sim.command, np.ones(6))
    with pytest.raises(CommandError, match="velocity"):
        sim.set_command(np.zeros(6), mode="velocity")
    with pytest.raises(CommandError, match="expected 6 values"):
        sim.validate_command([0.0])


LOSSES = [{}, {"damping": 1.0}, {"damping": 1.0, "friction": 2.0}]


@pytest.mark.parametrize("losses", LOSSES, ids=["no_losses", "damping", "damping_friction"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_velocity_mode_tracks_a_constant_velocity(backend, losses):
    v_cmd = np.array([0.2, -0.1, 0.3, 0.2, -0.2, 0.5])
    sim = make(backend, command_mode="velocity", payload_mass=1.5, **losses)
    sim.set_command(v_cmd)
    speeds = run(sim, 0.5, lambda s: s.v.copy())
    assert np.abs(sim.v - v_cmd).max() < 1e-4
    # first-order loop of bandwidth kv = 50 rad/s: 63 % of the step after 1/kv = 20 ms
    np.testing.assert_allclose(speeds[19], (1 - np.exp(-1)) * v_cmd, rtol=0.05)
    assert np.abs(sim.effort).max() > 0


@pytest.mark.parametrize("losses", LOSSES, ids=["no_losses", "damping", "damping_friction"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_position_mode_tracks_a_constant_position(backend, losses):
    q_cmd = np.array(Q0) + np.array([0.1, -0.1, 0.2, 0.1, -0.2, 0.3])
    sim = make(backend, command_mode="position", payload_mass=1.5, **losses)
    sim.set_command(q_cmd)
    run(sim, 1.0)
    assert np.abs(sim.q - q_cmd).max() < 1e-5
    assert np.abs(sim.v).max() < 1e-4
    # steady state: the drives hold gravity (payload included) plus nothing else
    np.testing.assert_allclose(sim.effort, sim.gravity(), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torques_never_exceed_the_effort_limits(backend):
    sim = make(backend)
    np.testing.assert_array_equal(sim.effort_limit, LIMITS)
    sim.set_command([1e4, -1e4, 1e4, -1e4, 1e4, -1e4])
    sim.step()
    np.testing.assert_array_equal(sim.effort, LIMITS * [1, -1, 1, -1, 1, -1])
    for mode, cmd in (("position", np.array(Q0) + 2.0), ("velocity", np.full(6, 3.0))):
        sim = make(backend, command_mode=mode, payload_mass=5.0)
        sim.set_command(cmd)
        efforts = np.array(run(sim, 0.3, lambda s: s.effort.copy()))
        assert (np.abs(efforts) <= LIMITS).all()
        assert (np.abs(efforts) == LIMITS).any()  # saturation really engaged


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_payload_frame_is_named(backend):
    with pytest.raises(FieldError) as info:
        make(backend, payload_mass=1.0, payload_frame="gripper")
    assert info.value.field == "payload_frame" and "gripper" in str(info.value)


@pytest.mark.parametrize(
    "params, key",
    [
        ({"damping": [1.0, 2.0]}, "damping"),
        ({"velocity_kv": [1.0] * 7}, "velocity_kv"),
        ({"initial_positions": [0.0] * 5}, "initial_positions"),
        ({"urdf": "ur10_nonexistent"}, "urdf"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_per_joint_errors_name_the_key(backend, params, key):
    with pytest.raises(FieldError) as info:
        make_simulator(replace(load_sim_config(), backend=backend, **params))
    assert info.value.field == key and str(info.value).startswith(f"{key}: ")
