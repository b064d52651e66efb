"""The launch description of a bring-up graph, what ``launch/<graph>.launch.py`` returns to
``ros2 launch``: the graph's arguments declared, and its nodes (:func:`tocpl_ros.bringup.graph.graph_for`
for the arguments' values) as launch_ros nodes. Imported only by the launch files, where
``launch`` and ``launch_ros`` exist (a ROS 2 installation; not installable here)."""

from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from tocpl_ros.bringup.graph import BringupError, graph_for, launch_arguments, node_environment


def launch_description(graph: str) -> LaunchDescription:
    """The launch description of ``graph`` (e.g. ``ur5_policy``, ``arm_policy``)."""
    declared = []
    for arg in launch_arguments(graph):
        kwargs = {"default_value": arg.default, "description": arg.description}
        if arg.choices:
            kwargs["choices"] = list(arg.choices)
        declared.append(DeclareLaunchArgument(arg.name, **kwargs))

    def nodes(context, *args, **kwargs):
        """The graph for the arguments' values (evaluated when the launch runs)."""
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in launch_arguments(graph)}
        try:
            specs = graph_for(graph, **values)
        except BringupError as exc:
            raise RuntimeError(f"{graph}.launch.py: {exc}") from None
        env = node_environment()
        robot = f" ({values['robot']})" if values.get("robot") else ""
        actions = [LogInfo(msg=f"{graph}{robot}: " + ", ".join(s.name for s in specs)
                           + f"; DDS: ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
                           f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}")]
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

    return LaunchDescription(declared + [OpaqueFunction(function=nodes)])
