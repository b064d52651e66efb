"""tocpl_ros: neural-network control policies learned from Crocoddyl trajectory
optimization, run through ROS 2."""

__version__ = "0.2.0"
