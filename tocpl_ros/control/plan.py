"""The ``/mpc/plan`` message (ROS-free): :func:`encode_plan` / :func:`decode_plan` define its layout,
a flat float64 array (std_msgs/Float64MultiArray ``data``) that the MPC node publishes and the
policy node's :class:`tocpl_ros.control.plan_follower.PlanFollower` follows.

Only numpy: no rclpy, no Crocoddyl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tocpl_ros.mpc.config import STATUSES

__all__ = [
    "PLAN_HEADER",
    "PLAN_VERSION",
    "PLAN_STATUSES",
    "WARM_START_CODES",
    "Plan",
    "PlanError",
    "decode_plan",
    "encode_plan",
    "encode_result",
]

PLAN_VERSION = 1
PLAN_HEADER = ("version", "status", "stamp", "dt", "steps", "nu", "nx", "target_dim", "sequence", "iterations",
               "solve_time", "warm_start")
"""The first values of a ``/mpc/plan`` message, in order. Then: target [target_dim], ū [steps, nu],
K [steps, nu, nx] (row-major), x̄ [steps + 1, nx]. A failure report has steps = 0.
States are joint positions (one per joint, as /joint_states) and velocities: nx = 2 nv, also for
a robot with continuous joints (the OCP's x has their cos θ, sin θ; K is in its tangent space, 2 nv
columns, so it multiplies the position difference, wrapped for a continuous joint)."""
PLAN_STATUSES = STATUSES
"""Status codes (index = code): the MPC's statuses; 0 is the only usable plan."""
WARM_START_CODES = ("", "policy", "shifted", "cold")
"""Warm start actually used by a solve (a 'hybrid' MPC's solves are 'policy' or 'shifted')."""
_H = len(PLAN_HEADER)


class PlanError(ValueError):
    """A /mpc/plan message that cannot be used (``key``: the counter it goes to)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


@dataclass
class Plan:
    """One MPC result as the fast loop sees it."""

    status: str
    stamp: float
    """Stamp (s, the joint states' clock) of the state x̄_0 the solve started from."""
    dt: float
    """Duration of one plan step (s)."""
    target: np.ndarray
    u_bar: np.ndarray
    """[steps, nu]"""
    K: np.ndarray
    """[steps, nu, nx], u = ū_k − K_k (x − x̄_k)"""
    x_bar: np.ndarray
    """[steps + 1, nx]"""
    sequence: int = 0
    iterations: int = 0
    solve_time: float = math.nan
    warm_start: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "converged"

    @property
    def steps(self) -> int:
        return len(self.u_bar)


def encode_plan(plan: Plan) -> np.ndarray:
    """The flat ``/mpc/plan`` array of ``plan`` (see PLAN_HEADER)."""
    n = plan.steps if plan.ok else 0
    nu = plan.u_bar.shape[1] if plan.u_bar.ndim == 2 else 0
    nx = plan.x_bar.shape[1] if plan.x_bar.ndim == 2 else 0
    header = [PLAN_VERSION, PLAN_STATUSES.index(plan.status), plan.stamp, plan.dt, n, nu, nx, len(plan.target),
              plan.sequence, plan.iterations, plan.solve_time, WARM_START_CODES.index(plan.warm_start or "")]
    parts = [np.asarray(header, dtype=float), np.asarray(plan.target, dtype=float).reshape(-1)]
    if n:
        parts += [plan.u_bar[:n].reshape(-1), plan.K[:n].reshape(-1), plan.x_bar[: n + 1].reshape(-1)]
    return np.concatenate(parts)


def encode_result(result, stamp: float, target: np.ndarray, sequence: int, nu: int, nx: int,
                  to_positions=None, continuous: np.ndarray | None = None) -> np.ndarray:
    """The ``/mpc/plan`` array of a :class:`tocpl_ros.mpc.config.MPCResult` solved from the joint state
    stamped ``stamp`` towards ``target``: its steps with a gain when it converged (ū_0 is the
    result's clipped ``u_bar``), else a failure report with its status. ``to_positions``: maps the
    OCP's states [..., nq + nv] to (joint positions, v) [..., nx] when nq ≠ nv; ``continuous`` (per
    joint) unwraps those joints' angles along the plan, so that x̄ is continuous in time."""
    target = np.asarray(target, dtype=float).reshape(-1)
    common = dict(stamp=float(stamp), dt=float(result.dt), target=target, sequence=int(sequence),
                  iterations=int(result.iterations), solve_time=float(result.solve_time),
                  warm_start=result.warm_start if result.warm_start in WARM_START_CODES else "")
    gains = result.gains
    if result.ok and gains is not None and result.us is not None and result.xs is not None and len(gains):
        n = min(len(gains), len(result.us), len(result.xs) - 1)
        u_bar = np.array(result.us[:n], dtype=float)
        u_bar[0] = result.u_bar
        x_bar = np.array(result.xs[: n + 1], dtype=float)
        if to_positions is not None:
            x_bar = np.asarray(to_positions(x_bar), dtype=float)
            if continuous is not None and np.any(continuous):
                joints = np.flatnonzero(continuous)
                x_bar[:, joints] = np.unwrap(x_bar[:, joints], axis=0)
        plan = Plan("converged", u_bar=u_bar, K=np.asarray(gains[:n], dtype=float), x_bar=x_bar, **common)
    else:
        status = result.status if result.status in PLAN_STATUSES and result.status != "converged" else "error"
        plan = Plan(status, u_bar=np.zeros((0, nu)), K=np.zeros((0, nu, nx)), x_bar=np.zeros((0, nx)), **common)
    return encode_plan(plan)


def decode_plan(data, nu: int, nx: int, target_dim: int) -> Plan:
    """The :class:`Plan` of a ``/mpc/plan`` array; :class:`PlanError` (with a counter key) if it is
    malformed: unknown version/status, sizes other than (nu, nx, target_dim), a length that does
    not match, NaN/Inf anywhere that is used, dt <= 0, a converged plan without steps."""
    try:
        a = np.asarray(data, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise PlanError("malformed", f"not an array of numbers ({exc})") from None
    if a.size < _H:
        raise PlanError("malformed", f"{a.size} values, fewer than the {_H} of the header")
    head = a[:_H]
    if head[0] != PLAN_VERSION:
        raise PlanError("malformed", f"layout version {head[0]!r}, expected {PLAN_VERSION}")
    if not np.isfinite(head[[1, 2, 4, 5, 6, 7, 8]]).all():
        raise PlanError("nonfinite", f"NaN/Inf in the header {head.tolist()}")
    status_code, stamp, dt = head[1], float(head[2]), float(head[3])
    n, m_u, m_x, m_t = head[4], head[5], head[6], head[7]
    if status_code != int(status_code) or not 0 <= status_code < len(PLAN_STATUSES):
        raise PlanError("malformed", f"unknown status code {status_code!r}")
    if (m_u, m_x, m_t) != (nu, nx, target_dim):
        raise PlanError("size", f"sizes nu {m_u:g}, nx {m_x:g}, target {m_t:g}; this loop has {nu}, {nx}, {target_dim}")
    if n != int(n) or n < 0:
        raise PlanError("malformed", f"steps {n!r}")
    n = int(n)
    status = PLAN_STATUSES[int(status_code)]
    expected = _H + target_dim + (n * nu + n * nu * nx + (n + 1) * nx if n else 0)
    if a.size != expected:
        raise PlanError("size", f"{a.size} values, the header says {expected} ({n} steps)")
    code = head[11]
    warm = WARM_START_CODES[int(code)] if math.isfinite(code) and code == int(code) and 0 <= code < len(WARM_START_CODES) else ""
    i = _H
    target = a[i: i + target_dim].copy()
    i += target_dim
    extra = dict(sequence=int(head[8]), iterations=int(head[9]), solve_time=float(head[10]), warm_start=warm)
    if status != "converged":
        if n:
            raise PlanError("malformed", f"a '{status}' report carries {n} steps")
        return Plan(status, stamp, dt, target, np.zeros((0, nu)), np.zeros((0, nu, nx)), np.zeros((0, nx)), **extra)
    if n < 1:
        raise PlanError("malformed", "a converged plan without steps")
    if not (math.isfinite(dt) and dt > 0):
        raise PlanError("nonfinite" if not math.isfinite(dt) else "malformed", f"step duration dt {dt!r}")
    body = a[i:]
    if not (np.isfinite(body).all() and np.isfinite(target).all()):
        raise PlanError("nonfinite", "NaN/Inf in the plan")
    u_bar = body[: n * nu].reshape(n, nu)
    K = body[n * nu: n * nu + n * nu * nx].reshape(n, nu, nx)
    x_bar = body[n * nu + n * nu * nx:].reshape(n + 1, nx)
    return Plan(status, stamp, dt, target, u_bar.copy(), K.copy(), x_bar.copy(), **extra)
