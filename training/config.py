"""Training configuration (``config/train/<task>.yaml``), every field documented."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tocpl_ros.config import FieldError

ALGORITHMS = ("pddp", "plal", "pods", "dpl")
MU_SCHEDULES = ("fixed", "bcl")
WARM_STARTS = ("policy", "previous", "cold")
BACKENDS = ("process", "ray")
POLICY_STATES = ("rollout", "oc")
ACTIVATIONS = ("relu", "silu", "tanh")  # learning/policy.py's ACTIVATIONS (this module imports no torch)


@dataclass
class TrainConfig:
    task: str = "ur5_reach"
    """Task name (config/tasks/<task>.yaml) or a task YAML path."""
    robot: str | None = None
    """Robot (config/robots/<robot>.yaml, or a robot YAML path) replacing the task config's: how
    the generic task 'reach' gets its robot (tocpl-train --task reach --robot panda). None: the
    task config's own."""
    algo: str = "pddp"
    """'pddp' (projected DDP, Alg. 1), 'plal' (ADMM on the augmented Lagrangian, Alg. 2), or the
    paper's baselines 'pods' (Mora et al. 2021: one Gauss-Newton step on the policy's actions, regress)
    and 'dpl' (Mordatch & Todorov 2014: quadratic-penalty consensus, full-Jacobian Sobolev)."""
    sobolev: bool = False
    """'+S': also match the policy's state Jacobian to the DDP feedback gains (stochastic Sobolev term)."""
    sobolev_full: bool = False
    """Match the full Jacobian (eq. 8, nu backward passes) instead of the stochastic projection (dpl's way)."""
    sobolev_weight: float = 1e-3
    """Weight of the Sobolev term relative to the control regression. Small by default: the DDP gains
    near the end of the horizon are stiff (large terminal weights) and would swamp the regression."""
    sobolev_gains: str = "solver"
    """+S: where the gains come from. 'solver': SolverBoxFDDP's last K, the paper's DDP gains; after a warm
    start it leaves the rows of controls on the bound unprojected, which skews the other rows too (60-74 %
    on the pendulums and the lqr). 'solution': a Riccati pass at the solved trajectory, controls clamped by
    the box getting zero rows (ocp.solution_gains, the optimal control's derivative; one more linearisation,
    counted). Measured: no better (lqr), mixed (double pendulum), worse (pendulum, PDDP+S): docs/training.md "Sobolev targets".
    'task': the same pass on the task's own OCP, without the consensus (plal) or tracking (+M) terms:
    +M's tracking terms hold the references fixed, so its OCP's gains shrink towards zero (22 % on the
    lqr at μ 0.01, 5-7 % UR5, 1 % pendulum), while at consensus the policy's Jacobian is the task's.
    Measured: lqr PLAL+M+S 100 % within instead of 42 % (the lqr's default); UR5 PLAL+M+S worse."""
    multiple_shooting: bool = False
    """'+M' (plal only): the OC phase tracks fixed references instead of differentiating the policy."""
    policy_states: str = "oc"
    """+M: the policy states ²x. 'oc': the last OC states (²x ← ¹x, a proximal ADMM step: the OC phase tracks
    its previous solution and the policy's commands there; π is fit on the OC's own state-control pairs);
    'rollout': the policy's own rollout (the OC states where it diverges), where π is fit on OC controls
    at states they were not computed for: lqr median cost gap 21-30 % after 20-30 iterations against
    0.6-1 % with 'oc'; ur5 3-4 cm against 2.4-2.8 cm (mu 1e-4, 64 problems)."""
    constrained: bool = True
    """Keep the control box in the OC phase; False is the paper's '-C' ablation (bounds only via tanh)."""
    iterations: int = 30
    """Outer iterations M (OC phase + supervised phase + dual update)."""
    problems: int = 64
    """Problems N solved per OC phase."""
    resample: bool = True
    """pddp: draw N fresh problems every iteration (plal keeps its N problems: λ belongs to them)."""
    replay: int = 1
    """Supervised data kept from the last `replay` OC phases (1 = only the newest)."""
    oc_max_iter: int = 50
    """Solver iteration cap per problem in an OC phase."""
    oc_th_stop: float = 1e-9
    """Solver stopping threshold in the OC phase."""
    oc_warm_start_probe: int = 0
    """Solver iterations a warm start gets to show progress; one that has not converged and whose line
    search fell to its smallest step is then dropped for the cold start (the cheaper feasible of the
    two is kept). 0: warm starts run to the cap. Per task: it saves the boxed lqr 3.5x of its OC
    evaluations, but it costs the pendulums the policy-consistent swing of the warm start."""
    oc_feasible_warm_start: bool = False
    """Tell SolverBoxFDDP that a warm start from the policy's rollout is dynamically feasible, so its
    backward pass solves the box-QP from the first iteration. Told nothing, it takes unconstrained
    FDDP steps and only clamps them until a full step is accepted, which from a guess near a boxed
    optimum may never happen (the lqr then stalls at the smallest step, hence its probe). Off: how
    the results in docs/results were made."""
    warm_start: str = "policy"
    """Initial guess of each OC solve: 'policy' rollout, 'previous' solution of that problem, or 'cold'."""
    continuous_share: float = 0.0
    """pddp: share of each OC phase's problems started on the policy's own rollouts through a chain of
    targets (training/continuation.py): moving, holding, or where earlier targets left the arm, so the
    labels cover continuous use and not only the first T from rest. 0: the paper's fixed-horizon setup
    (every problem from P), how the comparisons in docs/results were made."""
    continuous_chain: int = 3
    """continuous_share: targets in the chain the policy runs through (each for T) before a state is drawn."""
    continuous_retarget: float = 0.5
    """continuous_share: share of the chained problems given a fresh target (a new target while moving);
    the others keep the chain's current target (keep reaching, keep holding)."""
    continuous_kick: float = 0.0
    """continuous_share: share of the chained problems whose drawn state also gets a velocity kick
    U(-h, h) per joint, h = moving_start_speed: a push (a bump, a contact) while moving or holding."""
    moving_start_share: float = 0.0
    """pddp: share of each OC phase's problems whose x0 gets joint velocities U(-h, h), h = moving_start_speed."""
    moving_start_speed: float = 0.5
    """moving_start_share: half-width h of the sampled joint velocities (rad/s)."""
    mu: float = 1.0
    """Augmented-Lagrangian penalty μ (plal, dpl), in units of the task's cost per (N·m)²."""
    dual_decay: float = 1.0
    """plal: λ ← dual_decay · λ + μ (u − π(x)) (and γ alike). 1 is the paper's dual ascent, whose λ/μ
    sums every past residual: where the network cannot reach consensus it grows without bound and the
    regression targets u + λ/μ drift with it. Below 1, λ/μ settles at residual / (1 − dual_decay)."""
    problem_refresh: float = 0.0
    """plal, dpl (pddp draws fresh problems anyway): share of the N problems replaced by fresh draws at
    the start of every OC phase after the first (their λ and γ restart at 0, their ²x is the policy's
    rollout). 0 is the paper's fixed set (it leaves resampling as future work, Sec. IV); on a fixed set the
    policy fits its N problems better than fresh ones (UR5 PLAL+M+S, 256 problems: 0.83 cm on them,
    1.21 cm held out) and drifts."""
    mu_schedule: str = "fixed"
    """'fixed' μ, or 'bcl': the bound-constrained Lagrangian strategy of Conn, Gould & Toint (1991) —
    update λ when the consensus error met its tolerance η (then tighten η), else grow μ (beyond the paper)."""
    mu_growth: float = 10.0
    """bcl: factor by which μ grows when the consensus error missed its tolerance."""
    mu_max: float = 1e4
    """bcl: upper bound on μ."""
    epochs: int = 20
    """Passes over the supervised data per iteration."""
    supervised_steps: int = 0
    """Adam steps per supervised phase on mini-batches drawn uniformly from the replay buffer; 0: `epochs`
    full passes over it (the paper's setup), whose cost grows with the buffer."""
    batch_size: int = 256
    """Mini-batch size of the supervised phase."""
    weight_average: float = 0.0
    """Supervised phase: decay of an exponential moving average of the weights over its Adam steps;
    the phase ends on the averaged weights, which damps the step-to-step noise the delivered and the
    next iteration's policy would otherwise inherit (0: off, the last step's weights)."""
    device: str = "cpu"
    """Torch device of the supervised phase ('cpu', 'cuda', 'cuda:1', ...); the OC phase and every rollout
    stay on the CPU, and so does the policy between supervised phases."""
    learning_rate: float = 1e-3
    """Adam learning rate at the first iteration."""
    learning_rate_final: float | None = None
    """Learning rate at the last iteration, reached geometrically (None: constant). Lowering it settles
    the policy once the OC data stop changing, instead of letting it drift."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer widths of the policy MLP."""
    activation: str = "relu"
    """Hidden activation of the policy MLP: 'relu' (the paper's), 'silu' or 'tanh' (smooth: its input
    Jacobian, which the Sobolev term fits, is continuous)."""
    eval_problems: int = 100
    """Held-out problems evaluated after every iteration (fixed set, drawn from eval_seed)."""
    eval_seed: int = 1_000_003
    """Seed of the held-out problems (disjoint from training seeds)."""
    eval_hold_seconds: list[float] = field(default_factory=lambda: [3.0, 10.0])
    """Continuous-use evaluation (training/evaluation/continuous.py, robot tasks) after every iteration: times after the
    start (s) at which the held-out hold error is read, besides T; plus a sequence of targets, moving starts
    and a push. Empty: none of it."""
    eval_every: int = 1
    """Held-out, continuous-use and validation evaluation every this many iterations and at the last (the
    evaluations cost more than a small OC phase); the rows in between carry the training figures only, and
    select_best chooses among the evaluated iterates."""
    eval_final_hold_seconds: float = 60.0
    """The last iteration also reads the hold at this time (s; 0: not): too long a rollout for every iteration."""
    select_best: bool = False
    """Export the iterate that scored best on a validation set (validation_problems rollouts, no TO solves:
    share within tolerance, then mean policy cost) instead of the last one. The held-out set plays no part
    in the choice, so its figures stay an unbiased estimate. For runs whose quality swings between iterations."""
    validation_problems: int = 200
    """Validation problems rolled out after every iteration (drawn from validation_seed)."""
    validation_seed: int = 2_000_003
    """Seed of the validation problems (disjoint from training and held-out seeds)."""
    seed: int = 0
    """Seed of the policy initialisation, the problem sampling and the Sobolev directions."""
    workers: int = 0
    """Worker processes of the OC phase: 0 = one per core, 1 = in-process."""
    backend: str = "process"
    """Where the OC phase runs: 'process' (a spawn process pool on this machine) or 'ray' (one Ray actor per
    worker, on a local Ray instance or on the cluster at ray_address; needs the 'ray' extra, see docs/ray.md).
    Same seed, same result on either. With 'ray', workers = 0 means one per CPU of the Ray cluster."""
    ray_address: str = ""
    """backend 'ray': address of a running Ray cluster (head 'IP:6379', or 'auto' on a cluster node); empty:
    start a local Ray instance on loopback for the run and shut it down at the end."""

    def _check_device(self) -> None:
        import torch  # only here: the rest of the config needs no torch

        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise FieldError("device", f"not a torch device: '{self.device}' ({exc})") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise FieldError("device", f"'{self.device}': CUDA is not available on this machine (use 'cpu')")
        if device.type not in ("cpu", "cuda"):
            raise FieldError("device", f"'{self.device}': only 'cpu' and 'cuda' devices are supported")

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise FieldError("algo", f"unknown algorithm '{self.algo}' (known: {', '.join(ALGORITHMS)})")
        if self.warm_start not in WARM_STARTS:
            raise FieldError("warm_start", f"unknown warm start '{self.warm_start}' (known: {', '.join(WARM_STARTS)})")
        if self.mu_schedule not in MU_SCHEDULES:
            raise FieldError("mu_schedule", f"unknown schedule '{self.mu_schedule}' (known: {', '.join(MU_SCHEDULES)})")
        for name in ("sobolev_weight", "oc_th_stop", "mu", "mu_growth", "mu_max", "learning_rate"):
            if not math.isfinite(getattr(self, name)):  # direct construction skips the YAML loader's check
                raise FieldError(name, f"must be a finite number, got {getattr(self, name)}")
        if self.learning_rate_final is not None and not math.isfinite(self.learning_rate_final):
            raise FieldError("learning_rate_final", f"must be a finite number, got {self.learning_rate_final}")
        if not 0.0 <= self.dual_decay <= 1.0:
            raise FieldError("dual_decay", f"must be in [0, 1], got {self.dual_decay}")
        if not 0.0 <= self.weight_average < 1.0:
            raise FieldError("weight_average", f"must be in [0, 1) (a decay per Adam step), got {self.weight_average}")
        if not 0.0 <= self.problem_refresh <= 1.0:
            raise FieldError("problem_refresh", f"must be in [0, 1] (a share of the problems), got {self.problem_refresh}")
        for name in ("continuous_share", "continuous_retarget", "continuous_kick", "moving_start_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FieldError(name, f"must be in [0, 1] (a share of the problems), got {getattr(self, name)}")
        if self.continuous_share + self.moving_start_share > 1.0:
            raise FieldError("moving_start_share", f"continuous_share + moving_start_share must be <= 1, got "
                             f"{self.continuous_share} + {self.moving_start_share}")
        if (self.continuous_share or self.moving_start_share) and self.algo != "pddp":
            raise FieldError("continuous_share", f"continuous-use problems are drawn by pddp only (algo is "
                             f"'{self.algo}', whose problems are a fixed set): set continuous_share and moving_start_share "
                             f"to 0 (ur5_reach: --task ur5_reach_fixed_horizon)")
        if self.continuous_chain < 1:
            raise FieldError("continuous_chain", f"must be >= 1, got {self.continuous_chain}")
        if self.moving_start_speed < 0:
            raise FieldError("moving_start_speed", f"must be >= 0, got {self.moving_start_speed}")
        if self.oc_warm_start_probe < 0:
            raise FieldError("oc_warm_start_probe", f"must be >= 0 (0: no probe), got {self.oc_warm_start_probe}")
        if self.mu_growth <= 1:
            raise FieldError("mu_growth", f"must be > 1, got {self.mu_growth}")
        if self.mu_max < self.mu:
            raise FieldError("mu_max", f"must be >= mu ({self.mu}), got {self.mu_max}")
        if self.policy_states not in POLICY_STATES:
            raise FieldError("policy_states", f"unknown source '{self.policy_states}' (known: {', '.join(POLICY_STATES)})")
        if self.multiple_shooting and self.algo != "plal":
            raise FieldError("multiple_shooting", "multiple shooting (+M) is a variant of plal")
        for name in ("iterations", "problems", "replay", "oc_max_iter", "epochs", "batch_size", "eval_problems", "eval_every",
                     "validation_problems"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("mu", "learning_rate", "oc_th_stop"):
            if getattr(self, name) <= 0:
                raise FieldError(name, f"must be > 0, got {getattr(self, name)}")
        if self.learning_rate_final is not None and self.learning_rate_final <= 0:
            raise FieldError("learning_rate_final", f"must be > 0, got {self.learning_rate_final}")
        if self.sobolev_weight < 0:
            raise FieldError("sobolev_weight", f"must be >= 0, got {self.sobolev_weight}")
        self._check_device()
        if self.supervised_steps < 0:
            raise FieldError("supervised_steps", f"must be >= 0 (0: full epochs), got {self.supervised_steps}")
        if self.sobolev_gains not in ("solver", "solution", "task"):
            raise FieldError("sobolev_gains", f"'solver', 'solution' or 'task', got '{self.sobolev_gains}'")
        for name in ("seed", "eval_seed", "validation_seed"):
            if getattr(self, name) < 0:  # numpy's generators take non-negative seeds only
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")
        if not self.task:
            raise FieldError("task", "empty task name")
        if self.workers < 0:
            raise FieldError("workers", f"must be >= 0, got {self.workers}")
        if self.backend not in BACKENDS:
            raise FieldError("backend", f"unknown OC phase backend '{self.backend}' (known: {', '.join(BACKENDS)})")
        if self.ray_address and self.backend != "ray":
            raise FieldError("ray_address", f"is only used with backend 'ray' (backend is '{self.backend}')")
        if any(not math.isfinite(s) or s <= 0 for s in self.eval_hold_seconds) or not (
                math.isfinite(self.eval_final_hold_seconds) and self.eval_final_hold_seconds >= 0):
            raise FieldError("eval_hold_seconds", f"times must be > 0 s, got {self.eval_hold_seconds} and "
                             f"eval_final_hold_seconds {self.eval_final_hold_seconds}")
        if self.activation not in ACTIVATIONS:
            raise FieldError("activation", f"unknown activation '{self.activation}' (known: {', '.join(ACTIVATIONS)})")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise FieldError("hidden", f"needs at least one positive width, got {self.hidden}")

    @property
    def variant(self) -> str:
        """The paper's name of this configuration, e.g. 'PLAL+M+S' or 'PDDP-C'."""
        name = self.algo.upper()
        name += "+M" if self.multiple_shooting else ""
        name += "+BCL" if self.mu_schedule == "bcl" and self.algo == "plal" else ""
        name += "+S" if self.sobolev else ""
        return name + ("" if self.constrained else "-C")
