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

from tocpl_ros.bringup.launch_file import launch_description


def generate_launch_description():
    return launch_description("arm_policy")
