"""PolicyController (tocpl_ros.control.controller): metadata checks, input rejection, safety layer,
output modes and a fuzz loop. ROS-free; policies are real ONNX exports of ur5_reach."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pinocchio as pin
import pytest
import torch

from tocpl_ros.config import FieldError
from tocpl_ros.control.config import Command, ControllerConfig
from tocpl_ros.control.controller import PolicyController
from tocpl_ros.policy_file import OnnxPolicy, PolicyFileError, read_onnx_metadata
from tocpl_ros.sim.config import SimConfig
from tocpl_ros.sim.pinocchio_backend import ArmSimulator
from tocpl_ros.tasks import load_task
from tocpl_training.export import export_onnx
from tocpl_training.learning.policy import make_policy

ROOT = Path(__file__).resolve().parents[1]
JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]
Q0 = np.array([0.0, -1.2, 1.6, -0.4, 1.57, 0.0])
TARGET = [0.5, 0.1, 0.4]
PERIOD = 1.0 / 500.0


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def task():
    return load_task("ur5_reach")


@pytest.fixture(scope="module")
def files(task, tmp_path_factory):
    """Policy files: 'good' (perturbed: large outputs, some saturated), 'tight' (metadata
    bounds half of what the graph clamps to), and files with broken metadata."""
    folder = tmp_path_factory.mktemp("policies")
    policy = make_policy(task, seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in policy.net.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
        policy.net[-1].weight.mul_(4.0)
    good = export_onnx(policy.eval(), task, folder / "good.onnx")
    md = read_onnx_metadata(good)
    swapped = list(md.joint_names)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    renamed = [("elbow" if n == "elbow_joint" else n) for n in md.joint_names]
    variants = {
        "tight": dict(u_min=0.5 * md.u_min, u_max=0.5 * md.u_max),
        "renamed": dict(joint_names=renamed),
        "swapped": dict(joint_names=swapped),
        "over_limit": dict(u_min=md.u_min * np.array([1, 1, 1, 1, 2, 1]), u_max=md.u_max * np.array([1, 1, 1, 1, 2, 1])),
        "bad_block": dict(obs_layout=[("q", 6), ("v", 6), ("goal", 3)]),
    }
    out = {"good": good, "untrained": export_onnx(make_policy(task, seed=11).eval(), task, folder / "untrained.onnx")}
    for name, changes in variants.items():
        out[name] = rewrite_metadata(good, folder / f"{name}.onnx", **changes)
    return out


def rewrite_metadata(src: Path, dst: Path, **changes) -> Path:
    """A copy of a policy file with some metadata fields replaced (graph unchanged)."""
    metadata = dataclasses.replace(read_onnx_metadata(src), **changes)
    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata.to_props())
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def robot():
    model = pin.buildModelFromUrdf(str(ROOT / "urdf" / "ur5.urdf"))
    return model, model.createData()


def gravity(robot, q):
    model, data = robot
    return pin.computeGeneralizedGravity(model, data, np.asarray(q, dtype=float)).copy()


def make(files, name="good", **config) -> PolicyController:
    config.setdefault("initial_target", TARGET)
    return PolicyController(files[name], ControllerConfig(**config))


def feed(ctl, t, q=Q0, v=None, names=JOINTS):
    v = np.zeros(6) if v is None else v
    return ctl.update_joint_state(names, q, v, stamp=t, received=t)


def policy_u(files, q, v, target, name="good"):
    """The torque the controller must use: the ONNX output clamped to the file's bounds."""
    pol = OnnxPolicy(files[name])
    raw = pol(np.concatenate([q, v, target]))
    return np.clip(raw, pol.metadata.u_min, pol.metadata.u_max), raw


def random_states(n, seed, spread=0.6, vmax=2.0):
    rng = np.random.default_rng(seed)
    return Q0 + rng.uniform(-spread, spread, (n, 6)), rng.uniform(-vmax, vmax, (n, 6))


# ------------------------------------------------------------------------ metadata


def test_matching_metadata_passes(files, task):
    ctl = make(files)
    ctl.check_metadata(task.joint_names)
    ctl.check_metadata(task.joint_names, dt=task.dt)
    ctl.check_metadata()
    assert ctl.joint_names == JOINTS


def test_expected_joint_order_mismatch_is_named(files):
    ctl = make(files)
    wrong = list(JOINTS)
    wrong[0], wrong[3] = wrong[3], wrong[0]
    with pytest.raises(PolicyFileError) as err:
        ctl.check_metadata(wrong)
    msg = str(err.value)
    assert "different order" in msg
    assert "#0: 'shoulder_pan_joint' vs 'wrist_1_joint'" in msg and "#3" in msg


def test_expected_joint_names_and_count_mismatch(files):
    ctl = make(files)
    with pytest.raises(PolicyFileError, match="has 6 joints, expected joint_names has 5"):
        ctl.check_metadata(JOINTS[:5])
    other = JOINTS[:5] + ["gripper_joint"]
    with pytest.raises(PolicyFileError) as err:
        ctl.check_metadata(other)
    assert "missing from policy (tocpl.joint_names): ['gripper_joint']" in str(err.value)
    assert "not in expected joint_names: ['wrist_3_joint']" in str(err.value)


def test_policy_joint_names_differing_from_urdf_refused(files):
    with pytest.raises(PolicyFileError) as err:
        make(files, "renamed")
    msg = str(err.value)
    assert "joint names differ from the robot's" in msg
    assert "['elbow_joint']" in msg and "['elbow']" in msg and "ur5.urdf" in msg
    with pytest.raises(PolicyFileError, match=r"different order \(#1: 'elbow_joint' vs 'shoulder_lift_joint'"):
        make(files, "swapped")


def test_dt_mismatch(files):
    ctl = make(files)
    with pytest.raises(PolicyFileError, match=r"policy dt \(tocpl.dt\) is 0.02 s but the configured control period is 0.002 s"):
        ctl.check_metadata(dt=0.002)
    ctl = make(files, expected_dt=0.01)  # configured: checked by default
    with pytest.raises(PolicyFileError, match="0.01 s"):
        ctl.check_metadata()
    with pytest.raises(ValueError):
        ctl.check_metadata(dt=-1.0)


def test_bounds_beyond_urdf_effort_limits_refused(files):
    with pytest.raises(PolicyFileError) as err:
        make(files, "over_limit")
    msg = str(err.value)
    assert "exceed the URDF effort limits" in msg
    assert "wrist_2_joint: policy [-56, 56] vs URDF effort limit 28" in msg
    assert "wrist_1_joint" not in msg


def test_unknown_observation_block_refused(files):
    with pytest.raises(PolicyFileError, match="observation block 'goal'"):
        make(files, "bad_block")


def test_config_range_checks():
    for kwargs, key in [
        (dict(output_mode="torque"), "output_mode"),
        (dict(safe_mode="freeze"), "safe_mode"),
        (dict(stale_periods=0), "stale_periods"),
        (dict(stale_periods=2.5), "stale_periods"),
        (dict(rate=0.0), "rate"),
        (dict(rate=float("nan")), "rate"),
        (dict(fade_in=-1.0), "fade_in"),
        (dict(target_limits=[0, 1, 0, 1]), "target_limits"),
        (dict(target_limits=[1, 0, 0, 1, 0, 1]), "target_limits"),
        (dict(initial_target=[0.5, 0.1]), "initial_target"),
        (dict(target_out_of_limits="ignore"), "target_out_of_limits"),
        (dict(max_joint_velocity=0.0), "max_joint_velocity"),
        (dict(expected_dt=0.0), "expected_dt"),
        (dict(hold_kp=-1.0), "hold_kp"),
        (dict(rate=100.0, hold_kp=1000.0), "hold_kp"),  # ω·period = 0.32 > 0.25
        (dict(rate=100.0, hold_kd=60.0), "hold_kd"),  # kd·period = 0.6 > 0.5
    ]:
        with pytest.raises(FieldError) as err:
            ControllerConfig(**kwargs)
        assert err.value.field.startswith(key), (kwargs, err.value)


# ------------------------------------------------------------------------ outputs


def test_no_command_before_first_joint_state(files):
    ctl = make(files)
    ctl.start()
    cmd = ctl.compute(0.0)
    assert cmd.values is None and cmd.safe and "no joint state" in cmd.reason


def test_clamps_to_metadata_limits_even_if_graph_does_not(files):
    ctl = make(files, "tight", fade_in=0.0)
    ctl.start()
    md = ctl.metadata
    qs, vs = random_states(300, seed=1, spread=1.0, vmax=3.0)
    beyond = 0
    for i, (q, v) in enumerate(zip(qs, vs)):
        t = i * PERIOD
        assert feed(ctl, t, q, v) is None
        cmd = ctl.compute(t)
        assert not cmd.safe
        _, raw = policy_u(files, q, v, np.array(TARGET), "tight")
        beyond += bool(((raw > md.u_max) | (raw < md.u_min)).any())
        np.testing.assert_allclose(cmd.values, np.clip(raw, md.u_min, md.u_max), atol=1e-9)
        assert (cmd.values >= md.u_min).all() and (cmd.values <= md.u_max).all()
    assert beyond > 30, "the test policy should exceed the tightened bounds often"
    assert ctl.stats.clamped_ticks == beyond


def test_out_of_order_joint_names_are_mapped(files):
    ordered, shuffled = make(files, fade_in=0.0), make(files, fade_in=0.0)
    ordered.start(), shuffled.start()
    rng = np.random.default_rng(5)
    qs, vs = random_states(50, seed=2)
    for i, (q, v) in enumerate(zip(qs, vs)):
        perm = rng.permutation(6)
        t = i * PERIOD
        assert feed(ordered, t, q, v) is None
        assert shuffled.update_joint_state([JOINTS[j] for j in perm], q[perm], v[perm], t, t) is None
        a, b = ordered.compute(t), shuffled.compute(t)
        np.testing.assert_array_equal(shuffled.q, q)
        np.testing.assert_array_equal(a.values, b.values)
    # and a permuted state differs from feeding the permuted values unmapped
    assert not np.allclose(qs[0][perm], qs[0])


@pytest.mark.parametrize(
    "names, position, velocity, key",
    [
        (JOINTS[:5], Q0[:5], np.zeros(5), "missing_joint"),
        (JOINTS + ["gripper_joint"], np.r_[Q0, 0.0], np.zeros(7), "unknown_joint"),
        (JOINTS[:5] + ["elbow"], Q0, np.zeros(6), "unknown_joint"),
        (JOINTS[:5] + ["elbow_joint"], Q0, np.zeros(6), "duplicate_joint"),
        (JOINTS, Q0[:5], np.zeros(6), "length"),
        (JOINTS, Q0, np.zeros(7), "length"),
        (JOINTS, Q0, [], "length"),
        (JOINTS, np.r_[Q0[:2], np.nan, Q0[3:]], np.zeros(6), "nonfinite"),
        (JOINTS, Q0, np.r_[0, 0, 0, np.inf, 0, 0], "nonfinite"),
        (JOINTS, np.r_[Q0[:5], 1e9], np.zeros(6), "position_bound"),
        (JOINTS, Q0, np.full(6, 50.0), "velocity_bound"),
        (JOINTS, ["a"] * 6, np.zeros(6), "malformed"),
        ([1, 2, 3, 4, 5, 6], Q0, np.zeros(6), "malformed"),
    ],
)
def test_bad_joint_states_rejected(files, names, position, velocity, key):
    ctl = make(files)
    assert feed(ctl, 0.0) is None
    before = ctl.q
    reason = ctl.update_joint_state(names, position, velocity, 0.001, 0.001)
    assert isinstance(reason, str) and reason
    assert ctl.stats.rejected[key] == 1, ctl.stats.rejected
    np.testing.assert_array_equal(ctl.q, before)  # the rejected state was not used


def test_extra_joints_allowed_when_configured(files):
    ctl = make(files, allow_extra_joints=True)
    assert ctl.update_joint_state(["finger"] + JOINTS, np.r_[0.3, Q0], np.zeros(7), 0.0) is None
    np.testing.assert_array_equal(ctl.q, Q0)
    assert ctl.update_joint_state(["finger"] + JOINTS[:5], np.r_[0.3, Q0[:5]], np.zeros(6), 0.1) is not None


def test_nan_states_rejected_then_safe_within_stale_limit(files, robot):
    ctl = make(files, fade_in=0.0, safe_mode="gravity")
    ctl.start()
    assert feed(ctl, 0.0) is None
    assert not ctl.compute(0.0).safe
    bad_q = Q0.copy()
    bad_q[2] = np.nan
    for k in range(1, 20):
        t = k * PERIOD
        assert "NaN" in feed(ctl, t, bad_q)
        cmd = ctl.compute(t)
        assert cmd.safe == (k > 5), (k, cmd)
        assert np.isfinite(cmd.values).all()
    np.testing.assert_allclose(cmd.values, gravity(robot, Q0), atol=1e-9)
    assert "stale" in cmd.reason
    assert ctl.stats.rejected["nonfinite"] == 19


@pytest.mark.parametrize("stale_periods", [1, 5, 12])
def test_stale_state_gives_safe_command_within_stale_periods(files, robot, stale_periods):
    ctl = make(files, fade_in=0.0, stale_periods=stale_periods)  # safe_mode hold
    ctl.start()
    v = np.full(6, 0.3)
    assert feed(ctl, 0.0, Q0, v) is None
    for k in range(0, stale_periods + 1):
        assert not ctl.compute(k * PERIOD).safe, k
    u_last = ctl.compute(stale_periods * PERIOD).values  # the policy's, held by the robot since
    t_stale = (stale_periods + 1) * PERIOD
    cmd = ctl.compute(t_stale)
    assert cmd.safe and "stale" in cmd.reason
    # hold on stale data: the computed-torque hold on the state predicted from the last accepted
    # one (received at t = 0) under the torque held since, one period per step
    model, data = robot
    q, qd = Q0.copy(), v.copy()
    for _ in range(stale_periods + 1):
        qd = qd + PERIOD * pin.aba(model, data, q, qd, u_last)
        q = q + PERIOD * qd
    want = gravity(robot, q) + mass(robot, q) @ (400.0 * (Q0 - q) - 40.0 * qd)
    np.testing.assert_allclose(cmd.values, want, rtol=1e-9, atol=1e-9)
    # fresh data again: policy back (fading in from the safe command)
    t = (stale_periods + 2) * PERIOD
    assert feed(ctl, t, Q0, v) is None
    assert not ctl.compute(t).safe
    # a step that runs late (the process was held up, its data still queued) is not stale by
    # itself; steps without new data are, once stale_periods of them have passed in time too
    assert feed(ctl, t + PERIOD, Q0, v) is None
    late = t + 20 * stale_periods * PERIOD
    for k in range(stale_periods):
        assert not ctl.compute(late + k * PERIOD).safe, k
    assert ctl.compute(late + stale_periods * PERIOD).safe


def test_backwards_timestamps_rejected_unless_stream_restarted(files):
    ctl = make(files)
    assert feed(ctl, 10.0) is None
    reason = ctl.update_joint_state(JOINTS, Q0 + 0.1, np.zeros(6), stamp=9.999, received=10.001)
    assert "older than the last accepted" in reason
    assert ctl.stats.rejected["backwards_stamp"] == 1
    np.testing.assert_array_equal(ctl.q, Q0)
    assert ctl.update_joint_state(JOINTS, Q0, np.zeros(6), stamp=10.0, received=10.002) is None  # equal: fine
    # the publisher restarts with a fresh clock after the stream went stale: its first message
    # is held back, the second one (stamps going forward again) is accepted
    assert "restarted publisher" in ctl.update_joint_state(JOINTS, Q0 + 0.1, np.zeros(6), stamp=0.5, received=11.0)
    assert ctl.update_joint_state(JOINTS, Q0 + 0.1, np.zeros(6), stamp=0.502, received=11.002) is None
    assert ctl.stats.stamp_resets == 1
    np.testing.assert_allclose(ctl.q, Q0 + 0.1)
    # a clock running backwards is never taken for a restart, stale or not
    for k in range(1, 40):
        t = 11.002 + k * 0.002
        assert "older than" in ctl.update_joint_state(JOINTS, Q0, np.zeros(6), stamp=0.502 - 0.001 * k, received=t)
    assert ctl.stats.stamp_resets == 1 and ctl.stats.rejected["backwards_stamp"] == 1 + 1 + 39
    for stamp in (float("nan"), float("inf"), "x", None):
        assert ctl.update_joint_state(JOINTS, Q0, np.zeros(6), stamp=stamp) is not None
    assert ctl.stats.rejected["bad_stamp"] == 4


def test_fade_in_ramps_monotonically(files, robot):
    fade = 0.1
    ctl = make(files, fade_in=fade, safe_mode="gravity")
    ctl.start()
    ticks = int(round(fade / PERIOD)) + 10
    values = []
    for k in range(ticks):
        t = 3.0 + k * PERIOD
        feed(ctl, t)
        cmd = ctl.compute(t)
        assert not cmd.safe
        if k <= fade / PERIOD - 2:
            assert cmd.reason == "fading in", k
        elif k >= fade / PERIOD + 2:
            assert cmd.reason == "", k
        values.append(cmd.values)
    values = np.array(values)
    target_u, _ = policy_u(files, Q0, np.zeros(6), np.array(TARGET))
    np.testing.assert_allclose(values[0], gravity(robot, Q0), atol=1e-9)  # starts at the safe command
    np.testing.assert_allclose(values[-1], target_u, atol=1e-9)
    np.testing.assert_allclose(values[ticks // 2 - 5], 0.5 * gravity(robot, Q0) + 0.5 * target_u, atol=1e-6)
    steps = np.diff(values, axis=0)
    direction = np.sign(target_u - gravity(robot, Q0))
    assert (steps * direction >= -1e-12).all(), "every joint moves towards the policy's command"
    assert (np.abs(steps).max(axis=0) <= np.abs(target_u - gravity(robot, Q0)) * PERIOD / fade + 1e-9).all()
    # stop -> safe; start -> fades in again from the safe command
    ctl.stop()
    t += PERIOD
    feed(ctl, t)
    stopped = ctl.compute(t)
    assert stopped.safe and stopped.reason == "stopped" and ctl.state == "stopped"
    ctl.start()
    t += PERIOD
    feed(ctl, t)
    again = ctl.compute(t)
    assert not again.safe and again.reason == "fading in"
    np.testing.assert_allclose(again.values, stopped.values, atol=1e-9)


def mass(robot, q):
    model, data = robot
    upper = pin.crba(model, data, np.asarray(q, dtype=float))
    return np.triu(upper) + np.triu(upper, 1).T


def test_safe_modes_in_effort(files, robot):
    """Computed torque: the gains are accelerations (1/s², 1/s) through M(q)."""
    v = np.array([0.2, -0.1, 0.3, 0.0, 0.5, -0.4])
    q_now = Q0 + 0.05
    M = mass(robot, q_now)
    expected = {
        "gravity": gravity(robot, q_now),
        "hold": gravity(robot, q_now) + M @ (100.0 * (Q0 - q_now) - 10.0 * v),
        "zero_velocity": gravity(robot, q_now) - M @ (10.0 * v),
    }
    for mode, want in expected.items():
        ctl = make(files, safe_mode=mode, hold_kp=100.0, hold_kd=10.0)
        feed(ctl, 0.0)  # stopped from the start: the held posture is the first one
        assert ctl.compute(0.0).safe
        feed(ctl, PERIOD, q_now, v)
        cmd = ctl.compute(PERIOD)
        assert cmd.safe
        md = ctl.metadata
        np.testing.assert_allclose(cmd.values, np.clip(want, md.u_min, md.u_max), atol=1e-9, err_msg=mode)
        np.testing.assert_array_equal(ctl.held_posture, Q0)


def run_in_simulator(ctl, sim, rate, seconds, feed_until=None, bad_state=None):
    """Closed loop of the controller and the Pinocchio simulator (1 kHz physics): each control
    tick gets the state measured one tick earlier (one period of transport delay, as through
    ROS) and its command is held for one period. After ``feed_until`` s no joint state arrives
    (or, with ``bad_state``, only rejected ones). Returns times, commands, q, v per tick."""
    period = 1.0 / rate
    substeps = int(round(sim.config.physics_rate / rate))
    measured = (sim.q.copy(), sim.v.copy(), 0.0)
    out = {"t": [], "u": [], "q": [], "v": []}
    for k in range(int(round(seconds * rate))):
        t = k * period
        q, v, stamp = measured
        measured = (sim.q.copy(), sim.v.copy(), t)
        if feed_until is None or t < feed_until:
            assert ctl.update_joint_state(JOINTS, q, v, stamp, t) is None
        elif bad_state is not None:
            assert ctl.update_joint_state(*bad_state(q, v), stamp, t) is not None
        cmd = ctl.compute(t)
        sim.set_command(cmd.values)
        sim.step(period, substeps=substeps)
        for key, value in (("t", t), ("u", cmd.values), ("q", sim.q.copy()), ("v", sim.v.copy())):
            out[key].append(value)
    return {k: np.array(v) for k, v in out.items()}


def settling_time(run, q_ref=None, v_tol=1e-3, q_tol=1e-3):
    """First time after which every joint stays below v_tol (and within q_tol of q_ref)."""
    ok = (np.abs(run["v"]) < v_tol).all(axis=1)
    if q_ref is not None:
        ok &= (np.abs(run["q"] - q_ref) < q_tol).all(axis=1)
    bad = np.flatnonzero(~ok)
    return 0.0 if not len(bad) else (math.inf if bad[-1] == len(ok) - 1 else float(run["t"][bad[-1] + 1]))


SPINNING = np.array([0.5, -0.5, 0.8, 1.0, -1.5, 3.0])  # rad/s; wrist_3 (0.017 kg·m²) at 3 rad/s


@pytest.mark.parametrize("rate", [500.0, 1000.0])
def test_hold_stops_a_moving_arm_in_simulation(files, rate):
    """The 'hold' safe command (controller stopped) brings an arm moving fast on every joint
    back to rest at the held posture, with one period of delay, at 500 Hz and 1 kHz, never
    beyond the effort limits. (The former uniform PD, 100 N·m/rad and 10 N·m·s/rad on every
    joint, still oscillated on wrist_3 at 0.09 rad/s after 2 s at 500 Hz in this loop.)"""
    sim = ArmSimulator(SimConfig(physics_rate=1000.0, hold_until_command=False))
    sim.reset(Q0, SPINNING)
    ctl = make(files, rate=rate, safe_mode="hold")  # stopped: the safe command throughout
    run = run_in_simulator(ctl, sim, rate, seconds=2.0)
    assert (np.abs(run["u"]) <= sim.effort_limit + 1e-9).all()
    q_hold = ctl.held_posture
    np.testing.assert_array_equal(q_hold, Q0)
    settle = settling_time(run, q_hold)
    print(f"{rate:g} Hz: settled (|v| < 1e-3 rad/s, |q - q_hold| < 1e-3 rad) after {settle:.3f} s, "
          f"max |u|/limit {np.max(np.abs(run['u']) / sim.effort_limit):.2f}")
    assert settle < 1.0, settle
    assert np.abs(run["v"][-1]).max() < 1e-6 and np.abs(run["q"][-1] - q_hold).max() < 1e-6


@pytest.mark.parametrize("rate", [500.0, 1000.0])
def test_zero_velocity_brakes_a_moving_arm_in_simulation(files, rate):
    sim = ArmSimulator(SimConfig(physics_rate=1000.0, hold_until_command=False))
    sim.reset(Q0, SPINNING)
    ctl = make(files, rate=rate, safe_mode="zero_velocity")
    run = run_in_simulator(ctl, sim, rate, seconds=1.0)
    assert (np.abs(run["u"]) <= sim.effort_limit + 1e-9).all()
    settle = settling_time(run)
    print(f"{rate:g} Hz: zero_velocity at rest (|v| < 1e-3 rad/s) after {settle:.3f} s")
    assert settle < 0.5, settle


@pytest.mark.parametrize("data", ["silent", "rejected"])
def test_stale_hold_brakes_a_spinning_wrist_in_simulation(files, data):
    """The policy drives (wrist_3 spinning up to 7 rad/s), then the joint states stop (or only
    NaN ones arrive, rejected): after stale_periods the hold runs on the predicted state and
    brakes every joint, instead of leaving the wrist coasting on gravity compensation as the
    former g(last q) did. Without measurements this is open loop: the prediction's error (here
    from one period of transport delay) lets gravity pull the arm away within about a second,
    so only the braking is asserted."""
    rate = 500.0
    feed_until, brake_time = 0.02, 0.3
    runs = {}
    for mode in ("hold", "gravity"):
        sim = ArmSimulator(SimConfig(physics_rate=1000.0, hold_until_command=False))
        sim.reset(Q0, SPINNING)
        ctl = make(files, "untrained", rate=rate, fade_in=0.0, safe_mode=mode)
        ctl.start()

        def nan_state(q, v):
            q = q.copy()
            q[5] = np.nan
            return JOINTS, q, v

        bad = nan_state if data == "rejected" else None
        runs[mode] = run = run_in_simulator(ctl, sim, rate, seconds=feed_until + brake_time, feed_until=feed_until, bad_state=bad)
        assert (np.abs(run["u"]) <= sim.effort_limit + 1e-9).all()
        assert ctl.state == "safe" and "stale" in ctl.last_reason
        if data == "rejected":
            assert ctl.stats.rejected["nonfinite"] > 100
    k_stop = int(round(feed_until * rate))
    spin = np.abs(runs["hold"]["v"][k_stop, 5])
    hold_v, gravity_v = np.abs(runs["hold"]["v"][-1]), np.abs(runs["gravity"]["v"][-1])
    print(f"{data}: wrist_3 at {spin:.2f} rad/s when the data stops; {brake_time} s later: hold {hold_v[5]:.3f} rad/s "
          f"(max over joints {hold_v.max():.3f}), g(last q) only {gravity_v[5]:.2f} rad/s")
    assert spin > 5.0
    assert hold_v[5] < 0.05 * spin and hold_v.max() < 0.5, hold_v
    assert gravity_v[5] > 0.5 * spin  # what the former stale 'hold' did: the wrist coasts


def test_bursts_and_gaps(files):
    """A burst of queued joint states (same arrival time) is taken in stamp order, the newest
    one used; an out-of-order one in it is rejected. A gap shorter than stale_periods keeps the
    policy on the last state; a longer one gives the safe command until data is back."""
    ctl = make(files, fade_in=0.0, stale_periods=5)
    ctl.start()
    assert feed(ctl, 0.0) is None and not ctl.compute(0.0).safe
    t = 4 * PERIOD  # a 4-period gap: still fresh
    assert not ctl.compute(t).safe
    burst = [(Q0 + 0.01 * k, (k + 1) * PERIOD) for k in range(4)]
    for q, stamp in burst:
        assert ctl.update_joint_state(JOINTS, q, np.zeros(6), stamp, t) is None
    assert "older than" in ctl.update_joint_state(JOINTS, Q0 + 0.5, np.zeros(6), 2 * PERIOD, t)
    np.testing.assert_allclose(ctl.q, burst[-1][0])
    assert ctl.stats.rejected["backwards_stamp"] == 1 and ctl.last_rejected == "backwards_stamp"
    cmd = ctl.compute(t)
    assert not cmd.safe
    u, _ = policy_u(files, burst[-1][0], np.zeros(6), np.array(TARGET))
    np.testing.assert_allclose(cmd.values, u, atol=1e-9)
    # a gap beyond the stale limit: safe until data is back, then the policy again
    for k in range(1, 12):
        cmd = ctl.compute(t + k * PERIOD)
        assert cmd.safe == (k > 5), k
    t += 12 * PERIOD
    assert ctl.update_joint_state(JOINTS, Q0, np.zeros(6), t, t) is None
    assert not ctl.compute(t).safe


def test_exclude_gravity_subtracts_g(files, robot):
    plain, excl = make(files, fade_in=0.0), make(files, fade_in=0.0, exclude_gravity=True)
    plain.start(), excl.start()
    qs, vs = random_states(40, seed=7)
    for i, (q, v) in enumerate(zip(qs, vs)):
        t = i * PERIOD
        feed(plain, t, q, v), feed(excl, t, q, v)
        a, b = plain.compute(t), excl.compute(t)
        np.testing.assert_allclose(b.values, a.values - gravity(robot, q), atol=1e-9)
        assert np.abs(gravity(robot, q)).max() > 1.0
    # the safe 'gravity' command without gravity: zero (the driver compensates gravity itself)
    ctl = make(files, exclude_gravity=True, safe_mode="gravity")
    feed(ctl, 0.0, Q0 + 0.1)
    cmd = ctl.compute(0.0)
    assert cmd.safe
    np.testing.assert_allclose(cmd.values, 0.0, atol=1e-9)


@pytest.mark.parametrize("mode", ["velocity", "position"])
def test_velocity_and_position_modes_match_hand_computation(files, robot, mode):
    model, data = robot
    rate = 500.0
    dt = 1.0 / rate
    ctl = make(files, output_mode=mode, fade_in=0.0, rate=rate)
    ctl.start()
    qs, vs = random_states(40, seed=8, vmax=1.0)
    vlim = np.asarray(model.velocityLimit)
    for i, (q, v) in enumerate(zip(qs, vs)):
        t = i * dt
        feed(ctl, t, q, v)
        cmd = ctl.compute(t)
        u, _ = policy_u(files, q, v, np.array(TARGET))
        v_next = np.clip(v + dt * pin.aba(model, data, q, v, u), -vlim, vlim)
        want = v_next if mode == "velocity" else q + dt * v_next
        np.testing.assert_allclose(cmd.values, want, atol=1e-9)
    # safe commands: zero velocity / the posture where the robot was when the policy stopped
    ctl.stop()
    feed(ctl, 1.0, qs[-1] + 0.01, vs[-1])
    cmd = ctl.compute(1.0)
    assert cmd.safe
    np.testing.assert_allclose(cmd.values, np.zeros(6) if mode == "velocity" else qs[-1] + 0.01, atol=1e-12)
    feed(ctl, 1.0 + dt, qs[-1] + 0.02, vs[-1])  # the robot drifts: the command keeps holding
    np.testing.assert_allclose(ctl.compute(1.0 + dt).values, cmd.values, atol=1e-12)


def test_target_checks(files, task):
    ctl = make(files, target_limits=[0.2, 0.8, -0.5, 0.5, 0.0, 0.9])
    assert ctl.update_target([0.5, 0.0, 0.5]) is None
    assert "NaN" in ctl.update_target([np.nan, 0.0, 0.5])
    assert "3 values" in ctl.update_target([0.5, 0.0])
    assert "not numbers" in ctl.update_target(["a", "b", "c"])
    np.testing.assert_array_equal(ctl.target, [0.5, 0.0, 0.5])
    assert "clamped" in ctl.update_target([5.0, -5.0, 0.5])
    np.testing.assert_array_equal(ctl.target, [0.8, -0.5, 0.5])
    rejecting = make(files, target_out_of_limits="reject", target_limits=[0.2, 0.8, -0.5, 0.5, 0.0, 0.9])
    assert "rejected" in rejecting.update_target([5.0, 0.0, 0.5])
    np.testing.assert_array_equal(rejecting.target, TARGET)
    assert rejecting.stats.rejected["target_out_of_limits"] == 1
    with pytest.raises(PolicyFileError, match="initial_target"):
        make(files, initial_target=[5.0, 0.0, 0.5], target_out_of_limits="reject")
    # no initial target: the end effector's position at the first accepted state
    holding = PolicyController(files["good"], ControllerConfig())
    assert holding.target is None
    feed(holding, 0.0)
    np.testing.assert_allclose(holding.target, task.frame_position(Q0[None])[0], atol=1e-12)


def test_controller_imports_neither_torch_nor_rclpy():
    code = (
        "import sys, tocpl_ros.control.controller; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'rclpy', 'crocoddyl')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------ fuzz


def _fuzz_inputs(rng, t):
    """One random, often malformed, joint state: (names, position, velocity, stamp)."""
    kind = rng.integers(0, 12)
    q = Q0 + rng.normal(0, 0.5, 6)
    v = rng.normal(0, 1.0, 6)
    names = list(JOINTS)
    stamp = t
    if kind == 0:  # shuffled but valid
        perm = rng.permutation(6)
        return [names[i] for i in perm], q[perm], v[perm], stamp
    if kind == 1:  # NaN / Inf somewhere
        arr = q if rng.random() < 0.5 else v
        arr[rng.integers(0, 6)] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == 2:  # huge values
        arr = q if rng.random() < 0.5 else v
        arr[rng.integers(0, 6)] = rng.choice([1e6, -1e300, 1e308, 3e38])
    elif kind == 3:  # random names
        names = ["".join(rng.choice(list("abcdefgh_"), rng.integers(1, 12))) for _ in range(6)]
    elif kind == 4:  # random lengths
        n = int(rng.integers(0, 10))
        names = [JOINTS[i % 6] for i in range(n)]
        q, v = rng.normal(0, 1, int(rng.integers(0, 10))), rng.normal(0, 1, int(rng.integers(0, 10)))
    elif kind == 5:  # subset / duplicates / extras
        names = list(rng.choice(JOINTS + ["gripper", ""], 6))
    elif kind == 6:  # bad stamps
        stamp = rng.choice([np.nan, np.inf, -1e9, t - rng.uniform(0, 1), 1e18])
    elif kind == 7:  # non-numbers
        junk = [None, "abc", [[1, 2], [3]], {"a": 1}, object(), 1.5, np.zeros((2, 3))]
        return names, junk[rng.integers(len(junk))], v, stamp
    elif kind == 8:  # velocity beyond the sanity bound / positions at the limits
        v = rng.uniform(-20, 20, 6)
        q = rng.uniform(-7, 7, 6)
    return names, q, v, stamp


@pytest.mark.parametrize(
    "config",
    [
        dict(output_mode="effort"),
        dict(output_mode="effort", exclude_gravity=True, safe_mode="zero_velocity"),
        dict(output_mode="velocity", safe_mode="gravity"),
        dict(output_mode="position"),
    ],
    ids=["effort", "effort-no-gravity", "velocity", "position"],
)
def test_fuzz_never_raises_and_commands_stay_in_limits(files, robot, config):
    ctl = make(files, "tight", fade_in=0.05, stale_periods=3, **config)
    rng = np.random.default_rng(zlib.crc32(repr(sorted(config.items())).encode()))
    model = robot[0]
    md = ctl.metadata
    vlim = np.minimum(np.asarray(model.velocityLimit), ctl.config.max_joint_velocity)
    t = 0.0
    counts = {"published": 0, "none": 0}
    for i in range(3000):
        t += float(rng.choice([PERIOD, PERIOD, PERIOD, 0.0, 0.05, rng.uniform(0, 0.01)]))
        action = rng.random()
        if action < 0.7:
            names, pos, vel, stamp = _fuzz_inputs(rng, t)
            ctl.update_joint_state(names, pos, vel, stamp, received=t if rng.random() < 0.9 else None)
        elif action < 0.85:
            targets = [rng.uniform(-3, 3, 3), [np.nan, 0, 0], [1e308, -1e308, 0], rng.uniform(0, 1, 2), "xyz", None, [0.5, 0.1, 0.4]]
            ctl.update_target(targets[rng.integers(len(targets))])
        elif action < 0.88:
            ctl.stop() if rng.random() < 0.5 else ctl.start()
        else:
            ctl.start()
        cmd = ctl.compute(t + rng.uniform(-0.001, 0.001))
        assert isinstance(cmd, Command)
        if cmd.values is None:
            counts["none"] += 1
            assert ctl.q is None
            continue
        counts["published"] += 1
        values = cmd.values
        assert values.shape == (6,) and np.isfinite(values).all(), (i, cmd)
        mode = ctl.config.output_mode
        if mode == "effort":
            total = values + gravity(robot, ctl.q) if ctl.config.exclude_gravity else values
            assert (total >= md.u_min - 1e-9).all() and (total <= md.u_max + 1e-9).all(), (i, cmd)
        elif mode == "velocity":
            assert (np.abs(values) <= vlim + 1e-12).all(), (i, cmd)
        else:
            assert (values >= model.lowerPositionLimit).all() and (values <= model.upperPositionLimit).all(), (i, cmd)
    stats = ctl.stats
    # the fuzz exercised every path: policy commands, safe commands, rejections
    assert counts["published"] > 2500
    assert stats.policy_ticks > 300 and stats.safe_ticks > 100, stats
    assert stats.rejected_total > 1000 and stats.accepted_states > 300, stats
    assert {"nonfinite", "length", "unknown_joint", "malformed", "bad_stamp"} <= set(stats.rejected), stats.rejected


def test_the_target_keeper_checks_clamps_and_keeps_a_poses_orientation():
    """tocpl_ros.control.targets: what /target and /target_pose become, without a policy or a node."""
    from tocpl_ros.control.targets import TargetKeeper
    from tocpl_ros.pose import target_rotation

    box = ([0.0, -0.5, 0.0], [1.0, 0.5, 1.0])
    position = TargetKeeper("position", "base_link", *box)
    assert position.take([0.5, 0.0, 0.5]).message is None and position.value.tolist() == [0.5, 0.0, 0.5]
    update = position.take([2.0, 0.0, 0.5])
    assert update.clamped and position.value.tolist() == [1.0, 0.0, 0.5]
    for given, key in (([0.1, 0.2], "target_malformed"), ([math.nan, 0, 0], "target_nonfinite")):
        assert position.take(given).rejected == key and position.value.tolist() == [1.0, 0.0, 0.5]  # the old one kept
    assert position.take([0.5, 0.0, 0.5], frame="world").rejected == "target_frame"
    strict = TargetKeeper("position", "base_link", *box, out_of_limits="reject")
    assert strict.take([2.0, 0.0, 0.5]).rejected == "target_out_of_limits" and strict.value is None

    pose = TargetKeeper("pose", "base_link", *box)
    assert pose.take([0.5, 0.0, 0.5]).message is None and pose.value is None  # no orientation known yet
    turned = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90° about z
    pose.hold(np.array([0.2, 0.2, 0.2]), turned)  # the first joint state: the position given, its orientation
    np.testing.assert_allclose(pose.value[:3], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(target_rotation(pose.value), turned, atol=1e-12)
    assert pose.take([0.4, 0.1, 0.3], [0.0, 0.0, 0.0, 2.0]).message is None  # normalised: the identity
    np.testing.assert_allclose(target_rotation(pose.value), np.eye(3), atol=1e-12)
    pose.take([0.6, 0.1, 0.3])  # a position alone keeps the orientation
    np.testing.assert_allclose(pose.value, [0.6, 0.1, 0.3, 1, 0, 0, 0, 1, 0], atol=1e-12)
    assert pose.take([0.6, 0.1, 0.3], [0.0, 0.0, 0.0, 0.0]).rejected == "target_orientation"
    assert pose.diagnostics() == {"target": "0.6000 0.1000 0.3000", "target_orientation": "0.0000 0.0000 0.0000 1.0000"}
