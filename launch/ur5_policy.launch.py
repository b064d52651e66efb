"""UR5 driven by a trained ONNX policy: simulated UR5 + policy node (+ optional MPC node).

    ros2 launch tocpl_ros ur5_policy.launch.py policy:=/path/policy.onnx target:=0.4,0.1,0.5
    ros2 launch tocpl_ros ur5_policy.launch.py policy:=/path/policy.onnx use_mpc:=true
    ros2 launch tocpl_ros ur5_policy.launch.py --show-args

With ``use_mpc:=true`` the MPC node runs too and the policy node follows its plans (/mpc/plan)
at its own rate, the policy as the fallback (the policy node's ``use_mpc`` parameter).
The policy node and the simulated UR5 run under SCHED_FIFO ``realtime_priority:=50`` by default
(as ros2_control's controller_manager; a warning and normal priority where not permitted; 0: off).

The node graph (nodes, params files from config/, parameters) comes from
``tocpl_ros.bringup.graph.graph_for``, the same description ``tocpl-bringup ur5_policy`` starts
where ``launch``/``launch_ros`` are not installed: both paths start the same nodes with the
same parameters. Every node gets the same ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE
(LOCALHOST unless set in the environment: export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET to
reach a real robot on the network).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from tocpl_ros.bringup.graph import LAUNCH_ARGUMENTS, BringupError, graph_for, node_environment

GRAPH = "ur5_policy"


def _nodes(context, *args, **kwargs):
    """The graph for the launch arguments' values (evaluated when the launch runs)."""
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    try:
        specs = graph_for(GRAPH, **values)
    except BringupError as exc:
        raise RuntimeError(f"{GRAPH}.launch.py: {exc}") from None
    env = node_environment()
    actions = [
        LogInfo(
            msg=f"{GRAPH}: " + ", ".join(s.name for s in specs)
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
    for arg in LAUNCH_ARGUMENTS:
        kwargs = {"default_value": arg.default, "description": arg.description}
        if arg.choices:
            kwargs["choices"] = list(arg.choices)
        declared.append(DeclareLaunchArgument(arg.name, **kwargs))
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
