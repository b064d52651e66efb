"""The ROS 2 side: the DDS environment (environment, rclpy-free), the nodes' shared runtime (runtime)
and /diagnostics message (diagnostics), the probe that drives a running graph (probe), the nodes (nodes/)."""
