"""The reinforcement-learning baselines of the comparisons: PPO and SAC (stable-baselines3) on a task (rl)."""
