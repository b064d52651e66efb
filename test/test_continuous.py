"""Continuous-use evaluation and training problems (ROS-free)."""

import numpy as np
import pytest

from tocpl_ros.config import FieldError
from tocpl_ros.tasks import load_task
from tocpl_training.config import TrainConfig
from tocpl_training.continuation import in_use_range, with_continuation
from tocpl_training.evaluation.continuous import ContinuousUse, evaluate_continuous
from tocpl_training.trainer import Trainer

from reference_policies import braking_policy


@pytest.fixture(scope="module")
def ur5():
    return load_task("ur5_reach")


def test_a_policy_that_stays_put_keeps_its_start_error_and_comes_to_rest(ur5):
    problems = ur5.sample(12, 5)
    figures = evaluate_continuous(ur5, braking_policy(ur5), problems, 0.01, ContinuousUse(hold_seconds=(3.0,)))
    start_error = ur5.final_error(problems.x0, problems.target)
    assert figures["hold_diverged"] == 0
    assert figures["hold_3s_error_mean"] == pytest.approx(start_error.mean(), rel=1e-3)
    assert figures["hold_3s_speed_median"] < 1e-3
    # kicked at ±0.5 rad/s it brakes somewhere else, never back at a target it never reached
    assert figures["push_recovered"] == pytest.approx(np.mean(start_error <= 0.01))
    assert {"sequence_error_mean", "moving_start_error_p95", "hold_T_within"} <= figures.keys()


def test_a_diverging_policy_is_counted_and_scored_infinite(ur5):
    problems = ur5.sample(6, 5)
    figures = evaluate_continuous(ur5, lambda obs: np.full((len(obs), ur5.nu), 1e3), problems, 0.01,
                                  ContinuousUse(hold_seconds=(2.0,), sequence_targets=2))
    assert figures["hold_diverged"] == 6
    assert figures["hold_2s_error_mean"] == np.inf and figures["hold_2s_within"] == 0.0


def test_lqr_has_no_continuous_use_figures():
    lqr = load_task("lqr")
    assert evaluate_continuous(lqr, lambda obs: np.zeros((len(obs), lqr.nu)), lqr.sample(4, 0), 0.01) == {}


def test_continuation_problems_start_on_the_policy_rollouts_and_moving(ur5):
    problems = ur5.sample(40, 3)
    rng = np.random.default_rng(0)
    mixed = with_continuation(ur5, braking_policy(ur5), problems, rng, share=0.5, chain=3, retarget=0.5,
                              moving_share=0.25, start_speed=0.5)
    moved = ~np.isclose(mixed.x0, problems.x0).all(axis=1)
    assert moved.sum() == 30  # 20 chained, 10 moving starts; 10 drawn from P as they were
    speeds = np.abs(mixed.x0[:, ur5.nq:]).max(axis=1)
    assert (speeds <= 0.5).all() and (speeds > 0).sum() >= 10
    # chained states lie on the braking policy's rollouts from P: near the nominal posture, finite
    assert np.isfinite(mixed.x0).all() and np.abs(mixed.x0[:, : ur5.nq] - ur5.q_nominal).max() < 1.0
    retargeted = ~np.isclose(mixed.target, problems.target).all(axis=1)
    assert 0 < retargeted.sum() <= 20


def test_kicked_continuation_problems_are_pushed_while_in_use(ur5):
    """A kicked chained state is the same state of use with U(-h, h) added to every joint's velocity
    (a push); positions and targets stay those drawn without the kick."""
    problems = ur5.sample(40, 3)
    args = dict(share=0.5, chain=3, retarget=0.5, moving_share=0.25, start_speed=0.5)
    calm = with_continuation(ur5, braking_policy(ur5), problems, np.random.default_rng(0), **args)
    pushed = with_continuation(ur5, braking_policy(ur5), problems, np.random.default_rng(0), kick=1.0, **args)
    np.testing.assert_array_equal(pushed.x0[:, : ur5.nq], calm.x0[:, : ur5.nq])
    np.testing.assert_array_equal(pushed.target, calm.target)
    chained = ~np.isclose(calm.x0[:, : ur5.nq], problems.x0[:, : ur5.nq]).all(axis=1)
    assert chained.sum() == 20
    dv = np.abs(pushed.x0[chained, ur5.nq:] - calm.x0[chained, ur5.nq:])
    assert (dv.max(axis=1) > 0).all() and (dv <= 0.5).all()  # every chained state pushed, within the kick's size
    assert np.abs(pushed.x0[chained, ur5.nq:]).max() > 0.3  # moving, not at rest as the braking policy left them


def test_chains_that_leave_the_joint_limits_give_no_continuation_problems(ur5):
    """An early policy spinning the arm past its velocity limits (3.15 rad/s on the UR5): its states
    are not states of use, so those problems stay the task's own, at rest."""
    x = np.zeros((3, ur5.nx))
    x[1, ur5.nq] = 3.0
    x[2, ur5.nq + 4] = -3.3
    assert in_use_range(ur5, x).tolist() == [True, True, False]
    problems = ur5.sample(10, 3)
    spinning = lambda obs: np.tile(ur5.u_max * np.array([0, 0, 0, 0, 0, 1.0]), (len(obs), 1))  # noqa: E731  wrist 3 at full torque
    mixed = with_continuation(ur5, spinning, problems, np.random.default_rng(0), share=1.0, chain=2, retarget=0.5,
                              moving_share=0.0, start_speed=0.5)
    assert (mixed.x0[:, ur5.nq:] == 0).all() and in_use_range(ur5, mixed.x0).all()


def test_continuation_is_refused_for_the_fixed_problem_sets_of_plal():
    with pytest.raises(FieldError, match="continuous_share"):
        TrainConfig(algo="plal", continuous_share=0.5)
    with pytest.raises(FieldError, match="moving_start_share"):
        TrainConfig(continuous_share=0.8, moving_start_share=0.4)


@pytest.mark.slow
def test_continuous_training_makes_the_ur5_policy_hold(tmp_path):
    config = TrainConfig(task="ur5_reach", sobolev=True, sobolev_weight=1e-2, iterations=5, problems=24, replay=5,
                         epochs=10, learning_rate=1e-3, learning_rate_final=3e-4, eval_problems=20, workers=1,
                         continuous_share=0.5, moving_start_share=0.15, eval_hold_seconds=[3.0, 10.0],
                         eval_final_hold_seconds=0.0, seed=0)
    rows = Trainer(config, tmp_path / "run").run()
    first, last = rows[0], rows[-1]
    assert last["hold_10s_error_mean"] < 0.5 * first["hold_10s_error_mean"]
    assert last["hold_10s_error_mean"] < 0.05 and last["hold_diverged"] == 0
    assert last["hold_10s_speed_median"] < first["hold_10s_speed_median"]
    assert last["max_bound_violation"] == 0.0
