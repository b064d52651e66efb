"""The names of the ROS interface, defined once: nodes, topics, output modes, simulator backends.

ROS-free (plain strings), so that the cores that validate a mode or a backend (controller,
simulator), the bring-up that lists them as launch-argument choices and the nodes that
publish on the topics all read the same definitions.
"""

from __future__ import annotations

SIM_NODE = "ur5_sim"
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
DIAGNOSTICS_TOPIC = "/diagnostics"
MPC_COMMAND_TOPIC = "/mpc/command"
"""Where the MPC node publishes its own torque command (std_msgs/Float64MultiArray; monitoring)."""
MPC_FEEDBACK_TOPIC = "/mpc/feedback"
MPC_PLAN_TOPIC = "/mpc/plan"
"""Where the MPC node publishes its plans, which the policy node follows with use_mpc:=true."""
