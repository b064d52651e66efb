"""What a bring-up graph is made of, without ROS: launch arguments and their parsing (each error
names the argument), node specs in the terms of ``launch_ros.actions.Node``, the parameters'
command-line text and the DDS environment every node gets. The graphs themselves:
:mod:`tocpl_ros.bringup.graph`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tocpl_ros.ros.environment import DISCOVERY_RANGE_VAR, DOMAIN_ID_VAR, loopback_ros_env

LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class BringupError(ValueError):
    """A launch argument or the installation does not allow starting the graph (the message says why)."""


@dataclass(frozen=True)
class LaunchArgument:
    """One launch argument: ``DeclareLaunchArgument(name, default_value=default, description=...)``."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


@dataclass
class NodeSpec:
    """One node of a graph, in the terms of ``launch_ros.actions.Node``."""

    package: str
    executable: str
    name: str
    """Node name (``-r __node:=name``); also the section of its params files."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Parameters set by the launch arguments (applied after the params files)."""
    params_files: list[Path] = field(default_factory=list)
    """ROS 2 params files from config/, in order."""
    remappings: list[tuple[str, str]] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    """Extra command-line arguments before ``--ros-args``."""
    ros_arguments: list[str] = field(default_factory=list)
    """Extra ROS arguments (after ``--ros-args``), e.g. ``--log-level info``."""
    description: str = ""
    missing_hint: str = ""
    """Added to the error when the executable is not installed."""

    def command(self, executable_path: str | Path) -> list[str]:
        """The command line ``launch_ros`` would build: executable, arguments, ``--ros-args``,
        ROS arguments, node name, params files, ``-p`` parameters, remappings."""
        cmd = [str(executable_path), *self.arguments, "--ros-args", *self.ros_arguments, "-r", f"__node:={self.name}"]
        for path in self.params_files:
            cmd += ["--params-file", str(path)]
        for key, value in self.parameters.items():
            cmd += ["-p", f"{key}:={format_param_value(value)}"]
        for src, dst in self.remappings:
            cmd += ["-r", f"{src}:={dst}"]
        return cmd



def parse_bool(name: str, value: Any) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off, any case) or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BringupError(f"argument '{name}': expected true or false, got {value!r}")


def parse_target(value: Any) -> list[float] | None:
    """``"x,y,z"`` (m, base frame) or a pose ``"x,y,z,qx,qy,qz,qw"`` (the end effector's
    orientation as a quaternion, /target_pose's convention; also ``"[...]"`` or spaces), or a
    sequence of 3 or 7 numbers -> the list; empty -> None. Raises BringupError saying what is wrong."""
    expected = "'x,y,z' (m, base frame) or a pose 'x,y,z,qx,qy,qz,qw'"
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if not text.strip():
            return None
        parts = [p for p in text.replace(",", " ").split()]
    else:
        try:
            parts = list(value)
        except TypeError:
            raise BringupError(f"argument 'target': expected {expected}, got {value!r}") from None
    if len(parts) not in (3, 7):
        raise BringupError(f"argument 'target': expected {expected}, got {value!r} ({len(parts)} values)")
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise BringupError(f"argument 'target': expected {expected}, got {value!r}") from None
    if not all(math.isfinite(x) for x in values):
        raise BringupError(f"argument 'target': the coordinates must be finite, got {value!r}")
    if len(values) == 7 and math.hypot(*values[3:]) < 1e-6:
        raise BringupError(f"argument 'target': the quaternion (qx, qy, qz, qw) of {value!r} has zero norm")
    return values


def parse_rate(value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise BringupError(f"argument 'rate': expected a number of Hz, got {value!r}") from None
    if not (math.isfinite(rate) and 0 < rate <= 10000):
        raise BringupError(f"argument 'rate': must be in (0, 10000] Hz, got {value!r}")
    return rate


def parse_priority(value: Any) -> int:
    text = str(value).strip()
    try:
        priority = int(text)
    except ValueError:
        raise BringupError(f"argument 'realtime_priority': expected an integer in 0..99, got {value!r}") from None
    if isinstance(value, bool) or not 0 <= priority <= 99:
        raise BringupError(f"argument 'realtime_priority': must be in 0..99 (0: normal scheduling), got {value!r}")
    return priority


def parse_choice(arg: LaunchArgument, value: Any) -> str:
    text = str(value).strip()
    if arg.choices and text not in arg.choices:
        raise BringupError(f"argument '{arg.name}': must be one of {', '.join(arg.choices)}, got {value!r}")
    return text


def parse_policy(value: Any) -> Path:
    text = "" if value is None else str(value).strip()
    if not text:
        raise BringupError(
            "argument 'policy' is required: the .onnx policy file (e.g. policy:=runs/ur5/policy.onnx, "
            "written by tocpl-train or tocpl-export)"
        )
    path = Path(os.path.expanduser(text)).absolute()
    if not path.is_file():
        raise BringupError(f"argument 'policy': no such file: {path}" + (f" (given as {text!r})" if text != str(path) else ""))
    return path


def format_param_value(value: Any) -> str:
    """A parameter value as the YAML text of ``-p name:=value`` (strings quoted when YAML would
    read them as something else: ``'true'``, ``'500'``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    return text


def node_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The DDS variables every node of a graph gets: ``ROS_AUTOMATIC_DISCOVERY_RANGE``
    (LOCALHOST unless set) and one ``ROS_DOMAIN_ID`` shared by all nodes (the one set, else
    one derived for this run), see :func:`tocpl_ros.ros.environment.loopback_ros_env`."""
    env = loopback_ros_env(base)
    return {DISCOVERY_RANGE_VAR: env[DISCOVERY_RANGE_VAR], DOMAIN_ID_VAR: env[DOMAIN_ID_VAR]}
