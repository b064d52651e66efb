"""The MuJoCo physics backend of the ``ur5_sim`` node (``backend: mujoco``; ROS-free).

An independent simulator built from the same robot description (its URDF file and controlled
joints, :mod:`tocpl_ros.robot`) as the Pinocchio backend, so that a
policy trained on Pinocchio's dynamics can be tested against other rigid-body code. It has
the interface of :class:`tocpl_ros.sim.base.SimulatorBase` (state, commands, modes, servo,
saturation, ``step``/``reset``/``effort``); :func:`tocpl_ros.sim.make_simulator` builds it.

The model (:func:`build_mujoco_model`):

- ``mujoco.MjSpec`` from the URDF with every ``<visual>``/``<collision>`` element removed
  first (MuJoCo cannot load a URDF whose meshes it cannot find; ``urdf/ur5.urdf`` has none
  anyway, and nothing here collides), and the joints the robot does not control turned into
  fixed joints at their locked positions (as Pinocchio's reduced model locks them). MuJoCo's
  URDF import keeps the link frames (body frame = URDF child-link frame, joint at the body
  origin along the URDF axis), diagonalises every inertia tensor (``body_iquat``: same
  tensor, principal axes) and fuses the links attached by fixed joints into their parents:
  none of that changes the dynamics, M(q) and b(q, v) equal Pinocchio's to ~1e-14 relative
  (test/test_sim_mujoco.py);
- one ``motor`` actuator per joint (gear 1, gain 1, no bias), ``ctrlrange`` and
  ``forcerange`` = ± the URDF effort limit (the importer also sets the joint's
  ``actfrcrange`` to it); the torque is also saturated before it reaches MuJoCo, so
  ``effort`` is exactly the force MuJoCo applies;
- joint losses from the SimConfig: ``damping`` → ``dof_damping`` (viscous, −d·v) and
  ``friction`` → ``dof_frictionloss``. MuJoCo's frictionloss is *dry friction as a soft
  constraint* (it can hold a joint still against any torque below f_c), not the smooth
  ``f_c·tanh(v/ε)`` of the Pinocchio backend: a deliberate model difference
  (``friction_smoothing`` does not apply to the plant, only to the servo's feed-forward);
- the payload: a body (point mass ``payload_mass`` at ``payload_com`` in
  ``payload_frame``, zero rotational inertia) attached to that frame's body; MuJoCo fuses
  it into the link that carries it, as Pinocchio adds it to that joint's inertia;
- ``timestep`` = 1/physics_rate, gravity (0, 0, −9.81), no contacts
  (``mjDSBL_CONTACT``; the model has no geoms anyway) and no joint-limit constraints
  (``mjDSBL_LIMIT``: the Pinocchio backend does not enforce the URDF position limits
  either).

Integrator: MuJoCo's ``Euler``, which is semi-implicit (``v' = v + h·a``,
``q' = q + h·v'``) with the joint damping taken implicitly, ``a = (M + h·D)⁻¹(τ − b − D·v
+ constraint forces)``: the discretisation of the Pinocchio backend and of Crocoddyl's
``IntegratedActionModelEuler``. The backends then differ only by what this backend is for
(independent rigid-body code, MuJoCo's friction constraint and actuator clamping), not by
an integration error. ``implicitfast`` would give the same steps here (motors have no
velocity-dependent force, damping is already implicit); ``implicit`` and ``RK4`` are
available through the ``integrator`` argument for experiments.

Velocity / position modes: the computed-torque servo of :class:`~tocpl_ros.sim.base.SimulatorBase`
(same a_ref, gains and saturation) with MuJoCo's own model for the inverse dynamics: the
torque is ``mj_inverse`` at (q, v, a_ref) with ``mjENBL_INVDISCRETE``, i.e. the exact inverse
of the next Euler step, ``M(q)·a_ref + qfrc_bias(q, v) + D·(v + h·a_ref)`` plus the
friction constraint's force (without losses it is ``mj_fullM``·a_ref + ``qfrc_bias``; a test
checks both). As in the Pinocchio backend, an unsaturated step thus gives a = a_ref
exactly, so the loops have the same bandwidths and zero steady-state error. (Feeding the
smooth ``tanh`` friction model forward against MuJoCo's dry-friction constraint instead
left a ~0.1 rad limit cycle on the last wrist joint at friction 2 N·m: seen, hence mj_inverse.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import mujoco
import numpy as np
import pinocchio as pin

from tocpl_ros.config import FieldError
from tocpl_ros.robot_config import find_urdf
from tocpl_ros.sim.base import SimulatorBase
from tocpl_ros.sim.config import SimConfig

__all__ = ["MujocoArmSimulator", "build_mujoco_spec", "urdf_joint_limits", "INTEGRATORS", "GRAVITY"]

GRAVITY = (0.0, 0.0, -9.81)
"""Gravity of the MuJoCo model (m/s²), as Pinocchio's default."""
INTEGRATORS = {
    "Euler": mujoco.mjtIntegrator.mjINT_EULER,
    "implicitfast": mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
    "implicit": mujoco.mjtIntegrator.mjINT_IMPLICIT,
    "RK4": mujoco.mjtIntegrator.mjINT_RK4,
}
"""MuJoCo integrators by their MJCF names; the backend uses 'Euler' (see the module docstring)."""
PAYLOAD_BODY = "tocpl_payload"
_MOVABLE = {"hinge": mujoco.mjtJoint.mjJNT_HINGE, "slide": mujoco.mjtJoint.mjJNT_SLIDE}


def _stripped_urdf(path: Path) -> ET.Element:
    """The URDF's XML tree without ``<visual>``/``<collision>`` elements."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise FieldError("urdf", f"cannot read {path}: {exc}") from exc
    if root.tag != "robot":
        raise FieldError("urdf", f"{path} is not a URDF (root element <{root.tag}>, expected <robot>)")
    for link in root.iter("link"):
        for child in [c for c in link if c.tag in ("visual", "collision")]:
            link.remove(child)
    return root


def _lock_joints(root: ET.Element, locked: dict[str, float]) -> None:
    """Turn the joints of ``locked`` (name -> position) into fixed joints at that position: the
    joint's motion at the position goes into its origin."""
    for joint in root.iter("joint"):
        name = joint.get("name")
        if name not in locked:
            continue
        value, kind = locked[name], joint.get("type")
        if value != 0.0:
            origin = joint.find("origin")
            if origin is None:
                origin = ET.SubElement(joint, "origin")
            xyz = np.array([float(x) for x in origin.get("xyz", "0 0 0").split()])
            rpy = np.array([float(x) for x in origin.get("rpy", "0 0 0").split()])
            axis_element = joint.find("axis")
            axis = np.array([float(x) for x in (axis_element.get("xyz") if axis_element is not None else "1 0 0").split()])
            axis = axis / np.linalg.norm(axis)
            if kind == "prismatic":
                motion = pin.SE3(np.eye(3), value * axis)
            else:  # revolute / continuous
                motion = pin.SE3(pin.AngleAxis(value, axis).matrix(), np.zeros(3))
            placement = pin.SE3(pin.rpy.rpyToMatrix(*rpy), xyz) * motion
            origin.set("xyz", " ".join(repr(float(v)) for v in placement.translation))
            origin.set("rpy", " ".join(repr(float(v)) for v in pin.rpy.matrixToRpy(placement.rotation)))
        joint.set("type", "fixed")
        for child in [c for c in joint if c.tag in ("axis", "limit", "dynamics", "mimic", "safety_controller")]:
            joint.remove(child)


def urdf_joint_limits(root: ET.Element) -> dict[str, tuple[float, float]]:
    """``{joint name: (effort limit, velocity limit)}`` of a URDF tree (0 where absent)."""
    limits = {}
    for joint in root.iter("joint"):
        limit = joint.find("limit")
        effort = float(limit.get("effort", 0.0)) if limit is not None else 0.0
        velocity = float(limit.get("velocity", 0.0)) if limit is not None else 0.0
        limits[joint.get("name")] = (effort, velocity)
    return limits


def build_mujoco_spec(urdf: str | Path, locked: dict[str, float] | None = None) -> tuple[mujoco.MjSpec, ET.Element, Path]:
    """An ``MjSpec`` of a URDF (a path or a name in urdf/), meshes stripped, the joints of
    ``locked`` (name -> position) fixed there, nothing added; also the stripped XML tree and
    the file."""
    try:
        path = find_urdf(urdf)
    except FileNotFoundError as exc:
        raise FieldError("urdf", str(exc)) from exc
    root = _stripped_urdf(path)
    _lock_joints(root, locked or {})
    try:
        spec = mujoco.MjSpec.from_string(ET.tostring(root, encoding="unicode"))
    except ValueError as exc:
        raise FieldError("urdf", f"MuJoCo cannot load {path}: {exc}") from exc
    return spec, root, path


class MujocoArmSimulator(SimulatorBase):
    """The MuJoCo backend (``backend: mujoco``); see the module docstring.

    ``mj_model`` / ``mj_data`` are the MuJoCo model and the state it steps; ``q``/``v``
    stay the state of record (copied in before and out after each ``mj_step``), so that
    :meth:`reset` and the shared servo work as in the Pinocchio backend.
    """

    backend = "mujoco"

    def __init__(self, config: SimConfig | None = None, integrator: str = "Euler"):
        if integrator not in INTEGRATORS:
            raise ValueError(f"unknown MuJoCo integrator '{integrator}' (known: {', '.join(INTEGRATORS)})")
        self.integrator = integrator
        super().__init__(config)

    # -- construction --------------------------------------------------------------------
    def _load(self, config: SimConfig) -> None:
        self.spec, root, _ = build_mujoco_spec(self.urdf_file, self.robot.locked_joints)
        spec = self.spec
        joints = list(spec.joints)
        bad = [j.name for j in joints if j.type not in _MOVABLE.values()]
        if bad:
            raise FieldError("urdf", f"{self.urdf_file}: only hinge and slide joints (revolute, continuous, prismatic), not {bad}")
        if [j.name for j in joints] != self.joint_names:
            raise FieldError("robot", f"MuJoCo's joints of {self.urdf_file.name} are {[j.name for j in joints]}, "
                                      f"the robot's {self.joint_names}")
        # the robot's limits and armature: the URDF's with the robot YAML's overrides (MuJoCo's
        # import gives a continuous joint no effort limit)
        self.effort_limit = self.robot.effort_limit.copy()
        self.velocity_limit = self.robot.velocity_limit.copy()
        for joint, armature in zip(joints, self.robot.model.armature):
            joint.armature = float(armature)
        self._attach_payload(config)

        option = spec.option
        option.timestep = self.dt
        option.gravity = GRAVITY
        option.integrator = INTEGRATORS[self.integrator]
        option.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT | mujoco.mjtDisableBit.mjDSBL_LIMIT
        # energy for energy(); discrete-time inverse dynamics for the servo (see the docstring)
        option.enableflags |= mujoco.mjtEnableBit.mjENBL_ENERGY | mujoco.mjtEnableBit.mjENBL_INVDISCRETE

    def _attach_payload(self, config: SimConfig) -> None:
        if config.payload_mass == 0:  # no payload: its frame is not needed, so a URDF without it is fine
            return
        frame = self.payload_frame
        body = self.spec.body(frame)
        if body is None:  # a joint's frame is the frame of the body it moves
            joint = self.spec.joint(frame)
            body = joint.parent if joint is not None else None
        if body is None:
            raise FieldError("payload_frame", f"frame '{frame}' is not in {self.urdf_file}")
        payload = body.add_body()
        payload.name = PAYLOAD_BODY
        payload.pos = [0.0, 0.0, 0.0]
        payload.quat = [1.0, 0.0, 0.0, 0.0]
        # set ipos explicitly: left unset (NaN), MuJoCo 4.0 puts the centre of mass at
        # pos + pos instead of pos (seen: the payload's lever doubled)
        payload.ipos = list(config.payload_com)
        payload.iquat = [1.0, 0.0, 0.0, 0.0]
        payload.mass = config.payload_mass
        payload.inertia = [0.0, 0.0, 0.0]  # a point mass; fused into the carrying link
        payload.explicitinertial = True

    def _configure_losses(self) -> None:
        spec = self.spec
        for joint, limit, damping, friction in zip(spec.joints, self.effort_limit, self.damping, self.friction):
            joint.damping = [float(damping), 0.0, 0.0]  # linear coefficient, no higher orders
            joint.frictionloss = float(friction)
            motor = spec.add_actuator()
            motor.name = joint.name
            motor.target = joint.name
            motor.trntype = mujoco.mjtTrn.mjTRN_JOINT
            motor.set_to_motor()
            motor.gear[0] = 1.0
            motor.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
            motor.ctrlrange = [-limit, limit]
            motor.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
            motor.forcerange = [-limit, limit]
        try:
            self.mj_model = spec.compile()
        except ValueError as exc:
            raise FieldError("urdf", f"MuJoCo cannot compile {self.urdf_file}: {exc}") from exc
        m = self.mj_model
        if (m.nq, m.nv, m.nu) != (self.nv,) * 3:
            raise FieldError("urdf", f"{self.urdf_file}: MuJoCo model has nq={m.nq}, nv={m.nv}, nu={m.nu}, expected {self.nv}")
        self.mj_data = mujoco.MjData(m)
        self._query = mujoco.MjData(m)  # model queries (M, b, g, energy) leave mj_data alone
        self._mass = np.zeros((self.nv, self.nv))
        self._tmp = np.zeros(self.nv)

    # -- dynamics --------------------------------------------------------------------------
    def _at(self, q: np.ndarray, v: np.ndarray | None) -> mujoco.MjData:
        """The query data at (q, v): position stage, and velocity stage if v is given."""
        d = self._query
        d.qpos[:] = q
        d.qvel[:] = 0.0 if v is None else v
        mujoco.mj_fwdPosition(self.mj_model, d)
        if v is not None:
            mujoco.mj_fwdVelocity(self.mj_model, d)
        return d

    def mass_matrix(self, q: Sequence[float] | None = None) -> np.ndarray:
        d = self._at(self.q if q is None else np.asarray(q, dtype=float), None)
        mujoco.mj_fullM(self.mj_model, d, self._mass)
        return self._mass.copy()

    def bias(self, q: Sequence[float] | None = None, v: Sequence[float] | None = None) -> np.ndarray:
        q = self.q if q is None else np.asarray(q, dtype=float)
        v = self.v if v is None else np.asarray(v, dtype=float)
        return self._at(q, v).qfrc_bias.copy()

    def gravity(self, q: Sequence[float] | None = None) -> np.ndarray:
        return self.bias(q, np.zeros(self.nv))

    def inverse_dynamics(self, q: np.ndarray, v: np.ndarray, a: np.ndarray) -> np.ndarray:
        d = self._at(q, v)
        mujoco.mj_mulM(self.mj_model, d, self._tmp, np.asarray(a, dtype=float))
        return self._tmp + d.qfrc_bias

    def servo_torque(self, a_ref: np.ndarray, h: float | None = None) -> np.ndarray:
        """Unsaturated torque giving acceleration a_ref over the next step of length h:
        MuJoCo's discrete-time inverse dynamics (``mj_inverse``), losses included."""
        m, d = self.mj_model, self._query
        h = self.dt if h is None else h
        if m.opt.timestep != h:
            m.opt.timestep = h
        d.qpos[:] = self.q
        d.qvel[:] = self.v
        d.qacc[:] = a_ref
        mujoco.mj_inverse(m, d)
        return d.qfrc_inverse.copy()

    def energy(self) -> float:
        d = self._at(self.q, self.v)
        mujoco.mj_energyPos(self.mj_model, d)
        mujoco.mj_energyVel(self.mj_model, d)
        return float(d.energy[0] + d.energy[1])

    def _advance(self, tau: np.ndarray, h: float) -> None:
        m, d = self.mj_model, self.mj_data
        if m.opt.timestep != h:
            m.opt.timestep = h
        d.qpos[:] = self.q
        d.qvel[:] = self.v
        d.ctrl[:] = tau
        mujoco.mj_step(m, d)
        self.q = d.qpos.copy()
        self.v = d.qvel.copy()
