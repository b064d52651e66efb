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
tocpl.task_config    JSON object (the task's TaskConfig: enough to rebuild its OCP)
-------------------  ----------------- since tocpl_ros 0.2.0 ---------------------
tocpl.robot          robot name (config/robots/<name>.yaml), plain text ("": none)
tocpl.locked_joints  JSON object joint name -> position (rad or m) of the URDF's
                     movable joints that are not controlled ({}: none)
tocpl.end_effector_frame  the frame the target is for, plain text ("": none)
tocpl.base_frame     the frame targets are expressed in, plain text ("": none)
tocpl.target_kind    'position', 'pose' or 'none' (no target in the observation);
                     'position': the 'target' block is p (3, m, base frame); 'pose': 9 values,
                     p then the first two columns of the frame's rotation matrix (base frame)
tocpl.joint_encodings  JSON list, one per controlled joint: how its position enters
                     the 'q' block ('angle': the value, rad; 'linear': the value, m
                     (prismatic); 'cos_sin': cos, sin)
===================  ===========================================================

The controlled joints are ``tocpl.joint_names``. A file written before 0.2.0 (``tocpl.version``
0.1.x) has none of the robot keys: it is read with their defaults (robot: the task config's,
no locked joints, frames "" (the robot's), target_kind from the observation, 'angle' per joint)
and ``PolicyMetadata.defaults_used`` lists them. A file of a newer major version, or whose
version is not a version, is refused with a message saying which version it is.

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
BASE_KEYS = (
    "task", "joint_names", "obs_layout", "u_min", "u_max", "dt", "horizon",
    "urdf", "version", "train_config", "task_config",
)
"""The metadata keys (without the ``tocpl.`` prefix) every file has, since the first version."""
ROBOT_KEYS = ("robot", "locked_joints", "end_effector_frame", "base_frame", "target_kind", "joint_encodings")
"""The keys added in tocpl_ros 0.2.0 (what an outside tool needs to rebuild the problem), required
in files of that version and later, filled with defaults in older ones."""
KEYS = BASE_KEYS + ROBOT_KEYS
"""Every key a file of this version has (what :meth:`PolicyMetadata.to_props` writes)."""
ROBOT_KEYS_SINCE = (0, 2)
"""The first tocpl.version (major, minor) whose files carry ROBOT_KEYS."""
READER_MAJOR = 0
"""Files of a newer major version are refused: their layout may have changed."""
TARGET_KINDS = ("position", "pose", "none")
JOINT_ENCODINGS = ("angle", "linear", "cos_sin")


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
    robot: str = ""
    locked_joints: dict[str, float] = field(default_factory=dict)
    end_effector_frame: str = ""
    base_frame: str = ""
    target_kind: str = "position"
    joint_encodings: list[str] | None = None
    """One per joint of joint_names; None: 'angle' for each."""
    defaults_used: list[str] = field(default_factory=list)
    """The ROBOT_KEYS an older file did not carry, filled with defaults (not written back)."""

    def __post_init__(self) -> None:
        if self.joint_encodings is None:
            self.joint_encodings = ["angle"] * len(self.joint_names)

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
            "robot": self.robot,
            "locked_joints": json.dumps({str(k): float(v) for k, v in self.locked_joints.items()}, sort_keys=True),
            "end_effector_frame": self.end_effector_frame,
            "base_frame": self.base_frame,
            "target_kind": self.target_kind,
            "joint_encodings": json.dumps(list(self.joint_encodings)),
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

    release = parse_version(version)
    if release is None:
        raise fail("version", f"{version!r} is not a tocpl_ros version (major.minor.patch): not a file this "
                              "reader knows; re-export the checkpoint with tocpl-export")
    if release[0] > READER_MAJOR:
        raise fail("version", f"the file was written by tocpl_ros {version}, a newer major version than this "
                              f"reader ({READER_MAJOR}.x): update tocpl_ros on this machine, or export the policy "
                              "with this version's tocpl-export")
    has_target = any(name == "target" for name, _ in obs_layout)
    robot_keys = _robot_keys(props, raw, js, fail, joint_names)
    defaults_used: list[str] = []
    if release < ROBOT_KEYS_SINCE:  # written before the robot keys: they are filled in, never required
        task_robot = configs["task_config"].get("robot")
        defaults = {
            "robot": task_robot if isinstance(task_robot, str) else "",
            "locked_joints": {},
            "end_effector_frame": configs["task_config"].get("frame") or "",
            "base_frame": "",
            "target_kind": "position" if has_target else "none",
            "joint_encodings": ["angle"] * len(joint_names),
        }
        defaults_used = [k for k in ROBOT_KEYS if k not in robot_keys]
        robot_keys = {**defaults, **robot_keys}
    else:
        missing = [k for k in ROBOT_KEYS if k not in robot_keys]
        if missing:
            raise fail(missing[0], f"missing, but the file says it was written by tocpl_ros {version}, whose files "
                                   f"carry {', '.join(PREFIX + k for k in ROBOT_KEYS)}: the file was edited or "
                                   "written by another tool; re-export the checkpoint with tocpl-export")

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
        **robot_keys,
        defaults_used=defaults_used,
    )


def parse_version(text: str) -> tuple[int, ...] | None:
    """(major, minor[, patch]) of a version string such as '0.2.0' (a suffix after the numbers
    ignored: '0.2.0rc1', '0.2.0+local'); None if it does not start with major.minor."""
    parts = []
    for piece in text.strip().split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):  # a suffix ends the numbers
            break
    return tuple(parts) if len(parts) >= 2 else None


def _robot_keys(props: dict[str, str], raw, js, fail, joint_names: list[str]) -> dict[str, Any]:
    """The ROBOT_KEYS present in ``props``, checked (the absent ones are left out)."""
    present: dict[str, Any] = {}
    for key in ("robot", "end_effector_frame", "base_frame"):
        if PREFIX + key in props:
            present[key] = raw(key)
    if PREFIX + "locked_joints" in props:
        locked = js("locked_joints")
        if not isinstance(locked, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in locked.values()
        ):
            raise fail("locked_joints", f"expected a JSON object joint name -> finite number, got {locked!r}")
        both = [n for n in locked if n in joint_names]
        if both:
            raise fail("locked_joints", f"joints {both} are controlled (tocpl.joint_names), they cannot be locked")
        present["locked_joints"] = {str(k): float(v) for k, v in locked.items()}
    if PREFIX + "target_kind" in props:
        kind = raw("target_kind")
        if kind not in TARGET_KINDS:
            raise fail("target_kind", f"expected one of {', '.join(TARGET_KINDS)}, got {kind!r}")
        present["target_kind"] = kind
    if PREFIX + "joint_encodings" in props:
        encodings = js("joint_encodings")
        if not isinstance(encodings, list) or len(encodings) != len(joint_names) or not all(
            isinstance(e, str) and e in JOINT_ENCODINGS for e in encodings
        ):
            raise fail("joint_encodings", f"expected one of {list(JOINT_ENCODINGS)} per joint of tocpl.joint_names "
                                          f"({len(joint_names)}), got {encodings!r}")
        present["joint_encodings"] = encodings
    return present

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
