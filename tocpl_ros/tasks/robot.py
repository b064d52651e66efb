"""Robot tasks: inverted (double) pendulum and end-effector reaching.

The robot (model, joints, end-effector frame, nominal posture) comes from its description,
``config/robots/<robot>.yaml`` (:func:`tocpl_ros.robot.load_robot`), or, for a task config that
names a URDF alone, from that URDF with every movable joint actuated.

The dynamics are Pinocchio's forward dynamics integrated like Crocoddyl's
``IntegratedActionModelEuler`` (semi-implicit: v' = v + dt·a, q' = q ⊕ dt·v'),
so a policy rollout and the OCP see the same discrete system.
"""

from __future__ import annotations

import crocoddyl
import numpy as np
import pinocchio as pin

from tocpl_ros.config import FieldError
from tocpl_ros.pose import pose_target, rotation_angle, target_rotation
from tocpl_ros.robot import RobotModel, load_robot
from tocpl_ros.tasks.base import Problems, Task
from tocpl_ros.tasks.config import TaskConfig


def task_robot(config: TaskConfig) -> RobotModel:
    """The robot of a task config: its ``robot`` description, else its ``urdf`` (every movable
    joint actuated). A missing file is a FieldError of that key; a wrong robot YAML raises the
    ConfigError naming that file."""
    key = "robot" if config.robot is not None else "urdf"
    try:
        if config.robot is not None:
            return load_robot(config.robot)
        return RobotModel.from_urdf(config.urdf, config.frame)
    except FileNotFoundError as exc:
        raise FieldError(key, str(exc)) from exc


IK_ITERATIONS = 200
IK_DAMPING = 1e-8
"""Damping of the least-squares IK (m²): a regularisation only, the targets are reachable."""
IK_NULL_GAIN = 0.5
"""Share of the null-space pull to q_nominal per IK step."""


class RobotTask(Task):
    """A robot's controlled joints, state x = (q, v), torque box.

    q is the model's configuration (nq entries: cos θ, sin θ for a continuous joint, one entry for
    a revolute or prismatic one), v one velocity per joint (nv); nx = nq + nv. Postures the
    config or the robot YAML give (``q_nominal``, sampled postures) are joint positions, one per
    joint (:meth:`RobotModel.q_from_positions` converts).

    Cost terms (weights scalar or per entry):
      running: 'position' ½‖p(q) − p̄‖² of the configured frame, 'velocity' ½‖v‖²,
               'control' ½‖u‖², 'control_gravity' ½‖u − g(q)‖² (the torque beyond
               gravity compensation), 'posture' ½‖q − q_nominal‖², 'target_posture'
               ½‖q − q*(p̄)‖² (reach: q* the posture on the target nearest q_nominal,
               :meth:`ReachTask.target_posture`);
      terminal: 'position', 'velocity', 'posture', 'target_posture';
      both: 'orientation' ½‖log₃(R̄ᵀR(q))‖² of the frame's rotation (rad; reach with pose targets),
            'velocity_limit' ½‖max(|v| − f·v_max, 0)‖² (a quadratic barrier on the joint speeds
            beyond the factor f = ``velocity_limit_factor`` of the robot's velocity limits; scalar
            weight only).
    """

    running_terms = ("position", "orientation", "velocity", "velocity_limit", "control", "control_gravity", "posture",
                     "target_posture")
    terminal_terms = ("position", "orientation", "velocity", "velocity_limit", "posture", "target_posture")

    def __init__(self, name: str, config: TaskConfig):
        super().__init__(name, config)
        self.robot = task_robot(config)
        self.model, self.data, self.urdf_file = self.robot.model, self.robot.data, self.robot.urdf_file
        frame = config.frame if config.frame is not None else self.robot.end_effector_frame
        if not self.model.existFrame(frame):
            raise FieldError("frame", f"frame '{frame}' is not in {self.urdf_file.name}")
        self.frame = frame
        self.frame_id = self.model.getFrameId(frame)
        self.nq, self.nv = self.model.nq, self.model.nv
        self.nx, self.nu = self.nq + self.nv, self.nv
        self.joint_names = list(self.robot.joint_names)
        self.joint_encodings = list(self.robot.joint_encodings)
        u_max = np.array(config.u_limit if config.u_limit is not None else self.robot.effort_limit, dtype=float)
        if u_max.shape != (self.nu,) or (u_max <= 0).any():
            raise FieldError("u_limit", f"torque bounds must be {self.nu} positive values, got {u_max} (u_limit or the URDF effort limits)")
        self.u_max, self.u_min = u_max, -u_max
        q_nominal = config.sampling.q_nominal
        self.q_nominal = self.robot.nominal_posture.copy() if q_nominal is None else np.array(q_nominal, dtype=float)
        if self.q_nominal.shape != (self.nv,):
            raise FieldError("sampling.q_nominal", f"needs {self.nv} values (one per joint), got {len(self.q_nominal)}")
        self.q_nominal_model = self.robot.q_from_positions(self.q_nominal)
        """q_nominal as the model's q (nq)."""
        s = config.sampling
        for key, h in (("sampling.q0_halfwidth", s.q0_halfwidth), ("sampling.target_joint_halfwidth", s.target_joint_halfwidth)):
            lo, hi = self._sampling_interval(h)
            if (lo > hi).any() or (h > 0 and (lo == hi).any()):
                bad = [n for n, a, b in zip(self.joint_names, lo, hi) if a > b or (h > 0 and a == b)]
                raise FieldError(key, f"q_nominal ± {h} leaves nothing within the sampling ranges and soft limits of "
                                      f"joints {bad} ({self.robot.source or 'the robot'})")
        self.obs_layout = [("q", self.nq), ("v", self.nv)]
        self.state = crocoddyl.StateMultibody(self.model)
        self.actuation = crocoddyl.ActuationModelFull(self.state)
        self._weights = {
            phase: {term: self._weight(phase, term, w) for term, w in getattr(config.costs, phase).items()}
            for phase in ("running", "terminal")
        }

    # -- costs ------------------------------------------------------------
    def _term_size(self, term: str) -> int:
        return {"position": 3, "orientation": 3, "velocity": self.nv, "posture": self.nv, "target_posture": self.nv}.get(term, self.nu)

    def _weight(self, phase: str, term: str, weight) -> np.ndarray:
        if term == "velocity_limit":
            return self._velocity_limit_weight(phase, weight)
        size = self._term_size(term)
        w = np.full(size, float(weight)) if np.ndim(weight) == 0 else np.asarray(weight, dtype=float)
        if w.shape != (size,):
            raise FieldError(f"costs.{phase}.{term}", f"expected a scalar or {size} weights, got {len(w)}")
        return w

    def _velocity_limit_weight(self, phase: str, weight) -> np.ndarray:
        # Crocoddyl's weighted barrier's Hessian does not match its gradient: one scalar weight instead
        key = f"costs.{phase}.velocity_limit"
        if np.ndim(weight) != 0:
            raise FieldError(key, f"takes one scalar weight, got {weight}")
        limit = self.robot.velocity_limit
        if limit.shape != (self.nv,) or not (np.isfinite(limit) & (limit > 0)).all():
            raise FieldError(key, f"needs a velocity limit > 0 for every joint ({self.robot.source or self.urdf_file.name}: "
                                  f"velocity_limits), got {limit}")
        return np.array([float(weight)])

    def velocity_bound(self) -> np.ndarray:
        """Per joint, the speed beyond which the 'velocity_limit' term costs (rad/s or m/s):
        ``velocity_limit_factor`` × the robot's velocity limit."""
        return self.config.velocity_limit_factor * self.robot.velocity_limit

    def _velocity_barrier(self) -> crocoddyl.ActivationModelQuadraticBarrier:
        """½‖max(v − b, 0) + min(v + b, 0)‖² on the tangent state residual: no bound on its q half."""
        free = np.full(self.nv, np.inf)
        bound = np.concatenate([free, self.velocity_bound()])
        return crocoddyl.ActivationModelQuadraticBarrier(crocoddyl.ActivationBounds(-bound, bound))

    def _residual(self, term: str, target: np.ndarray):
        # state residuals live in the tangent space (ndx = 2 nv): the masks pick its q or v half
        zeros, ones = np.zeros(self.nv), np.ones(self.nv)
        if term == "position":  # targets are in the base frame, Crocoddyl's frame positions in the world's
            world = self.robot.world_position(target[:3])  # a pose target: its position part
            return crocoddyl.ResidualModelFrameTranslation(self.state, self.frame_id, world, self.nu), None
        if term == "orientation":  # log₃(R̄ᵀR), in the frame's own axes
            world = self.robot.world_rotation(target_rotation(target))
            return crocoddyl.ResidualModelFrameRotation(self.state, self.frame_id, world, self.nu), None
        if term in ("velocity", "velocity_limit"):
            xref = np.concatenate([pin.neutral(self.model), zeros])  # a valid q (cos, sin), masked out
            return crocoddyl.ResidualModelState(self.state, xref, self.nu), np.concatenate([zeros, ones])
        if term in ("posture", "target_posture"):
            q_ref = self.q_nominal if term == "posture" else self.target_posture(target)
            xref = np.concatenate([self.robot.q_from_positions(q_ref), zeros])
            return crocoddyl.ResidualModelState(self.state, xref, self.nu), np.concatenate([ones, zeros])
        if term == "control":
            return crocoddyl.ResidualModelControl(self.state, self.nu), None
        return crocoddyl.ResidualModelControlGrav(self.state, self.nu), None

    def _cost_model(self, phase: str, target: np.ndarray) -> crocoddyl.CostModelSum:
        costs = crocoddyl.CostModelSum(self.state, self.nu)
        for term, weight in self._weights[phase].items():
            residual, mask = self._residual(term, target)
            if term == "velocity_limit":
                costs.addCost(term, crocoddyl.CostModelResidual(self.state, self._velocity_barrier(), residual), weight[0])
                continue
            full = weight if mask is None else self._expand(weight, mask)
            activation = crocoddyl.ActivationModelWeightedQuad(full)
            costs.addCost(term, crocoddyl.CostModelResidual(self.state, activation, residual), 1.0)
        return costs

    @staticmethod
    def _expand(weight: np.ndarray, mask: np.ndarray) -> np.ndarray:
        full = np.zeros(mask.size)
        full[mask > 0] = weight
        return full

    def goal_of(self, problem: Problems) -> np.ndarray:
        """Position the frame should reach in this problem."""
        return problem.target[0]

    def build_problem(self, problem=None, constrained=None):
        constrained = self.config.constrained if constrained is None else constrained
        if problem is None:
            problem = self.nominal_problem()
        goal = self.goal_of(problem)

        def action_model(phase: str, dt: float):
            dam = crocoddyl.DifferentialActionModelFreeFwdDynamics(self.state, self.actuation, self._cost_model(phase, goal))
            model = crocoddyl.IntegratedActionModelEuler(dam, dt)
            # Crocoddyl takes the URDF effort limits as the box by default:
            # set ours, or lift it entirely for the unconstrained ('-C') variant.
            unbounded = np.full(self.nu, np.inf)
            model.u_lb, model.u_ub = (self.u_min.copy(), self.u_max.copy()) if constrained else (-unbounded, unbounded)
            return model

        running = [action_model("running", self.dt) for _ in range(self.horizon)]
        return crocoddyl.ShootingProblem(problem.x0[0].copy(), running, action_model("terminal", 0.0))

    def set_problem(self, shooting, problem):
        shooting.x0 = problem.x0[0].copy()
        goal = self.goal_of(problem)
        for model in [*shooting.runningModels, shooting.terminalModel]:
            costs = model.differential.costs.costs
            terms = costs.todict()
            if "position" in terms:
                costs["position"].cost.residual.reference = self.robot.world_position(goal[:3])
            if "orientation" in terms:
                costs["orientation"].cost.residual.reference = self.robot.world_rotation(target_rotation(goal))
            if "target_posture" in terms:
                q_ref = self.robot.q_from_positions(self.target_posture(goal))
                costs["target_posture"].cost.residual.reference = np.concatenate([q_ref, np.zeros(self.nv)])

    def nominal_problem(self) -> Problems:
        x0 = np.concatenate([self.q_nominal_model, np.zeros(self.nv)])[None]
        return Problems(x0, self.frame_target(self.q_nominal_model[None])[:, : self.target_dim])

    # -- dynamics ----------------------------------------------------------
    def step(self, x, u):
        x_next = np.empty_like(x)
        nq, dt = self.nq, self.dt
        for i in range(len(x)):
            q, v = x[i, :nq], x[i, nq:]
            a = pin.aba(self.model, self.data, q, v, u[i])
            v_next = v + dt * a
            x_next[i, :nq] = pin.integrate(self.model, q, dt * v_next)
            x_next[i, nq:] = v_next
        return x_next

    def target_posture(self, target: np.ndarray) -> np.ndarray:
        raise FieldError("costs", f"'target_posture' needs a reach task (a target position), not {type(self).__name__}")

    def frame_position(self, q: np.ndarray) -> np.ndarray:
        """Positions of the task frame for configurations [B, nq] -> [B, 3]."""
        out = np.empty((len(q), 3))
        for i, qi in enumerate(q):
            out[i] = self.robot.frame_position(qi, self.frame_id)
        return out

    def frame_rotation(self, q: np.ndarray) -> np.ndarray:
        """Rotation matrices of the task frame in the base frame for configurations [B, nq] -> [B, 3, 3]."""
        return np.stack([self.robot.frame_rotation(qi, self.frame_id) for qi in q]) if len(q) else np.empty((0, 3, 3))

    def frame_target(self, q: np.ndarray) -> np.ndarray:
        """The target a configuration [B, nq] reaches: its frame position [B, 3]; with pose
        targets the position and the rotation's first two columns [B, 9] (:func:`pose_target`)."""
        if self.config.target_kind != "pose":
            return self.frame_position(q)
        placements = [self.robot.frame_placement(qi, self.frame_id) for qi in q]  # one forward kinematics each
        return pose_target(np.array([m.translation for m in placements]).reshape(-1, 3),
                           np.array([m.rotation for m in placements]).reshape(-1, 3, 3))

    def _sampling_interval(self, h: float) -> tuple[np.ndarray, np.ndarray]:
        """Per joint, [q_nominal − h, q_nominal + h] within the robot's sampling ranges."""
        return (np.maximum(self.q_nominal - h, self.robot.sampling_lower),
                np.minimum(self.q_nominal + h, self.robot.sampling_upper))

    def sample_positions(self, n: int, h: float, rng: np.random.Generator) -> np.ndarray:
        """n postures [n, nv] (joint positions): q_nominal + U(-h, h) per joint; a joint whose
        interval the robot's sampling ranges or soft limits cut samples uniformly what is left
        (the same draw, rescaled: a robot that cuts nothing gets exactly q_nominal + U(-h, h))."""
        offsets = rng.uniform(-h, h, (n, self.nv))
        q = self.q_nominal + offsets
        lo, hi = self._sampling_interval(h)
        cut = (lo > self.q_nominal - h) | (hi < self.q_nominal + h)
        if h > 0 and cut.any():
            q = np.where(cut, lo + (offsets + h) / (2 * h) * (hi - lo), q)
        return q

    def sample_x0(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """x0 = (q_nominal + U(-h0, h0), U(-hv, hv)) per joint (see :meth:`sample_positions`)."""
        s = self.config.sampling
        q0 = self.robot.q_from_positions(self.sample_positions(n, s.q0_halfwidth, rng))
        v0 = rng.uniform(-s.v0_halfwidth, s.v0_halfwidth, (n, self.nv))
        return np.concatenate([q0, v0], axis=1)

    def state_jacobian(self, x: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
        """Jacobians [M, nu, 2 nv] with respect to the tangent dx at states x [M, nx] (Crocoddyl's
        gains) as Jacobians [M, nu, nx] with respect to x itself (the policy's input): J·E⁺ with
        E = ∂x/∂dx, so that (J·E⁺)·E = J along the joints' motions. For a robot without continuous
        joints x and dx are the same: returned as is."""
        if self.nq == self.nv:
            return jacobian
        out = np.empty((len(x), jacobian.shape[1], self.nx))
        for i, xi in enumerate(x):
            out[i] = jacobian[i] @ np.linalg.pinv(self._dx_to_x(xi[: self.nq]))
        return out

    def _dx_to_x(self, q: np.ndarray) -> np.ndarray:
        """E = ∂x/∂dx [nx, 2 nv] at configuration q: d(cos θ, sin θ)/dθ = (−sin θ, cos θ) for a
        continuous joint, 1 otherwise, and the identity for v."""
        E = np.zeros((self.nx, 2 * self.nv))
        for j, i in enumerate(self.robot.q_index):
            if self.robot.is_continuous[j]:
                E[i, j], E[i + 1, j] = -q[i + 1], q[i]
            else:
                E[i, j] = 1.0
        E[self.nq:, self.nv:] = np.eye(self.nv)
        return E

    def gravity(self, q: np.ndarray) -> np.ndarray:
        """Gravity torques g(q) for configurations [B, nq] -> [B, nv]."""
        return np.stack([self.robot.gravity(qi) for qi in q])


class UprightTask(RobotTask):
    """Stabilise a pendulum chain at its upright equilibrium q = 0 from sampled states.

    The target p̄ is the tip position at q = 0; the final error is the largest
    absolute link angle from the vertical (rad), wrapped to [-π, π].
    """

    error_unit = "rad"

    def __init__(self, name, config):
        super().__init__(name, config)
        self.upright_position = self.frame_position(np.zeros((1, self.nq)))[0]

    def goal_of(self, problem):
        return self.upright_position

    def sample(self, n, seed):
        return Problems(self.sample_x0(n, np.random.default_rng(seed)), np.zeros((n, 0)))

    def final_error(self, x, target):
        link_angles = np.cumsum(x[:, : self.nq], axis=1)  # planar chain: absolute angle of each link
        return np.abs(np.angle(np.exp(1j * link_angles))).max(axis=1)


class ReachTask(RobotTask):
    """Bring the end effector to a sampled target position and stop there.

    β = (x0, target): q0 = q_nominal + U(-h0, h0), v0 = U(-hv, hv), target =
    p(q_nominal + U(-ht, ht)). The observation appends the target to (q, v); the
    final error is the distance of the frame to the target (m).
    """

    error_unit = "m"
    target_dim = 3

    def __init__(self, name, config):
        self._target_postures: dict[bytes, np.ndarray] = {}
        self.target_dim = 9 if config.target_kind == "pose" else 3
        super().__init__(name, config)
        for phase in ("running", "terminal"):
            if "orientation" in getattr(config.costs, phase) and config.target_kind != "pose":
                raise FieldError(f"costs.{phase}.orientation", "needs pose targets (target_kind: pose)")
        self.obs_layout = [("q", self.nq), ("v", self.nv), ("target", self.target_dim)]

    def sample(self, n, seed):
        rng = np.random.default_rng(seed)
        x0 = self.sample_x0(n, rng)
        q_target = self.sample_positions(n, self.config.sampling.target_joint_halfwidth, rng)
        return Problems(x0, self.frame_target(self.robot.q_from_positions(q_target)))

    def final_error(self, x, target):
        """Distance of the frame to the target position (m); a pose target's orientation error is
        :meth:`orientation_error`."""
        return np.linalg.norm(self.frame_position(x[:, : self.nq]) - target[:, :3], axis=1)

    @property
    def has_orientation(self) -> bool:
        """Pose targets: an orientation error to report next to the position error."""
        return self.target_dim == 9

    def orientation_error(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Angle (rad) of the rotation between the frame and the pose target, states [B, nx] and
        targets [B, 9] -> [B]; zeros for position targets."""
        if not self.has_orientation:
            return np.zeros(len(x))
        rotations = self.frame_rotation(x[:, : self.nq])
        return np.array([rotation_angle(target_rotation(t), r) for r, t in zip(rotations, target)], dtype=float)

    def target_posture(self, target: np.ndarray) -> np.ndarray:
        """q*(p̄), joint positions [nv]: the posture that puts the frame on ``target``, nearest
        q_nominal (inverse kinematics by damped least squares with the pull to q_nominal projected
        on the Jacobian's null space), within the soft joint limits. A function of the target alone, so a policy that sees the target can
        learn where to rest; its posture term has no gradient at the target, unlike one around
        q_nominal, which pulls the resting arm off the target."""
        key = np.asarray(target, dtype=float).tobytes()
        cached = self._target_postures.get(key)
        if cached is not None:
            return cached.copy()
        target = np.asarray(target, dtype=float)
        lo, hi = self.robot.soft_lower_limit, self.robot.soft_upper_limit
        world_target = self.robot.world_position(target[:3])
        # a pose target: the rotation too (6 rows; a 6-joint arm has no null space left)
        world_rotation = self.robot.world_rotation(target_rotation(target)) if len(target) == 9 else None
        rows = 3 if world_rotation is None else 6
        q = self.q_nominal.copy()
        eye = np.eye(self.nv)
        for _ in range(IK_ITERATIONS):
            # in joint positions: the Jacobian's columns are d/dθ for revolute and continuous joints alike
            q_model = self.robot.q_from_positions(q)
            pin.framesForwardKinematics(self.model, self.data, q_model)
            error = world_target - self.data.oMf[self.frame_id].translation
            if world_rotation is not None:  # the rotation still to do, in world axes (LOCAL_WORLD_ALIGNED's)
                error = np.concatenate([error, pin.log3(world_rotation @ self.data.oMf[self.frame_id].rotation.T)])
            J = pin.computeFrameJacobian(self.model, self.data, q_model, self.frame_id, pin.LOCAL_WORLD_ALIGNED)[:rows]
            J_pinv = J.T @ np.linalg.inv(J @ J.T + IK_DAMPING * np.eye(rows))
            step = J_pinv @ error + IK_NULL_GAIN * (eye - J_pinv @ J) @ (self.q_nominal - q)
            q = np.clip(q + step, lo, hi)
            if np.abs(step).max() < 1e-10:
                break
        if len(self._target_postures) >= 100_000:
            self._target_postures.clear()
        self._target_postures[key] = q
        return q.copy()
