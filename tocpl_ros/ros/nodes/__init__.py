"""The rclpy nodes over the ROS-free core: ur5_sim, policy_node, mpc_node (a module-level Node class and a main each)."""
