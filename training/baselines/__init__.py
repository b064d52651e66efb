"""The reinforcement-learning baselines of the comparisons: a task as a gymnasium environment (env),
PPO and SAC (stable-baselines3) trained and evaluated like the trainer (rl)."""
