"""Task library: the four control tasks of the paper as Crocoddyl problems.

``load_task("ur5_reach")`` reads ``config/tasks/ur5_reach.yaml``; a path to any
YAML file of the same schema works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tocpl_ros.config import ConfigError, FieldError, load_dataclass, read_yaml, with_overrides
from tocpl_ros.resources import config_path
from tocpl_ros.tasks.base import DynamicsCounter, Evaluation, Problems, Task, Trajectories
from tocpl_ros.tasks.config import TaskConfig
from tocpl_ros.tasks.lqr import LQRTask
from tocpl_ros.tasks.robot import ReachTask, RobotTask, UprightTask

TASK_CLASSES: dict[str, type[Task]] = {"lqr": LQRTask, "upright": UprightTask, "reach": ReachTask}

__all__ = [
    "DynamicsCounter", "Evaluation", "LQRTask", "Problems", "ReachTask", "RobotTask", "Task",
    "TaskConfig", "Trajectories", "UprightTask", "available_tasks", "load_task", "make_task",
]


def available_tasks() -> list[str]:
    """Names of the task configs shipped in config/tasks/."""
    return sorted(p.stem for p in config_path("tasks").glob("*.yaml"))


def task_config_file(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = config_path("tasks") / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(str(path), "task", f"unknown task '{name_or_path}' (available: {', '.join(available_tasks())})")
    return path


def load_task_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[str, TaskConfig]:
    """(task name, validated config) from config/tasks/<name>.yaml or a YAML path."""
    path = task_config_file(name_or_path)
    data = read_yaml(path)
    if overrides and "robot" in overrides:  # a generic task (config/tasks/reach.yaml) names no robot itself
        data = {**data, "robot": overrides["robot"]}
    config = load_dataclass(TaskConfig, data, source=str(path))
    if overrides:
        config = with_overrides(config, overrides, source=f"{path} (with overrides)")
    return path.stem, config


def make_task(name: str, config: TaskConfig, source: str = "") -> Task:
    """Instantiate the task class of ``config.kind``; config problems name the key."""
    try:
        return TASK_CLASSES[config.kind](name, config)
    except FieldError as exc:
        raise ConfigError(source or f"task {name}", exc.field, exc.message) from exc


def load_task(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Task:
    """The task named ``name_or_path`` (config/tasks/<name>.yaml) or defined by a YAML path."""
    name, config = load_task_config(name_or_path, overrides)
    return make_task(name, config, source=str(task_config_file(name_or_path)))
