"""Bad task configuration is reported with the file and the key, never half-applied."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from tocpl_ros.config import ConfigError, dump_yaml, field_docs, read_yaml
from tocpl_ros.resources import config_path
from tocpl_ros.tasks import load_task, load_task_config
from tocpl_ros.tasks.config import CostConfig, LQRConfig, SamplingConfig, SolverConfig, TaskConfig
from tocpl_ros.tools.solve import main as solve_main


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def write_variant(tmp_path: Path, base: str, edit) -> Path:
    data = read_yaml(config_path("tasks", f"{base}.yaml"))
    edit(data)
    path = tmp_path / f"{base}_variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def raises_naming(path, key: str, *words: str):
    with pytest.raises(ConfigError) as info:
        load_task(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message, message
    for word in words:
        assert word in message, message
    return message


def test_unknown_task_names_the_task_and_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        load_task("ur10_juggling")
    assert "ur10_juggling" in str(info.value) and "ur5_reach" in str(info.value)


def test_unknown_cost_term(tmp_path):
    path = write_variant(tmp_path, "ur5_reach", lambda d: d["costs"]["running"].update(jerk=1.0))
    raises_naming(path, "costs.running.jerk", "unknown cost term", "position")


def test_negative_weight(tmp_path):
    path = write_variant(tmp_path, "pendulum", lambda d: d["costs"]["terminal"].update(velocity=-1.0))
    raises_naming(path, "costs.terminal.velocity", ">= 0")


def test_wrong_weight_size(tmp_path):
    path = write_variant(tmp_path, "ur5_reach", lambda d: d["costs"]["running"].update(velocity=[1.0, 2.0]))
    raises_naming(path, "costs.running.velocity", "6 weights")


def test_unknown_key_and_wrong_type(tmp_path):
    raises_naming(write_variant(tmp_path, "lqr", lambda d: d.update(horizn=10)), "horizn", "unknown key")
    raises_naming(write_variant(tmp_path, "lqr", lambda d: d.update(horizon="long")), "horizon", "expected int")
    raises_naming(write_variant(tmp_path, "lqr", lambda d: d["lqr"].update(u_limit=0.0)), "lqr.u_limit", "> 0")
    raises_naming(write_variant(tmp_path, "lqr", lambda d: d.pop("dt")), "dt", "missing")
    raises_naming(write_variant(tmp_path, "ur5_reach", lambda d: d.update(frame="gripper")), "frame", "gripper")
    raises_naming(write_variant(tmp_path, "ur5_reach", lambda d: d.update(urdf="nope.urdf")), "urdf", "nope.urdf")
    raises_naming(
        write_variant(tmp_path, "ur5_reach", lambda d: d["sampling"].update(q_nominal=[0.0, 1.0])),
        "sampling.q_nominal", "6 values",
    )


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("kind: reach\ncosts:\n  running: {position: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_task(path)
    assert str(path) in str(info.value) and "malformed YAML at line" in str(info.value)


def test_a_yaml_that_extends_another_says_only_what_differs(tmp_path):
    (tmp_path / "base.yaml").write_text("horizon: 50\ncosts:\n  running: {position: 10.0, velocity: 0.1}\n  terminal: {position: 1.0e5}\n")
    (tmp_path / "variant.yaml").write_text("extends: base.yaml\nhorizon: 75\ncosts:\n  running: {velocity: 0.5, extra: 1.0}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "again.yaml").write_text("extends: ../variant.yaml\ncosts: {terminal: {position: 2.0e5}}\n")
    assert read_yaml(tmp_path / "variant.yaml") == {
        "horizon": 75, "costs": {"running": {"position": 10.0, "velocity": 0.5, "extra": 1.0}, "terminal": {"position": 1.0e5}}}
    assert read_yaml(tmp_path / "sub" / "again.yaml")["costs"] == {
        "running": {"position": 10.0, "velocity": 0.5, "extra": 1.0}, "terminal": {"position": 2.0e5}}
    # the shipped variants: reach_pose is reach with pose targets, every other setting reach's
    pose, reach = (read_yaml(config_path("tasks", f"{n}.yaml")) for n in ("reach_pose", "reach"))
    assert pose["target_kind"] == "pose" and pose["costs"]["running"]["position"] == reach["costs"]["running"]["position"]
    assert {k: v for k, v in pose.items() if k not in ("target_kind", "costs")} == {k: v for k, v in reach.items() if k != "costs"}


@pytest.mark.parametrize("text, words", [
    ("extends: missing.yaml\n", "no such file"),
    ("extends: 3\n", "expected the file name"),
    ("extends: loop.yaml\n", "a cycle"),
])
def test_a_bad_extends_names_the_file_and_the_key(tmp_path, text, words):
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        read_yaml(tmp_path / "loop.yaml")
    assert str(tmp_path / "loop.yaml") in str(info.value) and "extends" in str(info.value) and words in str(info.value)


def test_overrides_are_validated_and_scientific_notation_is_a_float():
    name, config = load_task_config("ur5_reach", {"costs.terminal.position": 2e5, "horizon": 20})
    assert config.costs.terminal["position"] == 2e5 and config.horizon == 20
    assert isinstance(read_yaml(config_path("tasks", "ur5_reach.yaml"))["costs"]["terminal"]["position"], float)
    with pytest.raises(ConfigError, match="'horizon'"):
        load_task_config("ur5_reach", {"horizon": -1})
    with pytest.raises(ConfigError, match="'costs.nope.x': unknown key"):
        load_task_config("ur5_reach", {"costs.nope.x": 1})


def test_resolved_config_round_trips_through_yaml(tmp_path):
    _, config = load_task_config("double_pendulum")
    dump_yaml(config, tmp_path / "task.yaml")
    _, again = load_task_config(tmp_path / "task.yaml")
    assert again == config


def test_every_config_field_is_documented():
    for cls in (TaskConfig, CostConfig, SamplingConfig, LQRConfig, SolverConfig):
        docs = field_docs(cls)
        missing = [f.name for f in fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_solve_cli_reports_and_rejects_bad_config(capsys, tmp_path):
    assert solve_main(["--task", "pendulum", "--problems", "2"]) == 0
    out = capsys.readouterr().out
    assert "final error" in out and "solve time" in out
    assert solve_main(["--task", "pendulum", "--problems", "1", "--set", "costs.running.torque=1"]) == 2
    assert "costs.running.torque" in capsys.readouterr().err


# -- tocpl-train: config file, command line, resume ------------------------------------

from tocpl_training.cli import main as train_main  # noqa: E402

TRAIN_SMALL = ["--task", "lqr", "--iterations", "1", "--problems", "2", "--eval-problems", "2", "--workers", "1"]


def refused(capsys, argv, out: Path, *words: str) -> str:
    """tocpl-train exits 2 with a message holding ``words`` and creates no run folder."""
    assert train_main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tocpl-train: "), err
    for word in words:
        assert word in err, err
    assert not out.exists(), "a refused run left a run folder behind"
    return err


@pytest.mark.parametrize("flags, key, words", [
    (["--iterations", "-1"], "iterations", [">= 1"]),
    (["--iterations", "0"], "iterations", [">= 1"]),
    (["--problems", "0"], "problems", [">= 1"]),
    (["--learning-rate", "0"], "learning_rate", ["> 0"]),
    (["--learning-rate=-1e-3"], "learning_rate", ["> 0"]),
    (["--learning-rate", "nan"], "learning_rate", ["finite"]),
    (["--learning-rate-final", "inf"], "learning_rate_final", ["finite"]),
    (["--hidden", "0"], "hidden", ["positive width"]),
    (["--hidden", "64", "-8"], "hidden", ["positive width"]),
    (["--algo", "sac"], "algo", ["unknown algorithm", "pddp"]),
    (["--workers", "-1"], "workers", [">= 0"]),
    (["--mu", "0"], "mu", ["> 0"]),
    (["--mu", "-2"], "mu", ["> 0"]),
    (["--mu-growth", "1"], "mu_growth", ["> 1"]),
    (["--mu", "10", "--mu-max", "5"], "mu_max", [">= mu"]),
    (["--dual-decay", "1.5"], "dual_decay", ["[0, 1]"]),
    (["--dual-decay", "nan"], "dual_decay", ["finite"]),
    (["--algo", "plal", "--problem-refresh", "1.5"], "problem_refresh", ["[0, 1]"]),
    (["--oc-warm-start-probe", "-1"], "oc_warm_start_probe", [">= 0"]),
    (["--seed", "-1"], "seed", [">= 0"]),
    (["--eval-seed", "-5"], "eval_seed", [">= 0"]),
    (["--sobolev-weight", "-1"], "sobolev_weight", [">= 0"]),
    (["--oc-th-stop", "0"], "oc_th_stop", ["> 0"]),
    (["--warm-start", "lukewarm"], "warm_start", ["unknown warm start"]),
    (["--multiple-shooting"], "multiple_shooting", ["plal"]),
    (["--eval-every", "0"], "eval_every", [">= 1"]),
    (["--supervised-steps", "-3"], "supervised_steps", [">= 0"]),
    (["--device", "gpu0"], "device", ["not a torch device"]),
    (["--device", "meta"], "device", ["only 'cpu' and 'cuda'"]),
    *([] if torch_cuda_available() else [(["--device", "cuda"], "device", ["CUDA is not available"])]),
])
def test_train_cli_out_of_range_values_name_the_flag_and_key(capsys, tmp_path, flags, key, words):
    err = refused(capsys, TRAIN_SMALL + flags, tmp_path / "run", f"'{key}'", *words)
    # lqr has a default config file; the message still blames the command line, not that file
    assert "command line" in err and "config/train" not in err, err


@pytest.mark.parametrize("flags", [["--iterations", "many"], ["--learning-rate", "fast"], ["--hidden"],
                                   ["--workers", "1.5"], ["--bogus-flag", "1"]])
def test_train_cli_wrong_types_are_argparse_errors(capsys, tmp_path, flags):
    with pytest.raises(SystemExit) as info:
        train_main(TRAIN_SMALL + flags + ["--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (flags[0] in err) and ("invalid" in err or "expected" in err or "unrecognized" in err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, key, words", [
    ({"task": "lqr", "iteratons": 3}, "iteratons", ["unknown key", "iterations"]),
    ({"task": "lqr", "iterations": "many"}, "iterations", ["expected int"]),
    ({"task": "lqr", "iterations": 2.5}, "iterations", ["expected int"]),
    ({"task": "lqr", "sobolev": "yes"}, "sobolev", ["expected bool"]),
    ({"task": "lqr", "hidden": 256}, "hidden", ["expected list"]),
    ({"task": "lqr", "hidden": []}, "hidden", ["positive width"]),
    ({"task": "lqr", "hidden": [64, "wide"]}, "hidden[1]", ["expected int"]),
    ({"task": "lqr", "problems": 0}, "problems", [">= 1"]),
    ({"task": "lqr", "learning_rate": float("nan")}, "learning_rate", ["finite"]),
    ({"task": "lqr", "mu": float("inf")}, "mu", ["finite"]),
    ({"task": "lqr", "learning_rate_final": "low"}, "learning_rate_final", ["expected float"]),
    ({"task": 7}, "task", ["expected str"]),
])
def test_train_config_file_errors_name_file_and_key(capsys, tmp_path, content, key, words):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(content))
    refused(capsys, ["--config", str(path), "--workers", "1"], tmp_path / "run", str(path), f"'{key}'", *words)


def test_train_config_file_malformed_missing_or_not_a_mapping(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: lqr\niterations: [1, 2\n")
    refused(capsys, ["--config", str(broken)], tmp_path / "run", str(broken), "malformed YAML at line")
    listing = tmp_path / "list.yaml"
    listing.write_text("- task\n- lqr\n")
    refused(capsys, ["--config", str(listing)], tmp_path / "run", str(listing), "expected a mapping")
    refused(capsys, ["--config", str(tmp_path / "absent.yaml")], tmp_path / "run", "absent.yaml", "cannot read")


@pytest.mark.parametrize("override, key, words", [
    ("costs.running.bogus=1", "costs.running.bogus", ["unknown cost term"]),
    ("horizon=abc", "horizon", ["expected int"]),
    ("horizon=0", "horizon", [">= 1"]),
    ("dt=-0.1", "dt", ["> 0"]),
    ("dt=.nan", "dt", ["finite"]),
    ("costs.terminal.state=.inf", "costs.terminal.state", ["finite"]),
    ("lqr.u_limit=0", "lqr.u_limit", ["> 0"]),
    ("nonsense", "nonsense", ["KEY=VALUE"]),
])
def test_task_overrides_on_the_train_command_line(capsys, tmp_path, override, key, words):
    refused(capsys, TRAIN_SMALL + ["--task-set", override], tmp_path / "run", f"'{key}'", *words)


@pytest.mark.parametrize("edit, key, words", [
    (lambda d: d.update(dt=float("nan")), "dt", ["finite"]),
    (lambda d: d["costs"]["running"].update(control=float("inf")), "costs.running.control", ["finite"]),
    (lambda d: d.setdefault("solver", {}).update(th_stop=float("nan")), "solver.th_stop", ["finite"]),
])
def test_task_config_non_finite_numbers(tmp_path, edit, key, words):
    raises_naming(write_variant(tmp_path, "lqr", edit), key, *words)


def test_unknown_task_in_train_config_is_refused_before_the_run_folder(capsys, tmp_path):
    refused(capsys, ["--task", "ur10_juggling", "--workers", "1"], tmp_path / "run", "ur10_juggling", "ur5_reach")


def test_a_fresh_run_never_replaces_a_training_run_unless_told_to(capsys, tmp_path):
    run = tmp_path / "run"
    assert train_main(TRAIN_SMALL + ["--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert train_main(TRAIN_SMALL + ["--seed", "7", "--quiet", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept  # nothing lost
    assert train_main(TRAIN_SMALL + ["--seed", "7", "--quiet", "--overwrite", "--out", str(run)]) == 0
    assert (run / "checkpoint.pt").read_bytes() != kept["checkpoint.pt"]
    assert read_yaml(run / "config.yaml")["train"]["seed"] == 7
    assert train_main(["--resume", str(run), "--overwrite"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resume_refuses_settings_it_would_ignore(capsys, tmp_path):
    run = tmp_path / "run"
    assert train_main(TRAIN_SMALL + ["--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in run.iterdir())
    for flags, named in ((["--algo", "plal"], "--algo"), (["--learning-rate", "1"], "--learning-rate"),
                         (["--task-set", "dt=0.05"], "--task-set"), (["--out", str(tmp_path / "x")], "--out")):
        assert train_main(["--resume", str(run)] + flags) == 2
        err = capsys.readouterr().err
        assert named in err and "cannot be changed when resuming" in err, err
    assert train_main(["--resume", str(run), "--iterations", "0"]) == 2
    assert "'iterations'" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path / "never_trained")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before and not (tmp_path / "x").exists()
