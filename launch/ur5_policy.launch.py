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

from tocpl_ros.bringup.launch_file import launch_description


def generate_launch_description():
    return launch_description("ur5_policy")
