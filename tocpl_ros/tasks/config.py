"""Task configuration dataclasses (``config/tasks/<name>.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tocpl_ros.config import FieldError

Weight = float | list[float]
"""A cost weight: a scalar, or the diagonal of the weight matrix W in ½‖r‖²_W."""


@dataclass
class CostConfig:
    running: dict[str, Weight] = field(default_factory=dict)
    """Named running cost terms ℓ_t and their weights (scaled by dt in the OCP)."""
    terminal: dict[str, Weight] = field(default_factory=dict)
    """Named terminal cost terms ℓ_T and their weights."""

    def __post_init__(self) -> None:
        for phase in ("running", "terminal"):
            for name, weight in getattr(self, phase).items():
                values = weight if isinstance(weight, list) else [weight]
                if any(w < 0 for w in values):
                    raise FieldError(f"{phase}.{name}", f"weight must be >= 0, got {weight}")


@dataclass
class SamplingConfig:
    """The distribution P over the problem parameters β = (x0, target)."""

    q_nominal: list[float] | None = None
    """Centre of the sampled initial posture (and of the target posture for reach), one value per
    joint; None: the robot's nominal posture (config/robots/<robot>.yaml; q = 0 for a task given
    by a urdf alone)."""
    q0_halfwidth: float = 0.0
    """q0 = q_nominal + U(-h, h) per joint (robots); x0 = U(-h, h) per state entry (lqr)."""
    v0_halfwidth: float = 0.0
    """v0 = U(-h, h) per joint (robots); ignored by lqr."""
    target_joint_halfwidth: float = 0.0
    """reach only: target = position of the frame at q_nominal + U(-h, h) per joint."""

    def __post_init__(self) -> None:
        for name in ("q0_halfwidth", "v0_halfwidth", "target_joint_halfwidth"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")


@dataclass
class LQRConfig:
    """Linear dynamics x' = A x + B u of the lqr task."""

    n_dof: int = 2
    """Default system: n_dof double integrators (nx = 2 n_dof, nu = n_dof), discretised like
    Crocoddyl's semi-implicit Euler (v' = v + dt u, q' = q + dt v'). Ignored when A and B are given."""
    A: list[list[float]] | None = None
    """Explicit state matrix (nx × nx); overrides n_dof."""
    B: list[list[float]] | None = None
    """Explicit input matrix (nx × nu); overrides n_dof."""
    u_limit: float = 1.0
    """Box on the control: |u_i| <= u_limit."""
    terminal_riccati: bool = False
    """Add the infinite-horizon value function ½xᵀPx (P: discrete Riccati solution of the running
    weights) to the terminal cost. Then the horizon-T optimum is (unconstrained) the stationary
    LQR law, which a stationary policy can match; with an arbitrary terminal weight the optimum
    turns time-varying towards T and no policy of x alone can reach it."""

    def __post_init__(self) -> None:
        if self.n_dof < 1:
            raise FieldError("n_dof", f"must be >= 1, got {self.n_dof}")
        if self.u_limit <= 0:
            raise FieldError("u_limit", f"must be > 0, got {self.u_limit}")
        if (self.A is None) != (self.B is None):
            raise FieldError("A", "give both A and B, or neither")


@dataclass
class SolverConfig:
    """Crocoddyl SolverBoxFDDP settings for the task's OCPs."""

    max_iter: int = 200
    """Iteration cap of one solve."""
    th_stop: float = 1e-9
    """Stopping threshold on the expected improvement (Crocoddyl's th_stop)."""

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise FieldError("max_iter", f"must be >= 1, got {self.max_iter}")
        if self.th_stop <= 0:
            raise FieldError("th_stop", f"must be > 0, got {self.th_stop}")


@dataclass
class TaskConfig:
    kind: str
    """Task family: 'lqr', 'upright' (pendulums stabilised at q = 0) or 'reach' (end effector to a target)."""
    dt: float
    """Integration step of the OCP and of every rollout (s)."""
    horizon: int
    """Number of control steps T of one problem."""
    costs: CostConfig
    """Named cost terms ℓ = Σ ½‖r_i‖²_{W_i}; the names a kind accepts are listed in its task class."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Distribution P of the problem parameters."""
    constrained: bool = True
    """Keep the control box in the OCP (False drops it: the paper's '-C' ablation)."""
    robot: str | None = None
    """Robot: a name in config/robots/ (or a robot YAML path): its URDF, controlled joints,
    end-effector frame and nominal posture; robots only."""
    urdf: str | None = None
    """Instead of ``robot``: a URDF (a file name in urdf/, or a path) whose every movable joint is
    actuated, with ``frame`` (task configs written before config/robots/ are of this form)."""
    frame: str | None = None
    """Frame whose position p(x) enters the 'position' cost and the final error; None: the
    robot's end-effector frame. Robots only."""
    target_kind: str = "position"
    """What a reach target is: 'position' (of the end-effector frame, 3 values in the base frame) or
    'pose' (9 values: that position, then the first two columns of the frame's rotation matrix in
    the base frame; the 'orientation' cost term applies). Reach tasks only."""
    u_limit: list[float] | None = None
    """Per-joint torque bound overriding the URDF effort limits (N·m); robots only."""
    velocity_limit_factor: float = 0.9
    """The 'velocity_limit' cost term's free band: joint speeds within ±factor × the robot's velocity
    limits (RobotModel.velocity_limit) cost nothing, beyond it the term's weight × ½(excess)². Below 1
    so that the soft barrier's overshoot stays inside the limits. Ignored without that term."""
    lqr: LQRConfig = field(default_factory=LQRConfig)
    """Dynamics of the lqr task."""
    solver: SolverConfig = field(default_factory=SolverConfig)
    """Trajectory-optimisation solver settings."""

    def __post_init__(self) -> None:
        if self.kind not in ("lqr", "upright", "reach"):
            raise FieldError("kind", f"unknown task kind '{self.kind}' (known: lqr, upright, reach)")
        if self.dt <= 0:
            raise FieldError("dt", f"must be > 0, got {self.dt}")
        if self.horizon < 1:
            raise FieldError("horizon", f"must be >= 1, got {self.horizon}")
        if self.robot is not None and self.urdf is not None:
            raise FieldError("urdf", f"give a robot or a urdf, not both (robot '{self.robot}', urdf '{self.urdf}')")
        if self.kind != "lqr" and self.robot is None and (self.urdf is None or self.frame is None):
            raise FieldError("robot", f"a '{self.kind}' task needs a robot (or a urdf and a frame); "
                                      "tocpl-train: --robot NAME")
        if self.target_kind not in ("position", "pose"):
            raise FieldError("target_kind", f"'position' or 'pose', got '{self.target_kind}'")
        if self.target_kind == "pose" and self.kind != "reach":
            raise FieldError("target_kind", f"pose targets are for reach tasks, not '{self.kind}'")
        if self.velocity_limit_factor <= 0:
            raise FieldError("velocity_limit_factor", f"must be > 0, got {self.velocity_limit_factor}")
        if self.u_limit is not None and any(u <= 0 for u in self.u_limit):
            raise FieldError("u_limit", f"every bound must be > 0, got {self.u_limit}")
