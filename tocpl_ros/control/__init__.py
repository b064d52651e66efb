"""The ROS-free policy controller: its settings (config), the safety layer around the ONNX policy
(controller), the checks that a policy file fits the robot (policy_check), loop statistics (stats),
the /mpc/plan message (plan) and the following of MPC plans (plan_follower)."""
