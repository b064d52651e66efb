"""The node graphs of tocpl_ros, described without ROS (used by the launch file and ``tocpl-bringup``).

One description, two ways to start it:

- ``launch/ur5_policy.launch.py`` (``arm_policy.launch.py``) turns it into ``launch_ros.actions.Node`` actions
  (``ros2 launch tocpl_ros ur5_policy.launch.py policy:=/path/policy.onnx``);
- ``tocpl-bringup ur5_policy policy:=/path/policy.onnx`` (:mod:`tocpl_ros.bringup.cli`)
  starts the same nodes as processes, with the same parameters, where ``launch`` is not
  installed.

:func:`graph_for` validates the launch arguments (``name:=value`` strings as ros2 launch
passes them, or Python values) and returns one :class:`NodeSpec` per node. Every node
takes its params file from ``config/`` (found by :func:`tocpl_ros.resources.config_path`)
and then the parameters the arguments set (the later wins, as with ``--params-file`` then
``-p``). Nothing here imports rclpy, launch or pinocchio.

Graph ``arm_policy robot:=NAME``: the same graph for any robot of ``config/robots/`` (or a robot
YAML path): the simulated arm ``arm_sim`` with that robot, the policy node told the robot (it
refuses a policy trained for another), the MPC on the policy's own task unless ``mpc_task`` is
set; ``rate`` and ``output_mode`` default to the robot's ``control_rate`` and
``command_interface``. ``launch/arm_policy.launch.py`` is its launch file.

Graph ``ur5_policy``: the simulated UR5 (``ur5_sim``, unless ``use_sim:=false`` for a real
robot's ros2_control), the ONNX policy (``policy_node``) and, with ``use_mpc:=true``, the MPC
node (``mpc_node``, 100 Hz, publishing each solve's plan on ``/mpc/plan``), the policy node then
being the MPC's fast loop: it follows the newest plan with its feedback gains at its own rate
and falls back to the policy when no fresh plan exists (``use_mpc`` parameter of the policy node,
:mod:`tocpl_ros.control.plan_follower`). ``/mpc/command`` (the MPC's own 100 Hz command) is published for
monitoring only: nothing in the graph applies it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from tocpl_ros.bringup.spec import (
    LOG_LEVELS,
    BringupError,
    LaunchArgument,
    NodeSpec,
    node_environment,
    parse_bool,
    parse_choice,
    parse_policy,
    parse_priority,
    parse_rate,
    parse_target,
)
from tocpl_ros.interfaces import (
    ARM_SIM_NODE,
    MPC_COMMAND_TOPIC,
    MPC_NODE,
    MPC_PLAN_TOPIC,
    OUTPUT_MODES,
    POLICY_NODE,
    SIM_BACKENDS,
    SIM_NODE,
)
from tocpl_ros.resources import PACKAGE_NAME, config_path

__all__ = [  # BringupError and node_environment (spec.py) with the graphs, for the launch file and the tools
    "BringupError",
    "GRAPHS",
    "ARM_LAUNCH_ARGUMENTS",
    "LAUNCH_ARGUMENTS",
    "graph_for",
    "launch_arguments",
    "node_environment",
]

# ----------------------------------------------------------------------------- ur5_policy

UR5_MPC_TASK = "ur5_reach_fixed_horizon"
"""The MPC's OCP in the ur5_policy graph (ur5_reach without its posture term; docs/mpc.md)."""

LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("policy", "", "ONNX policy file to run (written by tocpl-train / tocpl-export). Required."),
    LaunchArgument(
        "target",
        "",
        "Initial target of the end effector 'x,y,z' (m, robot base frame), or a pose 'x,y,z,qx,qy,qz,qw' (its "
        "orientation as a quaternion; a position policy takes the position), until one arrives on /target or "
        "/target_pose; empty: hold the end effector where it is at the first joint state.",
    ),
    LaunchArgument(
        "use_mpc",
        "false",
        f"Also start the MPC node (mpc_node, policy warm-started Crocoddyl, 100 Hz): the policy node then follows "
        f"its plans ({MPC_PLAN_TOPIC}) with their feedback gains, the policy as the fallback when no fresh plan exists.",
    ),
    LaunchArgument(
        "use_sim",
        "true",
        "Start the simulated UR5 (ur5_sim); false: drive whatever publishes /joint_states and "
        "obeys the forward controllers (a real UR through ros2_control).",
    ),
    LaunchArgument("sim_backend", "pinocchio", "Physics backend of the simulated UR5.", SIM_BACKENDS),
    LaunchArgument(
        "rate",
        "500",
        "Control rate (Hz) of the policy node; the simulated UR5 publishes /joint_states at the same rate.",
    ),
    LaunchArgument(
        "output_mode",
        "effort",
        "Command interface: torques to /forward_effort_controller/commands, or velocities / positions "
        "to the forward velocity / position controller (the simulated UR5 obeys the same one).",
        OUTPUT_MODES,
    ),
    LaunchArgument("autostart", "true", "Drive with the policy as soon as joint states arrive; false: wait for ~/start."),
    LaunchArgument(
        "realtime_priority",
        "50",
        "SCHED_FIFO priority (1-99) of the policy node's and the simulated UR5's processes (their realtime_priority "
        "parameter; the MPC node stays at normal priority, so it is what gets late under CPU contention); 0: normal "
        "scheduling. 50 is ros2_control's default for its control loop. Needs CAP_SYS_NICE or an RLIMIT_RTPRIO that "
        "high, else each node warns and runs at normal priority.",
    ),
    LaunchArgument("log_level", "info", "Log level of every node.", LOG_LEVELS),
)


def _ur5_policy(args: dict[str, Any]) -> list[NodeSpec]:
    policy = parse_policy(args["policy"])
    target = parse_target(args["target"])
    use_mpc = parse_bool("use_mpc", args["use_mpc"])
    use_sim = parse_bool("use_sim", args["use_sim"])
    autostart = parse_bool("autostart", args["autostart"])
    rate = parse_rate(args["rate"])
    realtime = {"realtime_priority": parse_priority(args["realtime_priority"])}
    by_name = {a.name: a for a in LAUNCH_ARGUMENTS}
    backend = parse_choice(by_name["sim_backend"], args["sim_backend"])
    output_mode = parse_choice(by_name["output_mode"], args["output_mode"])
    log_level = parse_choice(by_name["log_level"], args["log_level"])
    ros_arguments = ["--log-level", log_level]

    nodes: list[NodeSpec] = []
    if use_sim:
        nodes.append(
            NodeSpec(
                package=PACKAGE_NAME,
                executable=SIM_NODE,
                name=SIM_NODE,
                parameters={"backend": backend, "command_mode": output_mode, "publish_rate": rate, **realtime},
                params_files=[config_path("ur5_sim.yaml")],
                ros_arguments=list(ros_arguments),
                description="simulated UR5: /joint_states, /forward_*_controller/commands, ~/reset",
            )
        )
    policy_parameters: dict[str, Any] = {
        "policy_path": str(policy),
        "rate": rate,
        "output_mode": output_mode,
        "autostart": autostart,
        **realtime,
    }
    if target is not None:
        policy_parameters["initial_target"] = target
    if use_mpc:
        policy_parameters["use_mpc"] = True
    nodes.append(
        NodeSpec(
            package=PACKAGE_NAME,
            executable=POLICY_NODE,
            name=POLICY_NODE,
            parameters=policy_parameters,
            params_files=[config_path("policy_node.yaml")],
            ros_arguments=list(ros_arguments),
            description=(f"{'MPC plans (' + MPC_PLAN_TOPIC + '), else the ' if use_mpc else ''}ONNX policy -> forward "
                         f"{output_mode} controller at {rate:g} Hz; /target, ~/start, ~/stop, /diagnostics"),
        )
    )
    if use_mpc:
        # The MPC node is optional and may not be installed (yet): its params file is used if
        # present, its absence as an executable is reported when the graph is started.
        mpc_yaml = [p for p in (_maybe_config("mpc_node.yaml"),) if p is not None]
        # the task the ur5_policy graph's MPC has always solved (the mpc_node's own default is now the
        # policy's task): its figures in docs/mpc.md were measured with it
        mpc_parameters: dict[str, Any] = {"policy_path": str(policy), "task": UR5_MPC_TASK}
        if target is not None:
            mpc_parameters["initial_target"] = target
        nodes.append(
            NodeSpec(
                package=PACKAGE_NAME,
                executable=MPC_NODE,
                name=MPC_NODE,
                parameters=mpc_parameters,
                params_files=mpc_yaml,
                ros_arguments=list(ros_arguments),
                description=f"MPC (Crocoddyl, policy warm start) -> {MPC_PLAN_TOPIC} (followed by policy_node), {MPC_COMMAND_TOPIC}",
                missing_hint="use_mpc:=true needs the MPC node (tocpl_ros/ros/nodes/mpc_node.py, console script "
                "'mpc_node'), which is not installed here; run without use_mpc, or install it "
                "(pip install -e . / colcon build) once it exists",
            )
        )
    return nodes


# ----------------------------------------------------------------------------- arm_policy

ARM_LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument(
        "robot",
        "",
        "Robot: a name in config/robots/ (ur5, double_pendulum, ...) or a robot YAML path. Required. The policy must "
        "have been trained for it (the policy node and the MPC node refuse another robot's policy).",
    ),
    LaunchArgument("policy", "", "ONNX policy file to run (written by tocpl-train / tocpl-export). Required."),
    LaunchArgument(
        "target",
        "",
        "Initial target of the end effector 'x,y,z' (m, the robot's base frame), or a pose 'x,y,z,qx,qy,qz,qw' (its "
        "orientation as a quaternion, for a pose policy; a position policy takes the position), until one arrives on "
        "/target (PointStamped) or /target_pose (PoseStamped); empty: hold the end effector where it is at the first "
        "joint state (a pose policy given 'x,y,z': its orientation there).",
    ),
    LaunchArgument(
        "use_mpc",
        "false",
        f"Also start the MPC node (mpc_node, 100 Hz, the OCP of the policy's own task unless mpc_task is set): the "
        f"policy node then follows its plans ({MPC_PLAN_TOPIC}), the policy as the fallback.",
    ),
    LaunchArgument("mpc_task", "", "With use_mpc: the task whose OCP the MPC solves; empty: the policy's own "
                                   "(its file's tocpl.task_config)."),
    LaunchArgument(
        "use_sim",
        "true",
        "Start the simulated arm (arm_sim with this robot); false: drive whatever publishes /joint_states and obeys "
        "the forward controllers (the real arm through ros2_control).",
    ),
    LaunchArgument("sim_backend", "pinocchio", "Physics backend of the simulated arm.", SIM_BACKENDS),
    LaunchArgument(
        "rate",
        "",
        "Control rate (Hz) of the policy node, also the simulated arm's /joint_states rate; empty: the robot's "
        "control_rate (config/robots/<robot>.yaml).",
    ),
    LaunchArgument(
        "output_mode",
        "",
        "Command interface (effort, velocity or position forward controller; the simulated arm obeys the same one); "
        "empty: the robot's command_interface.",
        ("", *OUTPUT_MODES),
    ),
    LaunchArgument("autostart", "true", "Drive with the policy as soon as joint states arrive; false: wait for ~/start."),
    LaunchArgument(
        "realtime_priority",
        "50",
        "SCHED_FIFO priority (1-99) of the policy node's and the simulated arm's processes (the MPC node stays at "
        "normal priority); 0: normal scheduling. Needs CAP_SYS_NICE or an RLIMIT_RTPRIO that high, else each node "
        "warns and runs at normal priority.",
    ),
    LaunchArgument("log_level", "info", "Log level of every node.", LOG_LEVELS),
)


def _robot_settings(value: Any) -> tuple[str, dict[str, Any]]:
    """(robot as the nodes take it, its YAML's mapping) of the ``robot`` argument: a name in
    config/robots/ or a YAML path. Read as plain YAML (the nodes validate it; nothing here loads
    Pinocchio); BringupError naming the robots there are if it is not found."""
    text = "" if value is None else str(value).strip()
    try:
        folder = config_path("robots")
        available = sorted(p.stem for p in folder.glob("*.yaml"))
    except FileNotFoundError:
        folder, available = None, []
    if not text:
        raise BringupError(f"argument 'robot' is required: a robot of config/robots/ ({', '.join(available)}) or a "
                           "robot YAML path, e.g. robot:=ur5")
    if text.endswith((".yaml", ".yml")):
        path = Path(os.path.expanduser(text)).absolute()
        robot = str(path)
    else:
        path = folder / f"{text}.yaml" if folder is not None else Path(text)
        robot = text
    if not path.is_file():
        raise BringupError(f"argument 'robot': unknown robot {text!r} (no {path}; available: {', '.join(available)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BringupError(f"argument 'robot': cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise BringupError(f"argument 'robot': {path} is not a robot description (a YAML mapping)")
    return robot, data


def _arm_policy(args: dict[str, Any]) -> list[NodeSpec]:
    robot, settings = _robot_settings(args["robot"])
    policy = parse_policy(args["policy"])
    target = parse_target(args["target"])
    use_mpc = parse_bool("use_mpc", args["use_mpc"])
    use_sim = parse_bool("use_sim", args["use_sim"])
    autostart = parse_bool("autostart", args["autostart"])
    by_name = {a.name: a for a in ARM_LAUNCH_ARGUMENTS}
    # the robot's own rate and command interface unless the arguments say otherwise
    if str(args["rate"]).strip():
        rate = parse_rate(args["rate"])
    elif settings.get("control_rate") is not None:
        rate = parse_rate(settings["control_rate"])
    else:
        raise BringupError(f"argument 'rate': robot {robot!r} has no control_rate: give one, e.g. rate:=500")
    output_mode = parse_choice(by_name["output_mode"], args["output_mode"]) or str(settings.get("command_interface", ""))
    if output_mode not in OUTPUT_MODES:
        raise BringupError(f"argument 'output_mode': robot {robot!r} gives command_interface {output_mode!r}; "
                           f"give one of {', '.join(OUTPUT_MODES)}")
    realtime = {"realtime_priority": parse_priority(args["realtime_priority"])}
    backend = parse_choice(by_name["sim_backend"], args["sim_backend"])
    ros_arguments = ["--log-level", parse_choice(by_name["log_level"], args["log_level"])]
    mpc_task = str(args["mpc_task"] or "").strip()

    nodes: list[NodeSpec] = []
    if use_sim:
        nodes.append(NodeSpec(
            package=PACKAGE_NAME, executable=ARM_SIM_NODE, name=ARM_SIM_NODE,
            parameters={"robot": robot, "backend": backend, "command_mode": output_mode, "publish_rate": rate, **realtime},
            params_files=[config_path(f"{ARM_SIM_NODE}.yaml")], ros_arguments=list(ros_arguments),
            description=f"simulated {robot}: /joint_states, /forward_*_controller/commands, ~/reset",
        ))
    policy_parameters: dict[str, Any] = {
        "policy_path": str(policy), "robot": robot, "rate": rate, "output_mode": output_mode, "autostart": autostart,
        **realtime,
    }
    if target is not None:
        policy_parameters["initial_target"] = target
    if use_mpc:
        policy_parameters["use_mpc"] = True
    nodes.append(NodeSpec(
        package=PACKAGE_NAME, executable=POLICY_NODE, name=POLICY_NODE, parameters=policy_parameters,
        params_files=[config_path("policy_node.yaml")], ros_arguments=list(ros_arguments),
        description=(f"{'MPC plans (' + MPC_PLAN_TOPIC + '), else the ' if use_mpc else ''}ONNX policy -> forward "
                     f"{output_mode} controller at {rate:g} Hz; /target, /target_pose, ~/start, ~/stop, /diagnostics"),
    ))
    if use_mpc:
        mpc_parameters: dict[str, Any] = {"policy_path": str(policy)}
        ocp = "the policy's task"
        if mpc_task:
            mpc_parameters["task"] = mpc_task
            ocp = f"task {mpc_task}"
        if target is not None:
            mpc_parameters["initial_target"] = target
        nodes.append(NodeSpec(
            package=PACKAGE_NAME, executable=MPC_NODE, name=MPC_NODE, parameters=mpc_parameters,
            params_files=[p for p in (_maybe_config("mpc_node.yaml"),) if p is not None], ros_arguments=list(ros_arguments),
            description=f"MPC on {ocp} -> {MPC_PLAN_TOPIC} (followed by policy_node), {MPC_COMMAND_TOPIC}",
        ))
    return nodes


def _maybe_config(name: str) -> Path | None:
    try:
        return config_path(name)
    except FileNotFoundError:
        return None


GRAPHS: dict[str, tuple[tuple[LaunchArgument, ...], Any, str]] = {
    "ur5_policy": (LAUNCH_ARGUMENTS, _ur5_policy, "simulated (or real) UR5 driven by an ONNX policy, optional MPC"),
    "arm_policy": (ARM_LAUNCH_ARGUMENTS, _arm_policy,
                   "any robot of config/robots/ (robot:=NAME), simulated or real, driven by an ONNX policy, optional MPC"),
}
"""name -> (launch arguments, builder, one-line description)."""


def _graph(name: str):
    key = name[: -len(".launch.py")] if name.endswith(".launch.py") else name
    if key not in GRAPHS:
        raise BringupError(f"unknown graph '{name}' (available: {', '.join(GRAPHS)})")
    return key, GRAPHS[key]


def launch_arguments(name: str = "ur5_policy") -> tuple[LaunchArgument, ...]:
    """The launch arguments of graph ``name``."""
    return _graph(name)[1][0]


def resolve_arguments(name: str = "ur5_policy", **args: Any) -> dict[str, Any]:
    """Defaults updated with ``args``; BringupError on an unknown argument (with a suggestion)."""
    key, (declared, _, _) = _graph(name)
    known = {a.name: a for a in declared}
    unknown = [k for k in args if k not in known]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise BringupError(
            f"unknown argument '{unknown[0]}' for {key}"
            + (f" (did you mean '{hint[0]}'?)" if hint else "")
            + f"; known: {', '.join(known)}"
        )
    values: dict[str, Any] = {a.name: a.default for a in declared}
    values.update(args)
    return values


def graph_for(name: str = "ur5_policy", **args: Any) -> list[NodeSpec]:
    """The nodes of graph ``name`` for launch arguments ``args`` (strings as given to
    ``ros2 launch``/``tocpl-bringup``, or Python values); unset arguments take their
    defaults. Raises BringupError naming the argument and the problem."""
    key, (_, builder, _) = _graph(name)
    return builder(resolve_arguments(key, **args))
