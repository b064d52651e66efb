"""The import graph of tocpl_ros and tocpl_training, read statically (AST, no import run):
no cycle between modules, and the layers of docs/architecture.md hold (ROS-free modules reach
no rclpy, the core reaches no torch and no trainer).

Every import statement counts, also one inside a function: a lazy import still loads the
module when that function runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tocpl_ros": ROOT / "tocpl_ros", "tocpl_training": ROOT / "training"}

ROS_PACKAGES = {
    "rclpy", "rcl", "rmw", "rcl_interfaces", "launch", "launch_ros", "std_msgs", "std_srvs",
    "sensor_msgs", "geometry_msgs", "diagnostic_msgs", "builtin_interfaces",
}
# The ROS users: the nodes and their runtime, and the tools that drive a running graph.
ROS_MODULES = ("tocpl_ros.ros.runtime", "tocpl_ros.bringup.launch_file", "tocpl_ros.ros.diagnostics", "tocpl_ros.ros.probe",
               "tocpl_ros.ros.nodes", "tocpl_ros.tools.demo", "tocpl_ros.tools.arm_target", "tocpl_ros.bench.load",
               "tocpl_ros.bench.mpc_loop")
TRAINER_ONLY = {"torch", "tocpl_training", "stable_baselines3", "gymnasium", "ray"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module `name` imports (a package's submodule when a
    `from package import x` names one)."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _internal(name: str) -> set[str]:
    return {m for m in IMPORTS[name] if m in MODULES and m != name}


def _reached(name: str) -> set[str]:
    """Every module of ours that importing `name` may load (transitively)."""
    seen, todo = set(), [name]
    while todo:
        for m in _internal(todo.pop()) - seen:
            seen.add(m)
            todo.append(m)
    return seen


def _is_ros_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in ROS_MODULES)


def _third_party(names: set[str]) -> set[str]:
    return {m.split(".")[0] for m in names}


def test_every_module_is_seen():
    assert {"tocpl_ros.robot", "tocpl_ros.ros.nodes.policy_node", "tocpl_training.trainer"} <= set(MODULES)


def test_no_import_cycle():
    # Tarjan's strongly connected components over the internal import edges.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(_internal(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if not _is_ros_module(m)))
def test_ros_free_modules_reach_no_ros(name):
    """Everything but the nodes, their runtime and the ROS tools works without a ROS installation."""
    offenders = {m: sorted(_third_party(IMPORTS[m]) & ROS_PACKAGES)
                 for m in {name} | _reached(name) if _third_party(IMPORTS[m]) & ROS_PACKAGES}
    assert not offenders, f"{name} reaches ROS through {offenders}"
    ros_users = sorted(m for m in _reached(name) if _is_ros_module(m))
    assert not ros_users, f"{name} imports the ROS modules {ros_users}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("tocpl_ros")))
def test_robot_side_reaches_no_trainer(name):
    """Nothing the robot runs pulls in torch or the trainer (tocpl-demo runs tocpl-train as a process)."""
    offenders = {m: sorted(_third_party(IMPORTS[m]) & TRAINER_ONLY)
                 for m in {name} | _reached(name) if _third_party(IMPORTS[m]) & TRAINER_ONLY}
    assert not offenders, f"{name} reaches the trainer through {offenders}"


def test_robot_imports_only_the_configuration():
    """robot.py and robot_config.py are the one place that loads URDFs: everything robot-specific
    imports them, not the reverse; the description reads without Pinocchio."""
    assert _reached("tocpl_ros.robot") <= {"tocpl_ros", "tocpl_ros.config", "tocpl_ros.interfaces",
                                           "tocpl_ros.resources", "tocpl_ros.robot_config"}
    assert "pinocchio" not in _third_party(IMPORTS["tocpl_ros.robot_config"])
