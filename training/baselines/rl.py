"""Model-free baselines of the paper's comparison (Fig. 3–5): PPO and SAC from stable-baselines3.

Each task becomes a :class:`tocpl_training.baselines.env.TaskEnv` (``gymnasium.Env``): the same
optimal-control problem the trajectory-optimisation learners see, one dynamics evaluation per step.

:func:`train_rl` trains PPO or SAC and, at log-spaced numbers of environment steps, evaluates
the deterministic policy on the trainer's held-out problems with the trainer's own
:func:`tocpl_training.trainer.evaluate_policy`, writing the same ``metrics.csv`` columns
(``iteration`` is the evaluation index) through the trainer's :class:`RunLog`.

Every evaluation, and every ``checkpoint_every`` steps, writes ``rl_checkpoint.pt`` (the trainer's
checkpoint format: plain tensors and data): the SB3 model with its optimisers and step count, the
reward normaliser, SAC's replay buffer (its filled part), the dynamics counter and the metrics
rows. ``train_rl(resume=True)``
continues from it, so an interrupted run loses at most the steps since its last checkpoint. Unlike
the trainer's resume it is not bit for bit the straight run: episodes in flight (and PPO's partial
rollout) are dropped and the random streams restart from (seed, steps done).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tocpl_ros.config import ConfigError, FieldError, dump_yaml, load_dataclass, read_yaml, to_dict
from tocpl_ros.resources import config_path
from tocpl_ros.tasks import DynamicsCounter, Task, load_task
from tocpl_training.baselines.env import TaskEnv

RL_ALGORITHMS = ("ppo", "sac")
RL_CHECKPOINT = "rl_checkpoint.pt"
"""File in an RL run folder that train_rl(resume=True) continues from."""
REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


@dataclass
class RLConfig:
    """Hyperparameters of a PPO / SAC baseline run (``config/bench/<algo>.yaml``: ``defaults`` and
    per-task sections ``tasks.<task>`` that override them)."""

    algo: str = "ppo"
    """'ppo' or 'sac' (stable-baselines3)."""
    total_steps: int = 1_000_000
    """Budget in environment steps = dynamics evaluations."""
    evaluations: int = 30
    """Held-out evaluations, at log-spaced step counts from first_evaluation to total_steps."""
    first_evaluation: int = 10_000
    """Environment steps at the first held-out evaluation."""
    learning_rate: float = 3e-4
    """Adam learning rate (actor and critic)."""
    learning_rate_final: float | None = None
    """Learning rate at the end of training, reached linearly (None: constant)."""
    gamma: float = 0.99
    """Discount factor. The OCP is undiscounted over a fixed horizon; gamma < 1 only stabilises the critic."""
    net_arch: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of actor and critic (the trainer's policy: [256, 256])."""
    activation: str = "tanh"
    """'tanh' or 'relu' hidden activation."""
    n_envs: int = 1
    """Environments stepped in lockstep (DummyVecEnv, in-process)."""
    normalize_obs: bool = True
    """Standardise observations with the trainer policy's fixed statistics of P (policy_spec_for)."""
    norm_reward: bool = True
    """Scale rewards by a running estimate of the return's std (SB3 VecNormalize; evaluation uses raw costs)."""
    torch_threads: int = 1
    """torch intra-op threads (small MLPs are fastest on one thread)."""
    checkpoint_every: int = 200_000
    """Environment steps between checkpoints besides those at the held-out evaluations (log-spaced, so
    far apart late in a long run): an interrupted run loses at most this many steps."""
    divergence_limit: float = 1e3
    """A state beyond this (or non-finite) ends the episode; it pays the cost of the rest of the horizon
    frozen at the last finite state, as Task.rollout scores a diverged rollout."""
    # -- PPO --
    n_steps: int = 2048
    """PPO: steps per environment per rollout."""
    batch_size: int = 256
    """PPO / SAC: mini-batch size."""
    n_epochs: int = 10
    """PPO: passes over each rollout."""
    gae_lambda: float = 0.95
    """PPO: GAE λ."""
    clip_range: float = 0.2
    """PPO: clipping of the probability ratio."""
    ent_coef: float = 0.0
    """PPO: entropy bonus."""
    log_std_init: float = -0.5
    """PPO: initial log std of the Gaussian policy (in normalised action units)."""
    max_grad_norm: float = 0.5
    """PPO: gradient clipping."""
    # -- SAC --
    buffer_size: int = 1_000_000
    """SAC: replay buffer size."""
    learning_starts: int = 5_000
    """SAC: uniformly random steps before learning starts."""
    tau: float = 0.005
    """SAC: target-network Polyak coefficient."""
    train_freq: int = 1
    """SAC: environment steps between updates."""
    gradient_steps: int = 1
    """SAC: gradient steps per update."""

    def __post_init__(self) -> None:
        if self.algo not in RL_ALGORITHMS:
            raise FieldError("algo", f"unknown RL algorithm '{self.algo}' (known: {', '.join(RL_ALGORITHMS)})")
        if self.activation not in ("tanh", "relu"):
            raise FieldError("activation", f"'tanh' or 'relu', got '{self.activation}'")
        for name in ("total_steps", "evaluations", "first_evaluation", "n_envs", "n_steps", "batch_size", "n_epochs",
                     "buffer_size", "train_freq", "gradient_steps", "torch_threads", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1:
            raise FieldError("gamma", f"must be in (0, 1], got {self.gamma}")
        if self.learning_rate <= 0 or (self.learning_rate_final is not None and self.learning_rate_final <= 0):
            raise FieldError("learning_rate", "learning rates must be > 0")
        if not self.net_arch or any(h < 1 for h in self.net_arch):
            raise FieldError("net_arch", f"needs at least one positive width, got {self.net_arch}")

    def evaluation_steps(self) -> list[int]:
        """Environment-step counts at which the policy is evaluated (increasing, last = total_steps)."""
        first = min(self.first_evaluation, self.total_steps)
        grid = np.geomspace(first, self.total_steps, self.evaluations) if self.evaluations > 1 else [self.total_steps]
        return sorted({int(round(s)) for s in grid})


def load_rl_config(algo: str, task: str, overrides: dict[str, Any] | None = None, file: str | Path | None = None) -> RLConfig:
    """``defaults`` of config/bench/<algo>.yaml (or ``file``), then its ``tasks.<task>`` section, then ``overrides``."""
    path = Path(file) if file is not None else config_path("bench", f"{algo}.yaml")
    data = read_yaml(path)
    unknown = sorted(set(data) - {"defaults", "tasks"})
    if unknown:
        raise ConfigError(str(path), unknown[0], "unknown key (known keys: defaults, tasks)")
    merged = {"algo": algo, **(data.get("defaults") or {}), **((data.get("tasks") or {}).get(Path(task).stem) or {})}
    merged.update(overrides or {})
    return load_dataclass(RLConfig, merged, source=str(path))


class SB3Actor:
    """A trained SB3 model as a trainer-style policy: ``act(obs [B, obs_dim]) -> u [B, nu]`` (deterministic)."""

    def __init__(self, model, env: TaskEnv):
        self.model = model
        self.obs_mean, self.obs_scale = env.obs_mean, env.obs_scale
        self.u_mid, self.u_half = env.u_mid, env.u_half
        self.u_min, self.u_max = env.task.u_min, env.task.u_max

    def act(self, obs: np.ndarray) -> np.ndarray:
        z = ((np.asarray(obs, dtype=float) - self.obs_mean) / self.obs_scale).astype(np.float32)
        a, _ = self.model.predict(z, deterministic=True)
        return np.clip(self.u_mid + self.u_half * np.clip(np.asarray(a, dtype=float), -1, 1), self.u_min, self.u_max)


def _make_model(config: RLConfig, venv, seed: int):
    import torch
    from stable_baselines3 import PPO, SAC

    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[config.activation]
    lr: float | Callable[[float], float] = config.learning_rate
    if config.learning_rate_final is not None:
        lr0, lr1 = config.learning_rate, config.learning_rate_final
        lr = lambda progress_remaining: lr1 + (lr0 - lr1) * progress_remaining  # noqa: E731
    common = dict(learning_rate=lr, gamma=config.gamma, seed=seed, device="cpu", verbose=0)
    if config.algo == "ppo":
        return PPO(
            "MlpPolicy", venv, n_steps=config.n_steps, batch_size=config.batch_size, n_epochs=config.n_epochs,
            gae_lambda=config.gae_lambda, clip_range=config.clip_range, ent_coef=config.ent_coef,
            max_grad_norm=config.max_grad_norm,
            policy_kwargs=dict(net_arch=dict(pi=list(config.net_arch), vf=list(config.net_arch)),
                               activation_fn=activation, log_std_init=config.log_std_init),
            **common,
        )
    return SAC(
        "MlpPolicy", venv, buffer_size=config.buffer_size, learning_starts=config.learning_starts,
        batch_size=config.batch_size, tau=config.tau, train_freq=config.train_freq,
        gradient_steps=config.gradient_steps, ent_coef="auto",
        policy_kwargs=dict(net_arch=list(config.net_arch), activation_fn=activation),
        **common,
    )


def rl_settings(config: RLConfig, task: Task, seed: int, task_overrides: dict[str, Any]) -> dict[str, Any]:
    """What a run folder's config.yaml records, and what a resumed run must match."""
    return {"rl": to_dict(config), "task_name": task.name, "seed": seed, "task_overrides": task_overrides,
            "task": to_dict(task.config)}


def _save_rl_checkpoint(path: Path, model, venv, counter: DynamicsCounter, rows: list[dict], state: dict) -> None:
    from tocpl_training.checkpoint import save_checkpoint

    zipped = io.BytesIO()
    model.save(zipped)
    payload: dict[str, Any] = {
        "model_zip": np.frombuffer(zipped.getvalue(), dtype=np.uint8).copy(),
        "counter": {"steps": counter.steps, "by_source": dict(counter.by_source)},
        "rows": rows, "wall_time": state["wall"], "episodes": state["episodes"],
    }
    if hasattr(venv, "ret_rms"):  # the reward scale PPO/SAC learned with
        payload["ret_rms"] = {"mean": np.asarray(venv.ret_rms.mean), "var": np.asarray(venv.ret_rms.var),
                              "count": float(venv.ret_rms.count)}
    buffer = getattr(model, "replay_buffer", None)
    if buffer is not None:  # SAC: only the filled rows, not the whole allocation
        filled = buffer.buffer_size if buffer.full else buffer.pos
        payload["replay"] = {"pos": buffer.pos, "full": buffer.full,
                             **{name: getattr(buffer, name)[:filled] for name in REPLAY_ARRAYS}}
    save_checkpoint(path, payload)


def _resume_rl(path: Path, config: RLConfig, venv, counter: DynamicsCounter, seed: int):
    """The model of ``path`` on ``venv`` with the counter and normaliser restored; returns (model, checkpoint)."""
    from stable_baselines3 import PPO, SAC

    from tocpl_training.checkpoint import CheckpointError, load_checkpoint

    data = load_checkpoint(path)
    try:
        algorithm = {"ppo": PPO, "sac": SAC}[config.algo]
        model = algorithm.load(io.BytesIO(data["model_zip"].numpy().tobytes()), env=venv, device="cpu")
        counter.steps = int(data["counter"]["steps"])
        counter.by_source = {k: int(v) for k, v in data["counter"]["by_source"].items()}
        if "ret_rms" in data:
            venv.ret_rms.mean = float(data["ret_rms"]["mean"])
            venv.ret_rms.var = float(data["ret_rms"]["var"])
            venv.ret_rms.count = float(data["ret_rms"]["count"])
        if "replay" in data:
            replay, buffer = data["replay"], model.replay_buffer
            for name in REPLAY_ARRAYS:
                rows = replay[name].numpy()
                getattr(buffer, name)[: len(rows)] = rows
            buffer.pos, buffer.full = int(replay["pos"]), bool(replay["full"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: incomplete or inconsistent RL checkpoint ({type(exc).__name__}: {exc})") from exc
    model.set_random_seed(seed + counter.steps)  # a resume from this checkpoint always continues the same way
    return model, data


def train_rl(
    config: RLConfig,
    task_name: str,
    seed: int,
    out_dir: str | Path,
    held_out=None,
    eval_problems: int = 100,
    eval_seed: int = 1_000_003,
    task_overrides: dict[str, Any] | None = None,
    on_evaluation: Callable[[dict[str, float]], None] | None = None,
    resume: bool = False,
) -> list[dict[str, float]]:
    """Train ``config.algo`` on the task; returns (and writes to ``out_dir``) the metrics rows.

    ``held_out`` (a :class:`tocpl_training.trainer.HeldOut`) should be the one the trainer runs
    use; without it the trainer's own is rebuilt from (eval_problems, eval_seed). ``resume``
    continues the run in ``out_dir`` from its ``rl_checkpoint.pt``; its settings must be these.
    """
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from tocpl_training.learning.policy import policy_spec_for
    from tocpl_training.run_log import RunLog
    from tocpl_training.trainer import HeldOut, evaluate_policy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.torch_threads)
    task = load_task(task_name, task_overrides or None)
    if held_out is None:
        held_out = HeldOut.make(task, eval_problems, eval_seed)
    settings = rl_settings(config, task, seed, task_overrides or {})
    checkpoint = out_dir / RL_CHECKPOINT
    if resume:
        from tocpl_training.checkpoint import differing_settings

        differing = differing_settings(read_yaml(out_dir / "config.yaml"), settings)
        if differing:
            raise ConfigError(str(out_dir / "config.yaml"), differing[0],
                              "the run to resume has other settings: resume it with its own, or start afresh")
    else:
        checkpoint.unlink(missing_ok=True)
        dump_yaml(settings, out_dir / "config.yaml")
    spec = policy_spec_for(task, hidden=config.net_arch)
    mean, scale = (np.array(spec.obs_mean), np.array(spec.obs_scale)) if config.normalize_obs else (None, None)
    counter = DynamicsCounter()

    def make_env(index: int):
        return lambda: TaskEnv(task, counter, seed=None, obs_mean=mean, obs_scale=scale,
                               divergence_limit=config.divergence_limit)

    venv = DummyVecEnv([make_env(i) for i in range(config.n_envs)])
    if config.norm_reward:
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=config.gamma)
    saved: dict[str, Any] = {}
    if resume:
        model, saved = _resume_rl(checkpoint, config, venv, counter, seed)
    else:
        model = _make_model(config, venv, seed)  # seeds torch, the action noise and env i with seed + i
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger leaves an empty /tmp/SB3-* per run
    actor = SB3Actor(model, venv.envs[0] if not config.norm_reward else venv.venv.envs[0])
    log = RunLog(out_dir, f"{config.algo.upper()} on {task.name}", task.error_unit)
    rows: list[dict[str, float]] = [dict(row) for row in saved.get("rows", [])]
    schedule = [s for s in config.evaluation_steps() if s > counter.steps]  # those a resumed run has not passed
    state = {"wall": float(saved.get("wall_time", 0.0)), "start": 0.0, "episodes": int(saved.get("episodes", 0)),
             "costs": [], "checkpointed": counter.steps}
    log.restart(rows)  # a resumed run: logs equal to the checkpoint again

    def evaluate() -> None:
        row = {"iteration": float(len(rows) + 1), **evaluate_policy(task, actor, held_out),
               "dynamics_evaluations": float(counter.steps), "timesteps": float(model.num_timesteps),
               "episodes": float(state["episodes"]),
               "train_episode_cost": float(np.mean(state["costs"])) if state["costs"] else float("nan")}
        state["costs"] = []
        row["wall_time"] = state["wall"] + time.perf_counter() - state["start"]
        rows.append(row)
        save_checkpoint()
        log.write(rows)  # after the checkpoint: it is what a resume trusts
        if on_evaluation is not None:
            on_evaluation(row)

    def save_checkpoint() -> None:
        wall = state["wall"] + time.perf_counter() - state["start"]
        _save_rl_checkpoint(checkpoint, model, venv, counter, rows, {**state, "wall": wall})
        state["checkpointed"] = counter.steps

    class _Evaluations(BaseCallback):
        def _on_training_start(self) -> None:
            state["start"] = time.perf_counter()

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode_cost" in info:
                    state["episodes"] += 1
                    state["costs"].append(info["episode_cost"])
            if schedule and counter.steps >= schedule[0]:
                while schedule and counter.steps >= schedule[0]:
                    schedule.pop(0)
                evaluate()
            elif counter.steps >= state["checkpointed"] + config.checkpoint_every:
                save_checkpoint()
            return True

    try:
        # resumed: the steps left, on the step count (and learning-rate schedule) of the checkpoint
        model.learn(total_timesteps=max(config.total_steps - model.num_timesteps, 0) if resume else config.total_steps,
                    callback=_Evaluations(), reset_num_timesteps=not resume)
        if not rows or rows[-1]["dynamics_evaluations"] < counter.steps:
            evaluate()
        model.save(str(out_dir / "model.zip"))
    finally:
        log.close()
        venv.close()
    return rows
