"""ROS-free receding-horizon MPC: its configuration and result (config), the policy adapted to a
task (task_policy), the solve deadline (deadline), the solver (solver), its process (worker), a
simulated closed loop (closed_loop) and the MPC node's per-tick logic (loop)."""
