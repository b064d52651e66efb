"""Checkpoints: plain tensors and data, written atomically, read without unpickling code.

A checkpoint is a dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts
only. numpy arrays are stored as tensors.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tocpl_ros.config import load_dataclass
from tocpl_ros.tasks import Task, make_task
from tocpl_ros.tasks.config import TaskConfig
from tocpl_training.learning.policy import MLPPolicy, PolicySpec

FORMAT = "tocpl-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a tocpl_ros checkpoint."""


class WriteError(OSError):
    """A run-folder file could not be written (disk full, read-only, not a folder...).

    The message names the file and the reason; the previous version of the file,
    if any, is left as it was.
    """


TEMP_SUFFIX = ".tmp"


def temp_prefix(path: Path) -> str:
    """Prefix of the temporary files ``atomic_write`` creates beside ``path``."""
    return f".{path.name}."


def remove_stale_temps(folder: str | Path, names: list[str]) -> list[Path]:
    """Delete temporary files left by a process killed inside ``atomic_write`` (returns them)."""
    stale = []
    for name in names:
        for tmp in Path(folder).glob(f"{temp_prefix(Path(name))}*{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    return stale


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: never a partial file under the final name.

    An OSError (ENOSPC, EROFS, EFBIG...) becomes a :class:`WriteError` naming ``path``;
    any failure removes the temporary file and leaves an existing ``path`` untouched.
    """
    path = Path(path)
    tmp = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # mkdir's word for "a file stands where the folder should be"
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a run folder is meant to be shared
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        error = WriteError(f"cannot write {path}: {exc.strerror or exc} (any previous {path.name} is unchanged)")
        error.errno = exc.errno
        raise error from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (serialise in memory first, so disk errors are plain OSErrors)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def differing_settings(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Top-level keys in which a run folder's config.yaml (``stored``) differs from ``expected``,
    compared as the file holds them (a YAML round trip: lists, not tuples). Empty: a resumable match."""
    expected = yaml.safe_load(yaml.safe_dump(expected, sort_keys=False))
    return sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))


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
    buffer = io.BytesIO()
    torch.save(data, buffer)  # in memory: a full disk then fails in our own write, with its errno
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols of foreign files
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's advice (weights_only=False) would run the file's code
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds Python objects other than plain tensors and data, "
            f"which are never unpickled (not a tocpl_ros checkpoint, or tampered with)"
        ) from exc
    except Exception as exc:  # truncated, corrupt, not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
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
        # a select_best run delivers the iterate chosen on its validation set, not the last one
        policy.load_state_dict(data["selected"]["policy_state"] if "selected" in data else data["policy_state"])
        config = load_dataclass(TaskConfig, data["task_config"], source=f"{path} (task_config)")
        task = make_task(data["task_name"], config, source=f"{path} (task_config)")
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: incomplete or inconsistent checkpoint ({exc})") from exc
    policy.eval()
    return policy, task, data
