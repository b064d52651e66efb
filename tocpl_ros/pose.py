"""Pose targets (ROS-free, numpy only): the 9 values the tasks, the policies and the nodes share,
and their conversions from and to what a ROS message carries (a unit quaternion).

A pose target is the position of the end-effector frame in the base frame (3, m), then the first
two columns of its rotation matrix R (its x and y axes in the base frame, 6): continuous in the
orientation, unlike a quaternion (q and −q are one rotation) or Euler angles; the third column
is their cross product (docs/robots.md, "Pose targets").
"""

from __future__ import annotations

import math

import numpy as np

QUATERNION_MIN_NORM = 1e-6
"""A quaternion shorter than this is taken for no orientation at all (all zeros up to rounding),
not normalised: its direction would be noise."""


def pose_target(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Pose targets [B, 9] from positions [B, 3] and rotation matrices [B, 3, 3] (base frame):
    the position, then the rotation's first two columns (x axis, y axis of the frame)."""
    rotation = np.asarray(rotation, dtype=float)
    return np.concatenate([position, rotation[:, :, 0], rotation[:, :, 1]], axis=1)


def target_rotation(target: np.ndarray) -> np.ndarray:
    """The rotation matrix [3, 3] of one pose target [9] (:func:`pose_target`): its two columns
    made orthonormal (Gram-Schmidt: a target written by hand need not be exact), the third their
    cross product."""
    x = np.asarray(target[3:6], dtype=float)
    y = np.asarray(target[6:9], dtype=float)
    x = x / np.linalg.norm(x)
    y = y - x * (x @ y)
    y = y / np.linalg.norm(y)
    return np.column_stack([x, y, np.cross(x, y)])


def rotation_from_quaternion(quaternion) -> np.ndarray:
    """The rotation matrix [3, 3] of a quaternion (x, y, z, w: geometry_msgs/Quaternion's order),
    normalised first. ValueError saying why if it has NaN/Inf or no length (a zero quaternion is
    no orientation)."""
    q = np.asarray(quaternion, dtype=float).reshape(-1)
    if q.shape != (4,):
        raise ValueError(f"a quaternion has 4 values (x, y, z, w), got {q.size}")
    if not np.isfinite(q).all():
        raise ValueError(f"NaN/Inf in the quaternion {q.tolist()}")
    norm = float(np.linalg.norm(q))
    if norm < QUATERNION_MIN_NORM:
        raise ValueError(f"the quaternion {q.tolist()} has zero norm: it is no orientation")
    x, y, z, w = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quaternion_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """The unit quaternion (x, y, z, w) of a rotation matrix [3, 3], w ≥ 0 (Shepperd's method:
    the largest of the four candidates is divided by, so it stays exact near every rotation)."""
    r = np.asarray(rotation, dtype=float)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    i = int(np.argmax([trace, r[0, 0], r[1, 1], r[2, 2]]))
    if i == 0:
        s = 2.0 * math.sqrt(max(1.0 + trace, 0.0))
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4]
    elif i == 1:
        s = 2.0 * math.sqrt(max(1.0 + r[0, 0] - r[1, 1] - r[2, 2], 0.0))
        q = [s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif i == 2:
        s = 2.0 * math.sqrt(max(1.0 + r[1, 1] - r[0, 0] - r[2, 2], 0.0))
        q = [(r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(max(1.0 + r[2, 2] - r[0, 0] - r[1, 1], 0.0))
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4, (r[1, 0] - r[0, 1]) / s]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[3] < 0 else q


def pose_target_from_quaternion(position, quaternion) -> np.ndarray:
    """The pose target [9] of a position [3] and a quaternion (x, y, z, w; normalised, ValueError
    as :func:`rotation_from_quaternion`)."""
    return pose_target(np.asarray(position, dtype=float).reshape(1, 3), rotation_from_quaternion(quaternion)[None])[0]


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle (rad, in [0, π]) of the rotation from rotation matrix ``a`` to ``b`` [3, 3]:
    ‖log₃(aᵀb)‖, from its sine and cosine (exact near 0 and near π alike)."""
    r = np.asarray(a, dtype=float).T @ np.asarray(b, dtype=float)
    sine = 0.5 * math.hypot(r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1])
    cosine = 0.5 * (r[0, 0] + r[1, 1] + r[2, 2] - 1.0)
    return math.atan2(sine, cosine)
