"""Pose targets through the ROS side (issue 25, items 2 and 5): the 9-value target of a pose policy
(position, then the first two columns of the end effector's rotation in the base frame) from a
/target_pose quaternion, /target's position with the orientation kept, refusals with a reason, the
MPC's pose OCP and its plans followed by the fast loop, and end to end through DDS with
``arm_policy robot:=panda``.

Policies: a small untrained one exported to a real ONNX file where the contract and the checks are
under test, and (slow) one trained with a small budget where the arm must reach the pose.
"""

from __future__ import annotations

import math

import numpy as np
import pinocchio as pin
import pytest

from tocpl_ros.control.config import ControllerConfig
from tocpl_ros.control.controller import PolicyController
from tocpl_ros.pose import (
    pose_target_from_quaternion,
    quaternion_from_rotation,
    rotation_angle,
    rotation_from_quaternion,
    target_rotation,
)
from tocpl_ros.robot import load_robot
from tocpl_ros.tasks import load_task

from ros_harness import arm_policy, wait_for

POSITION = [0.4, 0.1, 0.5]
QUATERNION = [0.9239, 0.3827, 0.0, 0.0]
"""x, y, z, w: the tool 180° about x (pointing down), turned 45° about the base's z (unit to 1e-4)."""


@pytest.fixture(scope="module")
def task():
    return load_task("reach_pose", {"robot": "panda"})


@pytest.fixture(scope="module")
def policy(task, tmp_path_factory):
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    return export_onnx(make_policy(task, seed=0).eval(), task, tmp_path_factory.mktemp("pose") / "panda_pose.onnx")


def _unit(q) -> np.ndarray:
    q = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return -q if q[3] < 0 else q


# ============================================================================ the encoding (ROS-free)


def test_quaternions_and_the_nine_values_agree_with_pinocchio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.normal(size=4)
        scaled = 3.0 * q  # any length but zero: normalised
        expected = pin.Quaternion(*_unit(q)[[3, 0, 1, 2]]).toRotationMatrix()
        np.testing.assert_allclose(rotation_from_quaternion(scaled), expected, atol=1e-12)
        np.testing.assert_allclose(quaternion_from_rotation(expected), _unit(q), atol=1e-12)
        target = pose_target_from_quaternion([0.1, 0.2, 0.3], scaled)
        np.testing.assert_allclose(target[3:], np.concatenate([expected[:, 0], expected[:, 1]]), atol=1e-12)
        np.testing.assert_allclose(target_rotation(target), expected, atol=1e-12)
        other = pin.Quaternion(*_unit(rng.normal(size=4))[[3, 0, 1, 2]]).toRotationMatrix()
        assert rotation_angle(expected, other) == pytest.approx(np.linalg.norm(pin.log3(expected.T @ other)), abs=1e-9)
    assert rotation_angle(np.eye(3), pin.utils.rpyToMatrix(np.pi, 0, 0)) == pytest.approx(np.pi)
    for bad, message in (([0, 0, 0, 0], "zero norm"), ([math.nan, 0, 0, 1], "NaN/Inf"), ([0, 0, 1], "4 values")):
        with pytest.raises(ValueError, match=message):
            rotation_from_quaternion(bad)


# ============================================================================ the controller (ROS-free)


def test_a_pose_policy_takes_pose_targets_and_refuses_bad_ones(policy, task):
    controller = PolicyController(policy)
    assert (controller.pose_targets, controller.target_dim, controller.robot.name) == (True, 9, "panda")
    # /target before the first joint state: the position now, the orientation the end effector's there
    assert controller.update_target(POSITION) is None and controller.target is None
    q0 = task.q_nominal
    assert controller.update_joint_state(controller.joint_names, q0, np.zeros(7), 0.0) is None
    rotation0 = task.robot.frame_rotation(task.robot.q_from_positions(q0))
    np.testing.assert_allclose(controller.target, np.concatenate([POSITION, rotation0[:, 0], rotation0[:, 1]]))

    # /target_pose: the quaternion normalised, in the base frame (empty: the base frame)
    assert controller.update_pose_target(POSITION, 2.0 * np.array(QUATERNION), frame="panda_link0") is None
    rotation = rotation_from_quaternion(QUATERNION)
    np.testing.assert_allclose(target_rotation(controller.target), rotation, atol=1e-12)
    assert controller.diagnostics()["target_orientation"] == " ".join(f"{x:.4f}" for x in _unit(QUATERNION))
    expected = controller.target.copy()
    for quaternion, frame, key, message in (
        (QUATERNION, "world", "target_frame", "frame 'world' is not the robot's base frame 'panda_link0'"),
        ([0.0, 0.0, 0.0, 0.0], "", "target_orientation", "has zero norm: it is no orientation"),
        ([math.nan, 0.0, 0.0, 1.0], "", "target_orientation", "NaN/Inf in the quaternion"),
        ([0.0, 0.0, math.inf, 1.0], "", "target_orientation", "NaN/Inf in the quaternion"),
    ):
        reason = controller.update_pose_target([0.3, 0.0, 0.4], quaternion, frame=frame)
        assert reason is not None and message in reason and controller.last_rejected == key, reason
        np.testing.assert_array_equal(controller.target, expected)  # the previous target kept
    assert controller.stats.rejected["target_frame"] == 1 and controller.stats.rejected["target_orientation"] == 3
    # /target: the position replaced, the orientation kept; outside the workspace: clamped, the orientation taken
    assert controller.update_target([0.3, 0.0, 0.4]) is None
    np.testing.assert_array_equal(controller.target[3:], expected[3:])
    reason = controller.update_pose_target([5.0, 0.0, 0.4], [0.0, 0.0, 0.0, 1.0])
    assert "clamped" in reason and controller.target[0] == controller.config.target_limits[1]
    np.testing.assert_allclose(target_rotation(controller.target), np.eye(3), atol=1e-12)


def test_initial_pose_targets_and_position_policies(policy):
    pose = PolicyController(policy, ControllerConfig(initial_target=POSITION + QUATERNION))
    np.testing.assert_allclose(target_rotation(pose.target), rotation_from_quaternion(QUATERNION), atol=1e-12)
    with pytest.raises(ValueError, match=r"initial_target .*has zero norm"):
        PolicyController(policy, ControllerConfig(initial_target=POSITION + [0.0, 0.0, 0.0, 0.0]))
    from tocpl_ros.config import FieldError

    with pytest.raises(FieldError, match=r"needs 3 values \[x, y, z\] or 7"):
        ControllerConfig(initial_target=[0.4, 0.1])
    # a position policy takes the position of a pose (as of a /target_pose), its target stays 3 values
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    reach = load_task("reach", {"robot": "panda"})
    path = export_onnx(make_policy(reach, seed=0).eval(), reach, policy.parent / "panda_position.onnx")
    position = PolicyController(path, ControllerConfig(initial_target=POSITION + QUATERNION))
    assert not position.pose_targets and position.target.tolist() == POSITION
    assert position.update_pose_target([0.3, 0.0, 0.4], QUATERNION) is None and position.target.tolist() == [0.3, 0.0, 0.4]
    assert "target_orientation" not in position.diagnostics()


def test_the_mpc_solves_the_pose_ocp_and_the_fast_loop_follows_its_plan(policy, task):
    """The MPC loop on the policy's own task (rebuilt from its file, as the MPC node does): the
    orientation term's reference is the target's rotation; the /mpc/plan message carries the 9
    values and the policy controller's plan follower (target_dim 9) follows it."""
    from tocpl_ros.mpc.config import MPCConfig
    from tocpl_ros.mpc.loop import MPCLoop
    from tocpl_ros.mpc.solver import InlineSolver, RecedingHorizonMPC
    from tocpl_ros.mpc.worker import load_task_spec

    md = PolicyController(policy).metadata
    ocp_task = load_task_spec({"name": md.task, "config": md.task_config})
    assert ocp_task.target_dim == 9 and "orientation" in ocp_task.config.costs.terminal
    config = MPCConfig(warm_start="cold", deadline=math.inf)  # the untrained policy is no warm start
    mpc_controller = PolicyController(policy, ControllerConfig(rate=config.rate, output_mode="effort", fade_in=0.0,
                                                               initial_target=POSITION + QUATERNION))
    mpc_controller.start()
    loop = MPCLoop(InlineSolver(RecedingHorizonMPC(ocp_task, mpc_controller.policy, config)), mpc_controller, 5)
    q0 = task.q_nominal
    assert mpc_controller.update_joint_state(mpc_controller.joint_names, q0, np.zeros(7), 1.0, 1.0) is None
    assert loop.tick(1.0) is not None and loop.last_status == "mpc", loop.last_message
    shooting = loop.solver.mpc.shooting
    world = task.robot.world_rotation(rotation_from_quaternion(QUATERNION))
    for model in [*shooting.runningModels, shooting.terminalModel]:
        np.testing.assert_allclose(model.differential.costs.costs["orientation"].cost.residual.reference, world, atol=1e-12)
    (plan,) = loop.plans

    fast = PolicyController(policy, ControllerConfig(fade_in=0.0, initial_target=POSITION + QUATERNION))
    follower = fast.follow_plans()
    assert follower.target_dim == 9 and follower.offer(plan) is None
    fast.start()
    assert fast.update_joint_state(fast.joint_names, q0, np.zeros(7), 1.0) is None
    command = fast.compute(1.0)
    assert not command.safe and follower.counts["plan_ticks"] == 1, follower.reason
    # another orientation, same position: not this plan's target, the policy instead
    assert fast.update_pose_target(POSITION, [0.0, 1.0, 0.0, 0.0]) is None
    fast.compute(1.001)
    assert follower.counts["fallback.target_mismatch"] == 1


# ============================================================================ through DDS


def _assert_commands_within_the_pandas_limits(probe) -> None:
    limits = load_robot("panda").effort_limit
    with probe.lock:
        commands = np.array([c for _, c in probe.commands])
    assert len(commands) and np.isfinite(commands).all() and (np.abs(commands) <= limits + 1e-9).all()


@pytest.mark.ros
def test_arm_policy_takes_pose_targets_and_refuses_bad_ones(policy, ros_quiet_domain, tmp_path):
    """tocpl-bringup arm_policy robot:=panda use_mpc:=true autostart:=false target:=x,y,z,qx,qy,qz,qw with an
    untrained pose policy: both nodes accept it and take the initial pose; a /target_pose in a foreign
    frame, with a zero or NaN quaternion is refused by both (logged with the reason, counted on
    /diagnostics, the target kept) while the policy node sends its safe command; the MPC's /mpc/plan
    messages (target of 9) are decoded; a pose with a quaternion of length 2 is taken normalised, a
    /target keeps the orientation. Every command finite, within the Panda's effort limits."""
    from tocpl_ros.ros.probe import Probe

    probe, _, env = ros_quiet_domain(Probe, 120, record_commands=True, name="pose_test_probe", base_frame="panda_link0")
    log = tmp_path / "bringup.log"
    unit = " ".join(f"{x:.4f}" for x in _unit(QUATERNION))
    try:
        with arm_policy(env, log, "panda", policy, POSITION + QUATERNION, "use_mpc:=true", "autostart:=false") as proc:
            def both(check) -> bool:
                policy_diag, mpc_diag = probe.last_diagnostics(), probe.last_mpc_diagnostics()
                return policy_diag is not None and mpc_diag is not None and check(policy_diag[1]) and check(mpc_diag[1])

            def plans_received() -> bool:
                diag = probe.last_diagnostics()
                return diag is not None and int(diag[1].get("mpc_plans_received", 0)) > 0

            wait_for(plans_received, 240, "a /mpc/plan decoded by the policy node", proc, log)
            wait_for(lambda: both(lambda d: d["target"] == "0.4000 0.1000 0.5000" and d["target_orientation"] == unit),
                     30, "the initial pose on both nodes' /diagnostics", proc, log)

            probe.send_target_pose([0.3, 0.0, 0.4], QUATERNION, frame_id="world")
            probe.send_target_pose([0.3, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0])
            probe.send_target_pose([0.3, 0.0, 0.4], [math.nan, 0.0, 0.0, 1.0])
            wait_for(lambda: both(lambda d: d.get("rejected.target_frame") == "1" and d.get("rejected.target_orientation") == "2"),
                     30, "the three refusals counted on both nodes' /diagnostics", proc, log)
            assert both(lambda d: d["target"] == "0.4000 0.1000 0.5000" and d["target_orientation"] == unit)  # kept
            # (the log says each reason at most once a second: the NaN one is counted, not logged yet)
            for line in ("rejected (target_frame)", "frame 'world' is not the robot's base frame 'panda_link0'",
                         "rejected (target_orientation)", "the quaternion [0.0, 0.0, 0.0, 0.0] has zero norm"):
                wait_for(lambda: line in log.read_text(), 10, repr(line), proc, log)
            diag = probe.last_diagnostics()[1]
            assert diag["state"] == "stopped" and diag["policy_ticks"] == "0" and int(diag["safe_ticks"]) > 0, diag
            assert not [k for k in diag if k.startswith("mpc_rejected.")], diag  # the plans' target block is 9 wide

            probe.send_target_pose([0.3, 0.0, 0.4], 2.0 * np.array(QUATERNION))
            wait_for(lambda: both(lambda d: d["target"] == "0.3000 0.0000 0.4000" and d["target_orientation"] == unit),
                     30, "a pose with a quaternion of length 2 taken, normalised", proc, log)
            probe.send_target([0.35, 0.05, 0.45])
            wait_for(lambda: both(lambda d: d["target"] == "0.3500 0.0500 0.4500" and d["target_orientation"] == unit),
                     30, "a /target's position taken, the orientation kept", proc, log)
            for line in ("pose targets, initial target [0.4000 0.1000 0.5000] orientation (x y z w)",
                         "MPC on task reach_pose (the policy's own), robot panda", "the orientation is kept"):
                wait_for(lambda: line in log.read_text(), 30, repr(line), proc, log)
            _assert_commands_within_the_pandas_limits(probe)
            assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        probe.close()


@pytest.mark.slow
@pytest.mark.ros
def test_a_small_panda_pose_policy_and_the_mpc_reach_a_held_out_pose_through_arm_policy(ros_quiet_domain, tmp_path):
    """`tocpl-train --task reach_pose --robot panda` with a small budget (5 iterations of 32 problems,
    ~30 s on 2 idle cores), driven by `tocpl-bringup arm_policy robot:=panda use_mpc:=true` to the first
    held-out pose (the trainer's eval seed) given as target:=x,y,z,qx,qy,qz,qw, at 500 Hz: once the policy node
    follows the MPC's plans, within 5 mm and 1° after 15 s, every command within the Panda's effort
    limits (what a Franka checks: its commands exclude gravity)."""
    from tocpl_ros.config import to_dict
    from tocpl_ros.ros.probe import HELD_OUT_SEED, Probe, ToolKinematics, follow
    from tocpl_training.cli import default_config
    from tocpl_training.export import export_onnx
    from tocpl_training.trainer import Trainer

    config = default_config("reach_pose", robot="panda", iterations=5, problems=32, eval_problems=10,
                            validation_problems=10)
    trainer = Trainer(config, tmp_path / "run")
    trainer.run()
    policy = export_onnx(trainer.policy, trainer.task, tmp_path / "policy.onnx", to_dict(config))
    target = load_task("reach_pose", {"robot": "panda"}).sample(1, HELD_OUT_SEED).target[0]
    pose = [*target[:3], *quaternion_from_rotation(target_rotation(target))]

    probe, _, env = ros_quiet_domain(Probe, 121, record_commands=True, name="pose_panda_probe", base_frame="panda_link0")
    log = tmp_path / "bringup.log"
    try:
        # rate:=500 (the Panda's is 1000): half the CPU of the simulator and the fast loop on a shared 2-core
        # machine, so that the MPC's solver process (nice 10: it yields first) is not starved into late plans
        with arm_policy(env, log, "panda", policy, pose, "use_mpc:=true", "rate:=500") as proc:
            wait_for(lambda: probe.last_diagnostics() is not None
                     and int(probe.last_diagnostics()[1].get("mpc_plans_accepted", 0)) > 0, 240,
                     "the policy node following the MPC's plans", proc, log)
            result = follow(probe, ToolKinematics("panda"), target, 15.0, within=0.005, within_deg=1.0)
            diag = probe.last_diagnostics()[1]
            mpc = {k: v for k, v in diag.items()
                   if k.startswith(("mpc_plan_ticks", "mpc_policy_ticks", "mpc_fallback.", "safe_ticks", "safe.stale"))}
            print(f"\nPanda pose through arm_policy with the MPC: {1e3 * result['error_1s']:.2f} mm, "
                  f"{result['orientation_1s_deg']:.3f} deg at 1 s; {1e3 * result['final_error']:.2f} mm, "
                  f"{result['final_orientation_deg']:.3f} deg at 15 s (within 5 mm and 1 deg from "
                  f"{result['settled_at']:.1f} s on); {mpc}")
            # the policy alone rests centimetres and degrees away (docs/robots.md); a policy node that rarely follows a
            # plan (mpc_fallback.plan_old: the MPC's solves starved of CPU) or often holds (safe.stale: late joint states,
            # each followed by a fade-in) converges slowly
            assert result["final_error"] <= 0.005 and result["final_orientation_deg"] <= 1.0, (result, mpc)
            _assert_commands_within_the_pandas_limits(probe)
            assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        probe.close()
