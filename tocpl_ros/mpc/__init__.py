"""ROS-free receding-horizon MPC: solver, solver process, the policy adapted to a task, closed loop."""
