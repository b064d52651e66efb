"""Policy files: an ONNX model plus the ``tocpl.*`` metadata a controller needs.

A policy file (written by ``tocpl-export``) is a complete controller: one float32
input ``obs`` [batch, obs_dim] (raw observation), one float32 output ``u``
[batch, nu] (torque, already inside [u_min, u_max]); normalisation and output
scaling are part of the graph. Its ``metadata_props`` describe it:

===================  ===========================================================
key                  value (a string)
===================  ===========================================================
tocpl.task           task name, plain text
tocpl.joint_names    JSON list of joint names, URDF order ([] for lqr)
tocpl.obs_layout     JSON list of {"name": ..., "size": ...}, in observation order
tocpl.u_min/u_max    JSON lists of floats, one per control
tocpl.dt             JSON number, control period in seconds
tocpl.horizon        JSON integer, OCP horizon in steps
tocpl.urdf           URDF file name, plain text ("" for lqr)
tocpl.version        tocpl_ros version that wrote the file, plain text
tocpl.train_config   JSON object (the training settings, {} if unknown)
tocpl.task_config    JSON object (the task's TaskConfig)
===================  ===========================================================

This module needs only onnx, onnxruntime, json and numpy: the ROS nodes import it
and must not pull in torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "obs"
OUTPUT_NAME = "u"
PREFIX = "tocpl."
KEYS = (
    "task", "joint_names", "obs_layout", "u_min", "u_max", "dt", "horizon",
    "urdf", "version", "train_config", "task_config",
)
"""The metadata keys (without the ``tocpl.`` prefix), all required."""


class PolicyFileError(ValueError):
    """A policy file is missing, unreadable, or its metadata/graph is malformed."""


@dataclass
class PolicyMetadata:
    """The typed content of a policy file's ``tocpl.*`` metadata."""

    task: str
    joint_names: list[str]
    obs_layout: list[tuple[str, int]]
    u_min: np.ndarray
    u_max: np.ndarray
    dt: float
    horizon: int
    urdf: str
    version: str
    train_config: dict[str, Any] = field(default_factory=dict)
    task_config: dict[str, Any] = field(default_factory=dict)

    @property
    def obs_dim(self) -> int:
        return sum(size for _, size in self.obs_layout)

    @property
    def nu(self) -> int:
        return len(self.u_min)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` strings (full key -> value) of this metadata."""
        values = {
            "task": self.task,
            "joint_names": json.dumps(list(self.joint_names)),
            "obs_layout": json.dumps([{"name": n, "size": int(s)} for n, s in self.obs_layout]),
            "u_min": json.dumps([float(v) for v in self.u_min]),
            "u_max": json.dumps([float(v) for v in self.u_max]),
            "dt": json.dumps(float(self.dt)),
            "horizon": json.dumps(int(self.horizon)),
            "urdf": self.urdf,
            "version": self.version,
            "train_config": json.dumps(self.train_config, sort_keys=True),
            "task_config": json.dumps(self.task_config, sort_keys=True),
        }
        return {PREFIX + k: values[k] for k in KEYS}


# -- reading ------------------------------------------------------------------


def load_model(path: str | Path):
    """The checked onnx.ModelProto of a policy file; PolicyFileError if missing or corrupt."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"policy file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError, OSError...
        raise PolicyFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return model


def read_onnx_metadata(path: str | Path) -> PolicyMetadata:
    """The validated metadata of a policy file.

    Raises PolicyFileError naming the file and the problem: missing file,
    corrupt ONNX, a missing or malformed ``tocpl.*`` key, or an ``obs``/``u``
    signature that does not match the metadata's obs_dim/nu.
    """
    model = load_model(path)
    metadata = metadata_from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
    check_signature(model, metadata, source=str(path))
    return metadata


def metadata_from_props(props: dict[str, str], source: str = "") -> PolicyMetadata:
    """Parse and check the ``tocpl.*`` entries of ``props`` (full key -> string)."""
    where = f"{source}: " if source else ""

    def fail(key: str, message: str) -> PolicyFileError:
        return PolicyFileError(f"{where}metadata '{PREFIX}{key}': {message}")

    def raw(key: str) -> str:
        if PREFIX + key not in props:
            raise fail(key, "missing (not a tocpl_ros policy file, or written by another tool)")
        return props[PREFIX + key]

    def js(key: str) -> Any:
        text = raw(key)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise fail(key, f"malformed JSON ({exc.msg} at char {exc.pos}): {text[:80]!r}") from exc

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    task = raw("task")
    if not task:
        raise fail("task", "empty task name")

    joint_names = js("joint_names")
    if not isinstance(joint_names, list) or not all(isinstance(n, str) and n for n in joint_names):
        raise fail("joint_names", f"expected a list of non-empty strings, got {joint_names!r}")
    if len(set(joint_names)) != len(joint_names):
        raise fail("joint_names", f"duplicate joint names in {joint_names!r}")

    layout_raw = js("obs_layout")
    if not isinstance(layout_raw, list) or not layout_raw:
        raise fail("obs_layout", f"expected a non-empty list of {{'name', 'size'}} objects, got {layout_raw!r}")
    obs_layout: list[tuple[str, int]] = []
    for i, block in enumerate(layout_raw):
        if (
            not isinstance(block, dict)
            or set(block) != {"name", "size"}
            or not isinstance(block["name"], str)
            or not block["name"]
            or not isinstance(block["size"], int)
            or isinstance(block["size"], bool)
            or block["size"] < 1
        ):
            raise fail("obs_layout", f"entry {i} must be {{'name': <string>, 'size': <int >= 1>}}, got {block!r}")
        obs_layout.append((block["name"], block["size"]))

    bounds = {}
    for key in ("u_min", "u_max"):
        value = js(key)
        if not isinstance(value, list) or not value or not all(number(v) for v in value):
            raise fail(key, f"expected a non-empty list of finite numbers, got {value!r}")
        bounds[key] = np.array(value, dtype=np.float64)
    if len(bounds["u_min"]) != len(bounds["u_max"]):
        raise fail("u_max", f"has {len(bounds['u_max'])} entries but u_min has {len(bounds['u_min'])}")
    if (bounds["u_min"] > bounds["u_max"]).any():
        raise fail("u_max", f"u_min > u_max somewhere: {bounds['u_min'].tolist()} vs {bounds['u_max'].tolist()}")

    dt = js("dt")
    if not number(dt) or dt <= 0:
        raise fail("dt", f"expected a number > 0, got {dt!r}")
    horizon = js("horizon")
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
        raise fail("horizon", f"expected an integer >= 1, got {horizon!r}")

    urdf = raw("urdf")
    if "/" in urdf or "\\" in urdf:
        raise fail("urdf", f"expected a file name without directories, got {urdf!r}")
    version = raw("version")
    if not version:
        raise fail("version", "empty version")

    configs = {}
    for key in ("train_config", "task_config"):
        value = js(key)
        if not isinstance(value, dict):
            raise fail(key, f"expected a JSON object, got {type(value).__name__}")
        configs[key] = value

    return PolicyMetadata(
        task=task,
        joint_names=joint_names,
        obs_layout=obs_layout,
        u_min=bounds["u_min"],
        u_max=bounds["u_max"],
        dt=float(dt),
        horizon=horizon,
        urdf=urdf,
        version=version,
        **configs,
    )


def check_signature(model, metadata: PolicyMetadata, source: str = "") -> None:
    """The graph has exactly one float32 input ``obs`` [batch, obs_dim] and one output ``u`` [batch, nu]."""
    import onnx

    where = f"{source}: " if source else ""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)
    for kind, values, name, size, what in (
        ("input", inputs, INPUT_NAME, metadata.obs_dim, "obs_dim (sum of tocpl.obs_layout sizes)"),
        ("output", outputs, OUTPUT_NAME, metadata.nu, "nu (length of tocpl.u_min)"),
    ):
        names = [v.name for v in values]
        if names != [name]:
            raise PolicyFileError(f"{where}expected one graph {kind} named '{name}', found {names}")
        tensor = values[0].type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            dtype = onnx.TensorProto.DataType.Name(tensor.elem_type)
            raise PolicyFileError(f"{where}graph {kind} '{name}' must be float32, is {dtype}")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        if len(dims) != 2:
            raise PolicyFileError(f"{where}graph {kind} '{name}' must be [batch, {size}], has shape {dims}")
        if dims[1] != size:
            raise PolicyFileError(
                f"{where}graph {kind} '{name}' has size {dims[1]} but the metadata's {what} is {size}"
            )


# -- inference ----------------------------------------------------------------


class OnnxPolicy:
    """A policy file run with onnxruntime on one CPU thread.

    ``policy(obs)`` takes [B, obs_dim] or [obs_dim] (any float dtype) and returns
    float64 [B, nu] or [nu].
    """

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise PolicyFileError(f"{self.path}: onnxruntime cannot load the model ({exc})") from exc

    @property
    def obs_dim(self) -> int:
        return self.metadata.obs_dim

    @property
    def nu(self) -> int:
        return self.metadata.nu

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        if batch.ndim != 2 or batch.shape[1] != self.obs_dim:
            raise PolicyFileError(
                f"{self.path.name}: observation must have shape [{self.obs_dim}] or [B, {self.obs_dim}] "
                f"(layout {self.metadata.obs_layout}), got {list(obs.shape)}"
            )
        u = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        u = u.astype(np.float64)
        return u[0] if single else u
