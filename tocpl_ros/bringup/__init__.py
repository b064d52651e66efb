"""Bring-up: the node graph described once (graph), its nodes as processes (processes) and
`tocpl-bringup` (cli); `launch/ur5_policy.launch.py` turns the same graph into launch_ros nodes."""
