"""Bad task configuration is reported with the file and the key, never half-applied."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from tocpl_ros.config import ConfigError, dump_yaml, field_docs, read_yaml
from tocpl_ros.resources import config_path
from tocpl_ros.solve_cli import main as solve_main
from tocpl_ros.tasks import load_task, load_task_config
from tocpl_ros.tasks.config import CostConfig, LQRConfig, SamplingConfig, SolverConfig, TaskConfig


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
    path = write_variant(tmp_path, "ur5_reach", lambda d: d["costs"]["running"].update(orientation=1.0))
    raises_naming(path, "costs.running.orientation", "unknown cost term", "position")


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
