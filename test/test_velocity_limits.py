"""The 'velocity_limit' cost term (issue 25): a quadratic barrier on the joint speeds beyond
``velocity_limit_factor`` × the robot's velocity limits, solved by the real Crocoddyl."""

from __future__ import annotations

import numpy as np
import pytest

from tocpl_ros.config import ConfigError
from tocpl_ros.ocp import solve
from tocpl_ros.tasks import Problems, load_task

KINOVA = {"robot": "kinova"}


def _peak_speed_ratio(task, xs: np.ndarray) -> float:
    return float(np.abs(xs[:, task.nq:] / task.robot.velocity_limit).max())


def test_the_term_keeps_an_oc_solution_within_the_kinovas_velocity_limits():
    """Held-out Kinova problems whose unlimited solutions move a joint faster than its URDF limit:
    with the term (reach_velocity_limited) no joint exceeds its limit and the tool still reaches the
    target."""
    limited = load_task("reach_velocity_limited", KINOVA)
    free = load_task("reach", {**KINOVA, "horizon": limited.horizon})
    problems = limited.sample(8, seed=1000003)
    for i in (0, 3, 5):  # unlimited: 1.7, 3.5 and 3.1 times a joint's limit
        problem = problems[i]
        fast = solve(free.build_problem(problem), free.config.solver)
        assert _peak_speed_ratio(free, fast.xs) > 1.5, f"problem {i}: the unlimited solution is not too fast"
        sol = solve(limited.build_problem(problem), limited.config.solver)
        assert _peak_speed_ratio(limited, sol.xs) <= 1.0, f"problem {i}"
        assert limited.final_error(sol.xs[-1:], problem.target)[0] < 1e-3, f"problem {i}"


def test_off_by_default_and_nothing_inside_the_band():
    """ur5_reach and reach have no such term (their OCPs are those of before); with it, a trajectory
    whose speeds stay inside the band costs exactly what it costs without, and one beyond costs
    weight · dt · ½ excess² more per running step."""
    for name, overrides in (("ur5_reach", None), ("reach", KINOVA), ("reach", {"robot": "panda"})):
        task = load_task(name, overrides)
        shooting = task.build_problem()
        for model in [*shooting.runningModels, shooting.terminalModel]:
            assert "velocity_limit" not in model.differential.costs.costs.todict()
        assert task.config.velocity_limit_factor == 0.9  # documented default, unused without the term

    weight = 100.0
    free = load_task("reach", KINOVA)
    limited = load_task("reach", {**KINOVA, "costs.running.velocity_limit": weight})
    problem = free.sample(1, seed=5)
    bound = limited.velocity_bound()
    np.testing.assert_allclose(bound, 0.9 * limited.robot.velocity_limit)
    T = free.horizon
    xs = np.repeat(problem.x0, T + 1, axis=0)
    us = np.zeros((T, free.nu))
    for speed, excess in ((0.99, 0.0), (1.5, 0.5)):  # joint 2 at speed × its bound, held for T steps
        xs[:, free.nq + 1] = speed * bound[1]
        base = free.build_problem(problem).calc(list(xs), list(us))
        cost = limited.build_problem(problem).calc(list(xs), list(us))
        expected = T * weight * free.dt * 0.5 * (excess * bound[1]) ** 2
        assert cost - base == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        ({"costs.running.velocity_limit": -1.0}, "costs.running.velocity_limit", "must be >= 0"),
        ({"costs.terminal.velocity_limit": -5.0}, "costs.terminal.velocity_limit", "must be >= 0"),
        ({"costs.running.velocity_limit": [1.0] * 6}, "costs.running.velocity_limit", "one scalar weight"),
        ({"velocity_limit_factor": 0.0}, "velocity_limit_factor", "must be > 0"),
        ({"velocity_limit_factor": -0.5}, "velocity_limit_factor", "must be > 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(overrides, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_task("reach", {**KINOVA, **overrides})
    assert info.value.key == key


def test_a_robot_without_velocity_limits_is_refused_naming_the_term(tmp_path):
    """example-robot-data's double pendulum URDF has velocity (and effort) limits of 0."""
    import pinocchio as pin
    import yaml

    from tocpl_ros.robot_config import example_robot_urdf

    urdf = example_robot_urdf("double_pendulum")[0]
    frame = pin.buildModelFromUrdf(str(urdf)).frames[-1].name
    config = {"kind": "upright", "urdf": str(urdf), "frame": frame, "dt": 0.02, "horizon": 10, "u_limit": [5.0, 5.0],
              "costs": {"running": {"position": 1.0, "velocity_limit": 1.0}, "terminal": {}}}
    path = tmp_path / "no_limits.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="needs a velocity limit > 0") as info:
        load_task(path)
    assert info.value.key == "costs.running.velocity_limit"


def test_problems_of_a_limited_task_are_the_reach_tasks():
    """Same distribution as reach: the held-out problems are comparable with and without the term."""
    a = load_task("reach_velocity_limited", KINOVA).sample(4, seed=1000003)
    b = load_task("reach", KINOVA).sample(4, seed=1000003)
    assert isinstance(a, Problems)
    np.testing.assert_array_equal(a.x0, b.x0)
    np.testing.assert_array_equal(a.target, b.target)


def test_the_held_out_evaluation_reports_peak_speeds_relative_to_the_limits():
    """peak_speed_ratio_*: each rollout's fastest joint over its limit; diverged rollouts left out;
    nothing for a task without velocity limits (lqr)."""
    from tocpl_ros.tasks import Trajectories
    from tocpl_training.trainer import peak_speed_ratios

    task = load_task("reach", KINOVA)
    x0 = task.sample(3, seed=0).x0
    xs = np.repeat(x0[:, None], 4, axis=1)
    xs[0, 2, task.nq + 1] = -0.5 * task.robot.velocity_limit[1]  # half the limit, backwards
    xs[1, 1, task.nq + 4] = 2.0 * task.robot.velocity_limit[4]
    xs[2, 3, task.nq] = 10.0 * task.robot.velocity_limit[0]  # this rollout diverged
    traj = Trajectories(xs, np.zeros((3, 3, task.nu)), np.array([False, False, True]))
    figures = peak_speed_ratios(task, traj)
    assert figures["peak_speed_ratio_max"] == pytest.approx(2.0)
    assert figures["peak_speed_ratio_median"] == pytest.approx(1.25)
    assert peak_speed_ratios(load_task("lqr"), traj) == {}
