"""Bring-up: the node graph described once (graph), started by ros2 launch or tocpl-bringup (cli)."""
