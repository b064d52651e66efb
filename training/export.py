"""ONNX export of a trained policy: ``tocpl-export CHECKPOINT -o policy.onnx``.

The exported graph is the whole controller (raw observation in, torque inside
[u_min, u_max] out): the policy's normalisation and tanh scaling are baked in,
followed by a clamp to the float32 box so that rounding can never leave it. The
``tocpl.*`` metadata (see :mod:`tocpl_ros.policy_file`) tells a ROS node what the
inputs and outputs mean. Uses the TorchScript-based exporter (``dynamo=False``):
the dynamo exporter needs onnxscript, which is not a dependency.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tocpl_ros
from tocpl_ros.config import ConfigError, to_dict
from tocpl_ros.policy_file import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxPolicy,
    PolicyFileError,
    PolicyMetadata,
    check_signature,
    read_onnx_metadata,
)
from tocpl_ros.tasks import Task
from tocpl_training.checkpoint import CheckpointError, atomic_write, load_policy
from tocpl_training.learning.policy import MLPPolicy

OPSET = 17
VALIDATION_TOL = 1e-4
"""Largest |onnxruntime − torch| accepted on the validation batch (float32, torques up to O(100))."""


class _Exported(nn.Module):
    """The policy followed by a clamp to [u_min, u_max] rounded inwards to float32."""

    def __init__(self, policy: MLPPolicy, u_min: np.ndarray, u_max: np.ndarray):
        super().__init__()
        self.policy = policy
        lo = u_min.astype(np.float32)
        hi = u_max.astype(np.float32)
        lo = np.where(lo < u_min, np.nextafter(lo, np.float32(np.inf)), lo)
        hi = np.where(hi > u_max, np.nextafter(hi, np.float32(-np.inf)), hi)
        self.register_buffer("u_lo", torch.from_numpy(lo.astype(np.float32)))
        self.register_buffer("u_hi", torch.from_numpy(hi.astype(np.float32)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(self.policy(obs), self.u_lo), self.u_hi)


def policy_metadata(task: Task, train_config: dict | None = None) -> PolicyMetadata:
    """The metadata of a policy for ``task``."""
    robot = getattr(task, "robot", None)  # robot tasks; lqr has none
    joint_names = list(task.joint_names)
    has_target = any(name == "target" for name, _ in task.obs_layout)
    # getattr with defaults: locked joints, joint encodings and target kinds arrive with the
    # robot descriptions of issue 25; a model or task without them is the 0.1 case
    encodings = list(getattr(robot, "joint_encodings", None) or ["angle"] * len(joint_names))
    target_kind = (getattr(task.config, "target_kind", None) or "position") if has_target else "none"
    # a robot description's name; a task given by a URDF alone has none (its model is named after the file)
    robot_name = robot.name if robot is not None and getattr(task.config, "robot", None) else ""
    return PolicyMetadata(
        task=task.name,
        joint_names=joint_names,
        obs_layout=[(str(name), int(size)) for name, size in task.obs_layout],
        u_min=np.asarray(task.u_min, dtype=np.float64),
        u_max=np.asarray(task.u_max, dtype=np.float64),
        dt=float(task.dt),
        horizon=int(task.horizon),
        urdf=robot.urdf_file.name if robot is not None else "",
        version=tocpl_ros.__version__,
        train_config=_jsonable(train_config or {}),
        task_config=_jsonable(to_dict(task.config)),
        robot=robot_name,
        locked_joints={str(k): float(v) for k, v in (getattr(robot, "locked_joints", None) or {}).items()},
        end_effector_frame=str(getattr(task, "frame", "") or ""),
        base_frame=robot.config.base_frame if robot is not None else "",
        target_kind=target_kind,
        joint_encodings=encodings,
    )


def onnx_bytes(policy: MLPPolicy, task: Task, train_config: dict | None = None) -> bytes:
    """The serialised ONNX model (graph + metadata) of ``policy``, built in memory."""
    import onnx

    metadata = policy_metadata(task, train_config)
    if (policy.spec.obs_dim, policy.spec.nu) != (metadata.obs_dim, metadata.nu):
        raise PolicyFileError(
            f"policy has obs_dim {policy.spec.obs_dim}, nu {policy.spec.nu} but task {task.name} "
            f"has obs_dim {metadata.obs_dim}, nu {metadata.nu}"
        )
    module = _Exported(copy.deepcopy(policy).float().eval(), metadata.u_min, metadata.u_max).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module,
            (torch.zeros(1, metadata.obs_dim, dtype=torch.float32),),
            buffer,
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "tocpl_ros"
    model.producer_version = tocpl_ros.__version__
    model.doc_string = f"tocpl_ros policy for task {task.name}: obs [batch, {metadata.obs_dim}] -> u [batch, {metadata.nu}]"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata.to_props())
    check_signature(model, metadata, source="exported model")
    return model.SerializeToString()


def validate_file(path: str | Path, policy: MLPPolicy, task: Task) -> None:
    """Check a written policy file: onnx checker, metadata, and outputs equal to the torch policy's."""
    path = Path(path)
    metadata = read_onnx_metadata(path)  # runs onnx.checker too
    if metadata.task != task.name or metadata.obs_dim != task.obs_dim or metadata.nu != task.nu:
        raise PolicyFileError(f"{path}: metadata does not describe task {task.name}")
    rng = np.random.default_rng(0)
    mean = policy.obs_mean.double().numpy()
    scale = policy.obs_scale.double().numpy()
    obs = mean + scale * rng.normal(0.0, 2.0, (16, task.obs_dim))
    expected = policy.act(obs)
    got = OnnxPolicy(path)(obs)
    error = float(np.max(np.abs(got - expected)))
    if not error <= VALIDATION_TOL * max(1.0, float(np.max(np.abs(metadata.u_max)))):
        raise PolicyFileError(f"{path}: onnxruntime output differs from the torch policy by {error:.3g}")


def export_onnx(policy: MLPPolicy, task: Task, path: str | Path, train_config: dict | None = None) -> Path:
    """Write ``policy`` for ``task`` as a policy file at ``path`` (atomically) and return the path.

    The file is validated (onnx checker, metadata, onnxruntime vs torch) before it
    is renamed into place: on any failure no file exists under ``path`` (an
    existing one is left untouched) and no temporary file is left behind.
    """
    path = Path(path)
    data = onnx_bytes(policy, task, train_config)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users (ROS nodes)
        validate_file(tmp, policy, task)

    atomic_write(path, write)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _jsonable(obj: Any) -> Any:
    """Plain JSON data (numpy arrays/scalars, tensors and tuples converted); PolicyFileError otherwise."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise PolicyFileError(f"cannot store {type(obj).__name__} in the policy metadata: {obj!r}")


# -- command line ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocpl-export",
        description="Export a tocpl_ros checkpoint as an ONNX policy file (normalisation, "
        "output scaling and tocpl.* metadata included).",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by the trainer")
    parser.add_argument("-o", "--output", type=Path, required=True, help="policy file to write (.onnx)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        policy, task, data = load_policy(args.checkpoint)
        train_config = data.get("train_config") or {}
        if not isinstance(train_config, dict):
            raise CheckpointError(f"{args.checkpoint}: train_config is a {type(train_config).__name__}, not a mapping")
        path = export_onnx(policy, task, args.output, train_config=train_config)
    except (CheckpointError, ConfigError, PolicyFileError, OSError) as exc:
        print(f"tocpl-export: {exc}", file=sys.stderr)
        return 2
    print(f"tocpl-export: wrote {path} (task {task.name}, obs {task.obs_dim}, u {task.nu})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
