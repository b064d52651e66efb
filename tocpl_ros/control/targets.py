"""The policy's target: taken from /target and /target_pose, checked, kept in the workspace box.

A position policy's target is [x, y, z] in the base frame; a pose policy's the 9 values of
:mod:`tocpl_ros.pose` (the position, then the first two columns of the rotation). A position
alone moves a pose target and keeps its orientation; before any orientation is known (no joint
state yet) it waits for the end effector's orientation there. ROS-free, numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tocpl_ros.pose import pose_target, pose_target_from_quaternion, quaternion_from_rotation, target_rotation


@dataclass
class TargetUpdate:
    """What became of a target given: taken as is (``message`` None), clamped into the box, or
    rejected (``rejected``: the ``stats.rejected`` key; the old target kept)."""

    message: str | None = None
    rejected: str = ""
    clamped: bool = False


class TargetKeeper:
    """The current target of a policy whose targets are ``kind`` ('position' or 'pose'), taken in
    ``base_frame`` and kept in the box [box_min, box_max] (3 values each): outside it a target is
    clamped or, with ``out_of_limits`` 'reject', rejected."""

    def __init__(self, kind: str, base_frame: str, box_min: Sequence[float], box_max: Sequence[float],
                 out_of_limits: str = "clamp"):
        self.is_pose = kind == "pose"
        self.base_frame = base_frame
        self.box_min, self.box_max = np.asarray(box_min, dtype=float), np.asarray(box_max, dtype=float)
        self.out_of_limits = out_of_limits
        self.value: np.ndarray | None = None
        """The target [3] or, for a pose, [9] in the base frame; None until one is known."""
        self._pending_position: np.ndarray | None = None  # a pose's position waiting for an orientation

    def take(self, xyz: Sequence[float], quaternion: Sequence[float] | None = None, frame: str = "") -> TargetUpdate:
        """A target position [x, y, z] in ``frame`` ("": the base frame) and, for a pose policy, an
        orientation (quaternion x, y, z, w, normalised here; None: the target's kept). Never raises."""
        if frame and frame != self.base_frame:
            return TargetUpdate(f"target rejected: frame '{frame}' is not the robot's base frame '{self.base_frame}' "
                                f"(targets are not transformed: send them in '{self.base_frame}', or with an empty "
                                "frame_id)", "target_frame")
        try:
            p = np.asarray(xyz, dtype=float).reshape(-1)
        except (TypeError, ValueError) as exc:
            return TargetUpdate(f"target rejected: not numbers ({exc})", "target_malformed")
        if p.size != 3:
            return TargetUpdate(f"target rejected: needs 3 values, got {p.size}", "target_malformed")
        if not np.isfinite(p).all():
            return TargetUpdate(f"target rejected: NaN/Inf in {p.tolist()}", "target_nonfinite")
        axes = None
        if quaternion is not None and self.is_pose:
            try:
                axes = pose_target_from_quaternion(p, quaternion)[3:]
            except (TypeError, ValueError) as exc:
                return TargetUpdate(f"target rejected: {exc}", "target_orientation")
        if ((p >= self.box_min) & (p <= self.box_max)).all():
            self._set(p, axes)
            return TargetUpdate()
        box = f"[{', '.join(f'{a:g}..{b:g}' for a, b in zip(self.box_min, self.box_max))}]"
        if self.out_of_limits == "reject":
            return TargetUpdate(f"target {p.tolist()} rejected: outside target_limits {box}", "target_out_of_limits")
        clamped = np.clip(p, self.box_min, self.box_max)
        self._set(clamped, axes)
        return TargetUpdate(f"target {p.tolist()} clamped to {clamped.tolist()} (target_limits {box})", clamped=True)

    def hold(self, position: np.ndarray, rotation: np.ndarray) -> None:
        """No target yet: the end effector's pose (its position clipped into the box), or the
        position taken before with the end effector's orientation."""
        if self._pending_position is not None:
            position, self._pending_position = self._pending_position, None
        else:
            position = np.clip(position, self.box_min, self.box_max)
        self.value = pose_target(position[None], np.asarray(rotation)[None])[0] if self.is_pose else position

    def _set(self, position: np.ndarray, axes: np.ndarray | None) -> None:
        if not self.is_pose:
            self.value = position
        elif axes is not None:
            self.value = np.concatenate([position, axes])
        elif self.value is not None:
            self.value = np.concatenate([position, self.value[3:]])
        else:  # no orientation to keep yet: the end effector's at the first joint state (hold)
            self._pending_position = position

    def diagnostics(self) -> dict[str, str]:
        """The target for /diagnostics: its position (m) and a pose's orientation as a quaternion
        (x, y, z, w, the /target_pose convention)."""
        if self.value is None:
            return {"target": "none", **({"target_orientation": "none"} if self.is_pose else {})}
        out = {"target": " ".join(f"{x:.4f}" for x in self.value[:3])}
        if self.is_pose:
            out["target_orientation"] = " ".join(f"{x:.4f}" for x in quaternion_from_rotation(target_rotation(self.value)))
        return out
