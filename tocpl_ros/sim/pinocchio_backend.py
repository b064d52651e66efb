"""The Pinocchio physics backend of the simulated arm (``backend: pinocchio``, the default; ROS-free).

It is the model the OCPs and the policies are built on. Physics (one step of length h):

- motor torque τ: the command of the active mode (:mod:`tocpl_ros.sim.base`), saturated at the URDF
  effort limits; this is what a JointState reports as ``effort``;
- joint losses: viscous damping ``d·v`` and smooth Coulomb friction ``f_c·tanh(v/ε)``
  (both per joint, both always opposing v, so they never inject energy);
- semi-implicit Euler like Crocoddyl's ``IntegratedActionModelEuler``:
  ``v' = v + h·a``, ``q' = q ⊕ h·v'``. Without losses ``a = aba(q, v, τ)`` exactly; with
  losses the dissipative terms are taken linearly implicit,
  ``a = (M + h·D(v))⁻¹ (τ − b(q, v) − d·v − f_c·tanh(v/ε))`` with
  ``D(v) = diag(d + f_c/ε·sech²(v/ε))``, which stays stable for any damping, friction,
  link inertia and step (an explicit treatment blows up once h·d/M > 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pinocchio as pin

from tocpl_ros.config import FieldError
from tocpl_ros.sim.base import SimulatorBase
from tocpl_ros.sim.config import SimConfig


class ArmSimulator(SimulatorBase):
    """The Pinocchio backend (``backend: pinocchio``): the robot's controlled joints
    (revolute, prismatic, continuous; the others locked), simulated by ABA and semi-implicit
    Euler (see the module docstring for the physics).

    The state ``q`` is one position per joint, as /joint_states carries it (a continuous joint's
    angle is not wrapped); Pinocchio gets the model's q (cos θ, sin θ of a continuous joint)."""

    backend = "pinocchio"

    # -- construction --------------------------------------------------------------------
    def _load(self, config: SimConfig) -> None:
        self.model = self.robot.model  # the simulator's own copy (load_sim_robot): the payload goes into it
        self.effort_limit = self.robot.effort_limit.copy()
        self.velocity_limit = self.robot.velocity_limit.copy()
        self._attach_payload(config.payload_mass, self.payload_frame, np.array(config.payload_com, dtype=float))
        self.data = self.model.createData()

    def _attach_payload(self, mass: float, frame: str, com: np.ndarray) -> None:
        if mass == 0:  # no payload: its frame is not needed, so a URDF without it is fine
            return
        if not self.model.existFrame(frame):
            raise FieldError("payload_frame", f"frame '{frame}' is not in {self.urdf_file}")
        f = self.model.frames[self.model.getFrameId(frame)]
        payload = pin.Inertia(mass, com, np.zeros((3, 3)))  # point mass, in the frame
        joint = f.parentJoint
        self.model.inertias[joint] = self.model.inertias[joint] + f.placement.act(payload)

    # -- dynamics --------------------------------------------------------------------------
    def acceleration(self, q: np.ndarray, v: np.ndarray, tau: np.ndarray, h: float | None = None) -> np.ndarray:
        """Joint acceleration for motor torque ``tau`` (losses linearly implicit over ``h``)."""
        if not self.has_losses:
            return pin.aba(self.model, self.data, self._model_q(q), v, tau).copy()
        h = self.dt if h is None else h
        mass = self.mass_matrix(q)
        bias = pin.nonLinearEffects(self.model, self.data, self._model_q(q), v)
        return np.linalg.solve(mass + h * np.diag(self._loss_slope(v)), tau - bias - self.losses(v))

    def mass_matrix(self, q: Sequence[float] | None = None) -> np.ndarray:
        q = self.q if q is None else np.asarray(q, dtype=float)
        mass = pin.crba(self.model, self.data, self._model_q(q))
        return np.triu(mass) + np.triu(mass, 1).T

    def bias(self, q: Sequence[float] | None = None, v: Sequence[float] | None = None) -> np.ndarray:
        q = self.q if q is None else np.asarray(q, dtype=float)
        v = self.v if v is None else np.asarray(v, dtype=float)
        return pin.nonLinearEffects(self.model, self.data, self._model_q(q), v).copy()

    def gravity(self, q: Sequence[float] | None = None) -> np.ndarray:
        q = self.q if q is None else np.asarray(q, dtype=float)
        return pin.computeGeneralizedGravity(self.model, self.data, self._model_q(q)).copy()

    def energy(self) -> float:
        q = self._model_q(self.q)
        kinetic = pin.computeKineticEnergy(self.model, self.data, q, self.v)
        return float(kinetic + pin.computePotentialEnergy(self.model, self.data, q))

    def inverse_dynamics(self, q: np.ndarray, v: np.ndarray, a: np.ndarray) -> np.ndarray:
        return pin.rnea(self.model, self.data, self._model_q(q), v, a).copy()

    def _model_q(self, q: np.ndarray) -> np.ndarray:
        """The model's q of joint positions (the same array without continuous joints)."""
        return q if self.robot.nq == self.robot.nv else self.robot.q_from_positions(q)

    def _difference(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        # on the model's configuration space: a continuous joint's difference wraps to (−π, π]
        return pin.difference(self.model, self._model_q(q0), self._model_q(q1))

    def _advance(self, tau: np.ndarray, h: float) -> None:
        """Semi-implicit Euler: v' = v + h·a, q' = q ⊕ h·v' (in joint positions: q + h·v')."""
        a = self.acceleration(self.q, self.v, tau, h)
        self.v = self.v + h * a
        if self.robot.nq == self.robot.nv:
            self.q = pin.integrate(self.model, self.q, h * self.v)
        else:  # angles: a continuous joint's position accumulates like its encoder's
            self.q = self.q + h * self.v
