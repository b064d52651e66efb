"""ROS-free simulated arm: Pinocchio ABA or MuJoCo, from the same robot description."""
