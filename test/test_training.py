"""The trainer: Sobolev terms, improvement on small budgets, reproducibility, resume, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tocpl_ros.config import FieldError
from tocpl_ros.tasks import load_task
from tocpl_ros.tasks.config import SolverConfig
from tocpl_training.checkpoint import load_checkpoint, load_policy
from tocpl_training.cli import build_parser, main as train_main
from tocpl_training.config import TrainConfig
from tocpl_training.learning.policy import make_policy
from tocpl_training.learning.supervised import SupervisedData, fit, regression_loss, sobolev_loss_full, sobolev_loss_stochastic
from tocpl_training.oc.phase import OCJob, OCPhaseRunner, OCRequest
from tocpl_training.trainer import CHECKPOINT, Trainer


def small(**changes) -> TrainConfig:
    base = dict(task="lqr", iterations=3, problems=8, epochs=5, eval_problems=10, workers=1, seed=0)
    return TrainConfig(**{**base, **changes})


def test_stochastic_sobolev_term_has_the_full_jacobian_term_as_expectation():
    task = load_task("ur5_reach")
    policy = make_policy(task, seed=0)
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(task.observation(task.sample(8, 0).x0, task.sample(8, 0).target), dtype=torch.float32)
    jac = torch.as_tensor(rng.normal(0, 50, (8, task.nu, task.nx)), dtype=torch.float32)
    full = sobolev_loss_full(policy, obs, jac, task.nx).item()
    gen = torch.Generator().manual_seed(0)
    draws = [sobolev_loss_stochastic(policy, obs, jac, task.nx, gen)[0].item() for _ in range(3000)]
    assert np.mean(draws) == pytest.approx(full, rel=0.05)
    assert np.std(draws) > 0.05 * full  # it is a random estimate, not the full term in disguise


def test_sobolev_term_is_zero_when_the_policy_jacobian_matches():
    task = load_task("pendulum")
    policy = make_policy(task, seed=1)
    obs = torch.as_tensor(task.sample(16, 0).x0, dtype=torch.float32).requires_grad_(True)
    out = policy(obs)
    jac = torch.stack([torch.autograd.grad(out[:, 0].sum(), obs)[0]], dim=1).detach()
    gen = torch.Generator().manual_seed(0)
    assert sobolev_loss_stochastic(policy, obs, jac, task.nx, gen)[0].item() < 1e-10
    assert sobolev_loss_full(policy, obs, jac, task.nx).item() < 1e-10


def test_fit_with_a_step_budget_takes_that_many_adam_steps_on_sampled_batches():
    task = load_task("pendulum")
    policy = make_policy(task, seed=0)
    problems = task.sample(300, 0)
    obs = task.observation(problems.x0, problems.target).astype(np.float32)
    u = np.clip(-obs[:, :1] * 2.0, -1, 1).astype(np.float32)  # a smooth target law
    jac = np.broadcast_to(np.array([[[-2.0, 0.0]]]), (300, 1, 2)).copy()
    data = SupervisedData(obs, u, jac)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    before = regression_loss(policy, torch.as_tensor(obs), torch.as_tensor(u)).item()
    stats = fit(policy, optimizer, data, epochs=99, batch_size=64, nx=task.nx, sobolev_weight=1e-2,
                generator=torch.Generator().manual_seed(0), steps=40)
    assert optimizer.state[next(policy.parameters())]["step"].item() == 40  # steps, not 99 epochs
    assert stats["skipped_steps"] == 0 and stats["sobolev_loss"] > 0
    assert regression_loss(policy, torch.as_tensor(obs), torch.as_tensor(u)).item() < 0.5 * before


def test_weight_averaging_ends_nearer_the_law_behind_noisy_labels():
    """Adam at a high rate on noisy labels ends on a noisy iterate; the average of its steps is nearer
    the law the labels scatter around (what a delivered policy should have learnt)."""
    task = load_task("pendulum")
    problems = task.sample(400, 0)
    obs = task.observation(problems.x0, problems.target).astype(np.float32)
    u_half = float(task.u_max[0])
    law = 0.5 * u_half * np.clip(-obs[:, :1] * 2.0, -1, 1).astype(np.float32)
    for seed in (0, 1):
        noisy = law + np.random.default_rng(seed).normal(0, 0.3 * u_half, law.shape).astype(np.float32)
        errors = {}
        for decay in (0.0, 0.95):
            policy = make_policy(task, seed=seed)
            optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
            fit(policy, optimizer, SupervisedData(obs, noisy), epochs=1, batch_size=16, nx=task.nx, sobolev_weight=0.0,
                generator=torch.Generator().manual_seed(seed), steps=300, weight_average=decay)
            errors[decay] = regression_loss(policy, torch.as_tensor(obs), torch.as_tensor(law)).item()
        assert errors[0.95] < 0.8 * errors[0.0]
    with pytest.raises(FieldError, match="weight_average"):
        TrainConfig(weight_average=1.0)


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_evaluation_every_k_iterations_and_at_the_last_with_each_phase_timed(tmp_path):
    import csv

    config = small(task="pendulum", iterations=5, problems=6, eval_problems=8, eval_every=2, select_best=True,
                   validation_problems=8, supervised_steps=20, sobolev=True)
    trainer = Trainer(config, tmp_path / "run")
    rows = trainer.run()
    evaluated = [int(r["iteration"]) for r in rows if "final_error_mean" in r]
    assert evaluated == [2, 4, 5]
    assert all("validation_within" in r for r in rows if int(r["iteration"]) in evaluated)
    assert trainer.selected["iteration"] in evaluated  # select_best chooses among evaluated iterates
    assert "final_error_mean" in trainer.final_metrics()
    for r in rows:
        assert r["oc_seconds"] > 0 and 0 < r["oc_solve_seconds"] <= r["oc_seconds"] and r["supervised_seconds"] > 0
        assert r["checkpoint_seconds"] > 0 and r["log_seconds"] > 0
        assert ("eval_seconds" in r) == (int(r["iteration"]) in evaluated)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert [w["final_error_mean"] == "" for w in written] == [True, False, True, False, False]
    assert written[-1]["log_seconds"] != ""  # the last row's own times reach the CSV too
    from tocpl_training.cli import progress_line

    assert "supervised" in progress_line(rows[0], config, "rad") and "at T" in progress_line(rows[1], config, "rad")
    # a resumed run keeps the cadence
    resumed = Trainer.resume(tmp_path / "run", iterations=6).run()
    assert "final_error_mean" in resumed[-1] and len(resumed) == 6


def test_pddp_improves_the_lqr_policy_on_held_out_problems(tmp_path):
    rows = Trainer(small(iterations=4, sobolev=True), tmp_path / "run").run()
    first, last = rows[0], rows[-1]
    assert last["cost_gap_median"] < 0.5 * first["cost_gap_median"]
    assert last["dynamics_evaluations"] > first["dynamics_evaluations"]
    assert 0 < first["oc_seconds"] < first["wall_time"]  # the OC phase's share of the iteration's time
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
@pytest.mark.parametrize("variant", [dict(algo="plal"), dict(algo="plal", multiple_shooting=True, sobolev=True)])
def test_plal_variants_run_and_reduce_the_consensus_gap(tmp_path, variant):
    # lqr's configured μ (config/train/lqr.yaml); at μ = 1 the +M consensus residual grows instead
    rows = Trainer(small(iterations=4, mu=0.01, **variant), tmp_path / "run").run()
    assert rows[-1]["consensus_u"] < rows[0]["consensus_u"]
    assert rows[-1]["cost_gap_median"] < rows[0]["cost_gap_median"]


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_dual_decay_bounds_the_multipliers_where_consensus_is_not_reached(tmp_path):
    """λ/μ shifts the regression targets u + λ/μ. With the paper's ascent (dual_decay 1) it sums every
    past residual; with dual_decay ρ < 1 it stays within max residual / (1 − ρ) (RMS, half-range units)."""
    shifts = {}
    for decay in (1.0, 0.5):
        rows = Trainer(small(algo="plal", multiple_shooting=True, sobolev=True, iterations=5, mu=0.01,
                             dual_decay=decay), tmp_path / f"run{decay}").run()
        shifts[decay] = [r["shift_rms"] for r in rows]
        if decay < 1:
            worst = np.maximum.accumulate([r["consensus_error"] for r in rows])
            assert all(s <= w / (1 - decay) + 1e-12 for s, w in zip(shifts[decay], worst))
    assert shifts[0.5][0] == pytest.approx(shifts[1.0][0])  # the first update is the same: λ starts at 0
    assert shifts[0.5][-1] < shifts[1.0][-1]


@pytest.mark.parametrize("variant", [dict(algo="pods", constrained=False),
                                     dict(algo="dpl", constrained=False, sobolev=True, sobolev_full=True)])
def test_baselines_run_and_improve(tmp_path, variant):
    rows = Trainer(small(iterations=4, **variant), tmp_path / "run").run()
    assert rows[-1]["cost_gap_median"] < rows[0]["cost_gap_median"]
    assert np.isfinite(rows[-1]["regression_loss"])


def test_pods_step_is_the_newton_step_on_an_unconstrained_lqr():
    """On a quadratic cost with linear dynamics one Gauss–Newton step lands on the optimum."""
    from tocpl_ros.ocp import solve

    trainer = Trainer(small(algo="pods", constrained=False), "unused")
    alg, task = trainer.algorithm, trainer.task
    problems = task.sample(2, seed=5)
    traj = task.rollout(alg.policy.act, problems)
    for i in range(2):
        task.set_problem(alg.shooting, problems[i])
        us, _ = alg._gauss_newton_step(traj.xs[i], traj.us[i])
        optimum = solve(alg.shooting, SolverConfig(max_iter=100, th_stop=1e-16))
        np.testing.assert_allclose(us, optimum.us, atol=1e-6)


def test_bcl_schedule_grows_mu_while_the_consensus_error_misses_its_tolerance(tmp_path):
    rows = Trainer(small(algo="plal", iterations=4, mu=0.01, mu_schedule="bcl", mu_max=10.0), tmp_path / "run").run()
    mus = [r["mu"] for r in rows]
    assert mus[0] == 0.01 and max(mus) > 0.01 and all(b >= a for a, b in zip(mus, mus[1:]))
    for r, nxt in zip(rows, rows[1:]):  # μ grew exactly when the error was above the tolerance
        assert (nxt["mu"] > r["mu"]) == (r["consensus_error"] > r["eta"] and r["mu"] < 10.0)


def test_oc_phase_gives_the_same_result_for_any_worker_count():
    task = load_task("pendulum")
    problems = task.sample(5, seed=3)
    jobs = [OCJob(problems.x0[i], problems.target[i]) for i in range(5)]
    request = OCRequest(jobs, SolverConfig(max_iter=30))
    with OCPhaseRunner(task, constrained=True, workers=1) as serial, OCPhaseRunner(task, constrained=True, workers=2) as pool:
        a, b = serial.solve(request), pool.solve(request)
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.us, sb.us)
        np.testing.assert_array_equal(sa.K, sb.K)


@pytest.mark.parametrize("variant", [dict(), dict(algo="plal", multiple_shooting=True, mu=0.01, problem_refresh=0.25)])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, variant):
    config = small(iterations=4, sobolev=True, replay=2, **variant)
    straight = Trainer(config, tmp_path / "straight").run()

    Trainer(TrainConfig(**{**config.__dict__, "iterations": 2}), tmp_path / "split").run()
    resumed = Trainer.resume(tmp_path / "split", iterations=4).run()

    assert len(resumed) == 4
    for a, b in zip(straight, resumed):
        for key in ("final_error_mean", "cost_gap_median", "dynamics_evaluations", "regression_loss"):
            assert a[key] == b[key], key
    pa, _, _ = load_policy(tmp_path / "straight" / CHECKPOINT)
    pb, _, _ = load_policy(tmp_path / "split" / CHECKPOINT)
    for ta, tb in zip(pa.state_dict().values(), pb.state_dict().values()):
        assert torch.equal(ta, tb)


def test_checkpoint_holds_plain_data_only(tmp_path):
    Trainer(small(iterations=1), tmp_path / "run").run()
    data = load_checkpoint(tmp_path / "run" / CHECKPOINT)  # torch.load(weights_only=True) inside
    assert data["train_config"]["algo"] == "pddp" and data["task_name"] == "lqr"
    assert not list(tmp_path.joinpath("run").glob("*.tmp"))


def test_cli_help_documents_every_field_and_runs_end_to_end(tmp_path, capsys):
    help_text = build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text
    assert "Sobolev" in help_text
    out = tmp_path / "cli"
    assert train_main(["--task", "lqr", "--iterations", "2", "--problems", "4", "--eval-problems", "5",
                       "--workers", "1", "--out", str(out)]) == 0
    assert (out / "policy.onnx").is_file() and "exported" in capsys.readouterr().out
    assert train_main(["--task", "lqr", "--algo", "sac", "--out", str(out)]) == 2
    assert "'algo'" in capsys.readouterr().err
    assert train_main(["--task", "lqr", "--problems", "4", "--out", str(tmp_path / "x"),
                       "--task-set", "costs.running.bogus=1"]) == 2
    assert "costs.running.bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_pddp_sobolev_learns_to_stabilise_the_pendulum(tmp_path):
    rows = Trainer(TrainConfig(task="pendulum", iterations=12, problems=32, replay=2, epochs=20, sobolev=True,
                               eval_problems=50, workers=1), tmp_path / "run").run()
    best = max(r["within_tolerance"] for r in rows)
    assert best >= 0.8 and best - rows[0]["within_tolerance"] >= 0.15, [r["within_tolerance"] for r in rows]


def test_targets_on_the_torque_box_keep_the_network_bounded():
    # Box-constrained OC solutions sit on the bounds; regressing tanh onto ±1 exactly drives the
    # pre-activations (and weights) to grow without end, until float32 overflows.
    task = load_task("pendulum")
    policy = make_policy(task, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (512, task.obs_dim))
    u = np.where(obs[:, :1] > 0, task.u_max, task.u_min)  # bang-bang: every target on the box
    data = SupervisedData(obs, u, np.zeros((512, task.nu, task.nx)))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    stats = fit(policy, optimizer, data, epochs=300, batch_size=512, nx=task.nx, sobolev_weight=1e-2,
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = policy.net((torch.as_tensor(obs, dtype=torch.float32) - policy.obs_mean) / policy.obs_scale)
    assert all(torch.isfinite(p).all() for p in policy.parameters()) and stats["skipped_steps"] == 0
    assert z.abs().max() < 6.0  # atanh(1 - 1e-3) = 3.8: aimed inside the box, not at infinity
    error = np.abs(policy.act(obs) - u)[:, 0] / task.u_max[0]
    assert np.mean(error < 0.05) > 0.8  # and still on the bang-bang law away from its switch


def test_learning_rate_decays_geometrically_to_its_final_value():
    trainer = Trainer(small(iterations=5, learning_rate=1e-3, learning_rate_final=1e-5), "unused")
    alg = trainer.algorithm
    rates = []
    for k in range(5):
        alg.iteration = k
        rates.append(alg.learning_rate())
    np.testing.assert_allclose(rates, [1e-3, 10 ** -3.5, 1e-4, 10 ** -4.5, 1e-5], rtol=1e-12)
    trainer.runner.close()


def test_diverging_policy_rollouts_do_not_poison_the_oc_phase():
    """An untrained UR5 policy spins the wrist past the divergence limit: those problems are
    warm-started otherwise (counted), and every OC solution is still finite and precise. (A cold
    start needs more than the default 50 solver iterations here since the task's posture term.)"""
    trainer = Trainer(small(task="ur5_reach", problems=8, sobolev=True, oc_max_iter=200), "unused")
    alg, task = trainer.algorithm, trainer.task
    batch = alg.oc_phase()
    assert batch.fallbacks > 0
    assert np.isfinite(batch.xs).all() and np.isfinite(batch.us).all() and np.isfinite(batch.K).all()
    errors = task.final_error(batch.xs[:, -1], batch.problems.target)
    assert errors.max() < 1e-3
    trainer.runner.close()


@pytest.mark.parametrize("policy_states", ["rollout", "oc"])
def test_multiple_shooting_never_tracks_a_diverged_rollout(policy_states):
    """PLAL+M's OC phase tracks the policy states ²x. On the first iteration of an untrained UR5 policy
    every rollout diverges and there are no OC states yet: the phase solves the plain OCPs (precise,
    finite) and takes ²x = ¹x, instead of tracking the frozen states of a spinning arm."""
    trainer = Trainer(small(task="ur5_reach", algo="plal", multiple_shooting=True, sobolev=True, problems=4,
                            policy_states=policy_states), "unused")
    alg, task = trainer.algorithm, trainer.task
    with torch.no_grad():
        trainer.policy.net[-1].bias.fill_(20.0)  # every torque at its upper bound: the arm spins away
    batch = alg.oc_phase()
    assert batch.fallbacks == 4
    assert task.final_error(batch.xs[:, -1], batch.problems.target).max() < 1e-3
    np.testing.assert_array_equal(alg.supervised_states(batch), batch.xs[:, :-1])
    stats = alg.dual_update(batch)
    assert stats["consensus_x"] == 0.0
    trainer.runner.close()


def test_problem_refresh_replaces_a_share_of_plal_problems_with_fresh_multipliers():
    """problem_refresh 0.25 of 8: two problems are drawn anew, their λ restart at 0 and the last phase's
    record of them (warm-start fallback, +M's ²x) is the policy's rollout from their own x0."""
    trainer = Trainer(small(algo="plal", multiple_shooting=True, mu=0.01, problem_refresh=0.25), "unused")
    alg = trainer.algorithm
    alg.step()
    x0, lam = alg.problems.x0.copy(), alg.lam.copy()
    assert np.abs(lam).sum(axis=(1, 2)).min() > 0
    alg.refresh_problems()
    changed = np.flatnonzero((alg.problems.x0 != x0).any(axis=1))
    kept = np.setdiff1d(np.arange(8), changed)
    assert len(changed) == 2
    assert (alg.lam[changed] == 0).all() and (alg.lam[kept] == lam[kept]).all()
    np.testing.assert_array_equal(alg.previous.problems.x0, alg.problems.x0)
    np.testing.assert_array_equal(alg.previous.xs[changed, 0], alg.problems.x0[changed])
    batch = alg.oc_phase()  # the tracking phase runs on the mixed set
    assert np.isfinite(batch.us).all()
    np.testing.assert_array_equal(batch.xs[:, 0], alg.problems.x0)
    trainer.runner.close()


def test_pods_survives_iterations_where_every_rollout_diverges(tmp_path):
    """PODS learns only from its own rollouts: when all of them diverge there is nothing to regress
    on. The iteration is logged (NaN loss, every problem counted) and the policy left as it was."""
    trainer = Trainer(small(task="ur5_reach", algo="pods", constrained=False, problems=4, eval_problems=4,
                            iterations=2), tmp_path / "run")
    with torch.no_grad():
        trainer.policy.net[-1].bias.fill_(20.0)  # every torque at its upper bound: the arm spins away
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    rows = trainer.run()
    assert [r["warm_start_fallbacks"] for r in rows] == [4.0, 4.0]
    assert all(np.isnan(r["regression_loss"]) and r["diverged"] == 4 for r in rows)
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_select_best_delivers_the_iterate_best_on_validation_and_survives_resume(tmp_path):
    from tocpl_ros.policy_file import OnnxPolicy
    from tocpl_training.export import export_onnx
    from tocpl_training.trainer import validation_score

    # A large learning rate makes the iterates differ a lot: the best one need not be the last.
    config = small(task="pendulum", iterations=4, problems=6, eval_problems=8, learning_rate=3e-2,
                   select_best=True, validation_problems=12)
    Trainer(TrainConfig(**{**config.__dict__, "iterations": 2}), tmp_path / "run").run()
    trainer = Trainer.resume(tmp_path / "run", iterations=4)  # the choice so far must survive a resume
    rows = trainer.run()
    scores = [(r["validation_within"], -r["validation_cost"]) for r in rows]
    best = scores.index(max(scores)) + 1  # the first of equal scores, as the trainer keeps it
    assert trainer.selected["iteration"] == best == rows[-1]["selected_iteration"]
    assert trainer.final_metrics() is rows[best - 1]

    # the delivered policy is that iterate's: the same rollouts give the same score
    delivered = trainer.final_policy()
    assert validation_score(trainer.task, delivered, trainer.validation) == {
        "validation_within": rows[best - 1]["validation_within"], "validation_cost": rows[best - 1]["validation_cost"]}
    # its row reports the long hold too (computed at the end when it is not the last iterate's)
    long_hold = "hold_60s_error_mean"
    assert long_hold in rows[-1] and long_hold in rows[best - 1]
    np.testing.assert_equal(rows[best - 1][long_hold], trainer.continuous_use_figures(delivered, final=True)[long_hold])
    # tocpl-export (load_policy) exports it too, while a resume continues from the last iterate
    from_file, _, _ = load_policy(tmp_path / "run" / CHECKPOINT)
    for a, b in zip(from_file.state_dict().values(), delivered.state_dict().values()):
        assert torch.equal(a, b)
    last = load_checkpoint(tmp_path / "run" / CHECKPOINT)["policy_state"]
    for a, b in zip(last.values(), trainer.policy.state_dict().values()):
        assert torch.equal(a, b)
    onnx = OnnxPolicy(str(export_onnx(delivered, trainer.task, tmp_path / "p.onnx")))
    obs = np.random.default_rng(0).normal(size=(5, trainer.task.obs_dim)).astype(np.float32)
    np.testing.assert_allclose(onnx(obs), delivered.act(obs), atol=1e-5)


def test_validation_ranking_puts_success_first_then_cost():
    from tocpl_training.trainer import better

    def score(within, cost):
        return {"validation_within": within, "validation_cost": cost}

    assert better(score(0.9, 50.0), score(0.8, 1.0))  # more problems within tolerance wins
    assert better(score(0.9, 1.0), score(0.9, 2.0)) and not better(score(0.9, 2.0), score(0.9, 2.0))  # ties keep the first
    assert better(score(0.9, 1e9), score(0.9, float("inf")))  # a diverged rollout is the worst cost
    assert better(score(float("nan"), 1.0), score(float("nan"), 2.0))  # lqr: judged by cost alone
    assert better(score(0.0, 1.0), None)


def test_a_stalling_warm_start_gives_way_to_the_cold_start_early():
    """On the boxed lqr, BoxFDDP warm-started from a trained policy's rollouts creeps at its smallest
    line-search step until it gives up; the cold start then solves in one iteration. With
    oc_warm_start_probe such a warm start is dropped after that many iterations: same solutions,
    far fewer evaluations. Told that the rollouts are feasible (oc_feasible_warm_start), the solver
    does not creep at all: the same solutions from the warm start alone, fewer evaluations still."""
    from tocpl_ros.tasks import DynamicsCounter

    trainer = Trainer(small(iterations=3, problems=16, sobolev=True), "unused")
    for _ in range(3):
        trainer.algorithm.step()
    alg, task = trainer.algorithm, trainer.task
    problems = task.sample(16, 99)
    jobs, _ = alg.initial_guesses(problems, same_problems=False)

    assert all(job.init_is_rollout for job in jobs)

    def evaluations_and_costs(probe, feasible=False):
        request = OCRequest(jobs, SolverConfig(max_iter=50, th_stop=1e-9), "plain", {}, warm_start_probe=probe,
                            feasible_warm_start=feasible)
        counter = DynamicsCounter()
        sols = trainer.runner.solve(request, counter)
        iterations = sum(s.iterations for s in sols)
        return counter.steps, np.array([s.cost for s in sols]), all(s.converged for s in sols), iterations

    probed, probed_costs, probed_converged, probed_iterations = evaluations_and_costs(5)
    crept, crept_costs, _, crept_iterations = evaluations_and_costs(0)  # the warm start runs to the cap first
    assert probed_converged
    assert probed < 0.5 * crept
    np.testing.assert_allclose(probed_costs, crept_costs, rtol=1e-6)
    # the iterations reported (oc_iterations) are those spent, the dropped warm attempt's included
    assert crept_iterations > 2 * probed_iterations, (crept_iterations, probed_iterations)
    told, told_costs, told_converged, told_iterations = evaluations_and_costs(0, feasible=True)
    assert told_converged and told < probed and told_iterations < probed_iterations
    np.testing.assert_allclose(told_costs, crept_costs, rtol=1e-6)
    assert np.all(told_costs <= crept_costs * (1 + 1e-12)), "the crept solutions are never better"
    trainer.runner.close()


def test_sobolev_gains_at_the_solution_do_not_depend_on_the_warm_start():
    """sobolev_gains: solution: the OC phase hands over the gains of its solutions (ocp.solution_gains)
    and counts the linearisation they take; warm-started from the solution itself they do not change,
    the solver's K (the default) does."""
    from tocpl_ros.ocp import solution_gains
    from tocpl_ros.tasks import DynamicsCounter

    task = load_task("lqr")
    problems = task.sample(4, seed=5)
    jobs = [OCJob(problems.x0[i], problems.target[i]) for i in range(4)]
    solver = task.config.solver
    with OCPhaseRunner(task, constrained=True, workers=1) as runner:
        plain_count, with_gains_count = DynamicsCounter(), DynamicsCounter()
        runner.solve(OCRequest(jobs, solver), plain_count)  # counted only: the gains' extra cost
        cold = runner.solve(OCRequest(jobs, solver, gains="solution"), with_gains_count)
        warm_jobs = [OCJob(j.x0, j.target, s.xs, s.us) for j, s in zip(jobs, cold)]
        warm = runner.solve(OCRequest(warm_jobs, solver, gains="solution"))
        warm_solver_k = runner.solve(OCRequest(warm_jobs, solver))
    assert with_gains_count.steps == plain_count.steps + 4 * task.horizon
    shooting = task.build_problem(problems[0])
    for i, (c, w) in enumerate(zip(cold, warm)):
        task.set_problem(shooting, problems[i])
        np.testing.assert_allclose(c.K, solution_gains(shooting, c.xs, c.us), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(w.K, c.K, rtol=1e-6, atol=1e-9)
    assert any(not np.allclose(ws.K.reshape(c.K.shape), c.K, rtol=1e-3, atol=1e-6) for c, ws in zip(cold, warm_solver_k))
    assert TrainConfig(task="lqr", sobolev=True).sobolev_gains == "solver"  # the paper's, and what results use
    with pytest.raises(Exception, match="sobolev_gains.*'solver', 'solution' or 'task'"):
        TrainConfig(task="lqr", sobolev_gains="exact")


def test_sobolev_gains_of_the_task_ocp_leave_out_the_tracking_terms():
    """sobolev_gains: task: PLAL+M's tracking terms μ/2‖u − u_ref‖² + μ/2‖x − x_ref‖² hold their
    references fixed, which shrinks the gains of the OCP that has them (22 % on the lqr at its
    μ 0.01); 'task' takes the gains of the task's own OCP at the same solution (counted alike)."""
    from tocpl_ros.ocp import solution_gains
    from tocpl_ros.tasks import DynamicsCounter

    task = load_task("lqr")
    problems = task.sample(3, seed=6)
    solver = task.config.solver
    with OCPhaseRunner(task, constrained=True, workers=1) as runner:
        plain = runner.solve(OCRequest([OCJob(problems.x0[i], problems.target[i]) for i in range(3)], solver))
        # references at the plain solutions: the tracking OCP is solved there too
        jobs = [OCJob(problems.x0[i], problems.target[i], s.xs, s.us, terms={"u_ref": s.us, "x_ref": s.xs[:-1]})
                for i, s in enumerate(plain)]
        counts = {g: DynamicsCounter() for g in ("solution", "task")}
        tracked = {g: runner.solve(OCRequest(jobs, solver, mode="tracking", shared={"mu": 0.01}, gains=g), counts[g])
                   for g in ("solution", "task")}
    assert counts["task"].steps == counts["solution"].steps
    shooting = task.build_problem(problems[0])
    for i, (p, s, t) in enumerate(zip(plain, tracked["solution"], tracked["task"])):
        np.testing.assert_allclose(t.xs, s.xs, atol=1e-9)
        np.testing.assert_allclose(t.xs, p.xs, atol=1e-6)
        task.set_problem(shooting, problems[i])
        np.testing.assert_allclose(t.K, solution_gains(shooting, t.xs, t.us), rtol=1e-9, atol=1e-12)
        shrink = 1 - np.linalg.norm(s.K) / np.linalg.norm(t.K)
        assert 0.1 < shrink < 0.4, shrink
