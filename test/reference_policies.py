"""Hand-written policies the ROS-free tests compare learned ones against (test/ is on sys.path)."""

import numpy as np


def braking_policy(task, time_constant=0.1):
    """u = g(q) − M(q) v / τ: the arm brakes (v' = (1 − dt/τ) v) and stays wherever it comes to rest."""
    import pinocchio as pin

    def policy(obs):
        out = []
        for q, v in zip(obs[:, : task.nq], obs[:, task.nq: 2 * task.nq]):
            mass = pin.crba(task.model, task.data, q)
            out.append(pin.computeGeneralizedGravity(task.model, task.data, q) - mass @ v / time_constant)
        return np.array(out)
    return policy
