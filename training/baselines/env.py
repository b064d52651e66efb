"""A task as a gymnasium environment for the model-free baselines (stable-baselines3).

Each task becomes a :class:`TaskEnv` (``gymnasium.Env``) that is the same optimal-control
problem the trajectory-optimisation learners see:

* ``reset`` draws β = (x0, target) from the task's distribution P (``Task.sample``, seeded);
* ``step`` applies the task's own discrete dynamics (``Task.step``: Crocoddyl's semi-implicit
  integrator, same dt) to the control clipped to the task's box, exactly like ``Task.rollout``;
* reward = −(running cost of the step) from the task's own Crocoddyl action models, and at the
  last step (t = T) also −(terminal cost): the return of an episode is −R(β; u), the cost the
  trainer evaluates (``Task.evaluate``);
* observation = the policy's observation (``Task.observation``: the state, plus the target on
  ur5_reach), optionally standardised with the statistics the trainer's policy uses
  (:func:`tocpl_training.learning.policy.policy_spec_for`);
* actions live in [−1, 1]^nu and map affinely onto [u_min, u_max] (SB3's recommended
  normalised action space; the same box as the OCP);
* every ``step`` is one dynamics evaluation (``DynamicsCounter`` source ``env_step``), the unit of
  the trainer's x-axis (its policy rollouts count B·T, its solver T per linearisation and T per
  line-search trial). Held-out evaluation rollouts are not counted, as in the trainer.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from tocpl_ros.tasks import DynamicsCounter, Problems, Task


class TaskEnv(gym.Env):
    """One problem family of a :class:`Task` as a gymnasium environment (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: Task,
        counter: DynamicsCounter | None = None,
        seed: int | None = None,
        obs_mean: np.ndarray | None = None,
        obs_scale: np.ndarray | None = None,
        divergence_limit: float = 1e3,
    ):
        super().__init__()
        self.task = task
        self.horizon = task.horizon
        self.counter = counter if counter is not None else DynamicsCounter()
        self.obs_mean = np.zeros(task.obs_dim) if obs_mean is None else np.asarray(obs_mean, dtype=float)
        self.obs_scale = np.ones(task.obs_dim) if obs_scale is None else np.asarray(obs_scale, dtype=float)
        self.u_mid = (task.u_max + task.u_min) / 2
        self.u_half = (task.u_max - task.u_min) / 2
        self.divergence_limit = divergence_limit
        self.action_space = gym.spaces.Box(-1.0, 1.0, (task.nu,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (task.obs_dim,), dtype=np.float32)
        self.shooting = task.build_problem()  # its action models give the per-step cost
        self._first_seed = seed
        self.problem: Problems | None = None
        self.x = np.zeros(task.nx)
        self.t = 0
        self.episode_cost = 0.0

    # -- mapping ------------------------------------------------------------
    def control(self, action: np.ndarray) -> np.ndarray:
        """Torque of a normalised action: u_mid + u_half · clip(a, −1, 1), inside the task's box."""
        a = np.clip(np.nan_to_num(np.asarray(action, dtype=float), nan=0.0), -1.0, 1.0)
        return np.clip(self.u_mid + self.u_half * a, self.task.u_min, self.task.u_max)

    def action_of(self, u: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`control` inside the box."""
        return (np.asarray(u, dtype=float) - self.u_mid) / self.u_half

    def _obs(self) -> np.ndarray:
        obs = self.task.observation(self.x[None], self.problem.target)[0]
        return ((obs - self.obs_mean) / self.obs_scale).astype(np.float32)

    # -- gymnasium API ---------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._first_seed is not None:
            seed, self._first_seed = self._first_seed, None
        super().reset(seed=seed)
        problem = (options or {}).get("problem")
        self.problem = problem[:1] if problem is not None else self.task.sample(1, self.np_random)
        self.task.set_problem(self.shooting, self.problem)
        self.x = np.array(self.problem.x0[0], dtype=float)
        self.t = 0
        self.episode_cost = 0.0
        return self._obs(), {}

    def step(self, action):
        if self.problem is None or self.t >= self.horizon:
            raise RuntimeError("TaskEnv.step called before reset() or after the episode ended")
        u = self.control(action)
        model, data = self.shooting.runningModels[self.t], self.shooting.runningDatas[self.t]
        model.calc(data, self.x, u)
        cost = float(data.cost)
        x_next = self.task.step(self.x[None], u[None])[0]
        self.counter.add(1, "env_step")
        self.t += 1
        info: dict[str, Any] = {"u": u}
        if not (np.isfinite(x_next).all() and (np.abs(x_next) < self.divergence_limit).all()):
            # The episode ends and pays the rest of the horizon frozen at the last finite state with zero
            # torque (Task.rollout's trajectory). A fixed penalty (1e3) was cheaper than a poor but bounded
            # UR5 episode (terminal cost ~1e4), and PPO learned to spin the arm away on purpose.
            zeros = np.zeros(self.task.nu)
            for k in range(self.t, self.horizon):
                self.shooting.runningModels[k].calc(self.shooting.runningDatas[k], self.x, zeros)
                cost += float(self.shooting.runningDatas[k].cost)
            cost += self._terminal_cost()
            info["diverged"] = True
            self.episode_cost = np.inf  # scored as Task.evaluate scores a diverged rollout
            info["episode_cost"] = self.episode_cost
            return self._obs(), -cost, True, False, info
        self.x = x_next
        terminated = self.t == self.horizon
        if terminated:
            cost += self._terminal_cost()
        self.episode_cost += cost
        if terminated:
            info["episode_cost"] = self.episode_cost
        return self._obs(), -cost, terminated, False, info

    def _terminal_cost(self) -> float:
        self.shooting.terminalModel.calc(self.shooting.terminalData, self.x)
        return float(self.shooting.terminalData.cost)

