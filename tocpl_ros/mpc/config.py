"""The MPC's configuration and the result of one cycle (ROS-free).

The feedback of a solution follows Crocoddyl's convention: a fast loop applies
``u = ū_0 − K_0 (x − x̄_0)`` (``MPCResult.u_bar``, ``K``, ``x_bar``; on a fallback K = 0
and ū = the policy's command, so the same law gives the fallback command).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tocpl_ros.config import FieldError

WARM_STARTS = ("policy", "shifted", "cold", "hybrid")
STATUSES = ("converged", "max_iter", "stalled", "deadline", "nonfinite", "error", "invalid_input")
"""``MPCResult.status`` values; only 'converged' is a usable solution."""


@dataclass
class MPCConfig:
    """Settings of the receding-horizon MPC (the ``mpc_node`` parameters of the same names)."""

    rate: float = 100.0
    """Re-planning rate (Hz): one solve every 1/rate s. Without explicit times, the 'shifted'
    warm start advances the previous solution by 1/rate s."""
    horizon: int | None = None
    """OCP horizon in steps of the task's dt; None (or 0): the task's own horizon."""
    warm_start: str = "policy"
    """Initial guess of each solve: 'policy' (rollout of the ONNX policy from the current state),
    'shifted' (previous solution advanced by the elapsed time, last state/control repeated;
    cold when there is none), 'cold' (x0 held, quasi-static controls) or 'hybrid' (the shifted
    previous solution when there is one for the same target, converged or stopped at its
    deadline or cap, else the policy's rollout: the policy for every solve from scratch, the cheap
    shift in between, a stopped solve going on from where it stopped)."""
    max_iter: int = 20
    """Iteration cap of one solve; a solve that has not converged by then is a failure."""
    deadline: float = 0.008
    """Wall-time budget of one solve in seconds, warm start included (inf: none). A solve that
    would end later is stopped between iterations and reported as 'deadline' (fallback). In
    mpc_node it counts from the state's arrival, and a solution is used while its state is at
    most this old (at most the horizon)."""
    threads: int = 1
    """Crocoddyl threads for the problem's calc/calcDiff (ShootingProblem.nthreads)."""
    plan_duration: float = 0.1
    """Seconds of each solution kept as the plan a fast loop follows (mpc_node's /mpc/plan): the
    gains and states of the steps up to this time after the solve's state (at most the horizon)."""
    solver_nice: int = 0
    """Niceness added to the solver process of :class:`MPCWorker` (0-19; higher: lower CPU
    priority): when the CPU is short, the fast loop and the robot's driver come first and the MPC
    gets late instead (its plans age, the fast loop falls back to the policy; docs/mpc.md). 0: the
    same priority."""

    def __post_init__(self) -> None:
        def number(name: str, value, lo: float, allow_inf: bool = False) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and (math.isfinite(value) or (allow_inf and value == math.inf))
            if not ok:
                raise FieldError(name, f"must be a {'number' if allow_inf else 'finite number'}, got {value!r}")
            if not value > lo:
                raise FieldError(name, f"must be > {lo:g}, got {value}")

        number("rate", self.rate, 0.0)
        number("deadline", self.deadline, 0.0, allow_inf=True)
        number("plan_duration", self.plan_duration, 0.0)
        if self.horizon is not None and (isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 0):
            raise FieldError("horizon", f"must be an integer >= 1 (or 0/None: the task's), got {self.horizon!r}")
        if self.horizon == 0:
            self.horizon = None
        if self.warm_start not in WARM_STARTS:
            raise FieldError("warm_start", f"must be one of {', '.join(WARM_STARTS)}, got {self.warm_start!r}")
        for name in ("max_iter", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FieldError(name, f"must be an integer >= 1, got {value!r}")
        n = self.solver_nice
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 19:
            raise FieldError("solver_nice", f"must be an integer in [0, 19], got {n!r}")

    @property
    def period(self) -> float:
        """Re-planning period 1/rate (s)."""
        return 1.0 / self.rate


@dataclass
class MPCResult:
    """One MPC cycle: the solution's first control and local controller, or the fallback."""

    ok: bool
    """The solution is usable: converged, finite, within the deadline. False → fallback."""
    status: str
    """One of :data:`STATUSES`."""
    message: str
    """Human-readable detail ('' when ok)."""
    command: np.ndarray | None
    """Torque to send now: ū_0 when ok, else the policy's command for the current state
    (the fallback); both inside the task's box. None only without a usable command
    (invalid input, or no policy to fall back to)."""
    u_bar: np.ndarray | None
    """Feed-forward ū_0 of the feedback law (= command)."""
    x_bar: np.ndarray | None
    """State x̄_0 the feedback law is linearised at (the solve's x0)."""
    K: np.ndarray | None
    """Feedback gain K_0 [nu, nx], Crocoddyl's convention u = ū_0 − K_0 (x − x̄_0); zeros on a fallback."""
    fallback: bool
    """command is the policy's, not the MPC's."""
    warm_start: str
    """Warm start actually used ('shifted' without a previous solution runs 'cold'); '' if none."""
    iterations: int = 0
    """Solver iterations (Crocoddyl's ``solver.iter``, as :func:`tocpl_ros.ocp.solve` reports)."""
    converged: bool = False
    """The solver met its stopping criterion."""
    solve_time: float = 0.0
    """Wall time of the cycle up to the end of the solver (s), warm start included."""
    warm_start_time: float = 0.0
    """Part of solve_time spent building the warm start (s)."""
    cost: float = math.nan
    """Cost of the solution (NaN if none)."""
    xs: np.ndarray | None = None
    """Solution states [T+1, nx] (None if not finite)."""
    us: np.ndarray | None = None
    """Solution controls [T, nu] (None if not finite)."""
    state_time: float = math.nan
    """The ``now`` the solve was given: the time of the state it started from (NaN if none given)."""
    gains: np.ndarray | None = None
    """Feedback gains K_k of the first steps [n, nu, nx] (n covers ``min(deadline, horizon·dt)``,
    so the plan can be followed for as long as it stays fresh, and ``plan_duration``:
    ``RecedingHorizonMPC.plan_steps``; ``gains[0]`` is ``K``); None on a failure."""
    dt: float = math.nan
    """Duration of one OCP step (s): plan step k starts at ``state_time + k·dt``."""

    def law(self, age: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(ū_k, x̄_k, K_k) of the plan step running ``age`` seconds after ``state_time``
        (k = floor(age / dt), at most the last step with a gain), for the feedback law
        u = ū_k − K_k (x − x̄_k); None if the result has no plan (a failure)."""
        if not self.ok or self.gains is None or self.us is None or self.xs is None or not len(self.gains):
            return None
        k = int(age // self.dt) if math.isfinite(age) and age > 0 and math.isfinite(self.dt) and self.dt > 0 else 0
        k = min(k, len(self.gains) - 1)
        if k == 0:
            return self.u_bar, self.x_bar, self.gains[0]  # type: ignore[return-value]
        return self.us[k], self.xs[k], self.gains[k]

    def feedback_array(self) -> np.ndarray | None:
        """[ū (nu), x̄ (nx), K row-major (nu·nx)] (the ``/mpc/feedback`` layout), or None."""
        if self.u_bar is None or self.x_bar is None or self.K is None:
            return None
        return np.concatenate([self.u_bar, self.x_bar, self.K.reshape(-1)])
