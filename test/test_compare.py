"""tocpl-bench: the gym wrappers are the tasks' own OCPs, and a --quick comparison produces
consistent per-run metrics, plots, summary table and TO warm-start study (real SB3, real Crocoddyl)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from tocpl_ros.config import ConfigError, FieldError
from tocpl_ros.tasks import DynamicsCounter, Trajectories, load_task
from tocpl_training.baselines.env import TaskEnv
from tocpl_training.baselines.rl import load_rl_config
from tocpl_training.bench.compare import main
from tocpl_training.bench.runs import configuration, load_bench_config
from tocpl_training.trainer import HeldOut, evaluate_policy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("task_name", ["lqr", "pendulum", "ur5_reach"])
def test_env_is_the_task(task_name):
    """Same controls -> same states as Task.rollout (1e-9), rewards sum to minus the task's cost,
    one dynamics evaluation per step, episode ends exactly at T, seeded resets from P."""
    task = load_task(task_name)
    counter = DynamicsCounter()
    rng = np.random.default_rng(7)
    obs_mean, obs_scale = rng.normal(size=task.obs_dim), rng.uniform(0.5, 2.0, task.obs_dim)
    env = TaskEnv(task, counter, obs_mean=obs_mean, obs_scale=obs_scale)
    obs, _ = env.reset(seed=11)
    problem = env.problem
    # beyond the box half of the time: both must clip the same way
    us = rng.uniform(1.5 * task.u_min, 1.5 * task.u_max, (task.horizon, task.nu))
    xs, rewards = [env.x.copy()], []
    observations = [obs]
    for t in range(task.horizon):
        obs, reward, terminated, truncated, info = env.step(env.action_of(us[t]))
        assert terminated == (t == task.horizon - 1) and not truncated
        np.testing.assert_allclose(info["u"], np.clip(us[t], task.u_min, task.u_max), rtol=0, atol=1e-12)
        xs.append(env.x.copy())
        rewards.append(reward)
        observations.append(obs)
    assert counter.steps == task.horizon and counter.by_source == {"env_step": task.horizon}
    with pytest.raises(RuntimeError):
        env.step(np.zeros(task.nu))

    calls = {"t": 0}

    def open_loop(o):
        u = us[calls["t"]][None]
        calls["t"] += 1
        return u

    ref_counter = DynamicsCounter()
    traj = task.rollout(open_loop, problem, counter=ref_counter)
    assert ref_counter.steps == counter.steps
    np.testing.assert_allclose(np.array(xs), traj.xs[0], rtol=0, atol=1e-9)
    cost = task.evaluate(problem, traj).cost[0]
    assert np.isfinite(cost) and cost > 0
    assert sum(rewards) == pytest.approx(-cost, rel=1e-9, abs=1e-9)
    expected_obs = (task.observation(traj.xs[0], np.repeat(problem.target, task.horizon + 1, axis=0)) - obs_mean) / obs_scale
    np.testing.assert_allclose(np.array(observations), expected_obs, rtol=1e-5, atol=1e-5)  # float32 observations

    # seeded resets: reproducible, and drawn from the task's distribution P
    again = TaskEnv(task)
    again.reset(seed=11)
    np.testing.assert_array_equal(again.problem.x0, problem.x0)
    np.testing.assert_array_equal(again.problem.target, problem.target)
    again.reset(seed=12)
    assert not np.array_equal(again.problem.x0, problem.x0)
    x0s = np.array([again.reset()[0] for _ in range(200)])
    reference = task.observation(task.sample(2000, 3).x0, task.sample(2000, 3).target)
    assert (x0s.min(axis=0) >= reference.min(axis=0) - 0.05 * np.ptp(reference, axis=0) - 1e-6).all()
    assert (x0s.max(axis=0) <= reference.max(axis=0) + 0.05 * np.ptp(reference, axis=0) + 1e-6).all()


def test_a_diverging_episode_pays_its_frozen_trajectory_cost():
    """Spinning the UR5 away must cost what the frozen rollout costs, far more than a poor bounded
    episode: a cheap fixed penalty made diverging on purpose PPO's best policy."""
    task = load_task("ur5_reach")
    env = TaskEnv(task)
    env.reset(seed=3)
    problem = env.problem
    total, steps, info = 0.0, 0, {}
    while not info.get("diverged"):
        _, reward, terminated, _, info = env.step(np.ones(task.nu))  # every torque at its upper bound
        total += reward
        steps += 1
        assert not terminated or info.get("diverged"), "the full-torque episode did not diverge"
    assert terminated and steps < task.horizon and info["episode_cost"] == np.inf

    traj = task.rollout(lambda obs: np.repeat(task.u_max[None], len(obs), axis=0), problem)
    assert traj.diverged[0]
    frozen = task.evaluate(problem, Trajectories(traj.xs, traj.us, diverged=None)).cost[0]
    assert total == pytest.approx(-frozen, rel=1e-9)

    bounded = TaskEnv(task)
    bounded.reset(seed=3)
    idle = sum(bounded.step(bounded.action_of(np.zeros(task.nu)))[1] for _ in range(task.horizon))
    assert total < 100 * idle  # rewards are negative costs: diverging costs > 100x doing nothing


def test_configuration_names():
    assert configuration("plal+M+S-C") == ("to", {"algo": "plal", "multiple_shooting": True, "sobolev": True,
                                                  "constrained": False})
    assert configuration("pddp") == ("to", {"algo": "pddp", "multiple_shooting": False, "sobolev": False,
                                            "constrained": True})
    assert configuration("sac") == ("rl", {"algo": "sac"})
    assert configuration("dpl")[1]["constrained"] is False
    for bad in ("pddp+M", "ppo+S", "pods-C", "trpo", "plal+S+M"):
        with pytest.raises(FieldError):
            configuration(bad)
    bench = load_bench_config()
    assert {"ppo", "sac", "pods", "dpl", "pddp+S", "plal+M+S"} <= set(bench.configurations)
    for task in bench.tasks:
        for algo in ("ppo", "sac"):
            config = load_rl_config(algo, task)
            assert config.algo == algo and config.net_arch == [256, 256]


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_bench_overrides_by_task_and_configuration(tmp_path):
    """compare.yaml's per-configuration fields reach that configuration's TrainConfig only; the
    command line's --to-set wins over every level; a configuration's own flags over everything."""
    from tocpl_training.bench.runs import train_config_for

    bench = load_bench_config()
    ur5 = "ur5_reach_fixed_horizon"  # the comparisons' UR5 (the default ur5_reach trains pddp only)
    assert ur5 in bench.tasks
    assert bench.to_configuration_overrides[ur5]["plal+M+S"]["problems"] == 256
    assert train_config_for(ur5, "plal+M+S", 0, bench, False).problems == 256
    assert train_config_for(ur5, "pddp+S", 0, bench, False).problems == 64
    assert train_config_for("lqr", "plal+M+S", 0, bench, False).problems == 64
    config_file = tmp_path / "compare.yaml"
    config_file.write_text(f"to_task_overrides: {{{ur5}: {{iterations: 3}}}}\n"
                           f"to_configuration_overrides: {{{ur5}: {{plal+M+S: {{problems: 32, sobolev: false}}}}}}\n")
    bench = load_bench_config(config_file)
    config = train_config_for(ur5, "plal+M+S", 0, bench, False)
    assert (config.problems, config.iterations, config.sobolev, config.multiple_shooting) == (32, 3, True, True)
    with pytest.raises(ConfigError, match="to_configuration_overrides.*ppo: not a TO configuration"):
        config_file.write_text("to_configuration_overrides: {ur5_reach: {ppo: {problems: 32}}}\n")
        load_bench_config(config_file)
    # --to-set over the file: checked on the run folder's config.yaml of a one-iteration run
    out = tmp_path / "out"
    config_file.write_text("to_configuration_overrides: {lqr: {pddp: {problems: 32}}}\n")
    tiny = ["iterations=1", "eval_problems=10", "epochs=2", "replay=2", "problems=6"]
    assert main(["--config", str(config_file), "--tasks", "lqr", "--configs", "pddp", "--seeds", "0", "--workers", "1",
                 *(a for kv in tiny for a in ("--to-set", kv)), "--out", str(out), "--runs-dir", str(tmp_path / "runs")]) == 0
    run_config = yaml.safe_load((tmp_path / "runs" / "lqr" / "pddp" / "seed0" / "config.yaml").read_text())
    assert run_config["train"]["problems"] == 6


def _rows(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]  # "": not recorded


@pytest.mark.slow
def test_quick_bench(tmp_path):
    out = tmp_path / "bench"
    configs = ["pddp+S", "ppo", "sac"]
    assert main(["--quick", "--tasks", "lqr", "--configs", *configs, "--seeds", "0", "1", "--out", str(out)]) == 0
    bench = load_bench_config()
    manifest = json.loads((out / "runs.json").read_text())
    assert sorted(manifest) == sorted(f"lqr/{c}/seed{s}" for c in configs for s in (0, 1))
    assert all(e["status"] == "ok" and e["quick"] for e in manifest.values())

    task = load_task("lqr")

    class Zero:
        def act(self, obs):
            return np.zeros((len(obs), task.nu))

    eval_columns = set(evaluate_policy(task, Zero(), HeldOut.make(task, 3, 0)))  # the trainer's held-out metrics
    assert {"final_error_mean", "final_error_p95", "cost_gap_median", "within_tolerance"} <= eval_columns
    curves = {}
    for key, entry in manifest.items():
        rows = _rows(out / entry["metrics"])
        curves[key] = rows
        assert eval_columns | {"iteration", "dynamics_evaluations", "wall_time"} <= set(rows[0])
        evals = np.array([r["dynamics_evaluations"] for r in rows])
        wall = np.array([r["wall_time"] for r in rows])
        assert (np.diff(evals) > 0).all() and evals[0] > 0, key
        assert (np.diff(wall) > 0).all() and wall[0] > 0, key
        assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
        assert all(0 <= r["within_tolerance"] <= 1 for r in rows)
        if entry["kind"] == "rl":
            rl = load_rl_config(entry["configuration"], "lqr", bench.quick_rl)
            # one dynamics evaluation per environment step, evaluated on the planned schedule
            assert all(r["timesteps"] == r["dynamics_evaluations"] for r in rows)
            assert evals[-1] >= rl.total_steps
            assert len(rows) == len(rl.evaluation_steps())
            assert (evals >= np.array(rl.evaluation_steps())).all()
        else:
            assert len(rows) == bench.quick_to["iterations"]
            assert (out / "runs" / "lqr" / entry["configuration"] / f"seed{entry['seed']}" / "policy.onnx").is_file()
        assert entry["dynamics_evaluations"] == evals[-1]
    # every run was scored on the same held-out problems: same TO reference cost
    to_costs = {r["to_cost"] for rows in curves.values() for r in rows}
    assert len(to_costs) == 1
    # RL learners saw their own seeds: the two seeds differ
    assert curves["lqr/ppo/seed0"][-1]["final_error_mean"] != curves["lqr/ppo/seed1"][-1]["final_error_mean"]

    png = (out / "lqr_precision.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    summary = list(csv.DictReader(open(out / "summary.csv", newline="")))
    assert [(r["task"], r["configuration"]) for r in summary] == [("lqr", c) for c in configs]
    for r in summary:
        lasts = [curves[f"lqr/{r['configuration']}/seed{s}"][-1] for s in (0, 1)]
        assert int(r["seeds"]) == 2 and r["seed_list"] == "0 1"
        assert float(r["final_error_mean"]) == pytest.approx(np.median([x["final_error_mean"] for x in lasts]))
        assert float(r["best_error_mean"]) == pytest.approx(np.median(
            [min(x["final_error_mean"] for x in curves[f"lqr/{r['configuration']}/seed{s}"]) for s in (0, 1)]))
        assert float(r["dynamics_evaluations"]) == pytest.approx(np.median([x["dynamics_evaluations"] for x in lasts]))
        assert float(r["wall_time"]) == pytest.approx(np.median([x["wall_time"] for x in lasts]))
        reached = sum(any(row["within_tolerance"] >= bench.reach_fraction for row in
                          curves[f"lqr/{r['configuration']}/seed{s}"]) for s in (0, 1))
        assert int(r["reached"]) == reached
    md = (out / "summary.md").read_text()
    assert "Smoke run" in md and "lqr_precision.png" in md
    assert [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "seeds" not in line] == configs

    # TO warm-start study (paper Fig. 7) on a policy the bench just trained
    policy = out / "runs" / "lqr" / "pddp+S" / "seed0" / "policy.onnx"
    assert main(["--warm-start-study", str(policy), "--task", "lqr", "--problems", "6", "--out", str(out)]) == 0
    report = json.loads((out / "warm_start_lqr.json").read_text())
    for mode in ("policy", "cold"):
        its = report["iterations"][mode]
        assert len(its) == 6 and all(i >= 0 for i in its)
        assert report[mode]["solves"] == 6 and report[mode]["iterations_median"] == np.median(its)
    # Fig. 6: which start reached the lower cost, counted from the costs the report lists
    policy_cost, cold_cost = (np.array(report["costs"][k]) for k in ("policy", "cold"))
    relative = (policy_cost - cold_cost) / np.abs(cold_cost)
    assert report["cost_policy_vs_cold"] == {"lower": int(np.sum(relative < -1e-4)), "higher": int(np.sum(relative > 1e-4)),
                                             "same": int(np.sum(np.abs(relative) <= 1e-4))}
    assert sum(report["cost_policy_vs_cold"].values()) == 6
    assert (out / "warm_start_lqr.png").read_bytes().startswith(PNG_MAGIC)
    md = (out / "warm_start_lqr.md").read_text()
    assert "| policy |" in md and f"the same on {report['cost_policy_vs_cold']['same']} of 6 problems" in md

    # re-aggregation from the files alone reproduces the table and links the study
    before = (out / "summary.csv").read_text()
    assert main(["--plot-only", "--out", str(out)]) == 0
    assert (out / "summary.csv").read_text() == before
    assert "warm_start_lqr.md" in (out / "summary.md").read_text()


def test_quick_and_full_runs_do_not_mix(tmp_path, capsys):
    (tmp_path / "runs.json").write_text(json.dumps({"lqr/ppo/seed0": {"status": "ok", "quick": False}}))
    assert main(["--quick", "--tasks", "lqr", "--configs", "ppo", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--quick runs go into another --out" in capsys.readouterr().err
    assert not (tmp_path / "metrics").exists()


def _record_runs(out, prefix, count):
    from tocpl_training.bench.runs import record_run

    for i in range(count):
        record_run(out, f"{prefix}/seed{i}", {"status": "ok", "seed": i})


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_benches_side_by_side_into_one_out_keep_every_run(tmp_path):
    """Two tocpl-bench processes (say, other configurations on the other core) record into the same
    runs.json: each adds its runs to what the other wrote instead of overwriting it."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_record_runs, args=(tmp_path, f"lqr/{name}", 60)) for name in ("pddp", "ppo")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    manifest = json.loads((tmp_path / "runs.json").read_text())
    assert sorted(manifest) == sorted(f"lqr/{n}/seed{i}" for n in ("pddp", "ppo") for i in range(60))


def test_budget_column_names_the_consensus_penalty(tmp_path):
    """PLAL/DPL results hinge on μ (and +M on where ²x comes from), +S on its gains: the budget says which."""
    import dataclasses

    import yaml

    from tocpl_training.bench.runs import budget_of
    from tocpl_training.bench.summary import _budget_text
    from tocpl_training.config import TrainConfig

    def text(**fields):
        run = tmp_path / "_".join(f"{k}{v}" for k, v in fields.items())
        run.mkdir()
        train = dataclasses.asdict(TrainConfig(task="ur5_reach", iterations=15, problems=256, **fields))
        (run / "config.yaml").write_text(yaml.safe_dump({"train": train}))
        return _budget_text(budget_of(run))

    assert text(algo="pddp") == "15 it x 256 OCPs"
    assert text(algo="plal", mu=1e-4) == "15 it x 256 OCPs, μ 0.0001"
    assert text(algo="plal", mu=1e-4, multiple_shooting=True, policy_states="oc") == "15 it x 256 OCPs, μ 0.0001, ²x oc"
    assert text(algo="plal", mu=1e-4, multiple_shooting=True, policy_states="rollout") == \
        "15 it x 256 OCPs, μ 0.0001, ²x rollout"
    assert text(algo="dpl", mu=2e-5) == "15 it x 256 OCPs, μ 2e-05"
    assert text(algo="dpl", mu=2e-5, dual_decay=0.5) == "15 it x 256 OCPs, μ 2e-05"  # no multipliers to decay
    assert text(algo="plal", mu=1e-5, multiple_shooting=True, dual_decay=0.5) == \
        "15 it x 256 OCPs, μ 1e-05, ²x oc, λ decay 0.5"
    assert text(algo="plal", mu=1e-5, multiple_shooting=True, dual_decay=0.5, problem_refresh=0.25) == \
        "15 it x 256 OCPs, μ 1e-05, ²x oc, λ decay 0.5, refresh 25 %"
    # +S: which gains the Sobolev targets were (runs from before sobolev_gains: the solver's K, no mark)
    assert text(algo="pddp", sobolev=True, sobolev_gains="solution") == "15 it x 256 OCPs, K at solution"
    assert text(algo="pddp", sobolev=True) == "15 it x 256 OCPs"
    assert text(algo="plal", mu=1e-5, sobolev=True, sobolev_gains="task") == "15 it x 256 OCPs, μ 1e-05, K of the task's OCP"
    # whether the OC phase told the solver its warm starts are rollouts (runs from before the field: not)
    assert text(algo="pddp", sobolev=True, oc_feasible_warm_start=True) == "15 it x 256 OCPs, feasible warm start"


def test_warm_start_study_problems_are_neither_held_out_nor_validation_problems():
    """The study (Fig. 7) scores a policy on problems no part of training saw or chose it on."""
    from tocpl_ros.bench.mpc import DEFAULT_SEED
    from tocpl_training.config import TrainConfig

    defaults = TrainConfig(task="ur5_reach")
    assert DEFAULT_SEED not in (defaults.eval_seed, defaults.validation_seed, defaults.seed)
    task = load_task("ur5_reach")
    study = task.sample(50, DEFAULT_SEED).x0
    for seed in (defaults.eval_seed, defaults.validation_seed):
        other = task.sample(50, seed).x0
        assert not np.isclose(study[:, None], other[None]).all(axis=-1).any()


class _Interrupt(Exception):
    """Stands for the kill of a long run (Ctrl-C, machine down) after its k-th checkpoint."""


def _interrupt_after(k):
    def on_row(row):
        if int(row["iteration"]) >= k:
            raise _Interrupt
    return on_row


def _interrupted_bench_run(name, run_dir, after):
    """Start the run tocpl-bench --quick would do for lqr/<name>/seed0, and kill it after `after`
    evaluations: what a run folder looks like when the machine went down."""
    from tocpl_training.baselines.rl import train_rl
    from tocpl_training.bench.runs import configuration, held_out_for, train_config_for
    from tocpl_training.trainer import Trainer

    bench = load_bench_config()
    with pytest.raises(_Interrupt):
        if configuration(name)[0] == "to":
            trainer = Trainer(train_config_for("lqr", name, 0, bench, True), run_dir)
            trainer.held_out = held_out_for("lqr", bench, True)
            trainer.run(on_iteration=_interrupt_after(after))
        else:
            train_rl(load_rl_config(name, "lqr", bench.quick_rl), "lqr", 0, run_dir,
                     held_out=held_out_for("lqr", bench, True), on_evaluation=_interrupt_after(after))
    return _rows(run_dir / "metrics.csv")


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
@pytest.mark.parametrize("name", ["pddp", "ppo", "sac"])
def test_bench_continues_an_interrupted_run(name, tmp_path, capsys):
    """A killed run (hours of PPO, a long PLAL run) is not started over: tocpl-bench continues it
    from its checkpoint, keeps the rows it had, and ends with the run's full budget."""
    bench = load_bench_config()
    runs, out = tmp_path / "runs", tmp_path / "out"
    run_dir = runs / "lqr" / name / "seed0"
    before = _interrupted_bench_run(name, run_dir, after=1 if name == "pddp" else 2)
    args = ["--quick", "--tasks", "lqr", "--configs", name, "--seeds", "0", "--out", str(out), "--runs-dir", str(runs)]
    assert main(args) == 0
    assert f"resuming {run_dir}" in capsys.readouterr().out
    rows = _rows(out / "metrics" / "lqr" / name / "seed0.csv")
    assert rows[: len(before)] == before  # the evaluations made before the kill are kept as they were
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    assert np.all(np.diff([r["dynamics_evaluations"] for r in rows]) > 0)
    assert np.all(np.diff([r["wall_time"] for r in rows]) > 0)  # wall time goes on from the checkpoint's
    if name == "pddp":
        assert len(rows) == bench.quick_to["iterations"]
        # a TO run resumes exactly: the same rows as a straight run
        assert main(args[:-4] + ["--out", str(tmp_path / "straight"), "--runs-dir", str(tmp_path / "straight_runs")]) == 0
        straight = _rows(tmp_path / "straight" / "metrics" / "lqr" / name / "seed0.csv")
        for key in ("final_error_mean", "cost_gap_median", "dynamics_evaluations", "regression_loss"):
            np.testing.assert_array_equal([r[key] for r in rows], [r[key] for r in straight], err_msg=key)
    else:
        rl = load_rl_config(name, "lqr", bench.quick_rl)
        # every scheduled evaluation, and one more at the end when the dropped partial rollout is made up
        assert len(rl.evaluation_steps()) <= len(rows) <= len(rl.evaluation_steps()) + 1
        assert rows[-1]["timesteps"] >= rl.total_steps  # the budget is the run's, not what was left counted again
        assert rows[-1]["timesteps"] < rl.total_steps + rl.n_envs * (rl.n_steps if name == "ppo" else 1)
    # the same command again: done, skipped; --force starts it afresh
    assert main(args) == 0
    assert "done before, skipped" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0
    assert "resuming" not in capsys.readouterr().out


def test_an_interrupted_run_of_other_settings_is_started_afresh(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    before = _interrupted_bench_run("ppo", runs / "lqr" / "ppo" / "seed0", after=2)
    args = ["--quick", "--tasks", "lqr", "--configs", "ppo", "--seeds", "0", "--out", str(out), "--runs-dir", str(runs)]
    assert main(args + ["--rl-set", "learning_rate=1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "holds a run with other 'rl' settings: starting afresh" in printed and "resuming" not in printed
    run_config = yaml.safe_load((runs / "lqr" / "ppo" / "seed0" / "config.yaml").read_text())
    assert run_config["rl"]["learning_rate"] == 1e-3
    rl = load_rl_config("ppo", "lqr", {**load_bench_config().quick_rl, "learning_rate": 1e-3})
    rows = _rows(out / "metrics" / "lqr" / "ppo" / "seed0.csv")
    assert len(before) == 2 and len(rows) == len(rl.evaluation_steps())  # the whole schedule again, from step 0


def test_sac_resume_restores_model_replay_buffer_and_reward_scale(tmp_path):
    """What SAC continues with: its networks, step count, replay buffer and reward normaliser are the
    checkpoint's, not fresh ones."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from tocpl_training.baselines.rl import RL_CHECKPOINT, _resume_rl
    from tocpl_training.checkpoint import load_checkpoint

    bench = load_bench_config()
    run_dir = tmp_path / "sac"
    _interrupted_bench_run("sac", run_dir, after=2)
    config = load_rl_config("sac", "lqr", bench.quick_rl)
    saved = load_checkpoint(run_dir / RL_CHECKPOINT)
    task, counter = load_task("lqr"), DynamicsCounter()
    venv = VecNormalize(DummyVecEnv([lambda: TaskEnv(task, counter)] * config.n_envs), norm_obs=False, gamma=config.gamma)
    model, _ = _resume_rl(run_dir / RL_CHECKPOINT, config, venv, counter, seed=0)
    steps = int(saved["counter"]["steps"])
    assert counter.steps == steps == model.num_timesteps > 0
    # every transition but the one in flight at the evaluation (SB3 stores it after the callback)
    assert steps - config.n_envs <= model.replay_buffer.pos * config.n_envs <= steps and not model.replay_buffer.full
    np.testing.assert_array_equal(model.replay_buffer.actions[: model.replay_buffer.pos], saved["replay"]["actions"].numpy())
    assert venv.ret_rms.count == float(saved["ret_rms"]["count"]) > 1
    fresh = load_rl_config("sac", "lqr", bench.quick_rl)
    from tocpl_training.baselines.rl import _make_model

    untrained = _make_model(fresh, venv, seed=0)
    trained = model.policy.state_dict()
    assert any(not np.array_equal(v.numpy(), untrained.policy.state_dict()[k].numpy()) for k, v in trained.items())


def test_summary_of_runs_that_all_diverged(tmp_path):
    """PODS on the double pendulum diverges on every held-out problem at every evaluation: the
    summary still comes out (the error panels say so) instead of matplotlib failing on a log axis."""
    from tocpl_training.bench.summary import summarize

    columns = ["iteration", "cost_gap_median", "final_error_mean", "final_error_p95", "within_tolerance", "diverged",
               "dynamics_evaluations", "wall_time"]
    manifest = {}
    for seed in (0, 1):
        path = tmp_path / "metrics" / "double_pendulum" / "pods" / f"seed{seed}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [[i, 1e6 * i, "inf", "inf", 0.0, 37, 15000 * i, 3.0 * i] for i in (1, 2, 3)]
        path.write_text("\n".join(",".join(map(str, r)) for r in [columns, *rows]) + "\n")
        manifest[f"double_pendulum/pods/seed{seed}"] = {"task": "double_pendulum", "configuration": "pods", "seed": seed,
                                                         "status": "ok", "metrics": str(path.relative_to(tmp_path))}
    (tmp_path / "runs.json").write_text(json.dumps(manifest))
    table = summarize(tmp_path, load_bench_config())
    assert [(r["configuration"], r["seeds"]) for r in table] == [("pods", 2)]
    assert (tmp_path / "double_pendulum_precision.png").read_bytes().startswith(PNG_MAGIC)
    assert "| pods |" in (tmp_path / "summary.md").read_text()


def test_long_rl_runs_checkpoint_between_their_evaluations(tmp_path, monkeypatch):
    """Late in a long run the log-spaced evaluations are far apart (millions of PPO steps): the run
    also checkpoints every checkpoint_every steps, and a resume restarts from the last of them."""
    import tocpl_training.baselines.rl as rl_baselines

    steps_at_checkpoints = []
    real_save = rl_baselines._save_rl_checkpoint

    def recording_save(path, model, venv, counter, rows, state):
        steps_at_checkpoints.append(counter.steps)
        real_save(path, model, venv, counter, rows, state)

    monkeypatch.setattr(rl_baselines, "_save_rl_checkpoint", recording_save)
    config = load_rl_config("ppo", "lqr", {**load_bench_config().quick_rl, "total_steps": 2048, "evaluations": 2,
                                           "checkpoint_every": 300})
    rows = rl_baselines.train_rl(config, "lqr", 0, tmp_path, eval_problems=10)
    assert [r["timesteps"] for r in rows] == [256, 2048]
    gaps = np.diff([0, *steps_at_checkpoints])
    assert len(steps_at_checkpoints) >= 2048 // 300 and gaps.max() <= 300 + config.n_envs
    from tocpl_training.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / rl_baselines.RL_CHECKPOINT)
    assert int(saved["counter"]["steps"]) == steps_at_checkpoints[-1] == 2048


def _synthetic_results(out, runs, quick=False, scale=1.0):
    """A results folder with runs.json and metrics of (task, configuration, seed) runs: 3 evaluations each."""
    columns = ["iteration", "cost_gap_median", "final_error_mean", "final_error_p95", "within_tolerance", "diverged",
               "dynamics_evaluations", "wall_time"]
    manifest = {}
    for task, name, seed in runs:
        path = out / "metrics" / task / name / f"seed{seed}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [[i, scale * 0.1 / i, scale * 0.05 / i, scale * 0.1 / i, 0.3 * i, 0, 1000 * i, 2.0 * i] for i in (1, 2, 3)]
        path.write_text("\n".join(",".join(map(str, r)) for r in [columns, *rows]) + "\n")
        manifest[f"{task}/{name}/seed{seed}"] = {"task": task, "configuration": name, "seed": seed, "status": "ok",
                                                 "quick": quick, "metrics": str(path.relative_to(out))}
    (out / "runs.json").write_text(json.dumps(manifest))


def test_merge_and_drop_runs_between_results_folders(tmp_path, capsys):
    """Seeds run into another --out (another machine, a side experiment) join the tables with
    --merge, filtered by --tasks/--configs/--seeds, replacing what they supersede; --drop takes
    runs out of a folder (after they were merged elsewhere)."""
    main_out, side = tmp_path / "results", tmp_path / "side"
    _synthetic_results(main_out, [("lqr", "pddp", 0), ("lqr", "plal+S", 0)])
    _synthetic_results(side, [("lqr", "plal+S", 0), ("lqr", "plal+S", 1), ("lqr", "pddp", 1)], scale=0.5)

    assert main(["--merge", str(side), "--configs", "plal+S", "--out", str(main_out)]) == 0
    manifest = json.loads((main_out / "runs.json").read_text())
    assert sorted(manifest) == ["lqr/pddp/seed0", "lqr/plal+S/seed0", "lqr/plal+S/seed1"]  # pddp seed 1 not selected
    for key in ("lqr/plal+S/seed0", "lqr/plal+S/seed1"):  # seed 0 replaced by the side folder's run
        assert (main_out / manifest[key]["metrics"]).read_text() == (side / f"metrics/{key}.csv").read_text()
    summary = {r["configuration"]: r for r in csv.DictReader(open(main_out / "summary.csv", newline=""))}
    assert summary["plal+S"]["seeds"] == "2" and summary["pddp"]["seeds"] == "1"
    assert "2 runs from" in capsys.readouterr().out

    # move the side experiment's runs out again: drop by configuration and seed
    assert main(["--drop", "--configs", "plal+S", "--seeds", "1", "--out", str(main_out)]) == 0
    manifest = json.loads((main_out / "runs.json").read_text())
    assert sorted(manifest) == ["lqr/pddp/seed0", "lqr/plal+S/seed0"]
    assert not (main_out / "metrics/lqr/plal+S/seed1.csv").exists()
    assert main(["--drop", "--out", str(main_out)]) == 2  # dropping everything needs naming it
    assert "name the runs to drop" in capsys.readouterr().err

    quick = tmp_path / "quick"
    _synthetic_results(quick, [("lqr", "ppo", 0)], quick=True)
    assert main(["--merge", str(quick), "--out", str(main_out)]) == 2
    assert "--quick runs do not go into one --out" in capsys.readouterr().err
    assert main(["--merge", str(tmp_path / "nothing"), "--out", str(main_out)]) == 2
    assert "not a tocpl-bench results folder" in capsys.readouterr().err
