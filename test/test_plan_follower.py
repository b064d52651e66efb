"""The fast loop's plan following (tocpl_ros.control.plan_follower), ROS-free: the /mpc/plan layout, the
plan step chosen by the joint-state stamps, Crocoddyl's feedback sign, staleness, the blend at a
switch, malformed plans; and PolicyController following plans inside its safety layer.

No rclpy here: the DDS tests of the same logic are in test_node_faults.py and test_bringup.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tocpl_ros.config import FieldError
from tocpl_ros.control.plan import PLAN_HEADER, Plan, decode_plan, encode_plan, encode_result
from tocpl_ros.control.plan_follower import PlanFollower, PlanFollowerConfig

ROOT = Path(__file__).resolve().parents[1]
NU, NX, NT = 6, 12, 3
JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]
Q0 = np.array([0.0, -1.2, 1.6, -0.4, 1.57, 0.0])
TARGET = np.array([0.5, 0.1, 0.4])
LIMITS = np.array([150.0, 150, 150, 28, 28, 28])
DT = 0.02
MPC_TASK = "ur5_reach_fixed_horizon"
"""The MPC node's OCP (config/mpc_node.yaml; see docs/mpc.md: why not ur5_reach's posture term)."""


def synthetic_plan(stamp: float = 10.0, steps: int = 5, seed: int = 0, target=TARGET, status: str = "converged") -> Plan:
    rng = np.random.default_rng(seed)
    if status != "converged":
        return Plan(status, stamp, DT, np.asarray(target, float), np.zeros((0, NU)), np.zeros((0, NU, NX)), np.zeros((0, NX)))
    return Plan("converged", stamp, DT, np.asarray(target, float), rng.normal(size=(steps, NU)) * 5,
                rng.normal(size=(steps, NU, NX)) * 10, rng.normal(size=(steps + 1, NX)), sequence=7, iterations=3,
                solve_time=0.004, warm_start="policy")


def assert_rows(rows, u) -> None:
    rows = np.asarray(rows)
    np.testing.assert_allclose(rows, np.broadcast_to(u, rows.shape), atol=1e-12)


def follower(**config) -> PlanFollower:
    """A follower of synthetic plans (random x̄: no deviation bound unless given)."""
    config.setdefault("max_deviation", 1e9)
    return PlanFollower(NU, NX, NT, PlanFollowerConfig(**config), -LIMITS, LIMITS)


# ------------------------------------------------------------------------ the /mpc/plan layout


def test_encode_decode_round_trip():
    plan = synthetic_plan()
    data = encode_plan(plan)
    assert data.size == len(PLAN_HEADER) + NT + 5 * NU + 5 * NU * NX + 6 * NX
    back = decode_plan(data, NU, NX, NT)
    assert back.ok and back.steps == 5 and back.stamp == plan.stamp and back.dt == DT
    for name in ("target", "u_bar", "K", "x_bar"):
        np.testing.assert_array_equal(getattr(back, name), getattr(plan, name))
    assert (back.sequence, back.iterations, back.warm_start) == (7, 3, "policy")
    report = decode_plan(encode_plan(synthetic_plan(status="max_iter")), NU, NX, NT)
    assert report.status == "max_iter" and not report.ok and report.steps == 0


def _corrupt(index_from_end: int | None = None, header: dict | None = None, length: int | None = None):
    data = encode_plan(synthetic_plan())
    if header:
        for name, value in header.items():
            data[PLAN_HEADER.index(name)] = value
    if index_from_end is not None:
        data[-index_from_end] = math.nan
    if length is not None:
        data = data[:length]
    return data


@pytest.mark.parametrize(
    "data, key",
    [
        (_corrupt(index_from_end=1), "nonfinite"),  # NaN in x̄
        (_corrupt(index_from_end=300), "nonfinite"),  # NaN in K
        (_corrupt(header={"stamp": math.inf}), "nonfinite"),
        (_corrupt(header={"dt": math.nan}), "nonfinite"),
        (_corrupt(header={"dt": 0.0}), "malformed"),
        (_corrupt(header={"nu": 7}), "size"),
        (_corrupt(header={"steps": 4}), "size"),
        (_corrupt(length=100), "size"),
        (_corrupt(header={"version": 2}), "malformed"),
        (_corrupt(header={"status": 42}), "malformed"),
        (_corrupt(header={"status": 0.5}), "malformed"),
        (np.zeros(3), "malformed"),
        ("not numbers", "malformed"),
        (encode_plan(synthetic_plan())[:len(PLAN_HEADER) + NT], "size"),
    ],
)
def test_malformed_plans_are_rejected_and_the_plan_held_is_kept(data, key):
    f = follower(max_age=1.0)
    good = synthetic_plan(stamp=10.0)
    assert f.offer(encode_plan(good)) is None
    reason = f.offer(data)
    assert reason is not None and f"({key})" in reason, reason
    assert f.counts[f"rejected.{key}"] == 1 and f.plan is not None and f.plan.stamp == 10.0
    u = f.command(10.0, good.x_bar[0], TARGET, np.zeros(NU))
    np.testing.assert_allclose(u, np.clip(good.u_bar[0], -LIMITS, LIMITS))


def test_a_converged_plan_without_steps_is_rejected():
    plan = synthetic_plan()
    data = encode_plan(plan)
    data[PLAN_HEADER.index("steps")] = 0
    data = data[: len(PLAN_HEADER) + NT]
    assert "(malformed)" in follower().offer(data)


# ------------------------------------------------------------------------ following: k, interpolation


def test_plan_step_from_the_stamps_and_interpolated_reference():
    plan = synthetic_plan(stamp=100.0)
    f = follower(max_age=0.09)
    f.offer(plan)
    x = np.linspace(-1, 1, NX)
    for nominal in (0.0, 0.005, 0.0201, 0.03, 0.061, 0.0899):
        age = (100.0 + nominal) - 100.0  # what the follower computes from the stamps
        k = int(age // DT)
        w = age / DT - k
        ref = (1 - w) * plan.x_bar[k] + w * plan.x_bar[k + 1]
        expected = np.clip(plan.u_bar[k] - plan.K[k] @ (x - ref), -LIMITS, LIMITS)
        np.testing.assert_allclose(f.command(100.0 + nominal, x, TARGET, np.zeros(NU)), expected, atol=1e-9)
    # a plan slightly ahead of the joint states (the MPC took a newer one): step 0 at x̄_0
    np.testing.assert_allclose(f.command(100.0 - 0.004, x, TARGET, np.zeros(NU)),
                               np.clip(plan.u_bar[0] - plan.K[0] @ (x - plan.x_bar[0]), -LIMITS, LIMITS))
    assert f.counts["plan_ticks"] == 7 and f.source == "plan"


@pytest.fixture(scope="module")
def solved():
    """A converged Crocoddyl MPC solve on ur5_reach (cold start, no deadline), away from the box."""
    from tocpl_ros.mpc.config import MPCConfig
    from tocpl_ros.mpc.solver import RecedingHorizonMPC
    from tocpl_ros.tasks import load_task

    task = load_task("ur5_reach")
    mpc = RecedingHorizonMPC(task, None, MPCConfig(warm_start="cold", deadline=math.inf, max_iter=200))
    x0 = np.concatenate([Q0, 0.1 * np.array([1, -1, 1, 0.5, 1, -1])])
    result = mpc.solve(x0, TARGET, now=0.0)
    assert result.ok, result.message
    assert not (np.isclose(result.us, task.u_min) | np.isclose(result.us, task.u_max)).any(), "a control on the box"
    return mpc, result, x0


def test_feedback_sign_against_crocoddyl(solved):
    """From the plan's own x̄_0 the follower gives ū_0; from a perturbed state x̄_0 + δ it predicts the
    re-solved OCP's first control (u = ū − K δ, Crocoddyl's convention); the opposite sign would be
    off by twice the effect."""
    mpc, result, x0 = solved
    f = PlanFollower(NU, NX, NT, PlanFollowerConfig(max_age=0.5), mpc.u_min, mpc.u_max)
    assert f.offer(encode_result(result, 50.0, TARGET, 1, NU, NX)) is None
    np.testing.assert_allclose(f.command(50.0, x0, TARGET, None), result.u_bar, atol=1e-12)
    delta = np.random.default_rng(1).normal(size=NX) * 1e-3
    mpc.reset()
    again = mpc.solve(x0 + delta, TARGET, now=0.0)
    assert again.ok
    effect = np.abs(again.u_bar - result.u_bar).max()
    predicted = f.command(50.0, x0 + delta, TARGET, None)
    error = np.abs(again.u_bar - predicted).max()
    wrong = np.abs(again.u_bar - (result.u_bar + result.K @ delta)).max()
    print(f"\nδ 1e-3: u0 moved {effect:.3g} N·m; prediction error {error:.3g}, with the opposite sign {wrong:.3g}")
    # (FDDP's K is a Gauss-Newton gain: the re-solve differs from it by ~7 % of the effect, whatever δ)
    assert effect > 1e-2 and error < 0.15 * effect and wrong > 1.5 * effect


def test_plan_followed_through_crocoddyls_model_reproduces_the_solution(solved):
    """Rolling the OCP's own action models out with the follower's command at every plan step
    (age k·dt from the plan's stamp) gives the solver's ū_k and x̄_{k+1}: the follower's law is the
    solution's (K multiplies x − x̄_k = 0 along the solver's rollout)."""
    mpc, result, x0 = solved
    f = PlanFollower(NU, NX, NT, PlanFollowerConfig(max_age=10.0), mpc.u_min, mpc.u_max)
    f.offer(encode_result(result, 0.0, TARGET, 1, NU, NX))
    steps = len(result.gains)
    x = x0.copy()
    for k in range(steps):
        u = f.command(k * DT, x, TARGET, None)
        np.testing.assert_allclose(u, np.clip(result.us[k], mpc.u_min, mpc.u_max), atol=1e-8)
        model = mpc.shooting.runningModels[k]
        data = model.createData()
        model.calc(data, x, u)
        x = np.array(data.xnext)
        np.testing.assert_allclose(x, result.xs[k + 1], atol=1e-8)


def test_mpc_and_fast_loop_reach_the_target_on_the_model():
    """ROS-free closed loop on the OCP's own model: the MPC solves every 10 ms (inline, its plan
    arriving 6 ms after its state), the follower applies the newest plan at 500 Hz, the plant is
    integrated at 1 kHz. tool0 ends within 0.1 mm of the target (measured: 0.001-0.012 mm at 3 s
    on held-out problems, the same as the MPC's own closed loop without a fast loop); every
    command is the plan's once the first one arrived."""
    import crocoddyl

    from tocpl_ros.mpc.config import MPCConfig
    from tocpl_ros.mpc.solver import RecedingHorizonMPC
    from tocpl_ros.tasks import load_task

    task = load_task(MPC_TASK)
    mpc = RecedingHorizonMPC(task, None, MPCConfig(warm_start="shifted", deadline=math.inf, max_iter=100))
    problems = task.sample(1, 1_000_003)
    x, target = problems.x0[0].copy(), problems.target[0]
    f = PlanFollower(NU, NX, NT, PlanFollowerConfig(), mpc.u_min, mpc.u_max)
    plant = crocoddyl.IntegratedActionModelEuler(mpc.shooting.runningModels[0].differential, 0.001)
    data = plant.createData()
    pending, u, sequence = [], None, 0
    for step in range(3000):
        t = step * 0.001
        if step % 10 == 0:
            result = mpc.solve(x, target, now=t)
            assert result.ok, result.message
            sequence += 1
            pending.append((t + 0.006, encode_result(result, t, target, sequence, NU, NX)))
        while pending and pending[0][0] <= t + 1e-9:
            assert f.offer(pending.pop(0)[1]) is None
        if step % 2 == 0:
            u = f.command(t, x, target, task.gravity(x[None, :NU])[0])  # the "policy": gravity compensation
        plant.calc(data, x, u)
        x = np.array(data.xnext)
    error = float(task.final_error(x[None], target[None])[0])
    print(f"\ntool0 {error * 1e3:.4f} mm from the target after 3 s; {dict(f.counts)}")
    assert error < 1e-4
    assert f.counts["policy_ticks"] <= 4 and f.counts["switches_to_plan"] == 1 and f.counts["switches_to_policy"] == 0


# ------------------------------------------------------------------------ staleness


def test_stale_plans_fall_back_to_the_policy():
    u_policy = np.full(NU, 1.5)
    f = follower(max_age=0.03)
    x = np.zeros(NX)
    assert f.command(1.0, x, TARGET, u_policy) is not None and f.counts["fallback.no_plan"] == 1
    plan = synthetic_plan(stamp=10.0, steps=5)
    f.offer(plan)
    cases = [
        (10.02, "plan"), (10.0301, "policy", "plan_old"), (10.0 - 0.031, "policy", "plan_ahead"),
    ]
    for stamp, source, *key in cases:
        f.interrupt()  # no blend: compare with the sources themselves
        u = f.command(stamp, x, TARGET, u_policy)
        assert f.source == source, (stamp, f.reason)
        if source == "policy":
            np.testing.assert_array_equal(u, u_policy)
            assert f.counts[f"fallback.{key[0]}"] == 1, f.counts
    # beyond the steps carried
    g = follower(max_age=1.0)
    g.offer(synthetic_plan(stamp=10.0, steps=2))
    assert g.command(10.039, x, TARGET, u_policy) is not None and g.source == "plan"
    g.command(10.04, x, TARGET, u_policy)
    assert g.source == "policy" and g.counts["fallback.beyond_horizon"] == 1
    # another target than the loop's
    g.offer(synthetic_plan(stamp=10.05, steps=2))
    g.interrupt()
    g.command(10.05, x, TARGET + [0.002, 0, 0], u_policy)
    assert g.source == "policy" and g.counts["fallback.target_mismatch"] == 1
    g.command(10.05, x, TARGET + [0.0005, 0, 0], u_policy)
    assert g.source == "plan"


def test_a_plan_far_from_the_measured_posture_is_not_followed():
    """The arm was reset or pushed: 0.1 rad from x̄(t) the linear law is not trusted (the policy)."""
    plan = synthetic_plan(stamp=10.0)
    f = follower(max_age=0.05, max_deviation=0.1)
    f.offer(plan)
    near = plan.x_bar[0].copy()
    near[:NU] += 0.099
    near[NU:] += 5.0  # velocities are not bounded by it
    f.command(10.0, near, TARGET, np.zeros(NU))
    assert f.source == "plan"
    far = plan.x_bar[0].copy()
    far[2] -= 0.101
    f.interrupt()
    np.testing.assert_array_equal(f.command(10.0, far, TARGET, np.ones(NU)), np.ones(NU))
    assert f.source == "policy" and f.counts["fallback.deviation"] == 1 and "rad from the MPC plan" in f.reason


def test_failure_reports():
    """A failed solve drops the plan (the newest result governs); a late one ('deadline': no
    new plan) does not: the previous plan is followed while not older than max_age."""
    x, u_policy = np.zeros(NX), np.full(NU, 2.0)
    f = follower(max_age=0.05)
    f.offer(synthetic_plan(stamp=10.0))
    assert f.offer(encode_plan(synthetic_plan(stamp=10.01, status="deadline"))) is None
    f.command(10.02, x, TARGET, u_policy)
    assert f.source == "plan" and f.counts["mpc_reported.deadline"] == 1
    f.offer(encode_plan(synthetic_plan(stamp=10.02, status="max_iter")))
    f.command(10.02, x, TARGET, u_policy)
    assert f.source == "policy" and "max_iter" in f.reason and f.counts["fallback.mpc_failed"] == 1
    f.offer(synthetic_plan(stamp=10.03))
    f.command(10.03, x, TARGET, u_policy)
    assert f.source == "plan"


def test_out_of_order_plans_and_a_clock_that_went_back():
    x = np.zeros(NX)
    f = follower(max_age=0.05)
    f.offer(synthetic_plan(stamp=10.0))
    f.command(10.0, x, TARGET, None)
    assert "(out_of_order)" in f.offer(synthetic_plan(stamp=9.99))
    assert f.plan.stamp == 10.0
    # the joint states restart from another clock (a new simulator): their stamps are far behind the
    # plan held, which is then no evidence of order
    f.command(5.0, x, TARGET, np.zeros(NU))
    assert f.source == "policy" and f.counts["fallback.plan_ahead"] == 1
    assert f.offer(synthetic_plan(stamp=4.999)) is None
    f.command(5.0, x, TARGET, np.zeros(NU))
    assert f.source == "plan"


def test_no_command_from_either_source():
    f = follower()
    assert f.command(1.0, np.zeros(NX), TARGET, None) is None
    assert f.command(1.0, np.zeros(NX), TARGET, np.array([np.nan] * NU)) is None
    assert f.counts["no_command_ticks"] == 2 and f.source is None


def test_config_is_checked():
    for kwargs, field in (({"max_age": 0}, "max_age"), ({"max_age": math.inf}, "max_age"), ({"blend_periods": 0}, "blend_periods"),
                          ({"blend_periods": 2.5}, "blend_periods"), ({"target_tolerance": -1}, "target_tolerance"),
                          ({"max_deviation": math.nan}, "max_deviation")):
        with pytest.raises(FieldError) as info:
            PlanFollowerConfig(**kwargs)
        assert info.value.field == field


# ------------------------------------------------------------------------ blend


def _constant_plan(stamp: float, u: np.ndarray, steps: int = 5) -> Plan:
    """ū = u at every step, K = 0, x̄ = (Q0, 0)."""
    x_bar = np.tile(np.concatenate([Q0, np.zeros(NU)]), (steps + 1, 1))
    return Plan("converged", stamp, DT, TARGET.copy(), np.tile(u, (steps, 1)), np.zeros((steps, NU, NX)), x_bar)


@pytest.mark.parametrize("blend", [1, 3, 10])
def test_switches_are_blended_linearly_and_counted(blend):
    """plan (u_a) → policy (u_b) → plan: the command moves by (u_b − u_a)/blend per tick and is the
    new source's exactly on the blend-th tick after the switch; each switch counted, its difference
    and largest step reported, and every command inside the limits."""
    u_plan, u_policy = np.array([10.0, -20, 5, 1, -2, 3]), np.array([-5.0, 10, 0, 4, 2, -1])
    f = follower(max_age=0.03, blend_periods=blend)
    f.offer(_constant_plan(0.0, u_plan))
    period = 0.002
    times = [i * period for i in range(50)]  # the plan ages beyond max_age: policy
    out = np.array([f.command(t, np.zeros(NX), TARGET, u_policy) for t in times])
    t = times[-1]
    stale = int(np.argmax([t > 0.03 for t in times]))
    assert_rows(out[:stale], u_plan)
    for j in range(1, blend + 1):
        np.testing.assert_allclose(out[stale + j - 1], u_policy + (blend - j) / blend * (u_plan - u_policy), atol=1e-12)
    assert_rows(out[stale + blend - 1:], u_policy)
    steps = np.abs(np.diff(out, axis=0)).max(axis=1)
    difference = np.abs(u_plan - u_policy).max()
    assert steps.max() <= difference / blend + 1e-9
    assert f.counts["switches_to_policy"] == 1 and math.isclose(f.switch_difference_max, difference)
    assert 0 <= f.stale_lag_max <= period + 1e-12  # the first tick past max_age switched
    # back to a fresh plan: blended the same way
    f.offer(_constant_plan(t, u_plan))
    back = np.array([f.command(t + i * period, np.zeros(NX), TARGET, u_policy) for i in range(blend + 3)])
    for j in range(1, blend + 1):
        np.testing.assert_allclose(back[j - 1], u_plan + (blend - j) / blend * (u_policy - u_plan), atol=1e-12)
    assert_rows(back[blend - 1:], u_plan)
    assert np.abs(np.diff(np.vstack([out[-1:], back]), axis=0)).max() <= difference / blend + 1e-9
    assert f.counts["switches_to_plan"] == 1 and f.counts["blend_ticks"] == (2 * (blend - 0) if blend > 1 else 2)
    assert f.blend_step_max <= difference / blend + 1e-9
    assert len(f.events) == 2 and "to the policy" in f.events[0] and "to the MPC plan" in f.events[1]
    d = f.diagnostics()
    assert d["mpc_switches_to_policy"] == "1" and d["mpc_switches_to_plan"] == "1" and d["mpc_source"] == "plan"


def test_blend_from_a_changing_plan_is_bounded_by_the_difference_at_the_switch():
    """A plan whose command changes every tick, then a failure report: the steps of the blend stay
    within the difference at the switch over blend_periods plus nothing else (the policy is
    constant), and inside the limits even with a plan command at the limits."""
    rng = np.random.default_rng(3)
    u_policy = np.array([0.0, 0, 0, 27, -27, 0])
    f = follower(max_age=0.05, blend_periods=4)
    commands = []
    for i in range(20):
        f.offer(_constant_plan(i * 0.002, np.clip(rng.normal(size=NU) * 200, -LIMITS, LIMITS)))
        commands.append(f.command(i * 0.002, np.zeros(NX), TARGET, u_policy))
    last = commands[-1]
    f.offer(encode_plan(synthetic_plan(stamp=0.04, status="nonfinite")))
    after = [f.command(0.04 + i * 0.002, np.zeros(NX), TARGET, u_policy) for i in range(6)]
    steps = np.abs(np.diff(np.array([last] + after), axis=0)).max(axis=1)
    assert steps.max() <= np.abs(last - u_policy).max() / 4 + 1e-9
    assert_rows(after[3:], u_policy)
    assert all((np.abs(c) <= LIMITS + 1e-12).all() for c in commands + after)


def test_interrupt_means_no_blend():
    u_plan, u_policy = np.full(NU, 3.0), np.full(NU, -3.0)
    f = follower(blend_periods=5)
    f.offer(_constant_plan(0.0, u_plan))
    f.command(0.0, np.zeros(NX), TARGET, u_policy)
    f.interrupt()  # the loop sent its safe command meanwhile
    np.testing.assert_allclose(f.command(0.1, np.zeros(NX), TARGET, u_policy), u_policy)
    assert f.counts["switches_to_policy"] == 0


def test_the_module_needs_no_ros():
    code = ("import sys, tocpl_ros.control.plan_follower; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('rclpy', 'crocoddyl', 'pinocchio', 'torch')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------ inside PolicyController


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    from tocpl_ros.tasks import load_task
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task("ur5_reach")
    return export_onnx(make_policy(task, seed=11).eval(), task, tmp_path_factory.mktemp("follower") / "policy.onnx")


def make_controller(policy_file, **config):
    from tocpl_ros.control.config import ControllerConfig
    from tocpl_ros.control.controller import PolicyController

    c = PolicyController(policy_file, ControllerConfig(initial_target=TARGET.tolist(), fade_in=0.0, **config))
    c.start()
    follower = c.follow_plans(PlanFollowerConfig(max_age=0.03, blend_periods=1))
    return c, follower


def test_controller_applies_the_plan_inside_its_safety_layer(policy_file):
    """With a usable plan the controller publishes the plan's torque (clamped to the limits, in the
    output mode), without one the policy's; stale joint states still give the safe command."""
    import pinocchio as pin

    c, f = make_controller(policy_file)
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 10.0, 10.0) is None
    u_policy = c.compute(10.0).values.copy()
    assert f.source == "policy" and f.counts["fallback.no_plan"] == 1
    u_plan = np.array([1.0, -40.0, -10.0, 0.5, 0.2, 500.0])  # wrist_3 beyond its 28 N·m limit
    plan = _constant_plan(10.0, u_plan)
    plan.x_bar[:] = np.concatenate([Q0, np.zeros(6)])
    f.offer(encode_plan(plan))
    cmd = c.compute(10.001)
    assert not cmd.safe and f.source == "plan"
    np.testing.assert_allclose(cmd.values, np.clip(u_plan, c.u_lo, c.u_hi))
    # the plan's feedback acts on the state deviation
    plan.K[:] = 0.0
    plan.K[:, 0, 0] = 100.0
    f.offer(encode_plan(plan))
    assert c.update_joint_state(JOINTS, Q0 + [0.01, 0, 0, 0, 0, 0], np.zeros(6), 10.002, 10.002) is None
    np.testing.assert_allclose(c.compute(10.002).values[0], u_plan[0] - 100.0 * 0.01)
    # the plan ages out: the policy again (at the state the policy sees)
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 10.05, 10.05) is None
    np.testing.assert_allclose(c.compute(10.05).values, u_policy, atol=1e-12)
    assert f.source == "policy" and f.counts["fallback.plan_old"] == 1
    # stale joint states: the safe command, whatever the plan
    f.offer(encode_plan(_constant_plan(10.05, u_plan)))
    for i in range(6):  # stale in time and in control steps
        cmd = c.compute(10.2 + i * 0.002)
    assert cmd.safe and "stale" in cmd.reason and f.source is None
    d = c.diagnostics()
    assert int(d["mpc_plan_ticks"]) >= 2 and int(d["mpc_policy_ticks"]) == 2

    # effort without gravity: the plan's total torque minus g(q)
    c2, f2 = make_controller(policy_file, exclude_gravity=True)
    assert c2.update_joint_state(JOINTS, Q0, np.zeros(6), 10.0, 10.0) is None
    f2.offer(encode_plan(_constant_plan(10.0, np.array([1.0, -40.0, -10.0, 0.5, 0.2, 0.1]))))
    g = pin.computeGeneralizedGravity(c2.model, c2.data, Q0)
    np.testing.assert_allclose(c2.compute(10.0).values, np.array([1.0, -40.0, -10.0, 0.5, 0.2, 0.1]) - g)


def test_controller_velocity_mode_converts_the_plan_torque(policy_file):
    import pinocchio as pin

    c, f = make_controller(policy_file, output_mode="velocity")
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 1.0, 1.0) is None
    u = np.array([1.0, -40.0, -10.0, 0.5, 0.2, 0.1])
    f.offer(_constant_plan(1.0, u))
    a = pin.aba(c.model, c.data, Q0, np.zeros(6), u)
    np.testing.assert_allclose(c.compute(1.0).values, np.clip(a * c.config.period, -c.v_lim, c.v_lim))


def test_controller_with_a_nan_policy_still_follows_a_plan(policy_file, tmp_path):
    """The policy's output is NaN: a usable plan drives; without one, the safe command."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(policy_file))
    last_bias = [i for i in model.graph.initializer if i.name.endswith(".bias")][-1]
    last_bias.CopyFrom(numpy_helper.from_array(np.full(tuple(last_bias.dims), np.nan, dtype=np.float32), last_bias.name))
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    c, f = make_controller(path)
    assert c.update_joint_state(JOINTS, Q0, np.zeros(6), 1.0, 1.0) is None
    assert c.compute(1.0).safe
    u = np.array([1.0, -40.0, -10.0, 0.5, 0.2, 0.1])
    f.offer(_constant_plan(1.0, u))
    cmd = c.compute(1.001)
    assert not cmd.safe
    np.testing.assert_allclose(cmd.values, u)
    f.offer(encode_plan(synthetic_plan(stamp=1.001, status="error")))
    assert c.compute(1.002).safe
