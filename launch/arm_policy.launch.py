"""Any robot of config/robots/ driven by a trained ONNX policy: simulated arm + policy node (+ MPC).

    ros2 launch tocpl_ros arm_policy.launch.py robot:=ur5 policy:=/path/policy.onnx target:=0.4,0.1,0.5
    ros2 launch tocpl_ros arm_policy.launch.py robot:=panda policy:=/path/panda.onnx use_mpc:=true
    ros2 launch tocpl_ros arm_policy.launch.py --show-args

``robot:=NAME`` (config/robots/NAME.yaml, or a robot YAML path) is the arm: the simulator
(``arm_sim``) simulates it, the policy node and the MPC node check that the policy was trained for
it (they refuse to start otherwise); ``rate`` and ``output_mode`` default to its ``control_rate``
and ``command_interface``. With ``use_mpc:=true`` the MPC solves the policy's own task
(``mpc_task`` to override) and the policy node follows its plans.

The node graph comes from ``tocpl_ros.bringup.graph.graph_for("arm_policy", ...)``, the same
description ``tocpl-bringup arm_policy`` starts where ``launch``/``launch_ros`` are not installed.
Every node gets the same ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE (LOCALHOST unless set in
the environment: export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET to reach a real robot on the network).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from tocpl_ros.bringup.graph import BringupError, graph_for, launch_arguments, node_environment

GRAPH = "arm_policy"


def _nodes(context, *args, **kwargs):
    """The graph for the launch arguments' values (evaluated when the launch runs)."""
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in launch_arguments(GRAPH)}
    try:
        specs = graph_for(GRAPH, **values)
    except BringupError as exc:
        raise RuntimeError(f"{GRAPH}.launch.py: {exc}") from None
    env = node_environment()
    actions = [
        LogInfo(
            msg=f"{GRAPH} ({values['robot']}): " + ", ".join(s.name for s in specs)
            + f"; DDS: ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
            f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}"
        )
    ]
    for spec in specs:
        actions.append(
            Node(
                package=spec.package,
                executable=spec.executable,
                name=spec.name,
                output="screen",
                # params files first, then the parameters set by the arguments (the last wins)
                parameters=[str(path) for path in spec.params_files] + [dict(spec.parameters)],
                remappings=list(spec.remappings),
                arguments=list(spec.arguments),
                ros_arguments=list(spec.ros_arguments),
                additional_env=dict(env),
            )
        )
    return actions


def generate_launch_description():
    declared = []
    for arg in launch_arguments(GRAPH):
        kwargs = {"default_value": arg.default, "description": arg.description}
        if arg.choices:
            kwargs["choices"] = list(arg.choices)
        declared.append(DeclareLaunchArgument(arg.name, **kwargs))
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
