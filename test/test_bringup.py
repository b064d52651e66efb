"""Bring-up of the node graphs: the ROS-free description (tocpl_ros.bringup.graph), the launch file's
translation of it, the tocpl-bringup process manager, and the whole graph end to end.

- graph description: nodes, params files, parameters, defaults, validation errors;
- ``launch/ur5_policy.launch.py``: parsed, then imported with tiny stand-ins for the
  ``launch``/``launch_ros`` modules (not installable here) only to check that the actions it
  creates carry exactly the nodes and parameters of ``graph_for`` (a test of our translation
  code); with the real ``launch_ros`` (a ROS 2 install) it is run for real;
- ``tocpl-bringup``: argument parsing, executable lookup, process management (with tiny shell
  scripts as nodes: output prefixes, stop order, SIGKILL of a stubborn node, exit status);
- slow + ros: sim + policy brought up as processes by ``tocpl-bringup``, a trained policy
  reaches a target, then the simulator freezes / dies and the policy node goes safe within its
  stale limit, and nothing is left running.

DDS stays on loopback (conftest); every test that starts ROS uses its own ROS_DOMAIN_ID.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import io
import os
import re
import signal
import stat
import sys
import threading
import time
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml

from tocpl_ros.bringup import cli as bringup_cli, graph as bringup
from tocpl_ros.bringup.cli import parse_launch_args
from tocpl_ros.bringup.graph import LAUNCH_ARGUMENTS, BringupError, graph_for
from tocpl_ros.bringup.processes import Bringup, find_executable
from tocpl_ros.bringup.spec import NodeSpec, format_param_value, parse_target
from tocpl_ros.interfaces import MPC_PLAN_TOPIC
from tocpl_ros.resources import config_path
from tocpl_ros.ros.environment import DISCOVERY_RANGE_VAR, DOMAIN_ID_VAR

from ros_harness import OutputProcess, stand_in_launch_modules

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "ur5_policy.launch.py"


@pytest.fixture()
def policy_file(tmp_path) -> Path:
    """A file to point policy:= at (graph_for only checks that it exists)."""
    path = tmp_path / "policy.onnx"
    path.write_bytes(b"not read by the graph description")
    return path


def by_name(specs: list[NodeSpec]) -> dict[str, NodeSpec]:
    return {s.name: s for s in specs}


def mpc_params_files() -> list[Path]:
    path = ROOT / "config" / "mpc_node.yaml"
    return [config_path("mpc_node.yaml")] if path.is_file() else []


# ============================================================================ description


def test_launch_arguments_table():
    names = [a.name for a in LAUNCH_ARGUMENTS]
    assert len(names) == len(set(names))
    defaults = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    assert defaults["policy"] == ""
    assert defaults["target"] == ""
    assert defaults["use_mpc"] == "false"
    assert defaults["sim_backend"] == "pinocchio"
    assert defaults["rate"] == "500"
    assert defaults["output_mode"] == "effort"
    assert defaults["realtime_priority"] == "50"  # ros2_control's controller_manager default
    for arg in LAUNCH_ARGUMENTS:
        assert isinstance(arg.default, str), arg  # launch arguments are strings
        assert len(arg.description) > 20, arg
        if arg.choices:
            assert arg.default in arg.choices, arg


def test_default_graph(policy_file):
    specs = graph_for("ur5_policy", policy=str(policy_file))
    assert [s.name for s in specs] == ["ur5_sim", "policy_node"]
    sim, policy = specs
    assert (sim.package, sim.executable) == ("tocpl_ros", "ur5_sim")
    assert (policy.package, policy.executable) == ("tocpl_ros", "policy_node")
    assert sim.params_files == [config_path("ur5_sim.yaml")]
    assert policy.params_files == [config_path("policy_node.yaml")]
    assert sim.parameters == {"backend": "pinocchio", "command_mode": "effort", "publish_rate": 500.0, "realtime_priority": 50}
    assert policy.parameters == {
        "policy_path": str(policy_file.resolve()),
        "rate": 500.0,
        "output_mode": "effort",
        "autostart": True,
        "realtime_priority": 50,
    }
    for spec in specs:
        assert spec.remappings == [] and spec.arguments == []
        assert spec.ros_arguments == ["--log-level", "info"]


def test_params_files_and_parameters_belong_to_the_nodes(policy_file):
    """Each node's section of its params file is its name; every parameter set is declared by the node."""
    from tocpl_ros.ros.nodes import mpc_node, policy_node
    from tocpl_ros.sim.config import SimConfig

    declared = {"ur5_sim": {f.name for f in dataclasses.fields(SimConfig)},
                "policy_node": set(policy_node.NODE_PARAMETERS), "mpc_node": set(mpc_node.NODE_PARAMETERS)}
    specs = graph_for(policy=str(policy_file), target="0.5,0.1,0.4", rate="1000", output_mode="velocity", use_mpc="true")
    assert [s.name for s in specs] == ["ur5_sim", "policy_node", "mpc_node"]
    for spec in specs:
        for path in spec.params_files:
            data = yaml.safe_load(path.read_text())
            assert spec.name in data and "ros__parameters" in data[spec.name], path
            assert set(data[spec.name]["ros__parameters"]) <= declared[spec.name]
        assert set(spec.parameters) <= declared[spec.name], spec.name


def test_arguments_become_parameters(policy_file):
    nodes = by_name(graph_for(policy=str(policy_file), target="0.4,0.1,0.5", rate="1000", output_mode="velocity",
                              sim_backend="pinocchio", autostart="false", log_level="debug"))
    assert nodes["policy_node"].parameters == {
        "policy_path": str(policy_file.resolve()),
        "rate": 1000.0,
        "output_mode": "velocity",
        "autostart": False,
        "realtime_priority": 50,
        "initial_target": [0.4, 0.1, 0.5],
    }
    assert nodes["ur5_sim"].parameters == {"backend": "pinocchio", "command_mode": "velocity", "publish_rate": 1000.0,
                                           "realtime_priority": 50}
    assert all(s.ros_arguments == ["--log-level", "debug"] for s in nodes.values())
    # Python values work as well as the launch strings
    same = graph_for(policy=policy_file, target=(0.4, 0.1, 0.5), rate=1000, output_mode="velocity",
                     autostart=False, log_level="debug")
    assert by_name(same) == nodes


def test_realtime_priority_goes_to_the_policy_node_and_the_simulator(policy_file):
    default = by_name(graph_for(policy=str(policy_file), use_mpc="true"))
    for value, want in (("0", 0), (" 10 ", 10), (99, 99)):
        nodes = by_name(graph_for(policy=str(policy_file), use_mpc="true", realtime_priority=value))
        for name in ("policy_node", "ur5_sim"):
            assert nodes[name].parameters == {**default[name].parameters, "realtime_priority": want}
        assert nodes["mpc_node"] == default["mpc_node"]  # the MPC stays at normal priority
    assert "realtime_priority" not in default["mpc_node"].parameters


def test_use_sim_false_drives_an_external_robot(policy_file):
    assert [s.name for s in graph_for(policy=str(policy_file), use_sim="false")] == ["policy_node"]


def test_use_mpc_adds_the_mpc_node(policy_file):
    assert "mpc_node" not in by_name(graph_for(policy=str(policy_file)))
    nodes = by_name(graph_for(policy=str(policy_file), use_mpc="true"))
    assert list(nodes) == ["ur5_sim", "policy_node", "mpc_node"]
    mpc = nodes["mpc_node"]
    assert (mpc.package, mpc.executable) == ("tocpl_ros", "mpc_node")
    # the task the ur5_policy graph's MPC has always solved (mpc_node's own default: the policy's task)
    assert mpc.parameters == {"policy_path": str(policy_file.resolve()), "task": "ur5_reach_fixed_horizon"}
    targeted = by_name(graph_for(policy=str(policy_file), use_mpc="true", target="0.4,0.1,0.5"))["mpc_node"]
    assert targeted.parameters == {"policy_path": str(policy_file.resolve()), "task": "ur5_reach_fixed_horizon",
                                   "initial_target": [0.4, 0.1, 0.5]}
    assert mpc.params_files == mpc_params_files()
    assert MPC_PLAN_TOPIC in mpc.description and "mpc_node" in mpc.missing_hint
    # the policy node becomes the MPC's fast loop (it follows the plans); the simulator does not change
    without = by_name(graph_for(policy=str(policy_file)))
    assert nodes["policy_node"].parameters == {**without["policy_node"].parameters, "use_mpc": True}
    assert "use_mpc" not in without["policy_node"].parameters
    assert MPC_PLAN_TOPIC in nodes["policy_node"].description
    assert nodes["ur5_sim"] == without["ur5_sim"]
    from tocpl_ros.ros.nodes import policy_node

    assert MPC_PLAN_TOPIC == policy_node.NODE_PARAMETERS["mpc_plan_topic"][0]
    assert "does not consume" not in (bringup.__doc__ or "") + mpc.description


@pytest.mark.parametrize(
    "args, message",
    [
        ({"polcy": "x"}, r"unknown argument 'polcy' for ur5_policy \(did you mean 'policy'\?\); known: policy, target"),
        ({"frequency": "1"}, r"unknown argument 'frequency'"),
        ({"target": "0.4,0.1"}, r"argument 'target': expected 'x,y,z' \(m, base frame\) or a pose 'x,y,z,qx,qy,qz,qw'.*2 values"),
        ({"target": "0.4,0.1,0.5,1"}, r"argument 'target': expected 'x,y,z'.*4 values"),
        ({"target": "a,b,c"}, r"argument 'target': expected 'x,y,z' \(m, base frame\) or a pose .*, got 'a,b,c'"),
        ({"target": "0.4,0.1,0.5,0,0,0,0"}, r"argument 'target': the quaternion \(qx, qy, qz, qw\) of .* has zero norm"),
        ({"target": "0.4,nan,0.5"}, r"argument 'target': the coordinates must be finite"),
        ({"use_mpc": "maybe"}, r"argument 'use_mpc': expected true or false, got 'maybe'"),
        ({"use_sim": "2"}, r"argument 'use_sim': expected true or false"),
        ({"rate": "fast"}, r"argument 'rate': expected a number of Hz, got 'fast'"),
        ({"rate": "0"}, r"argument 'rate': must be in \(0, 10000\] Hz"),
        ({"rate": "inf"}, r"argument 'rate': must be in"),
        ({"output_mode": "torque"}, r"argument 'output_mode': must be one of effort, velocity, position, got 'torque'"),
        ({"sim_backend": "bullet"}, r"argument 'sim_backend': must be one of pinocchio, mujoco, got 'bullet'"),
        ({"log_level": "loud"}, r"argument 'log_level': must be one of debug, info"),
        ({"realtime_priority": "100"}, r"argument 'realtime_priority': must be in 0\.\.99"),
        ({"realtime_priority": "-1"}, r"argument 'realtime_priority': must be in 0\.\.99"),
        ({"realtime_priority": "high"}, r"argument 'realtime_priority': expected an integer in 0\.\.99, got 'high'"),
        ({"realtime_priority": "2.5"}, r"argument 'realtime_priority': expected an integer"),
    ],
)
def test_invalid_arguments(policy_file, args, message):
    with pytest.raises(BringupError, match=message):
        graph_for("ur5_policy", **{"policy": str(policy_file), **args})


def test_policy_is_required_and_must_exist(tmp_path):
    with pytest.raises(BringupError, match=r"argument 'policy' is required: the \.onnx policy file"):
        graph_for("ur5_policy")
    with pytest.raises(BringupError, match=r"argument 'policy' is required"):
        graph_for("ur5_policy", policy="  ")
    missing = tmp_path / "nope.onnx"
    with pytest.raises(BringupError, match=rf"argument 'policy': no such file: {re.escape(str(missing))}"):
        graph_for("ur5_policy", policy=str(missing))
    with pytest.raises(BringupError, match=r"no such file: .*nope\.onnx \(given as 'nope\.onnx'\)"):
        graph_for("ur5_policy", policy="nope.onnx")


def test_unknown_graph():
    with pytest.raises(BringupError, match=r"unknown graph 'ur10' \(available: ur5_policy, arm_policy\)"):
        graph_for("ur10")


def test_relative_policy_path_is_made_absolute(policy_file, monkeypatch):
    monkeypatch.chdir(policy_file.parent)
    (policy,) = [s for s in graph_for(policy=policy_file.name) if s.name == "policy_node"]
    assert policy.parameters["policy_path"] == str(policy_file)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.4,0.1,0.5", [0.4, 0.1, 0.5]),
        (" 0.4, 0.1 , 0.5 ", [0.4, 0.1, 0.5]),
        ("[0.4, 0.1, 0.5]", [0.4, 0.1, 0.5]),
        ("0.4 0.1 0.5", [0.4, 0.1, 0.5]),
        ("-1e-1,0,.5", [-0.1, 0.0, 0.5]),
        ("", None),
        ("[]", None),
        (None, None),
        ((1, 2, 3), [1.0, 2.0, 3.0]),
    ],
)
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "value",
    ["effort", "true", "500", "", "/tmp/a b/policy.onnx", "x: y", 500.0, 1000, True, False, [0.4, 0.1, 0.5], [1.0, -2.5, 3e-9]],
)
def test_param_values_survive_the_command_line(value):
    """-p name:=TEXT is read back as YAML by rcl: the text must give the value back, same type."""
    text = format_param_value(value)
    assert "\n" not in text
    back = yaml.safe_load(text)
    assert back == value and type(back) is type(value)


def test_node_command_line(tmp_path):
    spec = NodeSpec(
        package="tocpl_ros",
        executable="policy_node",
        name="policy_node",
        parameters={"policy_path": "/p.onnx", "rate": 500.0, "initial_target": [0.4, 0.1, 0.5]},
        params_files=[tmp_path / "a.yaml", tmp_path / "b.yaml"],
        remappings=[("/target", "/goal")],
        arguments=["--extra"],
        ros_arguments=["--log-level", "warn"],
    )
    assert spec.command("/bin/policy_node") == [
        "/bin/policy_node", "--extra", "--ros-args", "--log-level", "warn", "-r", "__node:=policy_node",
        "--params-file", str(tmp_path / "a.yaml"), "--params-file", str(tmp_path / "b.yaml"),
        "-p", "policy_path:=/p.onnx", "-p", "rate:=500.0", "-p", "initial_target:=[0.4, 0.1, 0.5]",
        "-r", "/target:=/goal",
    ]


def test_node_environment_keeps_explicit_settings_and_shares_one_domain():
    env = bringup.node_environment({"PATH": "/bin"})
    assert env[DISCOVERY_RANGE_VAR] == "LOCALHOST" and 1 <= int(env[DOMAIN_ID_VAR]) <= 100
    assert bringup.node_environment({DISCOVERY_RANGE_VAR: "SUBNET", DOMAIN_ID_VAR: "42"}) == {
        DISCOVERY_RANGE_VAR: "SUBNET", DOMAIN_ID_VAR: "42"}


# ============================================================================ launch file


def test_launch_file_parses():
    """The launch files return the launch description of their graph, built from the graph's
    description with launch's own actions (tocpl_ros/bringup/launch_file.py)."""
    for graph in ("ur5_policy", "arm_policy"):
        text = (LAUNCH_FILE.parent / f"{graph}.launch.py").read_text()
        tree = ast.parse(text, filename=graph)
        assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert f'launch_description("{graph}")' in text
    module = Path(bringup.__file__).with_name("launch_file.py")
    tree = ast.parse(module.read_text(), filename=str(module))
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {("launch", "LaunchDescription"), ("launch.actions", "DeclareLaunchArgument"),
            ("launch.actions", "OpaqueFunction"), ("launch_ros.actions", "Node"),
            ("tocpl_ros.bringup.graph", "graph_for")} <= imported


def _load_launch_file():
    spec = importlib.util.spec_from_file_location("ur5_policy_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluate(description, overrides: dict[str, str]):
    """What ros2 launch does with the description: defaults of the declared arguments,
    overridden by name:=value, then the OpaqueFunction called with that context."""
    declared = [a for a in description.args[0] if type(a).__name__ == "DeclareLaunchArgument"]
    opaque = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1 and len(declared) + 1 == len(description.args[0])
    configurations = {a.args[0]: a.kwargs["default_value"] for a in declared}
    configurations.update(overrides)
    context = types.SimpleNamespace(launch_configurations=configurations)
    return declared, opaque[0].kwargs["function"](context)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"target": "0.4,0.1,0.5", "rate": "1000", "output_mode": "position", "autostart": "false"},
        {"use_sim": "false", "log_level": "warn"},
        {"use_mpc": "true"},
    ],
)
def test_launch_file_creates_the_graph(monkeypatch, policy_file, overrides):
    stand_in_launch_modules(monkeypatch)
    module = _load_launch_file()
    description = module.generate_launch_description()
    declared, actions = _evaluate(description, {"policy": str(policy_file), **overrides})

    # the declared arguments are the table, with its defaults, descriptions and choices
    assert [(a.args[0], a.kwargs["default_value"], a.kwargs["description"], tuple(a.kwargs.get("choices", ())) or None)
            for a in declared] == [(a.name, a.default, a.description, a.choices) for a in LAUNCH_ARGUMENTS]

    nodes = [a for a in actions if type(a).__name__ == "Node"]
    specs = graph_for("ur5_policy", policy=str(policy_file), **overrides)
    env = bringup.node_environment()
    assert len(nodes) == len(specs)
    for node, spec in zip(nodes, specs):
        kw = node.kwargs
        assert (kw["package"], kw["executable"], kw["name"]) == (spec.package, spec.executable, spec.name)
        assert kw["parameters"] == [str(p) for p in spec.params_files] + [spec.parameters]
        assert kw["remappings"] == spec.remappings
        assert kw["arguments"] == spec.arguments
        assert kw["ros_arguments"] == spec.ros_arguments
        assert kw["additional_env"] == env
        assert kw["output"] == "screen"


def test_launch_file_reports_bad_arguments(monkeypatch, policy_file):
    stand_in_launch_modules(monkeypatch)
    description = _load_launch_file().generate_launch_description()
    with pytest.raises(RuntimeError, match=r"ur5_policy\.launch\.py: argument 'target': expected 'x,y,z'"):
        _evaluate(description, {"policy": str(policy_file), "target": "1,2"})
    with pytest.raises(RuntimeError, match=r"argument 'policy' is required"):
        _evaluate(description, {})


@pytest.mark.ros  # the session's domain: the launched nodes inherit this process's environment
def test_launch_file_with_real_launch_ros(tmp_path, ros_loopback_env):
    """With a ROS 2 installation (launch, launch_ros, and tocpl_ros built with colcon and
    sourced): ros2 launch's own machinery runs the launch file; sim + policy come up and talk."""
    pytest.importorskip("launch_ros", reason="launch_ros is not installable here (ENVIRONMENT.md); runs in a ROS 2 install")
    import launch
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    try:
        get_package_prefix("tocpl_ros")
    except PackageNotFoundError:
        pytest.fail("launch_ros is importable but tocpl_ros is not in the ament index: "
                    "colcon build the package and source install/local_setup.bash")
    policy = _random_policy(tmp_path)
    description = launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                 launch_arguments={"policy": str(policy), "target": "0.5,0.1,0.4"}.items())
    ])
    from tocpl_ros.ros.probe import Probe

    service = launch.LaunchService()
    service.include_launch_description(description)
    probe = Probe(int(ros_loopback_env[DOMAIN_ID_VAR]), record_commands=True, name="launch_test_probe")
    seen: dict[str, object] = {}

    def check() -> None:  # in a thread: LaunchService.run wants the main thread (signal handlers)
        try:
            seen["flowing"] = probe.wait_for(lambda: len(probe.joint_states) > 50 and len(probe.commands) > 50, 60.0)
            seen["names"] = set(probe.node.get_node_names())
        finally:
            service.shutdown()

    checker = threading.Thread(target=check, daemon=True)
    checker.start()
    try:
        rc = service.run()
    finally:
        checker.join(timeout=70)
        probe.close()
    assert seen.get("flowing"), "no joint states / commands from the launched nodes"
    assert {"ur5_sim", "policy_node"} <= seen["names"], seen["names"]
    assert rc == 0


def _random_policy(folder: Path) -> Path:
    """An untrained ur5_reach policy with the ONNX contract (the real launch test needs a file only)."""
    from tocpl_ros.tasks import load_task
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task("ur5_reach")
    return export_onnx(make_policy(task, seed=0).eval(), task, folder / "random.onnx")


# ============================================================================ tocpl-bringup


def test_parse_launch_args():
    assert parse_launch_args([]) == {}
    assert parse_launch_args(["policy:=/a/b.onnx", "target:=0.4,0.1,0.5", "use_mpc:=false", "x:="]) == {
        "policy": "/a/b.onnx", "target": "0.4,0.1,0.5", "use_mpc": "false", "x": ""}
    assert parse_launch_args(["weird:=a:=b"]) == {"weird": "a:=b"}
    with pytest.raises(BringupError, match=r"written name:=value, got 'policy=/x' \(did you mean 'policy:=/x'\?\)"):
        parse_launch_args(["policy=/x"])
    with pytest.raises(BringupError, match=r"written name:=value, got 'policy'$"):
        parse_launch_args(["policy"])
    with pytest.raises(BringupError, match=r"without a name"):
        parse_launch_args([":=1"])
    with pytest.raises(BringupError, match=r"'rate' given twice \('1' and '2'\)"):
        parse_launch_args(["rate:=1", "rate:=2"])


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = bringup_cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_dry_run_prints_the_node_commands(policy_file):
    code, out, err = run_cli("ur5_policy", f"policy:={policy_file}", "target:=0.4,0.1,0.5", "use_mpc:=false", "--dry-run")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["ur5_sim", "policy_node"]
    bin_dir = Path(sys.executable).parent
    for line, spec in zip(lines, graph_for(policy=str(policy_file), target="0.4,0.1,0.5")):
        assert line == f"{spec.name}: " + " ".join(spec.command(bin_dir / spec.executable))
    assert f"-p policy_path:={policy_file}" in lines[1] and "-p initial_target:=[0.4, 0.1, 0.5]" in lines[1]
    # the launch file's name works as the graph's
    assert run_cli("ur5_policy.launch.py", f"policy:={policy_file}", "--dry-run")[1] == \
        run_cli("ur5_policy", f"policy:={policy_file}", "--dry-run")[1]


def test_cli_show_args():
    code, out, _ = run_cli("ur5_policy", "--show-args")
    assert code == 0
    for arg in LAUNCH_ARGUMENTS:
        assert f"'{arg.name}':" in out and arg.description in out and f"(default: '{arg.default}')" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ur5_policy", "policy=x"], "launch arguments are written name:=value"),
        (["ur5_policy"], "argument 'policy' is required"),
        (["ur5_policy", "policy:=/does/not/exist.onnx"], "no such file: /does/not/exist.onnx"),
        (["ur5_policy", "POLICY:=x"], "unknown argument 'POLICY'"),
        (["ur10"], "unknown graph 'ur10'"),
    ],
)
def test_cli_errors(argv, message):
    code, out, err = run_cli(*argv)
    assert code == 2 and out == ""
    assert err.startswith("tocpl-bringup: error: ") and message in err


def test_cli_use_mpc_needs_the_mpc_node(policy_file):
    """use_mpc:=true starts the MPC node if installed; if not, the bring-up refuses clearly
    (and only then: without use_mpc nothing asks for it)."""
    code, out, err = run_cli("ur5_policy", f"policy:={policy_file}", "use_mpc:=true", "--dry-run")
    if find_executable("mpc_node", "tocpl_ros") is None:
        assert code == 2 and out == ""
        assert "executable 'mpc_node' of node 'mpc_node' not found: use_mpc:=true needs the MPC node" in err
        assert "run without use_mpc" in err
    else:
        assert code == 0, err
        assert [line.split(":", 1)[0] for line in out.strip().splitlines()] == ["ur5_sim", "policy_node", "mpc_node"]
    assert run_cli("ur5_policy", f"policy:={policy_file}", "--dry-run")[0] == 0


def _make_executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_find_executable_order(tmp_path):
    bin_dir = Path(sys.executable).parent
    ament = tmp_path / "install" / "tocpl_ros"
    on_path = tmp_path / "bin"
    _make_executable(ament / "lib" / "tocpl_ros" / "only_in_colcon", "#!/bin/sh\n")
    _make_executable(ament / "lib" / "tocpl_ros" / "everywhere", "#!/bin/sh\n")
    _make_executable(on_path / "everywhere", "#!/bin/sh\n")
    _make_executable(on_path / "only_on_path", "#!/bin/sh\n")
    (on_path / "not_executable").write_text("")
    env = {"AMENT_PREFIX_PATH": f"{ament}{os.pathsep}/nonexistent", "PATH": str(on_path)}
    assert find_executable("ur5_sim", "tocpl_ros", env) == bin_dir / "ur5_sim"  # next to this python first
    assert find_executable("only_in_colcon", "tocpl_ros", env) == ament / "lib" / "tocpl_ros" / "only_in_colcon"
    assert find_executable("everywhere", "tocpl_ros", env) == ament / "lib" / "tocpl_ros" / "everywhere"
    assert find_executable("only_on_path", "tocpl_ros", env) == on_path / "only_on_path"
    assert find_executable("not_executable", "tocpl_ros", env) is None
    assert find_executable("only_in_colcon", "other_pkg", env) is None


# Tiny nodes for the process manager: shell scripts (no ROS).
_WELL_BEHAVED = """#!/bin/sh
trap 'echo "got SIGINT"; exit 0' INT
echo "up: range=$ROS_AUTOMATIC_DISCOVERY_RANGE domain=$ROS_DOMAIN_ID args=$*"
echo "to stderr" >&2
while true; do sleep 0.02; done
"""
_CRASHES = """#!/bin/sh
echo "about to fail"
sleep 0.5
exit 3
"""
_STUBBORN = """#!/bin/sh
trap 'echo "ignoring SIGINT"' INT
trap 'echo "ignoring SIGTERM"' TERM
echo "up"
while true; do sleep 0.02; done
"""


def _fake_graph(tmp_path, **scripts: str) -> tuple[list[NodeSpec], dict[str, str]]:
    bin_dir = tmp_path / "fakebin"
    for name, text in scripts.items():
        _make_executable(bin_dir / name, text)
    env = {k: v for k, v in os.environ.items() if k not in (DISCOVERY_RANGE_VAR, DOMAIN_ID_VAR, "AMENT_PREFIX_PATH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    specs = [NodeSpec("tocpl_ros", name, name, parameters={"k": 1}) for name in scripts]
    return specs, env


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()  # a zombie is not running
    except (ProcessLookupError, FileNotFoundError):
        return True


def test_bringup_stops_everything_when_a_node_fails(tmp_path):
    specs, env = _fake_graph(tmp_path, good_a=_WELL_BEHAVED, crasher=_CRASHES, good_b=_WELL_BEHAVED)
    out = io.StringIO()
    bring = Bringup(specs, env=env, out=out, sigterm_timeout=5, sigkill_timeout=5)
    bring.start()
    code = bring.run()
    text = out.getvalue()
    assert code == 1, text
    nodes = {n.name: n for n in bring.nodes}
    assert nodes["crasher"].returncode == 3 and nodes["crasher"].failed
    for name in ("good_a", "good_b"):
        assert nodes[name].returncode == 0 and not nodes[name].failed and nodes[name].signals == ["SIGINT"]
        assert f"[{name}] got SIGINT" in text
        # loopback DDS by default, one domain for all, the node's ROS arguments
        domain = bring.env[DOMAIN_ID_VAR]
        assert re.search(rf"^\[{name}\] up: range=LOCALHOST domain={domain} args=--ros-args -r __node:={name} -p k:=1$",
                         text, re.M), text
        assert f"[{name}] to stderr" in text
    assert "[crasher] about to fail" in text
    assert "[tocpl-bringup] crasher exited (exit status 3)" in text
    assert "[tocpl-bringup] crasher: exit status 3 -- FAILED" in text
    assert all(_gone(n.pid) for n in bring.nodes)


def test_bringup_escalates_to_sigterm_and_sigkill(tmp_path):
    specs, env = _fake_graph(tmp_path, good=_WELL_BEHAVED, stubborn=_STUBBORN)
    out = io.StringIO()
    bring = Bringup(specs, env=env, out=out, sigterm_timeout=0.5, sigkill_timeout=0.5)
    bring.start()
    time.sleep(0.3)
    code = bring.run(should_stop=lambda: True)
    text = out.getvalue()
    nodes = {n.name: n for n in bring.nodes}
    assert nodes["stubborn"].signals == ["SIGINT", "SIGTERM", "SIGKILL"], text
    assert nodes["stubborn"].returncode == -signal.SIGKILL and nodes["stubborn"].failed
    assert nodes["good"].returncode == 0 and not nodes["good"].failed
    assert "[tocpl-bringup] SIGKILL to stubborn" in text and "stubborn: killed by SIGKILL after SIGINT, SIGTERM, SIGKILL -- FAILED" in text
    assert code == 1
    assert all(_gone(n.pid) for n in bring.nodes)


def test_bringup_nodes_stop_on_sigint_even_if_started_with_sigint_ignored(tmp_path):
    # A background job (`cmd &`, nohup, some CI runners) inherits SIGINT ignored, which sh traps
    # and Python cannot undo: the nodes must get the default action back, or they stop only on SIGTERM.
    specs, env = _fake_graph(tmp_path, good=_WELL_BEHAVED)
    out = io.StringIO()
    bring = Bringup(specs, env=env, out=out, sigterm_timeout=5, sigkill_timeout=5)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        bring.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 5
    code = bring.run(should_stop=lambda: "up:" in out.getvalue() or time.monotonic() > deadline)
    assert code == 0 and "[tocpl-bringup] good: exit status 0 after SIGINT" in out.getvalue(), out.getvalue()


def test_bringup_clean_stop_and_kept_discovery_range(tmp_path):
    specs, env = _fake_graph(tmp_path, good=_WELL_BEHAVED)
    env.update({DISCOVERY_RANGE_VAR: "SUBNET", DOMAIN_ID_VAR: "77"})  # an explicit setting is kept
    out = io.StringIO()
    bring = Bringup(specs, env=env, out=out)
    bring.start()
    deadline = time.monotonic() + 5
    code = bring.run(should_stop=lambda: "up:" in out.getvalue() or time.monotonic() > deadline)
    assert code == 0 and "[good] up: range=SUBNET domain=77" in out.getvalue()
    assert "[tocpl-bringup] good: exit status 0 after SIGINT" in out.getvalue()


def test_bringup_refuses_before_starting_anything_if_an_executable_is_missing(tmp_path):
    specs, env = _fake_graph(tmp_path, good=_WELL_BEHAVED)
    specs.append(NodeSpec("tocpl_ros", "mpc_node_not_here", "mpc", missing_hint="the MPC node is not installed"))
    with pytest.raises(BringupError, match=r"executable 'mpc_node_not_here' of node 'mpc' not found: the MPC node is not installed"):
        Bringup(specs, env=env, out=io.StringIO())


# ============================================================================ end to end (slow, ros)

REACH_BOUND = 0.01
"""m: tool0 must come this close to the target within REACH_TIME. Measured with the policy of
``trained_policy`` (10 runs): within 3 cm after 0.6 s, best 0.37-0.51 cm, 0.7-0.8 cm at 1 s (the
trained horizon); the bound was tightened from 3 cm to 1 cm (the trainer's success tolerance)."""
REACH_TIME = 5.0
RATE = 500.0
STALE_PERIODS = 5  # config/policy_node.yaml
SAFE_TOL = 0.5  # N·m between the safe command g(q_last) and the published one
STALE_SLACK = 10
"""Control periods (20 ms) allowed on top of the stale limit: the probe sees the last joint state
before the policy node has taken it from its queue when that process is held up. Measured here
(idle machine and with other jobs running): 5-6 policy commands, 9-13 ms after the last joint state."""


@pytest.fixture(scope="module")
def trained_policy(tmp_path_factory) -> Path:
    """The default UR5 policy (what `tocpl-train --task ur5_reach` trains, ~90 s here), exported to ONNX."""
    from tocpl_ros.config import to_dict
    from tocpl_training.cli import default_config
    from tocpl_training.export import export_onnx
    from tocpl_training.trainer import Trainer

    folder = tmp_path_factory.mktemp("bringup_policy")
    config = default_config("ur5_reach", eval_problems=20)
    trainer = Trainer(config, folder)
    trainer.run()
    return export_onnx(trainer.policy, trainer.task, folder / "policy.onnx", to_dict(config))


class BringupProcess(OutputProcess):
    """``tocpl-bringup`` as a subprocess; its output lines time-stamped by a reader thread, the
    pids of the nodes it started read from them."""

    def __init__(self, env: dict[str, str], *args: str):
        self.pids: dict[str, int] = {}
        exe = Path(sys.executable).parent / "tocpl-bringup"
        cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "tocpl_ros.bringup.cli"]
        super().__init__(cmd + list(args), env)

    def on_line(self, line: str) -> None:
        match = re.match(r"\[tocpl-bringup\] started (\w+) \(pid (\d+)\)", line)
        if match:
            self.pids[match.group(1)] = int(match.group(2))

    def cleanup(self) -> None:
        """Whatever happened: no process of this bring-up left running (Ctrl-C first, then SIGKILL)."""
        self.stop(timeout=20)
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _probe(domain: int):
    from tocpl_ros.ros.probe import Probe

    return Probe(domain, record_commands=True, name="bringup_test_probe")


def _start_graph(ros_quiet_domain, policy: Path, offset: int, target, *args: str,
                 nodes: tuple[str, ...] = ("ur5_sim", "policy_node")) -> tuple:
    """tocpl-bringup ur5_policy policy:=... target:=x,y,z [args] (the policy drives from the first
    joint state on), a probe on the same (quiet) domain; returns once joint states, commands and the
    policy node's diagnostics flow."""
    probe, _, env = ros_quiet_domain(_probe, offset)
    bring = BringupProcess(env, "ur5_policy", f"policy:={policy}", "target:=" + ",".join(f"{x:.6f}" for x in target),
                           *args, "--sigterm-timeout", "5", "--sigkill-timeout", "5")
    try:
        up = probe.wait_for(
            lambda: bring.proc.poll() is not None
            or (probe.last_joint_state() is not None and probe.last_diagnostics() is not None and len(probe.commands) > 0),
            timeout=90.0,
        )
        assert up and bring.proc.poll() is None, f"graph did not come up:\n{bring.text[-4000:]}"
        assert set(bring.pids) == set(nodes), bring.text
        diag = probe.last_diagnostics()[1]
        assert diag["target"] == " ".join(f"{x:.4f}" for x in target), diag  # the target:= launch argument
    except BaseException:
        bring.cleanup()
        probe.close()
        raise
    return probe, bring


def _restart_from_initial_posture(probe) -> float:
    """/ur5_sim/reset: the arm back at rest in its initial posture (q_nominal of the task), the
    policy (running) drives it from there; returns the time of the reset."""
    assert probe.call_trigger("/ur5_sim/reset")[0]
    reset = time.monotonic()  # answered: the joint states from now on start at the reset posture
    assert probe.wait_for(lambda: probe.last_joint_state()[0] > reset + 0.003, 2.0, poll=0.002)
    return reset


def _test_target(seed: int = 2024) -> np.ndarray:
    """A target of the ur5_reach distribution (q_nominal + U(-0.4, 0.4) per joint, forward kinematics)."""
    from tocpl_ros.ros.probe import demo_targets

    return demo_targets(1, seed=seed)[0]


def _tool_error(kin, probe, target) -> float:
    _, names, q, _ = probe.last_joint_state()
    return float(np.linalg.norm(kin.position(kin.q_of(names, q)) - target))


@pytest.mark.slow
def test_bringup_reaches_a_target(trained_policy, ros_quiet_domain):
    """tocpl-bringup starts sim + policy; from the initial posture the trained policy brings tool0
    within REACH_BOUND of a target of the task's distribution within REACH_TIME; Ctrl-C (SIGINT)
    stops everything cleanly."""
    from tocpl_ros.ros.probe import ToolKinematics

    kin = ToolKinematics()
    target = _test_target()
    probe, bring = _start_graph(ros_quiet_domain, trained_policy, offset=31, target=target)
    try:
        start = _restart_from_initial_posture(probe)
        start_error = _tool_error(kin, probe, target)
        errors = []
        while time.monotonic() - start < REACH_TIME:
            time.sleep(0.01)
            errors.append((time.monotonic() - start, _tool_error(kin, probe, target)))
        reached = [t for t, e in errors if e <= REACH_BOUND]
        best = min(e for _, e in errors)
        diag = probe.last_diagnostics()[1]
        print(f"\nreach: start {100 * start_error:.1f} cm, best {100 * best:.2f} cm, "
              f"first within {100 * REACH_BOUND:g} cm at {reached[0] if reached else float('nan'):.2f} s, "
              "error at 0.5/1/2/3/5 s: " + ", ".join(
                  f"{100 * min(errors, key=lambda te: abs(te[0] - s))[1]:.2f}" for s in (0.5, 1, 2, 3, 5)) + " cm; "
              + ", ".join(f"{k} {v}" for k, v in diag.items() if k.startswith(("safe", "overruns", "rejected"))))
        assert reached, f"tool0 came no closer than {100 * best:.2f} cm to {target} in {REACH_TIME} s; policy_node: {diag}"
        assert bring.proc.poll() is None

        bring.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert bring.wait(timeout=30) == 0, bring.text[-3000:]
        assert "[tocpl-bringup] ur5_sim: exit status 0 after SIGINT" in bring.text
        assert "[tocpl-bringup] policy_node: exit status 0 after SIGINT" in bring.text
        assert "[policy_node]" in bring.text and "[ur5_sim]" in bring.text  # node output, prefixed
        assert all(_gone(pid) for pid in bring.pids.values())
    finally:
        bring.cleanup()
        probe.close()


def _gravity_gap(probe, kin) -> float:
    """max |latest command − g(q of the latest joint state)| (N·m)."""
    with probe.lock:
        u = probe.commands[-1][1]
        _, names, q, _ = probe.joint_states[-1]
    return float(np.abs(u - kin.gravity(kin.q_of(names, q))).max())


def _wait_policy_active(probe, kin, timeout: float = 3.0) -> None:
    """Until the latest command is the policy's, visibly not the safe command g(q) (the arm moves)."""
    assert probe.wait_for(lambda: _gravity_gap(probe, kin) > 4 * SAFE_TOL, timeout, poll=0.002), \
        "the policy node is not driving the arm"


def _check_goes_safe(probe, kin, since: float, what: str, min_after: int, settles: bool = True,
                     blackout_ok: bool = False, held: bool = False) -> tuple[int, float] | None:
    """The joint states stopped at ``since`` (or a little later). Then the policy node must switch
    from the policy's command to the safe command of stale data within its stale limit, and that
    command settle on g(q) of a recent posture: at most stale_periods (+1 tick of phase, +1 of DDS ordering)
    other commands after the last joint state, plus STALE_SLACK for the scheduling of three
    processes on a busy machine. Returns (those commands, ms from the last joint state to the
    first safe command). ``min_after``: commands expected after the last joint state (few when
    tocpl-bringup stops the policy node right away). ``blackout_ok``: None instead of a failure when
    no command after the last joint state differs from the policy's. ``held``: the node reported a
    middleware hold of its publish() meanwhile; the probe's view of the commands around the last
    joint state is then out of step with the node's (seen: 122 commands "after" it), so their count
    is returned but not bounded."""
    with probe.lock:
        states = list(probe.joint_states)
        commands = list(probe.commands)
    t_last = states[-1][0]
    assert t_last >= since - 0.5, f"{what}: no joint state in the 0.5 s before the stop"
    after = [(t, u) for t, u in commands if t > t_last]
    assert len(after) >= min_after, f"{what}: the policy node stopped publishing ({len(after)} commands after the last joint state)"
    if settles:  # given time, the braking hold comes to rest: g(q) of a recent posture
        settled = after[-1][1]
        gaps = [float(np.abs(settled - kin.gravity(kin.q_of(names, q))).max()) for t, names, q, _ in states if t > t_last - 0.5]
        assert min(gaps) <= SAFE_TOL, (f"{what}: the last command {settled.round(2)} is not g(q) of a recent posture "
                                       f"(closest: {min(gaps):.2f} N·m)")
    # Until it goes safe the node runs the policy on the last state it accepted: the same command
    # every tick. The safe command (a braking hold on the predicted state) is a different one.
    policy_command = after[0][1]
    differs = [float(np.abs(u - policy_command).max()) > SAFE_TOL for _, u in after]
    if blackout_ok and True not in differs:
        return None
    assert True in differs, f"{what}: the policy's command never stopped"
    first = differs.index(True)
    assert held or first <= STALE_PERIODS + 2 + STALE_SLACK, (
        f"{what}: {first} policy commands after the last joint state (stale limit {STALE_PERIODS} periods)")
    return first, 1e3 * (after[first][0] - t_last)


@pytest.mark.slow
def test_policy_goes_safe_when_the_sim_stops(trained_policy, ros_quiet_domain):
    """Sim frozen (SIGSTOP) while the policy drives the arm: the policy node sends the safe
    command within its stale limit and says so on /diagnostics; sim resumed: the policy takes over
    again. Sim killed (SIGKILL) while moving: safe command within the stale limit again (when DDS
    delivers it here at all: see below), then tocpl-bringup stops the policy node and exits non-zero
    naming the sim; no process is left."""
    from tocpl_ros.ros.probe import ToolKinematics

    kin = ToolKinematics()
    probe, bring = _start_graph(ros_quiet_domain, trained_policy, offset=47, target=_test_target())
    sim_pid = bring.pids["ur5_sim"]
    try:
        _restart_from_initial_posture(probe)
        _wait_policy_active(probe, kin)  # moving towards the target
        gap = _gravity_gap(probe, kin)
        stalls_before = int((probe.last_diagnostics() or (0, {}))[1].get("publish_stalls", 0))

        # -- freeze the simulator: no more joint states, the process is still there
        frozen = time.monotonic()
        os.kill(sim_pid, signal.SIGSTOP)
        # (8 s: Fast DDS here can hold the node's publish(), diagnostics too, for up to 4.3 s; the
        # reaction itself is counted in commands below, which such a hold does not change)
        assert probe.wait_for(lambda: (d := probe.last_diagnostics()) is not None and d[0] > frozen + 0.05
                              and d[1]["state"] == "safe", timeout=8.0), probe.last_diagnostics()
        diag = probe.last_diagnostics()[1]
        assert diag["reason"].startswith("stale joint_states") and int(diag["safe.stale"]) > 0, diag
        # The node's publish() can be held by Fast DDS right after the freeze (1 s at a time, seen in CI);
        # the node reports it, and the probe's count of commands is then not the node's reaction.
        held = int(diag["publish_stalls"]) > stalls_before
        if held:  # the hold ended just now: give the braking hold time to come to rest
            time.sleep(0.5)
        n_policy, ms = _check_goes_safe(probe, kin, frozen, "sim frozen", min_after=STALE_PERIODS + 10, held=held)
        print(f"\nsim frozen (policy - g(q) {gap:.1f} N·m before): safe after {n_policy} policy commands, {ms:.1f} ms "
              f"after the last joint state (stale limit {STALE_PERIODS} periods = {1e3 * STALE_PERIODS / RATE:.0f} ms)"
              + (f"; the node's publish() was held by the middleware meanwhile ({diag['publish_stalls']} stalls)" if held else ""))
        assert bring.proc.poll() is None  # a frozen node is not an exited one

        # -- resume (and reset: on waking up the sim integrates the held command over its 50 ms
        # catch-up): fresh joint states, the policy takes over again after its fade-in
        os.kill(sim_pid, signal.SIGCONT)
        resumed = _restart_from_initial_posture(probe)
        assert probe.wait_for(lambda: (d := probe.last_diagnostics()) is not None and d[0] > resumed + 0.6
                              and d[2] == "running", timeout=4.0), probe.last_diagnostics()

        # -- kill it while the policy drives it to the target again
        _restart_from_initial_posture(probe)
        _wait_policy_active(probe, kin)
        gap = _gravity_gap(probe, kin)
        killed = time.monotonic()
        os.kill(sim_pid, signal.SIGKILL)
        code = bring.wait(timeout=30)
        # tocpl-bringup stops the policy node right away: its hold has no time to come to rest. After a
        # subscriber's SIGKILL, Fast DDS here sometimes delivers nothing more from the node for ~1 s
        # (32 of 110 kills in test_node_faults.py, which times the reaction through such blackouts);
        # the node's stop is then outside what this probe can see, and only the rest is checked.
        seen = _check_goes_safe(probe, kin, killed, "sim killed", min_after=1, settles=False, blackout_ok=True)
        if seen is None:
            print("sim killed: no command after the last joint state reached the probe but the policy's "
                  "(a DDS delivery blackout after the SIGKILL)")
        else:
            print(f"sim killed (policy - g(q) {gap:.1f} N·m before): safe after {seen[0]} policy commands, "
                  f"{seen[1]:.1f} ms after the last joint state")
        assert code == 1, bring.text[-3000:]
        assert "[tocpl-bringup] ur5_sim exited (killed by SIGKILL)" in bring.text
        assert "[tocpl-bringup] ur5_sim: killed by SIGKILL -- FAILED" in bring.text
        assert "[tocpl-bringup] policy_node: exit status 0 after SIGINT" in bring.text
        assert "[policy_node]" in bring.text and "publishing the safe command" in bring.text
        assert all(_gone(pid) for pid in bring.pids.values())
    except AssertionError as exc:  # the nodes' own account, for the reader of a failure
        raise AssertionError(f"{exc}\n--- tocpl-bringup output (tail) ---\n{bring.text[-6000:]}") from None
    finally:
        try:
            os.kill(sim_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        bring.cleanup()
        probe.close()


# ---------------------------------------------------------------------------- with the MPC (use_mpc:=true)

MPC_HOLD_BOUND = 0.002
"""m: tool0's error after MPC_HOLD_TIME on the target with the MPC (the issue's goal: 1 mm; measured
here: see the printed figures). The policy alone holds ~0.5 cm (its own precision)."""
MPC_HOLD_TIME = 10.0
MPC_SEQUENCE = 3
MPC_SEQUENCE_WAIT = 2.0
MPC_SEQUENCE_BOUND = 0.005
"""m: error at the end of each 2 s segment of the target sequence with the MPC (goal: 2 mm mean)."""


@pytest.mark.slow
def test_bringup_with_mpc_reaches_holds_and_follows_targets(trained_policy, ros_quiet_domain):
    """tocpl-bringup ur5_policy use_mpc:=true: sim + policy node + MPC node. The policy node follows
    the MPC's plans (most of its ticks on the plan, counted on /diagnostics); from the initial
    posture tool0 reaches a target within REACH_BOUND and holds it within MPC_HOLD_BOUND after
    MPC_HOLD_TIME; then it follows MPC_SEQUENCE targets switched every MPC_SEQUENCE_WAIT s (mean
    error at the switches within MPC_SEQUENCE_BOUND); commands within the torque limits; Ctrl-C stops
    all three nodes cleanly."""
    from tocpl_ros.ros.probe import ToolKinematics, demo_targets

    kin = ToolKinematics()
    target = _test_target()
    probe, bring = _start_graph(ros_quiet_domain, trained_policy, 53, target, "use_mpc:=true",
                                nodes=("ur5_sim", "policy_node", "mpc_node"))
    try:
        assert probe.wait_for(lambda: (int(probe.last_diagnostics()[1].get("mpc_plans_accepted", 0)) > 0
                                       and probe.last_mpc_diagnostics() is not None)
                              or bring.proc.poll() is not None, timeout=180.0), f"no MPC plan followed:\n{bring.text[-4000:]}"
        before = probe.last_diagnostics()[1]
        mpc_before = probe.last_mpc_diagnostics()[1]
        start = _restart_from_initial_posture(probe)
        errors = []
        while time.monotonic() - start < MPC_HOLD_TIME:
            time.sleep(0.01)
            errors.append((time.monotonic() - start, _tool_error(kin, probe, target)))
        reached = [t for t, e in errors if e <= REACH_BOUND]
        hold_error = errors[-1][1]
        sequence = demo_targets(MPC_SEQUENCE, seed=2025)
        switch_errors = []
        safe_before_sequence = int(probe.last_diagnostics()[1]["safe_ticks"])
        for t in sequence:
            probe.send_target(t)
            time.sleep(MPC_SEQUENCE_WAIT)
            switch_errors.append(_tool_error(kin, probe, t))
        t_diag = time.monotonic()
        assert probe.wait_for(lambda: probe.last_diagnostics()[0] > t_diag, 5.0)
        diag = probe.last_diagnostics()[1]
        mpc = probe.last_mpc_diagnostics()
        plan_ticks = int(diag["mpc_plan_ticks"]) - int(before["mpc_plan_ticks"])
        policy_ticks = int(diag["mpc_policy_ticks"]) - int(before["mpc_policy_ticks"])
        print(f"\nwith the MPC: first within {100 * REACH_BOUND:g} cm at {reached[0] if reached else float('nan'):.2f} s, "
              "error at 0.5/1/2/5/10 s: " + ", ".join(
                  f"{1e3 * min(errors, key=lambda te: abs(te[0] - s))[1]:.3f}" for s in (0.5, 1, 2, 5, 10)) + " mm; "
              f"sequence of {MPC_SEQUENCE} every {MPC_SEQUENCE_WAIT:g} s: " + ", ".join(f"{1e3 * e:.3f}" for e in switch_errors)
              + f" mm; fast loop {plan_ticks} ticks on the plan, {policy_ticks} on the policy ("
              + ", ".join(f"{k} {v}" for k, v in diag.items() if k.startswith(("mpc_fallback.", "mpc_switches")))
              + f"), loop period p99 {diag['loop_period_p99_ms']} ms"
              + ("" if mpc is None else f"; MPC: solve time p50 {mpc[1]['solve_time_p50_ms']} ms, iterations p50 "
                 f"{mpc[1]['iterations_p50']}, {mpc[1]['converged']}/{mpc[1]['solves']} converged"))
        assert reached, f"tool0 came no closer than {100 * min(e for _, e in errors):.2f} cm to {target}; policy_node: {diag}"
        values = np.array([v for _, v in list(probe.commands)])
        assert np.isfinite(values).all() and (np.abs(values) <= np.array([150, 150, 150, 28, 28, 28]) + 1e-9).all()
        solves = int(mpc[1]["solves"]) - int(mpc_before["solves"]) if mpc else 0
        converged = int(mpc[1]["converged"]) - int(mpc_before["converged"]) if mpc else 0
        if converged < 0.5 * max(solves, 1):  # the CPU, not the code: say so instead of failing on precision
            bring.cleanup()
            pytest.skip(f"the MPC converged within its deadline on {converged} of {solves} solves on this machine now "
                        f"(load average {os.getloadavg()[0]:.1f}): its precision is not measurable here")
        assert plan_ticks > policy_ticks, diag
        assert hold_error <= MPC_HOLD_BOUND, f"{1e3 * hold_error:.2f} mm after {MPC_HOLD_TIME:g} s"
        assert bring.proc.poll() is None
        late = int(diag["safe_ticks"]) - safe_before_sequence
        if float(np.mean(switch_errors)) > MPC_SEQUENCE_BOUND and late > 0:
            # joint states late by > 5 periods (a starved CPU): the safe command and a fade-in, not the MPC
            bring.cleanup()
            pytest.skip(f"the sequence is not measurable here: {late} safe ticks (late joint states) during it, "
                        f"load average {os.getloadavg()[0]:.1f}; errors {[round(1e3 * e, 2) for e in switch_errors]} mm")
        assert float(np.mean(switch_errors)) <= MPC_SEQUENCE_BOUND, switch_errors

        bring.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert bring.wait(timeout=30) == 0, bring.text[-3000:]
        for name in ("ur5_sim", "policy_node", "mpc_node"):
            assert f"[tocpl-bringup] {name}: exit status 0 after SIGINT" in bring.text, bring.text[-3000:]
        assert "following the MPC plans of /mpc/plan" in bring.text
        assert all(_gone(pid) for pid in bring.pids.values())
    finally:
        bring.cleanup()
        probe.close()
