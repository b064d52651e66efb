"""PLAL's OC-phase terms (training/consensus.py): residual derivatives, costs, solves."""

from __future__ import annotations

import copy

import crocoddyl
import numpy as np
import pytest
import torch

from tocpl_ros.ocp import solve
from tocpl_ros.tasks import load_task
from tocpl_training.learning.policy import NumpyPolicy, make_policy
from tocpl_training.oc.consensus import (
    ActionModelLQRWithConsensus,
    ResidualModelPolicyConsensus,
    add_consensus_terms,
    add_tracking_terms,
)

_TASKS: dict = {}


# The consensus algebra does not depend on the horizon: a 2 s pendulum keeps these solves
# short (the task's own 3 s horizon is for swing-ups that a policy must finish).
_OVERRIDES = {"pendulum": {"horizon": 100}}


def get_task(name):
    if name not in _TASKS:
        _TASKS[name] = load_task(name, _OVERRIDES.get(name))
    return _TASKS[name]


def torch_policy64(policy):
    """π in float64 through torch: an evaluation independent of NumpyPolicy."""
    p64 = copy.deepcopy(policy).double()

    def pi(obs):
        with torch.no_grad():
            return p64(torch.as_tensor(np.asarray(obs, dtype=float))).numpy()

    return pi


def random_state(task, rng, problem):
    """A state near the problem's start, with some velocity."""
    x = problem.x0[0].copy()
    x += 0.3 * rng.standard_normal(task.nx)
    return x


def random_control(task, rng):
    return rng.uniform(task.u_min, task.u_max) * 0.8


def central_diff(f, z, eps=1e-6):
    """Jacobian of f at z by central differences, [f.size, z.size]."""
    cols = []
    for i in range(z.size):
        e = np.zeros_like(z)
        e[i] = eps
        cols.append((np.atleast_1d(f(z + e)) - np.atleast_1d(f(z - e))) / (2 * eps))
    return np.stack(cols, axis=-1)


# -- (a) the residual alone ----------------------------------------------------
@pytest.mark.parametrize("name", ["pendulum", "ur5_reach"])
def test_residual_value_and_jacobians_match_torch_and_central_differences(name):
    task = get_task(name)
    rng = np.random.default_rng(1)
    policy = make_policy(task, seed=3)
    pi64 = torch_policy64(policy)
    problems = task.sample(3, seed=2)
    residual = ResidualModelPolicyConsensus(task.state, task.nu, NumpyPolicy(policy), task.target_dim)
    data = residual.createData(crocoddyl.DataCollectorAbstract())
    for i in range(3):
        x, u = random_state(task, rng, problems[i]), random_control(task, rng)
        residual.target = problems.target[i].copy()
        residual.shift = rng.standard_normal(task.nu)
        residual.calc(data, x, u)
        obs = task.observation(x[None], problems.target[i : i + 1])[0]
        np.testing.assert_allclose(data.r, u - pi64(obs) + residual.shift, rtol=0, atol=1e-9)

        def r_of(xx, uu):
            residual.calc(data, xx, uu)
            return np.array(data.r)

        Rx_fd = central_diff(lambda xx: r_of(xx, u), x)
        Ru_fd = central_diff(lambda uu: r_of(x, uu), u)
        residual.calcDiff(data, x, u)
        Rx = np.reshape(data.Rx, (task.nu, task.nx))
        Ru = np.reshape(data.Ru, (task.nu, task.nu))
        scale = max(1.0, np.abs(Rx_fd).max())
        np.testing.assert_allclose(Rx, Rx_fd, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(Ru, np.eye(task.nu), atol=1e-12)
        np.testing.assert_allclose(Ru_fd, np.eye(task.nu), atol=1e-6)
        assert np.abs(Rx).max() > 1e-3, "a policy that ignores the state makes this test vacuous"


# -- (b) the cost inside the integrated action models --------------------------
@pytest.mark.parametrize("name", ["pendulum", "ur5_reach", "lqr"])
def test_consensus_cost_is_task_cost_plus_half_mu_squared_residual(name):
    task = get_task(name)
    rng = np.random.default_rng(4)
    policy = make_policy(task, seed=5)
    pi64 = torch_policy64(policy)
    problems = task.sample(2, seed=6)
    plain = task.build_problem(problems[1])
    shooting = task.build_problem(problems[0])
    mu = 3.7
    terms = add_consensus_terms(task, shooting, NumpyPolicy(policy), mu, problems[0])
    assert shooting.nthreads == 1  # Python models must not run on Crocoddyl's OpenMP threads
    T = task.horizon
    xs = np.stack([random_state(task, rng, problems[0]) for _ in range(T + 1)])
    us = np.stack([random_control(task, rng) for _ in range(T)])
    obs = task.observation(xs[:-1], np.repeat(problems.target[0:1], T, axis=0))
    r = us - pi64(obs)  # λ = 0 at construction
    task.set_problem(plain, problems[0])
    np.testing.assert_allclose(
        shooting.calc(list(xs), list(us)), plain.calc(list(xs), list(us)) + 0.5 * mu * (r * r).sum(), rtol=1e-10
    )
    task.set_problem(plain, problems[1])
    # reuse in place: another problem, shifts, μ and a new policy
    terms.set_problem(problems[1])
    policy2 = make_policy(task, seed=7)
    pi64 = torch_policy64(policy2)
    mu = 12.5
    shifts = rng.standard_normal((T, task.nu))
    terms.set(policy=policy2, shifts=shifts, mu=mu)

    xs = np.stack([random_state(task, rng, problems[1]) for _ in range(T + 1)])
    us = np.stack([random_control(task, rng) for _ in range(T)])
    obs = task.observation(xs[:-1], np.repeat(problems.target[1:2], T, axis=0))
    r = us - pi64(obs) + shifts
    al = 0.5 * mu * (r * r).sum(axis=1)
    # node by node
    for t in (0, T // 2, T - 1):
        m, mp = shooting.runningModels[t], plain.runningModels[t]
        d, dp = m.createData(), mp.createData()
        m.calc(d, xs[t], us[t])
        mp.calc(dp, xs[t], us[t])
        np.testing.assert_allclose(d.cost, dp.cost + al[t], rtol=1e-10, atol=1e-6)
        np.testing.assert_allclose(d.xnext, dp.xnext, atol=1e-12)
    # whole problem (the datas the problem allocated)
    total = shooting.calc(list(xs), list(us))
    np.testing.assert_allclose(total, plain.calc(list(xs), list(us)) + al.sum(), rtol=1e-10, atol=1e-6)


# -- (c) derivatives of the whole action model ----------------------------------
@pytest.mark.parametrize("name", ["pendulum", "ur5_reach", "lqr"])
def test_action_model_derivatives_match_central_differences(name):
    task = get_task(name)
    rng = np.random.default_rng(8)
    policy = make_policy(task, seed=9)
    problems = task.sample(1, seed=10)
    shooting = task.build_problem(problems[0])
    mu = 50.0
    terms = add_consensus_terms(task, shooting, policy, mu, problems[0])
    terms.set(shifts=rng.standard_normal((task.horizon, task.nu)))
    model, plain = shooting.runningModels[3], task.build_problem(problems[0]).runningModels[3]
    if name == "lqr":
        assert isinstance(model, ActionModelLQRWithConsensus)
    data = model.createData()
    x, u = random_state(task, rng, problems[0]), random_control(task, rng)

    def cost(xx, uu):
        model.calc(data, xx, uu)
        return data.cost

    def Lu_of(xx, uu):
        model.calc(data, xx, uu)
        model.calcDiff(data, xx, uu)
        return np.array(data.Lu)

    Lx_fd = central_diff(lambda xx: cost(xx, u), x)[0]
    Lu_fd = central_diff(lambda uu: cost(x, uu), u)[0]
    Lux_fd = central_diff(lambda xx: Lu_of(xx, u), x)  # [nu, nx]
    Luu_fd = central_diff(lambda uu: Lu_of(x, uu), u)
    model.calc(data, x, u)
    model.calcDiff(data, x, u)
    for got, want in ((data.Lx, Lx_fd), (data.Lu, Lu_fd)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))
    # the consensus term is linear in u, so its Lxu and Luu are exact (not only Gauss–Newton)
    Lxu = np.reshape(data.Lxu, (task.nx, task.nu))
    Luu = np.reshape(data.Luu, (task.nu, task.nu))
    np.testing.assert_allclose(Lxu, Lux_fd.T, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(Lux_fd).max()))
    np.testing.assert_allclose(Luu, Luu_fd, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(Luu_fd).max()))
    assert np.abs(Lxu).max() > 1e-3
    # Lxx: the task's plus the Gauss–Newton term μ·Rxᵀ Rx (Rx = −∂π/∂x)
    plain_data = plain.createData()
    plain.calc(plain_data, x, u)
    plain.calcDiff(plain_data, x, u)
    residual = ResidualModelPolicyConsensus(task.state if name != "lqr" else crocoddyl.StateVector(task.nx), task.nu,
                                            policy, task.target_dim)
    residual.target = problems.target[0]
    rdata = residual.createData(crocoddyl.DataCollectorAbstract())
    residual.calcDiff(rdata, x, u)
    Rx = np.reshape(rdata.Rx, (task.nu, task.nx))
    Lxx_extra = np.reshape(data.Lxx, (task.nx, task.nx)) - np.reshape(plain_data.Lxx, (task.nx, task.nx))
    np.testing.assert_allclose(Lxx_extra, mu * Rx.T @ Rx, rtol=1e-8, atol=1e-8 * mu * np.abs(Rx).max() ** 2)


# -- (d, e) solves: μ large follows the policy, μ tiny is the plain OCP -------------
@pytest.mark.parametrize("name", ["pendulum", "lqr"])
def test_consensus_solve_interpolates_between_policy_rollout_and_plain_ocp(name):
    task = get_task(name)
    policy = make_policy(task, seed=0)
    pi = NumpyPolicy(policy)
    problems = task.sample(2, seed=1)
    shooting = task.build_problem(problems[0])
    terms = add_consensus_terms(task, shooting, pi, 1e4, problems[0])
    u_scale = task.u_max.max()
    for i in range(2):
        p = problems[i]
        terms.set_problem(p)
        roll = task.rollout(policy.act, p)
        init = (roll.xs[0], roll.us[0])
        zero = np.zeros((task.horizon, task.nu))
        # μ large, λ = 0: u_t = π(x_t) along the closed-loop rollout, up to O(1/μ)
        errors = {}
        for mu in (1e4, 1e6):
            terms.set(mu=mu, shifts=zero)
            sol = solve(shooting, task.config.solver, *init)
            assert sol.converged and sol.feasible
            errors[mu] = np.abs(sol.us - roll.us[0]).max()
        assert errors[1e4] < 0.1 * u_scale, errors
        assert errors[1e6] < 2e-3 * u_scale, errors
        assert errors[1e6] < 0.1 * errors[1e4] + 1e-9, errors
        # the shift λ/μ: u_t = clip(π(x_t) − λ_t/μ) (the box takes over where π − λ/μ leaves it)
        shifts = 0.1 * u_scale * np.random.default_rng(i).standard_normal((task.horizon, task.nu))
        terms.set(mu=1e6, shifts=shifts)
        sol = solve(shooting, task.config.solver, *init)
        assert sol.converged
        pis = np.stack([pi(task.observation(x[None], p.target)[0]) for x in sol.xs[:-1]])
        want = np.clip(pis - shifts, task.u_min, task.u_max)
        np.testing.assert_allclose(sol.us, want, rtol=0, atol=2e-3 * u_scale)
        np.testing.assert_allclose(terms.violations(sol.xs, sol.us), sol.us - pis, atol=1e-12)
        # μ tiny: the plain OCP's solution (same warm start)
        terms.set(mu=1e-8, shifts=zero)
        sol = solve(shooting, task.config.solver, *init)
        plain = solve(task.build_problem(p), task.config.solver, *init)
        assert plain.converged and sol.converged
        np.testing.assert_allclose(sol.us, plain.us, rtol=0, atol=1e-5 * u_scale)
        assert np.abs(plain.us - roll.us[0]).max() > 0.1 * u_scale  # the two limits differ
        assert (sol.us <= task.u_max + 1e-9).all() and (sol.us >= task.u_min - 1e-9).all()


def test_lqr_box_is_kept_by_the_wrapped_nodes():
    task = get_task("lqr")
    shooting = task.build_problem(task.sample(1, seed=0), constrained=True)
    add_consensus_terms(task, shooting, make_policy(task, seed=0), 1.0)
    for model in shooting.runningModels:
        assert model.has_control_limits
        np.testing.assert_array_equal(model.u_ub, task.u_max)
        np.testing.assert_array_equal(model.u_lb, task.u_min)


# -- (f) PLAL+M: tracking terms with built-in residuals ---------------------------
@pytest.mark.parametrize("name", ["pendulum", "ur5_reach", "lqr"])
def test_tracking_terms_cost_and_large_mu_tracks_references(name):
    task = get_task(name)
    rng = np.random.default_rng(11)
    problems = task.sample(1, seed=12)
    p = problems[0]
    T = task.horizon
    plain = task.build_problem(p)
    shooting = task.build_problem(p)
    terms = add_tracking_terms(task, shooting, mu=1.0)
    # cost: task + μ/2‖u − u_ref‖² + μ/2‖x − x_ref‖² per running node
    mu = 7.0
    u_refs = np.stack([random_control(task, rng) for _ in range(T)])
    x_refs = np.stack([random_state(task, rng, p) for _ in range(T)])
    terms.set(u_refs=u_refs, x_refs=x_refs, mu=mu)
    xs = np.stack([random_state(task, rng, p) for _ in range(T + 1)])
    us = np.stack([random_control(task, rng) for _ in range(T)])
    extra = 0.5 * mu * (((us - u_refs) ** 2).sum() + ((xs[:-1] - x_refs) ** 2).sum())
    np.testing.assert_allclose(
        shooting.calc(list(xs), list(us)), plain.calc(list(xs), list(us)) + extra, rtol=1e-10, atol=1e-6
    )
    # derivatives: Lx/Lu gain μ(x − x_ref), μ(u − u_ref); Lxx/Luu gain μI
    t0 = T // 3
    model, model_plain = shooting.runningModels[t0], plain.runningModels[t0]
    data, data_plain = model.createData(), model_plain.createData()
    for m, d in ((model, data), (model_plain, data_plain)):
        m.calc(d, xs[t0], us[t0])
        m.calcDiff(d, xs[t0], us[t0])
    nx, nu = task.nx, task.nu
    np.testing.assert_allclose(data.Lx - data_plain.Lx, mu * (xs[t0] - x_refs[t0]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(data.Lu - data_plain.Lu, mu * (us[t0] - u_refs[t0]), rtol=1e-9, atol=1e-9)
    for key, n in (("Lxx", nx), ("Luu", nu)):
        extra = np.reshape(getattr(data, key), (n, n)) - np.reshape(getattr(data_plain, key), (n, n))
        np.testing.assert_allclose(extra, mu * np.eye(n), rtol=1e-9, atol=1e-9)
    # μ large with consistent references (a feasible trajectory): the solution is that trajectory
    sol_plain = solve(plain, task.config.solver)
    t = np.arange(T)[:, None]
    for seed in (0, 1):
        phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, task.nu)
        ref_us = np.clip(sol_plain.us + 0.1 * task.u_max * np.sin(0.2 * t + phase), task.u_min, task.u_max)
        ref_xs = task.open_loop(p.x0, ref_us[None])[0]
        terms.set(u_refs=ref_us, x_refs=ref_xs[:-1], mu=1e6)
        sol = solve(shooting, task.config.solver)  # cold start
        np.testing.assert_allclose(sol.us, ref_us, rtol=0, atol=1e-3 * task.u_max.max())
        # the tracked states x_0..x_{T-1} (x_T only feels the task's terminal cost)
        np.testing.assert_allclose(sol.xs[:-1], ref_xs[:-1], rtol=0, atol=1e-3 * max(1.0, np.abs(ref_xs).max()))
        assert np.abs(sol.us - sol_plain.us).max() > 0.05 * task.u_max.max()
    # μ tiny: back to the plain OCP
    terms.set(mu=1e-9)
    sol = solve(shooting, task.config.solver)
    np.testing.assert_allclose(sol.us, sol_plain.us, rtol=0, atol=1e-4 * task.u_max.max())
