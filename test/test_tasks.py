"""The four control tasks: their OCPs solve, their dynamics and derivatives are right."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import lsq_linear

from tocpl_ros.ocp import solve
from tocpl_ros.tasks import DynamicsCounter, Trajectories, available_tasks, load_task
from tocpl_ros.tasks.config import SolverConfig

TASKS = ["lqr", "pendulum", "double_pendulum", "ur5_reach"]


@pytest.fixture(scope="module", params=TASKS)
def task(request):
    return load_task(request.param)


def test_shipped_tasks_are_the_four_of_the_paper():
    assert set(TASKS) <= set(available_tasks())


def test_ur5_cold_start_reaches_20_targets_within_1mm_inside_torque_bounds():
    task = load_task("ur5_reach")
    problems = task.sample(20, seed=0)
    shooting = task.build_problem(problems[0])
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        sol = solve(shooting, task.config.solver)
        error = np.linalg.norm(task.frame_position(sol.xs[-1:, :6])[0] - problems.target[i])
        assert error < 1e-3, f"problem {i}: tool0 ends {error * 1e3:.2f} mm from the target"
        assert (sol.us <= task.u_max + 1e-9).all() and (sol.us >= task.u_min - 1e-9).all()
        assert sol.feasible


def test_ur5_distribution_is_the_benchmark_definition():
    task = load_task("ur5_reach")
    assert task.joint_names == [
        "shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint",
    ]
    assert (task.dt, task.horizon) == (0.02, 50)
    np.testing.assert_array_equal(task.u_max, [150, 150, 150, 28, 28, 28])
    q_nom = np.array([0, -1.2, 1.6, -0.4, 1.57, 0])
    problems = task.sample(500, seed=3)
    q0, v0 = problems.x0[:, :6], problems.x0[:, 6:]
    assert np.abs(q0 - q_nom).max() <= 0.3 and np.abs(q0 - q_nom).max() > 0.29
    assert (v0 == 0).all()
    # every target is the tool0 position of some posture within ±0.4 rad of nominal
    reach = np.linalg.norm(problems.target - task.frame_position(q_nom[None]), axis=1)
    assert 0.05 < reach.mean() < 0.5
    assert task.obs_layout == [("q", 6), ("v", 6), ("target", 3)]


def test_sampling_is_reproducible_from_the_seed(task):
    a, b, c = task.sample(8, seed=7), task.sample(8, seed=7), task.sample(8, seed=8)
    np.testing.assert_array_equal(a.x0, b.x0)
    np.testing.assert_array_equal(a.target, b.target)
    assert not np.array_equal(a.x0, c.x0)


def test_lqr_solution_equals_a_dense_box_qp_solution():
    """BoxFDDP vs bounded-variable least squares on the condensed QP (an active-set method)."""
    task = load_task("lqr")
    A, B, T, dt = task.A, task.B, task.horizon, task.dt
    nx, nu = task.nx, task.nu
    problems = task.sample(5, seed=11)
    shooting = task.build_problem(problems[0])
    saturated = 0
    for i in range(len(problems)):
        x0 = problems.x0[i]
        # x_t = A^t x0 + sum_s A^(t-1-s) B u_s  ->  x_t = Phi_t x0 + G_t u
        Phi, G = [np.eye(nx)], [np.zeros((nx, T * nu))]
        for t in range(T):
            G.append(A @ G[-1])
            G[-1][:, t * nu:(t + 1) * nu] += B
            Phi.append(A @ Phi[-1])
        # cost = sum_{t<T} dt (½ x'Qx + ½ u'Ru) + ½ x_T' Q_T x_T  as  ½ ||M u - c||²
        rows, rhs = [], []
        for t in range(1, T + 1):
            W = np.linalg.cholesky(task.Q_T if t == T else task.Q * dt).T  # ‖W x‖² = xᵀ Q x (Q_T: Riccati P, dense)
            rows.append(W @ G[t])
            rhs.append(-W @ (Phi[t] @ x0))
        rows.append(np.kron(np.eye(T), np.diag(np.sqrt(np.diag(task.R) * dt))))
        rhs.append(np.zeros(T * nu))
        bounds = (np.tile(task.u_min, T), np.tile(task.u_max, T))
        qp = lsq_linear(np.vstack(rows), np.concatenate(rhs), bounds=bounds, method="bvls", tol=1e-14)
        assert qp.success

        task.set_problem(shooting, problems[i])
        sol = solve(shooting, SolverConfig(max_iter=500, th_stop=1e-14))
        np.testing.assert_allclose(sol.us.ravel(), qp.x, atol=1e-6)
        saturated += int((np.abs(qp.x) >= task.u_max[0] - 1e-9).any())
    assert saturated >= 3, "the test problems should exercise the box"


def test_a_warm_start_from_a_rollout_near_the_boxed_optimum_converges_to_it():
    """A policy's rollout near the lqr's optimum, some controls on the box: told it is a rollout,
    SolverBoxFDDP solves its box-QP from the first step and lands on the cold start's optimum.
    Told nothing, it took unconstrained steps, clamped, and crept at the smallest step short of
    the optimum on 2 of these 10 problems (18 iterations, 0.1–0.4 % above it)."""
    task = load_task("lqr")
    problems = task.sample(10, seed=123)
    shooting = task.build_problem(problems[0])
    rng = np.random.default_rng(0)
    on_box = 0
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        cold = solve(shooting, task.config.solver)
        on_box += int(np.isclose(np.abs(cold.us), task.u_max).any())
        us = np.clip(cold.us + 0.05 * rng.standard_normal(cold.us.shape), task.u_min, task.u_max)
        xs = task.open_loop(problems.x0[i:i + 1], us[None])[0]
        warm = solve(shooting, task.config.solver, xs, us, rollout_guess=True)
        assert warm.converged and warm.iterations <= 3, (i, warm.iterations)
        assert warm.cost == pytest.approx(cold.cost, rel=1e-9)
    assert on_box >= 5, "the optima should sit on the box"


def _numdiff(f, x, eps=1e-6):
    fx = f(x)
    J = np.empty((np.size(fx), len(x)))
    for j in range(len(x)):
        dx = np.zeros_like(x)
        dx[j] = eps
        J[:, j] = (f(x + dx) - f(x - dx)) / (2 * eps)
    return J


def test_dynamics_and_cost_derivatives_match_finite_differences(task):
    problems = task.sample(3, seed=5)
    shooting = task.build_problem(problems[0])
    rng = np.random.default_rng(0)
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        for model in (shooting.runningModels[0], shooting.terminalModel):
            data = model.createData()
            x = problems.x0[i] + 0.1 * rng.standard_normal(task.nx)
            u = rng.uniform(task.u_min, task.u_max) if model.nu and model is not shooting.terminalModel else None
            if u is None:
                model.calc(data, x)
                model.calcDiff(data, x)

                def cost(xx):
                    model.calc(data, xx)
                    return np.array([data.cost])
                np.testing.assert_allclose(data.Lx, _numdiff(cost, x.copy())[0], rtol=1e-4, atol=1e-5)
                continue
            model.calc(data, x, u)
            model.calcDiff(data, x, u)
            Fx, Lx, Lu = data.Fx.copy(), data.Lx.copy(), data.Lu.copy()
            Fu = np.reshape(data.Fu, (task.nx, task.nu))  # eigenpy returns an nx×1 matrix as a vector

            def next_state(xx, uu=u):
                model.calc(data, xx, uu)
                return data.xnext.copy()

            def cost_x(xx):
                model.calc(data, xx, u)
                return np.array([data.cost])

            def cost_u(uu):
                model.calc(data, x, uu)
                return np.array([data.cost])

            np.testing.assert_allclose(Fx, _numdiff(next_state, x.copy()), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(Fu, _numdiff(lambda uu: next_state(x, uu), u.copy()), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(Lx, _numdiff(cost_x, x.copy())[0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(Lu, _numdiff(cost_u, u.copy())[0], rtol=1e-4, atol=1e-5)


def test_policy_rollout_matches_crocoddyl_rollout_to_1e9(task):
    """Our batched integrator is Crocoddyl's semi-implicit Euler, step for step."""
    problems = task.sample(4, seed=2)
    shooting = task.build_problem(problems[0])
    rng = np.random.default_rng(1)
    offset = 0.2 * rng.uniform(task.u_min, task.u_max)
    damping = rng.uniform(0.1, 0.5, task.nu)

    def policy(obs):  # an arbitrary damped state feedback (gravity-compensated on robots), saturating at times
        q, v = obs[:, :task.nu], obs[:, task.nx - task.nu:task.nx]
        gravity = task.gravity(q) if hasattr(task, "gravity") else 0.0
        return gravity + offset - damping * v - 3.0 * np.sign(q) * (np.abs(q) > 2.5)

    traj = task.rollout(policy, problems)
    assert traj.xs.shape == (4, task.horizon + 1, task.nx) and traj.us.shape == (4, task.horizon, task.nu)
    assert not traj.diverged.any()
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        xs_croco = np.array(shooting.rollout(list(traj.us[i])))
        np.testing.assert_allclose(traj.xs[i], xs_croco, atol=1e-9, rtol=0)
    # open-loop replay of the same controls gives the same states
    np.testing.assert_allclose(task.open_loop(problems.x0, traj.us), traj.xs, atol=1e-12)


def test_evaluation_uses_the_ocp_cost_and_counts_dynamics(task):
    problems = task.sample(2, seed=4)
    shooting = task.build_problem(problems[0])
    counter = DynamicsCounter()
    task.set_problem(shooting, problems[1])
    sol = solve(shooting, task.config.solver, counter=counter)
    assert counter.by_source["oc_solver"] >= task.horizon * (1 + 2 * sol.iterations)
    ev = task.evaluate(problems[1], Trajectories(sol.xs[None], sol.us[None]))
    assert ev.cost[0] == pytest.approx(sol.cost, rel=1e-9)
    assert ev.bound_violation[0] == 0.0 and not ev.diverged[0]

    before = counter.steps
    traj = task.rollout(lambda obs: np.zeros((len(obs), task.nu)), problems, counter=counter)
    assert counter.steps - before == 2 * task.horizon
    zero_control = task.evaluate(problems, traj)
    assert zero_control.cost[1] > ev.cost[0]  # doing nothing is worse than the optimum


@pytest.mark.parametrize("name", ["pendulum", "double_pendulum"])
def test_trajectory_optimisation_stabilises_the_pendulums_upright(name):
    task = load_task(name)
    problems = task.sample(10, seed=6)
    shooting = task.build_problem(problems[0])
    start_error = task.final_error(problems.x0, problems.target)
    assert start_error.max() > 0.3  # the sampled states start well away from upright
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        sol = solve(shooting, task.config.solver)
        assert task.final_error(sol.xs[-1:], problems.target[i:i + 1])[0] < np.deg2rad(2.0)
        assert np.abs(sol.xs[-1, task.nq:]).max() < 0.05  # and it has stopped there
        assert (np.abs(sol.us) <= task.u_max + 1e-9).all()


def test_reusing_a_built_problem_equals_building_a_fresh_one():
    task = load_task("ur5_reach")
    problems = task.sample(2, seed=9)
    reused = task.build_problem(problems[0])
    task.set_problem(reused, problems[1])
    a = solve(reused, task.config.solver)
    b = solve(task.build_problem(problems[1]), task.config.solver)
    np.testing.assert_allclose(a.us, b.us, atol=1e-12)


def test_unconstrained_variant_drops_the_box():
    task = load_task("pendulum")
    problems = task.sample(20, seed=0)
    free = task.build_problem(problems[0], constrained=False)
    boxed = task.build_problem(problems[0])
    assert not free.runningModels[0].has_control_limits and boxed.runningModels[0].has_control_limits
    # some sampled state needs more torque than the box allows when unconstrained
    exceeded = False
    for i in range(len(problems)):
        task.set_problem(free, problems[i])
        exceeded |= bool((np.abs(solve(free, task.config.solver).us) > task.u_max + 1e-6).any())
    assert exceeded


def test_diverging_rollouts_are_frozen_and_flagged():
    task = load_task("pendulum")
    problems = task.sample(3, seed=0)

    def wild(obs):
        u = np.full((len(obs), 1), 3.0)
        u[0] = np.nan  # a broken network output is treated as zero torque
        return u

    traj = task.rollout(wild, problems, divergence_limit=5.0)
    assert np.isfinite(traj.xs).all() and (np.abs(traj.us) <= 3.0).all()
    assert traj.diverged[1:].all()  # constant max torque spins the pendulum past the limit
    ev = task.evaluate(problems, traj)
    assert np.isinf(ev.cost[traj.diverged]).all()


@pytest.mark.parametrize("name", ["lqr", "pendulum"])
def test_solution_gains_are_the_derivative_of_the_optimal_control(name):
    """The Sobolev targets: −K_0 = ∂u*_0/∂x0, checked by re-solving from perturbed x0 (finite
    differences), with controls on the box among the problems. Gains computed at the solution are
    the same whether the solver got there cold or warm; the solver's own K after a warm start at
    the solution is not (unprojected rows on the bound), unless the solver is told the guess is
    feasible (then its box-QP projects)."""
    from tocpl_ros.ocp import solution_gains
    from tocpl_ros.tasks import Problems

    task = load_task(name)
    config = SolverConfig(max_iter=500, th_stop=1e-14)
    problems = task.sample(6, seed=21)
    shooting = task.build_problem(problems[0])
    checked_on_bound, warm_differs = 0, 0
    for i in range(len(problems)):
        def optimal_u0(x0):
            task.set_problem(shooting, Problems(x0[None], problems.target[i][None]))
            return solve(shooting, config).us[0]

        x0 = problems.x0[i]
        u0 = optimal_u0(x0)
        cold = solve(shooting, config)
        gains = solution_gains(shooting, cold.xs, cold.us)
        warm = solve(shooting, config, cold.xs, cold.us)
        np.testing.assert_allclose(solution_gains(shooting, warm.xs, warm.us), gains, rtol=1e-6, atol=1e-9)
        warm_differs += int(not np.allclose(np.array(warm.K).reshape(gains.shape), gains, rtol=1e-3, atol=1e-6))
        # told that the guess is a rollout, BoxFDDP's box-QP projects its K: the solution's gains
        told = solve(shooting, config, cold.xs, cold.us, rollout_guess=True)
        np.testing.assert_allclose(np.array(told.K).reshape(gains.shape), gains, rtol=1e-4, atol=1e-6 * np.abs(gains).max())
        jacobian = _numdiff(optimal_u0, x0, eps=1e-5)
        # exact on the lqr; on the pendulum to DDP's Gauss-Newton model (no second derivatives of the dynamics)
        np.testing.assert_allclose(-gains[0], jacobian, rtol=1e-4 if name == "lqr" else 1e-2, atol=1e-5)
        checked_on_bound += int(np.isclose(np.abs(u0), task.u_max).any())
    assert checked_on_bound >= 1, "the test problems should start on the box"
    assert warm_differs >= 1


def test_a_control_a_hair_inside_the_bound_the_box_holds_gets_no_gain():
    """BoxFDDP can stop (its criterion ignores held controls) with a held control 1e-4 short of
    its bound. The gains at such a solution are those at the exact one, not a full row where the
    optimal control cannot move; a control the cost pulls inward stays free."""
    from tocpl_ros.ocp import box_held, solution_gains

    task = load_task("lqr")
    problems = task.sample(10, seed=123)
    shooting = task.build_problem(problems[0])
    nudged_rows = 0
    for i in range(len(problems)):
        task.set_problem(shooting, problems[i])
        sol = solve(shooting, SolverConfig(max_iter=500, th_stop=1e-14))
        on_bound = np.isclose(np.abs(sol.us), task.u_max)
        if not on_bound.any():
            continue
        short = np.where(on_bound, sol.us - 1e-4 * np.sign(sol.us), sol.us)
        xs = task.open_loop(problems.x0[i:i + 1], short[None])[0]
        exact, nudged = solution_gains(shooting, sol.xs, sol.us), solution_gains(shooting, xs, short)
        np.testing.assert_allclose(nudged, exact, atol=1e-3 * np.abs(exact).max())
        nudged_rows += int(on_bound.sum())
    assert nudged_rows >= 10
    quu, qu = np.eye(2), np.array([-1.0, 1.0])  # the cost pushes control 0 up, control 1 down
    assert box_held(quu, qu, np.array([-1.0, -1.0]), np.array([1e-4, 1e-4])).tolist() == [True, False]
    assert box_held(quu, qu, np.array([-1.0, -1e-4]), np.array([1e-4, 1.0])).tolist() == [True, True]
    assert box_held(quu, qu, np.array([-2.0, -2.0]), np.array([2.0, 2.0])).tolist() == [False, False]


def test_target_posture_reaches_the_target_nearest_the_nominal_posture():
    """q*(p̄) puts tool0 on the target and is the nearest such posture to q_nominal (no pull left in
    the Jacobian's null space)."""
    import pinocchio as pin

    task = load_task("ur5_reach")
    for target in task.sample(5, seed=4).target:
        q = task.target_posture(target)
        np.testing.assert_allclose(task.frame_position(q[None])[0], target, atol=1e-7)
        J = pin.computeFrameJacobian(task.model, task.data, q, task.frame_id, pin.LOCAL_WORLD_ALIGNED)[:3]
        null = np.eye(task.nq) - np.linalg.pinv(J) @ J
        assert np.abs(null @ (task.q_nominal - q)).max() < 1e-6


@pytest.mark.parametrize("term", ["posture", "target_posture"])
def test_an_arm_at_rest_on_its_target_stays_there_only_with_the_target_posture(term):
    """Receding-horizon re-planning at rest on the target (what holding is): with a posture term
    around q_nominal the optimum moves the arm off the target; around q*(p̄) it stays."""
    others = {"costs.running.posture": 0.0, "costs.running.target_posture": 0.0, f"costs.running.{term}": 0.1}
    task = load_task("ur5_reach", others)
    problem = task.sample(1, seed=9)
    q_star = task.target_posture(problem.target[0])
    at_rest = type(problem)(np.concatenate([q_star, np.zeros(task.nq)])[None], problem.target)
    shooting = task.build_problem(at_rest)
    sol = solve(shooting, task.config.solver)
    # the middle of the horizon: where a receding-horizon controller always is (the terminal cost far)
    middle = np.linalg.norm(task.frame_position(sol.xs[task.horizon // 2][None, :task.nq])[0] - problem.target[0])
    if term == "target_posture":
        assert middle < 1e-5, f"{middle * 1e3:.3f} mm off the target"
    else:
        assert middle > 1e-4, f"{middle * 1e3:.3f} mm: the nominal-posture term no longer pulls off the target"
