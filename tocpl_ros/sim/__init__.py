"""A simulated arm for the ``ur5_sim`` node: forward dynamics of a robot description (ROS-free).

The robot is ``config/robots/<robot>.yaml`` (:mod:`tocpl_ros.robot`): its URDF, the joints it
controls (the others locked), its nominal posture (where the simulation starts) and end effector
(where a payload goes by default).

Two physics backends share one interface (:class:`SimulatorBase`: state, commands, modes,
servo, saturation, step loop); :func:`make_simulator` picks one by ``SimConfig.backend``:

- ``pinocchio`` (:class:`ArmSimulator`, default): Pinocchio's ABA (see
  :mod:`tocpl_ros.sim.pinocchio_backend`); it is
  the model the OCPs and the policies are built on;
- ``mujoco`` (:class:`tocpl_ros.sim.mujoco_backend.MujocoArmSimulator`): MuJoCo built from the
  same URDF, an independent implementation to test a policy against a simulator it was
  not trained on (its own rigid-body code, MuJoCo's dry-friction constraint instead of the
  smooth Coulomb model of the Pinocchio backend; see that module). Imported only when selected.

``config`` holds its configuration, ``base`` the interface and servo every backend shares,
``pinocchio_backend`` and ``mujoco_backend`` the two backends.
"""

from __future__ import annotations

from tocpl_ros.config import FieldError
from tocpl_ros.sim.base import SimulatorBase
from tocpl_ros.sim.config import SimConfig
from tocpl_ros.sim.pinocchio_backend import ArmSimulator


def make_simulator(config: SimConfig | None = None) -> SimulatorBase:
    """The simulator of ``config.backend``: :class:`ArmSimulator` ('pinocchio') or
    :class:`tocpl_ros.sim.mujoco_backend.MujocoArmSimulator` ('mujoco', imported only then)."""
    config = config if config is not None else SimConfig()
    if config.backend == "mujoco":
        try:
            from tocpl_ros.sim.mujoco_backend import MujocoArmSimulator
        except ImportError as exc:
            raise FieldError("backend", f"'mujoco' needs the mujoco package (requirements.txt): {exc}") from exc
        return MujocoArmSimulator(config)
    return ArmSimulator(config)
