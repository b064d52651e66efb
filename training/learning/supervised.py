"""The supervised phase: regress π_θ on OC controls, optionally with (stochastic) Sobolev terms.

Errors are measured in units of each joint's half torque range (u_half), so a
wrist and a shoulder count alike. The Sobolev target is the local controller's
Jacobian ∂u/∂x, which in Crocoddyl's convention (u = ū − K (x − x̄)) is −K.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from tocpl_training.learning.policy import MLPPolicy


@dataclass
class SupervisedData:
    """Regression pairs gathered from OC phases."""

    obs: np.ndarray
    """Policy inputs at the supervised states, [M, obs_dim]."""
    u: np.ndarray
    """Control targets, [M, nu] (plal: u + λ/μ)."""
    jacobian: np.ndarray | None = None
    """Targets for ∂π/∂x, [M, nu, nx] (−K), or None without Sobolev."""

    def __len__(self) -> int:
        return len(self.obs)

    @staticmethod
    def concat(parts: list[SupervisedData]) -> SupervisedData:
        jac = None if any(p.jacobian is None for p in parts) else np.concatenate([p.jacobian for p in parts])
        return SupervisedData(np.concatenate([p.obs for p in parts]), np.concatenate([p.u for p in parts]), jac)


TARGET_MARGIN = 1e-3
"""Regression targets are clamped to u_mid ± (1 − TARGET_MARGIN)·u_half: aim inside the box."""
PREACTIVATION_LIMIT = float(np.arctanh(1.0 - TARGET_MARGIN))
"""|tanh pre-activation| beyond this (3.8) is penalised (see regression_loss)."""


def regression_loss(policy: MLPPolicy, obs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ½‖(u − π(obs)) / u_half‖²  (eq. 7), plus ½‖excess‖² of the tanh
    pre-activations beyond ±PREACTIVATION_LIMIT.

    Why the second term: box-constrained OC controls sit on the bounds, and a saturated tanh has
    no gradient to come back with, so the weights could only grow (seen: NaN weights after 25
    good pendulum iterations). It is zero wherever the policy aims inside the box.
    """
    return regression_loss_from(policy, policy.preactivation(obs), u)


def regression_loss_from(policy: MLPPolicy, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``regression_loss`` from the pre-activations z = policy.preactivation(obs)."""
    error = (u - (policy.u_mid + policy.u_half * torch.tanh(z))) / policy.u_half
    excess = torch.relu(z.abs() - PREACTIVATION_LIMIT)
    return 0.5 * (error**2).sum(dim=1).mean() + 0.5 * (excess**2).sum(dim=1).mean()


def sobolev_loss_stochastic(
    policy: MLPPolicy,
    obs: torch.Tensor,
    jacobian: torch.Tensor,
    nx: int,
    generator: torch.Generator,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Sobolev term: ½‖vᵀJ − ∂x(vᵀπ(x))‖² with v uniform on the unit sphere.

    One extra backward pass instead of nu. Multiplied by nu so that its
    expectation over v equals the full-Jacobian term of eq. (8) (E[v vᵀ] = I/nu).
    ``sample_weight`` [B] scales each sample's term (see ``gain_weights``). Returns the term and
    the pre-activations of its forward pass, which the regression shares (a forward pass less per step).
    """
    obs = obs.detach().requires_grad_(True)
    nu = jacobian.shape[1]
    v = torch.randn(len(obs), nu, generator=generator, dtype=obs.dtype).to(obs.device)
    v = v / v.norm(dim=1, keepdim=True)
    w = v / policy.u_half  # the same per-joint scaling as the regression
    z = policy.preactivation(obs)
    projected = (w * (policy.u_mid + policy.u_half * torch.tanh(z))).sum()
    grad = torch.autograd.grad(projected, obs, create_graph=True)[0][:, :nx]
    target = torch.einsum("bi,bij->bj", w, jacobian)
    per_sample = ((target - grad) ** 2).sum(dim=1)
    return 0.5 * nu * (per_sample if sample_weight is None else sample_weight * per_sample).mean(), z


def sobolev_loss_full(
    policy: MLPPolicy, obs: torch.Tensor, jacobian: torch.Tensor, nx: int, sample_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Full Sobolev term of eq. (8): ½‖J − ∂π/∂x‖²_F, nu backward passes (dpl, and the tests' reference)."""
    obs = obs.detach().requires_grad_(True)
    out = policy(obs) / policy.u_half
    rows = [torch.autograd.grad(out[:, i].sum(), obs, create_graph=True)[0][:, :nx] for i in range(out.shape[1])]
    grad = torch.stack(rows, dim=1)
    target = jacobian / policy.u_half[None, :, None]
    per_sample = ((target - grad) ** 2).sum(dim=(1, 2))
    return 0.5 * (per_sample if sample_weight is None else sample_weight * per_sample).mean()


def gain_weights(jacobian: np.ndarray, u_half: np.ndarray) -> np.ndarray:
    """Per-sample Sobolev weights min(1, c / ‖J_i‖)², c the median gain norm.

    A finite-horizon DDP controller stiffens towards the end of the horizon
    (terminal weights): its gains there are 10–50× the median and no
    stationary policy can match them. Weighting those samples down measures
    their error relative to their size, so they inform without swamping.
    """
    norms = np.linalg.norm(jacobian / u_half[None, :, None], axis=(1, 2))
    c = np.median(norms)
    return np.minimum(1.0, c / np.maximum(norms, 1e-12)) ** 2


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch intra-op threads, restoring the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(
    policy: MLPPolicy,
    optimizer: torch.optim.Optimizer,
    data: SupervisedData,
    *,
    epochs: int,
    batch_size: int,
    nx: int,
    sobolev_weight: float,
    generator: torch.Generator,
    full_jacobian: bool = False,
    steps: int = 0,
    device: str = "cpu",
    weight_average: float = 0.0,
) -> dict[str, float]:
    """Adam mini-batches over ``data``: ``epochs`` passes in shuffled order, or (``steps`` > 0) that many
    mini-batches drawn uniformly with replacement. Returns the mean losses of the last pass (of all
    the steps). ``weight_average`` > 0: the policy ends on an exponential moving average of its weights
    over the steps (that decay per step), started from its weights before the fit. On another
    ``device`` (e.g. 'cuda') the policy and Adam's moments go there for the fit and come back to
    the CPU after it, where the rollouts run."""
    if device == "cpu":
        return _fit(policy, optimizer, data, epochs, batch_size, nx, sobolev_weight, generator, full_jacobian, steps,
                    weight_average)
    policy.to(device)
    move_optimizer_state(optimizer, device)
    try:
        return _fit(policy, optimizer, data, epochs, batch_size, nx, sobolev_weight, generator, full_jacobian, steps,
                    weight_average)
    finally:
        policy.to("cpu")
        move_optimizer_state(optimizer, "cpu")


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: str) -> None:
    """Adam's moments live where the parameters are."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":  # Adam keeps its step count on the CPU
                state[key] = value.to(device)


def _fit(policy, optimizer, data, epochs, batch_size, nx, sobolev_weight, generator, full_jacobian, steps,
         weight_average) -> dict[str, float]:
    """fit() on the device the policy is on."""
    device = policy.u_half.device
    on_device = lambda array: torch.as_tensor(array, dtype=torch.float32).to(device)  # noqa: E731
    obs = on_device(data.obs)
    # Targets on the box (common: the OC phase keeps the constraints) would ask tanh for ±1,
    # i.e. unbounded pre-activations; the weights then grow until float32 overflows (seen:
    # NaN weights after 25 good pendulum iterations). Aim just inside the box instead.
    margin = (1.0 - TARGET_MARGIN) * policy.u_half
    u = torch.clamp(on_device(data.u), policy.u_mid - margin, policy.u_mid + margin)
    jac = None if data.jacobian is None or sobolev_weight == 0 else on_device(data.jacobian)
    if jac is not None:
        jac_weight = on_device(gain_weights(data.jacobian, policy.u_half.double().cpu().numpy()))
    n = len(obs)

    def passes():
        """Index batches, grouped by what one reported mean covers (an epoch, or all the steps)."""
        if steps:
            yield [torch.randint(n, (min(batch_size, n),), generator=generator) for _ in range(steps)]
            return
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            yield [order[start:start + batch_size] for start in range(0, n, batch_size)]

    def losses(idx):
        if jac is None:
            return regression_loss(policy, obs[idx], u[idx]), None
        if full_jacobian:
            return regression_loss(policy, obs[idx], u[idx]), sobolev_loss_full(policy, obs[idx], jac[idx], nx, jac_weight[idx])
        sobolev, z = sobolev_loss_stochastic(policy, obs[idx], jac[idx], nx, generator, jac_weight[idx])
        return regression_loss_from(policy, z, u[idx]), sobolev

    policy.train()
    skipped = 0
    weights = [p.detach() for p in policy.parameters()]  # views: they follow the optimizer's steps
    averaged = [w.clone() for w in weights] if weight_average > 0 else None
    # One intra-op thread: the MLP is small, and with one thread per core OpenMP's spin-waits
    # collapse as soon as another process shares a core (docs/training_speed.md).
    with torch_threads(1):
        for batches in passes():
            totals = {"regression_loss": 0.0, "sobolev_loss": 0.0}
            count = 0
            for idx in batches:
                loss, sob = losses(idx)
                totals["regression_loss"] += loss.item() * len(idx)
                if sob is not None:
                    totals["sobolev_loss"] += sob.item() * len(idx)
                    loss = loss + sobolev_weight * sob
                count += len(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if not all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None):
                    skipped += 1  # a non-finite step would poison Adam's moments and every weight
                    continue
                optimizer.step()
                if averaged is not None:
                    for a, w in zip(averaged, weights):
                        a.lerp_(w, 1.0 - weight_average)
    if averaged is not None:
        for w, a in zip(weights, averaged):
            w.copy_(a)
    policy.eval()
    return {**{k: v / count for k, v in totals.items()}, "skipped_steps": float(skipped)}
