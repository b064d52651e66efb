"""Augmented-Lagrangian terms of PLAL's OC phase (Alg. 2 line 2, eqs. (13) and (15)).

Two variants, both added *in place* to a task's already built ShootingProblem and
updated in place between ADMM iterations (problems are built once, reused for
every iteration and every sampled instance β):

* ``add_consensus_terms`` (PLAL, eq. (13)): every running node t gains
  μ/2 ‖u_t − π(obs(x_t)) + λ_t/μ‖², the network inside the OCP. Robots get a
  cost "consensus" (a Python residual, :class:`ResidualModelPolicyConsensus`)
  in their differential cost sum; the LQR's running nodes are replaced by
  :class:`ActionModelLQRWithConsensus`, a Python action model that adds the
  same term to the LQR matrices.
* ``add_tracking_terms`` (PLAL+M, eq. (15)): every running node t gains
  μ/2 ‖u_t − u_ref,t‖² + μ/2 ‖x_t − x_ref,t‖² with u_ref,t = π(²x_t) − λ_t/μ and
  x_ref,t = ²x_t − γ_t/μ, built-in Crocoddyl residuals only for the robots
  ("consensus_u", "consensus_x"), no network in the OCP.

Scaling. μ is the penalty of the paper: each node's cost grows by exactly
μ/2‖·‖² on top of Crocoddyl's trajectory cost R (whose running terms are
scaled by dt), so the dual updates λ ← λ + μ(u − π(x)) and γ ← γ + μ(¹x − ²x)
are the exact ADMM ones. Crocoddyl's ``IntegratedActionModelEuler`` multiplies
the differential cost by dt and ``ActivationModelQuad`` is ½‖r‖², hence the
cost items carry the weight μ/dt. The LQR model is discrete (no dt): weight μ.

Crocoddyl 3.2.1 binding pitfalls handled here:

* Threads: a ShootingProblem built before any Python-derived model exists gets
  nthreads = 2 (OpenMP); a Python residual/model called from those threads
  (no GIL) segfaults. ``add_consensus_terms`` (and the LQR tracking variant)
  set ``shooting.nthreads = 1`` (Crocoddyl prints a harmless "multithreading
  support is not enabled" warning on stderr when it is set).
* Datas: adding a cost to a node's CostModelSum after the problem was built
  leaves the problem's datas without it; the nodes are re-registered with
  ``shooting.updateModel`` (new datas). Create solvers afterwards.
* eigenpy returns 1×n / n×1 data matrices (Rx, Ru of a 1-DoF pendulum) as 1-D
  views: write them with ``_assign``.
* A Python exception raised inside calc/calcDiff is propagated when the
  model is called directly, but aborts the process when it is called from
  ShootingProblem.calc/calcDiff or a solver (boost::python::error_already_set).
* The default ResidualDataAbstract (no createData override) is enough.

Typical use::

    shooting = task.build_problem(problems[0])
    terms = add_consensus_terms(task, shooting, NumpyPolicy(policy), mu)
    for i in range(N):
        terms.set_problem(problems[i])          # x0, target (task costs and obs)
        terms.set(shifts=lambdas[i] / mu)       # λ_t/μ per node, [T, nu]
        sol = solve(shooting, task.config.solver, init_xs, init_us)
    terms.set(policy=NumpyPolicy(policy))       # after the learning phase
"""

from __future__ import annotations

from dataclasses import dataclass, field

import crocoddyl
import numpy as np

from tocpl_ros.tasks import Problems, Task
from tocpl_training.learning.policy import MLPPolicy, NumpyPolicy

CONSENSUS = "consensus"
TRACK_U, TRACK_X = "consensus_u", "consensus_x"


def _assign(view: np.ndarray, value) -> None:
    """Write into a Crocoddyl data matrix in place.

    eigenpy hands 1×n and n×1 matrices to Python as 1-D views (e.g. Rx of a
    pendulum with nu = nr = 1), so index by shape rather than by [:, :].
    """
    view[...] = np.reshape(value, view.shape)


def _as_numpy_policy(policy) -> NumpyPolicy:
    return NumpyPolicy(policy) if isinstance(policy, MLPPolicy) else policy


def _target(target, target_dim: int) -> np.ndarray:
    t = np.zeros(0) if target is None else np.asarray(target, dtype=float).reshape(-1)
    if t.shape != (target_dim,):
        raise ValueError(f"target must have {target_dim} entries, got {t.shape}")
    return t.copy()


def _value_and_state_jacobian(policy, obs: np.ndarray, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """π(obs) and ∂π/∂obs[:, :nx] (the state block only).

    For a NumpyPolicy (an MLP), the Jacobian is accumulated from the output
    side (nu rows through the 256×256 layers instead of obs_dim columns:
    ~2.5× fewer flops than ``value_and_jacobian``); anything else with a
    ``value_and_jacobian`` works too.
    """
    layers = getattr(policy, "layers", None)
    if layers is None:
        pi, J = policy.value_and_jacobian(obs)
        return pi, J[:, :nx]
    h = (obs - policy.obs_mean) / policy.obs_scale
    masks = []
    for W, b in layers[:-1]:
        h = W @ h + b
        active = h > 0
        h = h * active
        masks.append(active)
    W, b = layers[-1]
    t = np.tanh(W @ h + b)
    J = (policy.u_half * (1 - t * t))[:, None] * W
    for i in range(len(layers) - 2, -1, -1):
        W = layers[i][0] if i else layers[0][0][:, :nx]
        J = (J * masks[i]) @ W
    return policy.u_mid + policy.u_half * t, J / policy.obs_scale[:nx]


class _ConsensusParams:
    """π, target and shift λ_t/μ of one node: r = u − π(concat(x, target)) + shift."""

    def _init_params(self, policy, nx: int, nu: int, target_dim: int):
        self.nx_obs, self.target_dim = nx, target_dim
        self.policy = _as_numpy_policy(policy)
        self.target = np.zeros(target_dim)
        self.shift = np.zeros(nu)

    def obs(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, self.target]) if self.target_dim else np.asarray(x, dtype=float)

    def consensus_residual(self, x, u) -> np.ndarray:
        return u - self.policy(self.obs(x)) + self.shift

    def consensus_residual_diff(self, x, u) -> tuple[np.ndarray, np.ndarray]:
        """(r, ∂r/∂x = −∂π/∂obs[:, :nx]); ∂r/∂u is the identity."""
        pi, J = _value_and_state_jacobian(self.policy, self.obs(x), self.nx_obs)
        return u - pi + self.shift, -J


class ResidualModelPolicyConsensus(_ConsensusParams, crocoddyl.ResidualModelAbstract):
    """r(x, u) = u − π(concat(x, target)) + shift, shift = λ_t/μ (one node).

    ``policy`` (a NumpyPolicy; an MLPPolicy is converted), ``target`` ([target_dim],
    empty for tasks without one) and ``shift`` ([nu]) are plain attributes, set in
    place between solves. Rx = −∂π/∂obs restricted to the state block (the
    state must be a vector space: nx == ndx, as for revolute joints), Ru = I.
    Crocoddyl's CostModelResidual turns it into Lx = Rxᵀ A r and the
    Gauss–Newton Hessians Rxᵀ A'' Rx, etc.
    """

    def __init__(self, state: crocoddyl.StateAbstract, nu: int, policy, target_dim: int = 0):
        if state.nx != state.ndx:
            raise ValueError("ResidualModelPolicyConsensus needs a vector-space state (nx == ndx)")
        crocoddyl.ResidualModelAbstract.__init__(self, state, nu, nu, True, True, True)
        self._init_params(policy, state.nx, nu, target_dim)
        self._eye = np.eye(nu)

    def calc(self, data, x, u=None):
        if u is None:
            raise ValueError("the consensus residual needs a control (running nodes only)")
        data.r[:] = self.consensus_residual(x, u)

    def calcDiff(self, data, x, u=None):
        if u is None:
            raise ValueError("the consensus residual needs a control (running nodes only)")
        _, Rx = self.consensus_residual_diff(x, u)
        _assign(data.Rx, Rx)
        _assign(data.Ru, self._eye)


class ActionModelLQRWithConsensus(_ConsensusParams, crocoddyl.ActionModelAbstract):
    """A Crocoddyl LQR node plus PLAL's augmented-Lagrangian terms (one node).

    Same dynamics and cost as the wrapped ``ActionModelLQR``
    (x' = A x + B u + f, ½xᵀQx + ½uᵀRu + xᵀNu + qᵀx + rᵀu) and the same box,
    plus, when ``policy`` is set, the consensus term μ/2‖u − π(obs(x)) + shift‖²
    (with ``target`` and ``shift`` as in :class:`ResidualModelPolicyConsensus`;
    Gauss–Newton Hessian μ·[−J, I]ᵀ[−J, I]), and/or, when ``u_ref``/``x_ref`` are
    set, the tracking terms μ/2‖u − u_ref‖² + μ/2‖x − x_ref‖² (exact Hessians).
    No dt: the LQR model is discrete, μ enters as is.
    """

    def __init__(self, lqr: crocoddyl.ActionModelLQR, mu: float, policy=None, target_dim: int = 0):
        nx, nu = lqr.state.nx, lqr.nu
        crocoddyl.ActionModelAbstract.__init__(self, crocoddyl.StateVector(nx), nu, 1)
        self.A, self.B, self.f = np.array(lqr.A), np.array(lqr.B), np.array(lqr.f)
        self.Q, self.R, self.N = np.array(lqr.Q), np.array(lqr.R), np.array(lqr.N)
        self.q, self.r = np.array(lqr.q), np.array(lqr.r)
        self.u_lb, self.u_ub = np.array(lqr.u_lb), np.array(lqr.u_ub)
        self._init_params(policy, nx, nu, target_dim)
        self.mu = float(mu)
        self.u_ref: np.ndarray | None = None
        self.x_ref: np.ndarray | None = None

    def calc(self, data, x, u=None):
        if u is None:
            raise ValueError("ActionModelLQRWithConsensus is a running model (needs u)")
        _assign(data.xnext, self.A @ x + self.B @ u + self.f)
        cost = 0.5 * x @ self.Q @ x + 0.5 * u @ self.R @ u + x @ self.N @ u + self.q @ x + self.r @ u
        if self.policy is not None:
            res = self.consensus_residual(x, u)
            cost += 0.5 * self.mu * res @ res
        if self.u_ref is not None:
            du, dx = u - self.u_ref, x - self.x_ref
            cost += 0.5 * self.mu * (du @ du + dx @ dx)
        data.cost = cost

    def calcDiff(self, data, x, u=None):
        if u is None:
            raise ValueError("ActionModelLQRWithConsensus is a running model (needs u)")
        mu = self.mu
        Lx = self.Q @ x + self.N @ u + self.q
        Lu = self.R @ u + self.N.T @ x + self.r
        Lxx, Lxu, Luu = self.Q.copy(), self.N.copy(), self.R.copy()
        if self.policy is not None:
            res, Rx = self.consensus_residual_diff(x, u)  # Ru = I
            Lx += mu * Rx.T @ res
            Lu += mu * res
            Lxx += mu * Rx.T @ Rx
            Lxu += mu * Rx.T
            Luu += mu * np.eye(self.nu)
        if self.u_ref is not None:
            Lx += mu * (x - self.x_ref)
            Lu += mu * (u - self.u_ref)
            Lxx += mu * np.eye(len(x))
            Luu += mu * np.eye(self.nu)
        _assign(data.Fx, self.A)
        _assign(data.Fu, self.B)
        _assign(data.Lx, Lx)
        _assign(data.Lu, Lu)
        _assign(data.Lxx, Lxx)
        _assign(data.Lxu, Lxu)
        _assign(data.Luu, Luu)


def _wrap_lqr_nodes(shooting: crocoddyl.ShootingProblem, mu: float, policy, target_dim: int) -> list[ActionModelLQRWithConsensus]:
    """Replace every running ActionModelLQR by its own wrapper (one per node, so shifts can differ)."""
    nodes = []
    for t, model in enumerate(shooting.runningModels):
        if isinstance(model, ActionModelLQRWithConsensus):
            raise ValueError("this problem already carries augmented-Lagrangian terms")
        if not isinstance(model, crocoddyl.ActionModelLQR):
            raise TypeError(f"running node {t} is a {type(model).__name__}, expected ActionModelLQR")
        node = ActionModelLQRWithConsensus(model, mu, policy, target_dim)
        shooting.updateModel(t, node)
        nodes.append(node)
    return nodes


def _differential(model) -> crocoddyl.DifferentialActionModelAbstract:
    if not isinstance(model, crocoddyl.IntegratedActionModelEuler):
        raise TypeError(f"expected IntegratedActionModelEuler running nodes, got {type(model).__name__}")
    return model.differential


def _check_shapes(name: str, values, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


@dataclass
class ConsensusTerms:
    """Handle on the consensus terms of one ShootingProblem (see ``add_consensus_terms``)."""

    task: Task
    shooting: crocoddyl.ShootingProblem
    nodes: list
    """Per running node: the ResidualModelPolicyConsensus (robots) or ActionModelLQRWithConsensus (LQR)."""
    mu: float
    cost_items: list = field(default_factory=list)
    """Robots: the "consensus" CostItem of each node (weight μ/dt)."""

    def set(self, policy=None, shifts=None, target=None, mu=None) -> None:
        """Update all nodes in place; arguments left None keep their value.

        policy: NumpyPolicy (or MLPPolicy, converted once); shifts: [T, nu] = λ_t/μ
        (recompute them when μ changes with λ kept); target: [target_dim], the
        problem's target (the observation's tail); mu: the penalty μ.
        """
        T, nu = self.shooting.T, self.task.nu
        if policy is not None:
            policy = _as_numpy_policy(policy)
            for node in self.nodes:
                node.policy = policy
        if shifts is not None:
            shifts = _check_shapes("shifts", shifts, (T, nu))
            for node, s in zip(self.nodes, shifts):
                node.shift = s.copy()
        if target is not None:
            target = _target(target, self.task.target_dim)
            for node in self.nodes:
                node.target = target
        if mu is not None:
            self.mu = float(mu)
            for node in self.nodes:
                if isinstance(node, ActionModelLQRWithConsensus):
                    node.mu = self.mu
            for item, model in zip(self.cost_items, self.shooting.runningModels):
                item.weight = self.mu / model.dt

    def set_problem(self, problem: Problems) -> None:
        """Point the problem at instance β = (x0, target): the task's own costs and the observation's target."""
        self.task.set_problem(self.shooting, problem)
        self.set(target=problem.target[0])

    def violations(self, xs: np.ndarray, us: np.ndarray) -> np.ndarray:
        """u_t − π(obs(x_t)) per node, [T, nu] (the constraint (11b); shifts not included)."""
        return np.stack([u - node.policy(node.obs(x)) for node, x, u in zip(self.nodes, xs, us)])


def add_consensus_terms(task: Task, shooting: crocoddyl.ShootingProblem, policy, mu: float,
                        problem: Problems | None = None) -> ConsensusTerms:
    """Add μ/2‖u_t − π(obs(x_t)) + λ_t/μ‖² to every running node of ``shooting`` in place.

    ``shooting`` is a problem built by ``task.build_problem``. Robots: a cost named
    "consensus" (weight μ/dt, see the module docstring) joins each node's
    differential cost sum. LQR: each running node is replaced by an
    ActionModelLQRWithConsensus (``shooting.updateModel``). Shifts start at 0
    (λ = 0); the target is ``problem``'s (default: zeros — call
    ``ConsensusTerms.set_problem`` or ``set(target=...)`` for a task with one).
    The problem is switched to one thread (Python models; see module docstring).
    """
    policy = _as_numpy_policy(policy)
    running = list(shooting.runningModels)
    if isinstance(running[0], crocoddyl.ActionModelLQR):
        nodes = _wrap_lqr_nodes(shooting, mu, policy, task.target_dim)
        terms = ConsensusTerms(task, shooting, nodes, float(mu))
    else:
        nodes, items = [], []
        for model in running:
            dam = _differential(model)
            if CONSENSUS in dam.costs.costs.todict():
                raise ValueError(f"node already has a '{CONSENSUS}' cost")
            residual = ResidualModelPolicyConsensus(dam.state, dam.nu, policy, task.target_dim)
            cost = crocoddyl.CostModelResidual(dam.state, crocoddyl.ActivationModelQuad(dam.nu), residual)
            dam.costs.addCost(CONSENSUS, cost, mu / model.dt)
            nodes.append(residual)
            items.append(dam.costs.costs[CONSENSUS])
        terms = ConsensusTerms(task, shooting, nodes, float(mu), items)
        # the nodes' datas were allocated without the new cost: reallocate them
        for t, model in enumerate(running):
            shooting.updateModel(t, model)
    shooting.nthreads = 1
    if problem is not None:
        terms.set(target=problem.target[0])
    return terms


@dataclass
class TrackingTerms:
    """Handle on the PLAL+M tracking terms of one ShootingProblem (see ``add_tracking_terms``)."""

    task: Task
    shooting: crocoddyl.ShootingProblem
    mu: float
    u_residuals: list = field(default_factory=list)
    x_residuals: list = field(default_factory=list)
    cost_items: list = field(default_factory=list)
    """Robots: per node, the (control, state) CostItems (weights μ/dt)."""
    lqr_nodes: list = field(default_factory=list)

    def set(self, u_refs=None, x_refs=None, mu=None) -> None:
        """Update all nodes in place: u_refs [T, nu] = π(²x_t) − λ_t/μ, x_refs [T, nx] = ²x_t − γ_t/μ, mu."""
        T, nu, nx = self.shooting.T, self.task.nu, self.task.nx
        if u_refs is not None:
            u_refs = _check_shapes("u_refs", u_refs, (T, nu))
            for res, u in zip(self.u_residuals, u_refs):
                res.reference = u.copy()
            for node, u in zip(self.lqr_nodes, u_refs):
                node.u_ref = u.copy()
        if x_refs is not None:
            x_refs = _check_shapes("x_refs", x_refs, (T, nx))
            for res, x in zip(self.x_residuals, x_refs):
                res.reference = x.copy()
            for node, x in zip(self.lqr_nodes, x_refs):
                node.x_ref = x.copy()
        if mu is not None:
            self.mu = float(mu)
            for node in self.lqr_nodes:
                node.mu = self.mu
            for items, model in zip(self.cost_items, self.shooting.runningModels):
                for item in items:
                    item.weight = self.mu / model.dt

    def set_problem(self, problem: Problems) -> None:
        """Point the problem at instance β = (x0, target) (the task's own costs)."""
        self.task.set_problem(self.shooting, problem)


def add_tracking_terms(task: Task, shooting: crocoddyl.ShootingProblem, mu: float, u_refs=None, x_refs=None) -> TrackingTerms:
    """Add μ/2‖u_t − u_ref,t‖² + μ/2‖x_t − x_ref,t‖² to every running node in place (PLAL+M, eq. (15)).

    Robots: costs "consensus_u" (ResidualModelControl) and "consensus_x"
    (ResidualModelState, x ⊖ x_ref) with weights μ/dt — built-in C++ residuals,
    the problem keeps its threads. LQR: running nodes replaced by
    ActionModelLQRWithConsensus in tracking mode (one thread). References
    default to zeros; set them per node with ``TrackingTerms.set``.
    """
    nu, nx = task.nu, task.nx
    running = list(shooting.runningModels)
    if isinstance(running[0], crocoddyl.ActionModelLQR):
        nodes = _wrap_lqr_nodes(shooting, mu, None, task.target_dim)
        for node in nodes:
            node.u_ref, node.x_ref = np.zeros(nu), np.zeros(nx)
        terms = TrackingTerms(task, shooting, float(mu), lqr_nodes=nodes)
        shooting.nthreads = 1
    else:
        terms = TrackingTerms(task, shooting, float(mu))
        for model in running:
            dam = _differential(model)
            state = dam.state
            if TRACK_U in dam.costs.costs.todict():
                raise ValueError(f"node already has a '{TRACK_U}' cost")
            ures = crocoddyl.ResidualModelControl(state, np.zeros(dam.nu))
            xres = crocoddyl.ResidualModelState(state, state.zero(), dam.nu)
            dam.costs.addCost(TRACK_U, crocoddyl.CostModelResidual(state, crocoddyl.ActivationModelQuad(dam.nu), ures), mu / model.dt)
            dam.costs.addCost(TRACK_X, crocoddyl.CostModelResidual(state, crocoddyl.ActivationModelQuad(state.ndx), xres), mu / model.dt)
            costs = dam.costs.costs
            terms.u_residuals.append(ures)
            terms.x_residuals.append(xres)
            terms.cost_items.append((costs[TRACK_U], costs[TRACK_X]))
        for t, model in enumerate(running):
            shooting.updateModel(t, model)
    terms.set(u_refs=u_refs, x_refs=x_refs)
    return terms
