"""The policy network π_θ: an MLP whose input normalisation and output box are part of it.

π(obs) = u_mid + u_half · tanh(MLP((obs − obs_mean) / obs_scale)), two hidden layers of
256 ReLU units by default (the paper's architecture; ``activation`` may choose a smooth one).
Normalisation and scaling are buffers of the module, so a checkpoint or an ONNX export is a
complete controller: raw observation in, torque inside [u_min, u_max] out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tocpl_ros.tasks import Task


@dataclass
class PolicySpec:
    """Everything needed to rebuild a policy, stored in checkpoints (plain data only)."""

    obs_dim: int
    nu: int
    u_min: list[float]
    u_max: list[float]
    obs_mean: list[float]
    obs_scale: list[float]
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    """Hidden activation, a key of ACTIVATIONS (checkpoints written before this field: 'relu')."""


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
"""Hidden activations a policy may use; NumpyPolicy and the ONNX export follow each."""


class MLPPolicy(nn.Module):
    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        width = spec.obs_dim
        for h in spec.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[spec.activation]()]
            width = h
        layers.append(nn.Linear(width, spec.nu))
        self.net = nn.Sequential(*layers)
        f64 = torch.float64
        u_min, u_max = torch.tensor(spec.u_min, dtype=f64), torch.tensor(spec.u_max, dtype=f64)
        self.register_buffer("obs_mean", torch.tensor(spec.obs_mean, dtype=torch.float32))
        self.register_buffer("obs_scale", torch.tensor(spec.obs_scale, dtype=torch.float32))
        self.register_buffer("u_mid", ((u_max + u_min) / 2).float())
        self.register_buffer("u_half", ((u_max - u_min) / 2).float())

    def preactivation(self, obs: torch.Tensor) -> torch.Tensor:
        """The MLP's output before tanh (π = u_mid + u_half · tanh of it)."""
        return self.net((obs - self.obs_mean) / self.obs_scale)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.u_mid + self.u_half * torch.tanh(self.preactivation(obs))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Numpy in, numpy out, no gradient: the form rollouts use."""
        with torch.no_grad():
            return self(torch.as_tensor(obs, dtype=torch.float32)).double().numpy()

    def numpy_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W, b) of each linear layer in float64, for the OCP residual's fast forward/Jacobian."""
        return [
            (m.weight.detach().double().numpy().copy(), m.bias.detach().double().numpy().copy())
            for m in self.net
            if isinstance(m, nn.Linear)
        ]


def policy_spec_for(task: Task, n_samples: int = 4096, seed: int = 12345, hidden=(256, 256),
                    activation: str = "relu") -> PolicySpec:
    """Spec whose normalisation comes from the task distribution P.

    Means and scales are those of observations at the sampled initial states;
    entries that do not vary there (velocities starting at rest, a fixed
    target) get scale 1 rather than a division by ~0.
    """
    problems = task.sample(n_samples, seed)
    obs = task.observation(problems.x0, problems.target)
    mean, std = obs.mean(axis=0), obs.std(axis=0)
    scale = np.where(std > 1e-3, std, 1.0)
    mean = np.where(std > 1e-3, mean, 0.0)
    return PolicySpec(
        obs_dim=task.obs_dim,
        nu=task.nu,
        u_min=task.u_min.tolist(),
        u_max=task.u_max.tolist(),
        obs_mean=mean.tolist(),
        obs_scale=scale.tolist(),
        hidden=list(hidden),
        activation=activation,
    )


def make_policy(task: Task, seed: int, hidden=(256, 256), activation: str = "relu") -> MLPPolicy:
    """A freshly initialised policy for the task (weights from ``seed``)."""
    torch.manual_seed(seed)
    return MLPPolicy(policy_spec_for(task, hidden=hidden, activation=activation))


class NumpyPolicy:
    """A frozen float64 copy of an MLPPolicy with its input Jacobian.

    Used inside the OCP (PLAL's consensus residual) where one sample at a time is
    evaluated thousands of times: plain numpy avoids torch's per-call overhead.
    """

    def __init__(self, policy: MLPPolicy):
        self.layers = policy.numpy_weights()
        self.activation = policy.spec.activation
        self.obs_mean = policy.obs_mean.double().numpy()
        self.obs_scale = policy.obs_scale.double().numpy()
        self.u_mid = policy.u_mid.double().numpy()
        self.u_half = policy.u_half.double().numpy()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.value_and_jacobian(obs, jacobian=False)[0]

    def value_and_jacobian(self, obs: np.ndarray, jacobian: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """π(obs) [nu] and ∂π/∂obs [nu, obs_dim] for a single observation."""
        h = (obs - self.obs_mean) / self.obs_scale
        J = np.diag(1.0 / self.obs_scale) if jacobian else None
        for i, (W, b) in enumerate(self.layers):
            h = W @ h + b
            if jacobian:
                J = W @ J
            if i < len(self.layers) - 1:
                h, slope = _activation_and_slope(self.activation, h)
                if jacobian:
                    J = J * slope[:, None]
        t = np.tanh(h)
        u = self.u_mid + self.u_half * t
        if jacobian:
            J = (self.u_half * (1 - t * t))[:, None] * J
        return u, J


def _activation_and_slope(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hidden activation of ACTIVATIONS in numpy, and its derivative at z."""
    if name == "relu":
        active = z > 0
        return z * active, active.astype(z.dtype)
    if name == "silu":
        s = 1.0 / (1.0 + np.exp(-z))
        return z * s, s * (1.0 + z * (1.0 - s))
    if name == "tanh":
        t = np.tanh(z)
        return t, 1.0 - t * t
    raise ValueError(f"unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})")
