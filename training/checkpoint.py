"""Checkpoints: plain tensors and data, written atomically, read without unpickling code.

A checkpoint is a dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts
only. numpy arrays are stored as tensors.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tocpl_ros.tasks import Task, make_task
from tocpl_ros.tasks.config import TaskConfig
from tocpl_ros.config import load_dataclass

from .policy import MLPPolicy, PolicySpec

FORMAT = "tocpl-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a tocpl_ros checkpoint."""


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: never a partial file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a run folder is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_storable(obj: Any) -> Any:
    """numpy arrays -> tensors, recursively (for weights_only loading)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_storable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_storable(v) for v in obj]
    return obj


def from_storable(obj: Any) -> Any:
    """Tensors -> numpy arrays, recursively (inverse of ``to_storable``), except state dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: from_storable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_storable(v) for v in obj]
    return obj


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    data = {"format": FORMAT, **to_storable(payload)}
    atomic_write(path, lambda tmp: torch.save(data, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding pickled objects
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tocpl_ros checkpoint (format {FORMAT})")
    return data


def policy_payload(policy: MLPPolicy, task: Task) -> dict[str, Any]:
    """The part of a checkpoint that defines the controller."""
    from tocpl_ros.config import to_dict

    return {
        "policy_spec": to_dict(policy.spec),
        "policy_state": policy.state_dict(),
        "task_name": task.name,
        "task_config": to_dict(task.config),
    }


def load_policy(path: str | Path) -> tuple[MLPPolicy, Task, dict[str, Any]]:
    """(policy in eval mode, its task, the whole checkpoint) from a checkpoint file."""
    data = load_checkpoint(path)
    try:
        spec = PolicySpec(**data["policy_spec"])
        policy = MLPPolicy(spec)
        policy.load_state_dict(data["policy_state"])
        config = load_dataclass(TaskConfig, data["task_config"], source=f"{path} (task_config)")
        task = make_task(data["task_name"], config, source=f"{path} (task_config)")
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: incomplete or inconsistent checkpoint ({exc})") from exc
    policy.eval()
    return policy, task, data
