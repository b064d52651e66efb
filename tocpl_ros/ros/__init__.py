"""The ROS 2 side: DDS environment, the nodes' shared runtime, the nodes."""
