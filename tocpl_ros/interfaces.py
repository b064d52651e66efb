"""The names of the ROS interface, defined once: nodes, topics, output modes, simulator backends.

ROS-free (plain strings), so that the cores that validate a mode or a backend (controller,
simulator), the bring-up that lists them as launch-argument choices and the nodes that
publish on the topics all read the same definitions.
"""

from __future__ import annotations

SIM_NODE = "ur5_sim"
"""The simulated UR5 (kept for the ur5_policy graph: arm_sim with robot ur5)."""
ARM_SIM_NODE = "arm_sim"
"""The simulated arm of any robot YAML (config/robots/<name>.yaml)."""
POLICY_NODE = "policy_node"
MPC_NODE = "mpc_node"

OUTPUT_MODES = ("effort", "velocity", "position")
"""Command interfaces, as the ros2_control forward controllers name them: the policy node's
output modes and the simulator's command modes."""
COMMAND_TOPICS = {mode: f"/forward_{mode}_controller/commands" for mode in OUTPUT_MODES}
"""The forward controller's command topic of each output mode (std_msgs/Float64MultiArray)."""

SIM_BACKENDS = ("pinocchio", "mujoco")
"""Physics backends of the simulated arm: Pinocchio (ABA) or MuJoCo, from the same URDF."""

JOINT_STATES_TOPIC = "/joint_states"
TARGET_TOPIC = "/target"
"""geometry_msgs/PointStamped: the end effector's target position, header.frame_id the robot's base frame."""
TARGET_POSE_TOPIC = "/target_pose"
"""geometry_msgs/PoseStamped: the same target as a pose (a second topic, as ROS tools publish one
message type per topic); a position-target policy uses its position only."""
TARGET_KINDS = ("position", "pose")
"""What a policy's target is (tocpl.target_kind): a position of the end effector, or its pose."""
DIAGNOSTICS_TOPIC = "/diagnostics"
MPC_COMMAND_TOPIC = "/mpc/command"
"""Where the MPC node publishes its own torque command (std_msgs/Float64MultiArray; monitoring)."""
MPC_FEEDBACK_TOPIC = "/mpc/feedback"
MPC_PLAN_TOPIC = "/mpc/plan"
"""Where the MPC node publishes its plans, which the policy node follows with use_mpc:=true."""
