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
    """A robot's controlled joints (revolute/prismatic), state x = (q, v), torque box.

    Cost terms (weights scalar or per entry):
      running: 'position' ½‖p(q) − p̄‖² of the configured frame, 'velocity' ½‖v‖²,
               'control' ½‖u‖², 'control_gravity' ½‖u − g(q)‖² (the torque beyond
               gravity compensation), 'posture' ½‖q − q_nominal‖², 'target_posture'
               ½‖q − q*(p̄)‖² (reach: q* the posture on the target nearest q_nominal,
               :meth:`ReachTask.target_posture`);
      terminal: 'position', 'velocity', 'posture', 'target_posture'.
    """

    running_terms = ("position", "velocity", "control", "control_gravity", "posture", "target_posture")
    terminal_terms = ("position", "velocity", "posture", "target_posture")

    def __init__(self, name: str, config: TaskConfig):
        super().__init__(name, config)
        self.robot = task_robot(config)
        self.model, self.data, self.urdf_file = self.robot.model, self.robot.data, self.robot.urdf_file
        frame = config.frame if config.frame is not None else self.robot.end_effector_frame
        if not self.model.existFrame(frame):
            raise FieldError("frame", f"frame '{frame}' is not in {self.urdf_file.name}")
        self.frame = frame
        self.frame_id = self.model.getFrameId(frame)
        self.nq = self.model.nq
        self.nx, self.nu = 2 * self.nq, self.model.nv
        self.joint_names = list(self.robot.joint_names)
        u_max = np.array(config.u_limit if config.u_limit is not None else self.robot.effort_limit, dtype=float)
        if u_max.shape != (self.nu,) or (u_max <= 0).any():
            raise FieldError("u_limit", f"torque bounds must be {self.nu} positive values, got {u_max} (u_limit or the URDF effort limits)")
        self.u_max, self.u_min = u_max, -u_max
        q_nominal = config.sampling.q_nominal
        self.q_nominal = self.robot.nominal_posture.copy() if q_nominal is None else np.array(q_nominal, dtype=float)
        if self.q_nominal.shape != (self.nq,):
            raise FieldError("sampling.q_nominal", f"needs {self.nq} values, got {len(self.q_nominal)}")
        self.obs_layout = [("q", self.nq), ("v", self.nq)]
        self.state = crocoddyl.StateMultibody(self.model)
        self.actuation = crocoddyl.ActuationModelFull(self.state)
        self._weights = {
            phase: {term: self._weight(phase, term, w) for term, w in getattr(config.costs, phase).items()}
            for phase in ("running", "terminal")
        }

    # -- costs ------------------------------------------------------------
    def _term_size(self, term: str) -> int:
        return {"position": 3, "velocity": self.nq, "posture": self.nq, "target_posture": self.nq}.get(term, self.nu)

    def _weight(self, phase: str, term: str, weight) -> np.ndarray:
        size = self._term_size(term)
        w = np.full(size, float(weight)) if np.ndim(weight) == 0 else np.asarray(weight, dtype=float)
        if w.shape != (size,):
            raise FieldError(f"costs.{phase}.{term}", f"expected a scalar or {size} weights, got {len(w)}")
        return w

    def _residual(self, term: str, target: np.ndarray):
        zeros = np.zeros(self.nq)
        if term == "position":
            return crocoddyl.ResidualModelFrameTranslation(self.state, self.frame_id, target, self.nu), None
        if term == "velocity":
            return crocoddyl.ResidualModelState(self.state, np.zeros(self.nx), self.nu), np.concatenate([zeros, np.ones(self.nq)])
        if term in ("posture", "target_posture"):
            q_ref = self.q_nominal if term == "posture" else self.target_posture(target)
            xref = np.concatenate([q_ref, zeros])
            return crocoddyl.ResidualModelState(self.state, xref, self.nu), np.concatenate([np.ones(self.nq), zeros])
        if term == "control":
            return crocoddyl.ResidualModelControl(self.state, self.nu), None
        return crocoddyl.ResidualModelControlGrav(self.state, self.nu), None

    def _cost_model(self, phase: str, target: np.ndarray) -> crocoddyl.CostModelSum:
        costs = crocoddyl.CostModelSum(self.state, self.nu)
        for term, weight in self._weights[phase].items():
            residual, mask = self._residual(term, target)
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
                costs["position"].cost.residual.reference = goal
            if "target_posture" in terms:
                costs["target_posture"].cost.residual.reference = np.concatenate([self.target_posture(goal), np.zeros(self.nq)])

    def nominal_problem(self) -> Problems:
        x0 = np.concatenate([self.q_nominal, np.zeros(self.nq)])[None]
        return Problems(x0, self.frame_position(self.q_nominal[None])[:, : self.target_dim])

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

    def sample_x0(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """x0 = (q_nominal + U(-h0, h0), U(-hv, hv)) per joint."""
        s = self.config.sampling
        q0 = self.q_nominal + rng.uniform(-s.q0_halfwidth, s.q0_halfwidth, (n, self.nq))
        v0 = rng.uniform(-s.v0_halfwidth, s.v0_halfwidth, (n, self.nq))
        return np.concatenate([q0, v0], axis=1)

    def gravity(self, q: np.ndarray) -> np.ndarray:
        """Gravity torques g(q) for configurations [B, nq] -> [B, nq]."""
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
        super().__init__(name, config)
        self.obs_layout = [("q", self.nq), ("v", self.nq), ("target", 3)]

    def sample(self, n, seed):
        rng = np.random.default_rng(seed)
        x0 = self.sample_x0(n, rng)
        h = self.config.sampling.target_joint_halfwidth
        q_target = self.q_nominal + rng.uniform(-h, h, (n, self.nq))
        return Problems(x0, self.frame_position(q_target))

    def final_error(self, x, target):
        return np.linalg.norm(self.frame_position(x[:, : self.nq]) - target, axis=1)

    def target_posture(self, target: np.ndarray) -> np.ndarray:
        """q*(p̄): the posture that puts the frame on ``target``, nearest q_nominal (inverse kinematics
        by damped least squares with the pull to q_nominal projected on the Jacobian's null space),
        within the joint limits. A function of the target alone, so a policy that sees the target can
        learn where to rest; its posture term has no gradient at the target, unlike one around
        q_nominal, which pulls the resting arm off the target."""
        key = np.asarray(target, dtype=float).tobytes()
        cached = self._target_postures.get(key)
        if cached is not None:
            return cached.copy()
        target = np.asarray(target, dtype=float)
        lo, hi = self.model.lowerPositionLimit, self.model.upperPositionLimit
        q = self.q_nominal.copy()
        eye = np.eye(self.nq)
        for _ in range(IK_ITERATIONS):
            pin.framesForwardKinematics(self.model, self.data, q)
            error = target - self.data.oMf[self.frame_id].translation
            J = pin.computeFrameJacobian(self.model, self.data, q, self.frame_id, pin.LOCAL_WORLD_ALIGNED)[:3]
            J_pinv = J.T @ np.linalg.inv(J @ J.T + IK_DAMPING * np.eye(3))
            step = J_pinv @ error + IK_NULL_GAIN * (eye - J_pinv @ J) @ (self.q_nominal - q)
            q = np.clip(q + step, lo, hi)
            if np.abs(step).max() < 1e-10:
                break
        if len(self._target_postures) >= 100_000:
            self._target_postures.clear()
        self._target_postures[key] = q
        return q.copy()
