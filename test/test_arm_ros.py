"""Bring your own arm, the ROS side (issue 25): the policy file's robot keys and older files, the
robot checks of the policy and MPC nodes, targets in frames (/target, /target_pose), the generic
simulator ``arm_sim`` and the ``arm_policy`` graph, end to end through DDS.

Policies are small untrained ones exported to real ONNX files (read by onnxruntime): what is
under test is the contract and the checks, not the policy's precision. DDS stays on loopback
(conftest); each ROS test uses a domain of its own, derived with small offsets.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import tocpl_ros
from tocpl_ros.bringup.graph import BringupError, graph_for, launch_arguments, node_environment
from tocpl_ros.control.controller import PolicyController
from tocpl_ros.policy_file import ROBOT_KEYS, PolicyFileError, read_onnx_metadata
from tocpl_ros.resources import console_command
from tocpl_ros.robot import load_robot
from tocpl_ros.tasks import load_task

from ros_harness import arm_policy, communicate, node_env, stand_in_launch_modules, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[1]
ARM_LAUNCH_FILE = ROOT / "launch" / "arm_policy.launch.py"
UR5_TARGET = [0.5, 0.1, 0.4]


def _export(task_name: str, path: Path, seed: int = 0) -> Path:
    from tocpl_training.export import export_onnx
    from tocpl_training.learning.policy import make_policy

    task = load_task(task_name)
    return export_onnx(make_policy(task, seed=seed).eval(), task, path)


def _rewrite(source: Path, dest: Path, drop: tuple[str, ...] = (), **values: str) -> Path:
    """A copy of a policy file with metadata keys dropped or set (raw strings, as another tool
    or an older tocpl_ros would have written them)."""
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props if p.key.removeprefix("tocpl.") not in drop}
    props.update({f"tocpl.{k}": v for k, v in values.items()})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dest))
    return dest


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arm_ros")
    ur5 = _export("ur5_reach", folder / "ur5.onnx")
    return {
        "ur5": ur5,
        "double_pendulum": _export("double_pendulum", folder / "double_pendulum.onnx"),
        "old": _rewrite(ur5, folder / "old.onnx", drop=ROBOT_KEYS, version="0.1.0"),
        "other_robot": _rewrite(ur5, folder / "other_robot.onnx", robot="double_pendulum"),
        "locked": _rewrite(ur5, folder / "locked.onnx", locked_joints='{"gripper_joint": 0.01}'),
    }


# ============================================================================ the policy file (ROS-free)


def test_policy_file_carries_the_robot(policies):
    md = read_onnx_metadata(policies["ur5"])
    assert md.version == tocpl_ros.__version__ and md.defaults_used == []
    assert md.robot == "ur5" and md.joint_names == load_robot("ur5").joint_names
    assert (md.locked_joints, md.end_effector_frame, md.base_frame) == ({}, "tool0", "base_link")
    assert md.target_kind == "position" and md.joint_encodings == ["angle"] * 6
    pendulum = read_onnx_metadata(policies["double_pendulum"])
    assert (pendulum.robot, pendulum.target_kind, pendulum.end_effector_frame) == ("double_pendulum", "none", "tip")
    # the written strings are the documented ones
    props = {p.key: p.value for p in onnx.load(str(policies["ur5"])).metadata_props}
    assert props["tocpl.locked_joints"] == "{}"
    assert props["tocpl.joint_encodings"] == '["angle", "angle", "angle", "angle", "angle", "angle"]'
    assert {f"tocpl.{k}" for k in ROBOT_KEYS} <= set(props)


def test_older_policy_file_is_read_with_defaults(policies):
    md = read_onnx_metadata(policies["old"])
    assert md.version == "0.1.0" and md.defaults_used == list(ROBOT_KEYS)
    # the robot from its task config, nothing locked, the robot's frames, the target from the observation
    assert (md.robot, md.locked_joints, md.end_effector_frame, md.base_frame) == ("ur5", {}, "", "")
    assert md.target_kind == "position" and md.joint_encodings == ["angle"] * 6
    controller = PolicyController(policies["old"])
    assert controller.robot.name == "ur5" and controller.base_frame == "base_link"


@pytest.mark.parametrize(
    "values, drop, message",
    [
        ({"version": "0.2.0"}, ROBOT_KEYS, r"'tocpl\.robot': missing, but the file says it was written by tocpl_ros 0\.2\.0.*re-export"),
        ({"version": "1.0.0"}, (), r"written by tocpl_ros 1\.0\.0, a newer major version than this reader \(0\.x\): update tocpl_ros"),
        ({"version": "next"}, (), r"'tocpl\.version': 'next' is not a tocpl_ros version.*re-export the checkpoint with tocpl-export"),
        ({"target_kind": "joint"}, (), r"'tocpl\.target_kind': expected one of position, pose, none"),
        ({"joint_encodings": '["angle"]'}, (), r"'tocpl\.joint_encodings': expected one of \['angle', 'linear', 'cos_sin'\] per joint"),
        ({"locked_joints": '{"elbow_joint": 0.0}'}, (), r"joints \['elbow_joint'\] are controlled"),
        ({"locked_joints": '{"x": NaN}'}, (), r"'tocpl\.locked_joints'"),
    ],
)
def test_bad_or_unknown_versions_are_refused_with_the_reason(policies, tmp_path, values, drop, message):
    path = _rewrite(policies["ur5"], tmp_path / "bad.onnx", drop=drop, **values)
    with pytest.raises(PolicyFileError, match=message):
        read_onnx_metadata(path)


def test_controller_refuses_another_robots_policy(policies):
    with pytest.raises(PolicyFileError, match=r"trained for robot 'ur5' \(tocpl\.robot\) but the robot given is 'double_pendulum'"):
        PolicyController(policies["ur5"], robot="double_pendulum")
    with pytest.raises(PolicyFileError, match=r"trained for robot 'double_pendulum' \(tocpl\.robot\), not 'ur5'"):
        PolicyController(policies["other_robot"], robot=load_robot("ur5"))
    with pytest.raises(PolicyFileError, match=r"locked joints differ from robot ur5's on \['gripper_joint'\]"):
        PolicyController(policies["locked"])
    for kind, values, message in (
        # a pose policy's target block has 9 values (position, two rotation columns)
        ("pose", {"target_kind": "pose"}, r"observation block 'target' has size 3, expected 9"),
        ("cos_sin", {"joint_encodings": '["cos_sin", "angle", "angle", "angle", "angle", "angle"]'},
         r"joint encodings \(tocpl\.joint_encodings\) differ from robot ur5's: shoulder_pan_joint: policy 'cos_sin', robot 'angle'"),
        ("base", {"base_frame": "world"}, r"targets are in frame 'world' \(tocpl\.base_frame\), robot ur5's base frame is 'base_link'"),
        ("tool", {"end_effector_frame": "gripper"}, r"end-effector frame 'gripper' \(tocpl\.end_effector_frame\) is not in ur5\.urdf"),
    ):
        path = _rewrite(policies["ur5"], policies["ur5"].parent / f"{kind}.onnx", **values)
        with pytest.raises(PolicyFileError, match=message):
            PolicyController(path)


def test_controller_takes_targets_in_the_base_frame_only(policies):
    controller = PolicyController(policies["ur5"])
    assert controller.update_target(UR5_TARGET, frame="base_link") is None
    assert controller.update_target([0.4, 0.0, 0.5], frame="") is None  # empty: taken as the base frame
    assert controller.target.tolist() == [0.4, 0.0, 0.5]
    reason = controller.update_target(UR5_TARGET, frame="world")
    assert "frame 'world' is not the robot's base frame 'base_link'" in reason
    assert controller.target.tolist() == [0.4, 0.0, 0.5] and controller.stats.rejected["target_frame"] == 1
    assert controller.diagnostics()["rejected.target_frame"] == "1"


def test_mpc_task_comes_from_the_policy_file(policies):
    from tocpl_ros.mpc.worker import load_task_spec

    md = read_onnx_metadata(policies["ur5"])
    task = load_task_spec({"name": md.task, "config": md.task_config})
    reference = load_task("ur5_reach")
    assert (task.name, task.dt, task.horizon, task.robot.name) == ("ur5_reach", reference.dt, reference.horizon, "ur5")
    assert task.config == reference.config


# ============================================================================ arm_policy graph and launch file


def test_arm_policy_graph(policies, tmp_path):
    specs = {s.name: s for s in graph_for("arm_policy", robot="ur5", policy=str(policies["ur5"]))}
    assert list(specs) == ["arm_sim", "policy_node"]
    sim, policy = specs["arm_sim"], specs["policy_node"]
    # the robot's control_rate and command_interface unless set
    assert sim.parameters == {"robot": "ur5", "backend": "pinocchio", "command_mode": "effort", "publish_rate": 500.0,
                              "realtime_priority": 50}
    assert policy.parameters["robot"] == "ur5" and policy.parameters["rate"] == 500.0
    assert sim.params_files == [ROOT / "config" / "arm_sim.yaml"]
    pendulum = {s.name: s for s in graph_for("arm_policy", robot="double_pendulum", policy=str(policies["ur5"]),
                                              rate="250", use_mpc="true", mpc_task="ur5_reach_fixed_horizon")}
    assert list(pendulum) == ["arm_sim", "policy_node", "mpc_node"]
    assert pendulum["arm_sim"].parameters["publish_rate"] == 250.0 and pendulum["arm_sim"].parameters["robot"] == "double_pendulum"
    assert pendulum["mpc_node"].parameters == {"policy_path": str(policies["ur5"]), "task": "ur5_reach_fixed_horizon"}
    # without mpc_task: the policy's own task (mpc_node's default)
    default_mpc = {s.name: s for s in graph_for("arm_policy", robot="ur5", policy=str(policies["ur5"]), use_mpc="true")}
    assert "task" not in default_mpc["mpc_node"].parameters
    # a robot YAML path; one without a control_rate needs rate:=
    yaml_path = tmp_path / "my_arm.yaml"
    data = yaml.safe_load((ROOT / "config" / "robots" / "ur5.yaml").read_text())
    yaml_path.write_text(yaml.safe_dump({**data, "control_rate": None}))
    with pytest.raises(BringupError, match=r"argument 'rate': robot .*my_arm\.yaml' has no control_rate"):
        graph_for("arm_policy", robot=str(yaml_path), policy=str(policies["ur5"]))
    by_path = graph_for("arm_policy", robot=str(yaml_path), policy=str(policies["ur5"]), rate="125")
    assert by_path[0].parameters["robot"] == str(yaml_path)
    with pytest.raises(BringupError, match=r"argument 'robot' is required: .*ur5"):
        graph_for("arm_policy", policy=str(policies["ur5"]))
    with pytest.raises(BringupError, match=r"unknown robot 'franka' .*available: .*ur5"):
        graph_for("arm_policy", robot="franka", policy=str(policies["ur5"]))
    # ur5_policy is unchanged: ur5_sim, not arm_sim
    assert [s.name for s in graph_for("ur5_policy", policy=str(policies["ur5"]))] == ["ur5_sim", "policy_node"]


@pytest.mark.parametrize("overrides", [{"robot": "ur5"}, {"robot": "double_pendulum", "use_mpc": "true", "rate": "1000"}])
def test_arm_launch_file_creates_the_graph(monkeypatch, policies, overrides):
    stand_in_launch_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location("arm_policy_launch", ARM_LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = [a for a in description.args[0] if type(a).__name__ == "DeclareLaunchArgument"]
    opaque = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]
    assert [(a.args[0], a.kwargs["default_value"], a.kwargs["description"], tuple(a.kwargs.get("choices", ())) or None)
            for a in declared] == [(a.name, a.default, a.description, a.choices) for a in launch_arguments("arm_policy")]
    configurations = {a.args[0]: a.kwargs["default_value"] for a in declared}
    configurations.update({"policy": str(policies["ur5"]), **overrides})
    actions = opaque[0].kwargs["function"](types.SimpleNamespace(launch_configurations=configurations))
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    specs = graph_for("arm_policy", policy=str(policies["ur5"]), **overrides)
    assert [n.kwargs["name"] for n in nodes] == [s.name for s in specs]
    for node, s in zip(nodes, specs):
        assert (node.kwargs["package"], node.kwargs["executable"]) == (s.package, s.executable)
        assert node.kwargs["parameters"] == [str(p) for p in s.params_files] + [s.parameters]
        assert node.kwargs["additional_env"] == node_environment()
    with pytest.raises(RuntimeError, match=r"arm_policy\.launch\.py: argument 'robot' is required"):
        opaque[0].kwargs["function"](types.SimpleNamespace(launch_configurations={**configurations, "robot": ""}))


@pytest.mark.parametrize("backend", ["pinocchio", "mujoco"])
def test_payload_frame_checked_only_with_a_payload(backend):
    """The double pendulum's URDF has no tool0: a payload_frame naming it is fine without a payload
    (it used to be checked anyway), refused with one; the default payload frame is the end effector."""
    from tocpl_ros.config import FieldError
    from tocpl_ros.sim import make_simulator
    from tocpl_ros.sim.config import SimConfig

    sim = make_simulator(SimConfig(robot="double_pendulum", backend=backend, payload_frame="tool0"))
    assert sim.joint_names == ["joint1", "joint2"]
    assert make_simulator(SimConfig(robot="double_pendulum", backend=backend, payload_mass=0.5)).payload_frame == "tip"
    with pytest.raises(FieldError, match="frame 'tool0' is not in"):
        make_simulator(SimConfig(robot="double_pendulum", backend=backend, payload_frame="tool0", payload_mass=0.5))


def test_ur5_sim_is_arm_sim_with_the_ur5():
    from tocpl_ros.ros.nodes.arm_sim import node_defaults

    assert node_defaults("ur5_sim") == node_defaults("arm_sim")
    assert node_defaults("arm_sim").robot == "ur5"


# ============================================================================ through DDS


def _domain(ros_loopback_env, offset: int) -> tuple[int, dict[str, str]]:
    """A domain of its own for each test: the run's domain + a small offset (80-89 when the run's is 80)."""
    from tocpl_ros.ros.environment import derive_domain_id

    domain = derive_domain_id(int(ros_loopback_env["ROS_DOMAIN_ID"]) + offset)
    return domain, node_env(domain)


@pytest.mark.ros
def test_nodes_refuse_a_policy_for_another_robot(policies, ros_loopback_env):
    """policy_node told robot:=double_pendulum with a UR5 policy, and the mpc_node with a policy whose
    file names another robot than its task's: exit 2, the reason on stderr (concurrently)."""
    _, env = _domain(ros_loopback_env, 0)
    policy_cmd = console_command("policy_node", "tocpl_ros.ros.nodes.policy_node")
    mpc_cmd = console_command("mpc_node", "tocpl_ros.ros.nodes.mpc_node")
    cases = {
        "policy_node robot": (policy_cmd + ["--ros-args", "-p", f"policy_path:={policies['ur5']}", "-p", "robot:=double_pendulum"],
                              ["trained for robot 'ur5'", "'double_pendulum'"]),
        "policy_node file": (policy_cmd + ["--ros-args", "-p", f"policy_path:={policies['other_robot']}"],
                             ["trained for robot 'double_pendulum' (tocpl.robot), not 'ur5'"]),
        "mpc_node file": (mpc_cmd + ["--ros-args", "-p", f"policy_path:={policies['other_robot']}"],
                          ["trained for robot 'double_pendulum' (tocpl.robot), not 'ur5'"]),
        "policy_node locked": (policy_cmd + ["--ros-args", "-p", f"policy_path:={policies['locked']}"],
                               ["locked joints differ"]),
    }
    procs = {}
    try:
        for name, (command, _) in cases.items():
            procs[name] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, proc in procs.items():
            out, err = communicate(proc, 90, f"{name} to refuse to start")
            assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{out}\n{err}"
            assert "refusing to start" in err, f"{name}: {err}"
            for fragment in cases[name][1]:
                assert fragment in err, f"{name}: {fragment!r} not in stderr:\n{err}"
    finally:
        for proc in procs.values():
            stop_process(proc)


@pytest.mark.ros
def test_arm_sim_simulates_another_robot(ros_loopback_env, tmp_path):
    """arm_sim robot:=double_pendulum (no tool0 in its URDF, payload_frame tool0 but no payload: fine)
    publishes its joints at rest in the nominal posture; a payload on a missing frame is refused (exit 2)."""
    from tocpl_ros.ros.probe import Probe

    domain, env = _domain(ros_loopback_env, 1)
    command = console_command("arm_sim", "tocpl_ros.ros.nodes.arm_sim") + ["--ros-args", "-p", "robot:=double_pendulum"]
    log = tmp_path / "arm_sim.log"
    probe = Probe(domain, name="arm_sim_test_probe", base_frame="base_link")
    proc = None
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(command + ["-p", "payload_frame:=tool0"], env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: probe.last_joint_state() is not None, 60, "joint states of arm_sim", proc, log)
        _, names, q, v = probe.last_joint_state()
        assert names == ["joint1", "joint2"] and np.allclose(q, 0.0, atol=1e-6) and np.allclose(v, 0.0, atol=1e-6)
        assert "simulating double_pendulum.urdf (pinocchio) of robot double_pendulum" in log.read_text()
    finally:
        stop_process(proc)
        probe.close()
    bad = subprocess.run(command + ["-p", "payload_frame:=tool0", "-p", "payload_mass:=1.0"], env=env,
                         capture_output=True, text=True, timeout=90)
    assert bad.returncode == 2 and "payload_frame" in bad.stderr and "tool0" in bad.stderr, bad.stderr


@pytest.mark.ros
def test_arm_policy_bringup_drives_the_arm_and_checks_target_frames(policies, ros_loopback_env, tmp_path):
    """tocpl-bringup arm_policy robot:=ur5: arm_sim + policy_node come up on the robot, the policy's
    commands move the simulated arm; a /target in a foreign frame is refused (logged, counted on
    /diagnostics, the target kept); a /target_pose in the base frame is taken (its position)."""
    from tocpl_ros.ros.probe import Probe

    domain, env = _domain(ros_loopback_env, 2)
    log = tmp_path / "bringup.log"
    probe = Probe(domain, record_commands=True, name="arm_policy_test_probe", base_frame="base_link")
    try:
        with arm_policy(env, log, "ur5", policies["ur5"], UR5_TARGET) as proc:
            wait_for(lambda: probe.last_joint_state() is not None and probe.last_diagnostics() is not None
                     and len(probe.commands) > 0, 90, "joint states, commands and diagnostics of arm_policy", proc, log)
            text = log.read_text()
            assert "started arm_sim" in text and "started policy_node" in text and "ur5_sim" not in text
            assert "robot ur5" in text
            with probe.lock:
                q_first = probe.joint_states[0][2]
            # the policy's commands move the simulated arm (an untrained policy: somewhere, not to the target)
            wait_for(lambda: float(np.max(np.abs(probe.last_joint_state()[2] - q_first))) > 1e-3, 30,
                     "the arm to move under the policy's commands", proc, log)
            wait_for(lambda: int(probe.last_diagnostics()[1].get("policy_ticks", "0")) > 0, 30, "policy ticks", proc, log)
            assert probe.last_diagnostics()[1]["target"] == " ".join(f"{x:.4f}" for x in UR5_TARGET)

            probe.send_target([0.45, 0.0, 0.5], frame_id="world")
            wait_for(lambda: probe.last_diagnostics()[1].get("rejected.target_frame") == "1", 30,
                     "the foreign frame counted on /diagnostics", proc, log)
            assert probe.last_diagnostics()[1]["target"] == " ".join(f"{x:.4f}" for x in UR5_TARGET)  # kept
            wait_for(lambda: "rejected (target_frame)" in log.read_text(), 10, "the refusal in the log", proc, log)
            assert "frame 'world' is not the robot's base frame 'base_link'" in log.read_text()

            probe.send_target_pose([0.45, 0.0, 0.5], quaternion=(0.0, 0.0, math.sin(0.3), math.cos(0.3)))
            wait_for(lambda: probe.last_diagnostics()[1]["target"] == "0.4500 0.0000 0.5000", 30,
                     "the /target_pose position taken as the target", proc, log)
            assert probe.last_diagnostics()[1].get("rejected.target_frame") == "1"
            wait_for(lambda: "the orientation is ignored" in log.read_text(), 10, "the orientation note", proc, log)
            assert proc.poll() is None, log.read_text()[-3000:]
            # every command stayed within the torque limits
            limits = load_robot("ur5").effort_limit
            with probe.lock:
                commands = [c for _, c in probe.commands]
            assert commands and all(np.all(np.abs(c) <= limits + 1e-9) for c in commands)
    finally:
        probe.close()



@pytest.mark.ros
def test_mpc_node_solves_the_policys_task_and_old_files_start(policies, ros_loopback_env, tmp_path):
    """mpc_node without a task solves the one in the policy file, with task:= the one given; a policy
    file of 0.1.0 starts the policy node with a warning that says what to do (concurrently)."""
    _, env = _domain(ros_loopback_env, 3)
    mpc_cmd = console_command("mpc_node", "tocpl_ros.ros.nodes.mpc_node") + ["--ros-args", "-p", f"policy_path:={policies['ur5']}"]
    policy_cmd = console_command("policy_node", "tocpl_ros.ros.nodes.policy_node")
    cases = {
        "own task": (mpc_cmd, "MPC on task ur5_reach (the policy's own), robot ur5"),
        "override": (mpc_cmd + ["-p", "task:=ur5_reach_fixed_horizon"], "MPC on task ur5_reach_fixed_horizon, robot ur5"),
        "old file": (policy_cmd + ["--ros-args", "-p", f"policy_path:={policies['old']}"],
                     "was written by tocpl_ros 0.1.0, before the robot keys of the policy file"),
    }
    procs, logs = {}, {}
    try:
        for name, (command, _) in cases.items():
            logs[name] = tmp_path / f"{name.replace(' ', '_')}.log"
            with logs[name].open("w") as out:
                procs[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        for name, (_, line) in cases.items():
            wait_for(lambda: line in logs[name].read_text(), 120, f"{name}: {line!r}", procs[name], logs[name])
        for name, proc in procs.items():
            proc.send_signal(2)
            assert proc.wait(timeout=60) == 0, f"{name}: {logs[name].read_text()[-3000:]}"
        assert "re-export its checkpoint with tocpl-export" in logs["old file"].read_text()
    finally:
        for proc in procs.values():
            stop_process(proc)


@pytest.mark.slow
@pytest.mark.ros
def test_a_panda_trained_with_its_robot_yaml_reaches_a_target_through_arm_policy(ros_loopback_env, tmp_path):
    """Issue 25's shipped example end to end: `tocpl-train --task reach --robot panda`'s default
    (~1 min on 2 idle cores), exported, driven by `tocpl-bringup arm_policy robot:=panda` on the
    simulated Panda (1 kHz, effort without gravity: the simulated Franka adds g(q) back) to a
    held-out target: within 2 cm after 5 s, every command within the Panda's effort limits."""
    from tocpl_ros.config import to_dict
    from tocpl_ros.ros.probe import Probe, ToolKinematics, follow
    from tocpl_training.cli import default_config
    from tocpl_training.export import export_onnx
    from tocpl_training.trainer import Trainer

    config = default_config("reach", robot="panda", eval_problems=20)
    trainer = Trainer(config, tmp_path / "run")
    trainer.run()
    policy = export_onnx(trainer.policy, trainer.task, tmp_path / "policy.onnx", to_dict(config))
    target = np.asarray(load_task("reach", {"robot": "panda"}).sample(1, 123).target[0])

    domain, env = _domain(ros_loopback_env, 4)
    log = tmp_path / "bringup.log"
    probe = Probe(domain, record_commands=True, name="panda_test_probe", base_frame="panda_link0")
    try:
        with arm_policy(env, log, "panda", policy, target) as proc:
            wait_for(lambda: probe.last_joint_state() is not None and len(probe.commands) > 0, 120,
                     "joint states and commands of arm_policy robot:=panda", proc, log)
            assert "output effort without gravity" in log.read_text() and "robot panda, 7 joints" in log.read_text()
            result = follow(probe, ToolKinematics("panda"), target, 5.0)
            print(f"\nPanda through arm_policy: {1e3 * result['error_1s']:.1f} mm at 1 s, {1e3 * result['final_error']:.1f} mm at 5 s")
            assert result["final_error"] <= 0.02, result
            limits = load_robot("panda").effort_limit
            with probe.lock:
                commands = [c for _, c in probe.commands]
            assert all(np.all(np.abs(c) <= limits + 1e-9) for c in commands)
            assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        probe.close()
