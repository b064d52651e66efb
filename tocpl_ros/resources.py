"""Locate the share files of tocpl_ros (package.xml, config/, urdf/, launch/).

The same code runs from three kinds of installation; they are tried in this order:

1. a source checkout (also `pip install -e .` and `colcon build --symlink-install`):
   the repository root, i.e. the parent of the ``tocpl_ros`` package folder, recognised
   by the ``package.xml`` (naming tocpl_ros) next to it;
2. a colcon / ament install: ``ament_index_python.get_package_share_directory``, when
   ament_index_python is importable and ``AMENT_PREFIX_PATH`` knows the package;
3. a plain pip install into a venv: ``<sys.prefix>/share/tocpl_ros`` (pip puts the
   data_files there, but AMENT_PREFIX_PATH does not include the venv), then the same
   under the user base (``pip install --user``).
"""
from __future__ import annotations

import site
import sys
from pathlib import Path

PACKAGE_NAME = "tocpl_ros"

__all__ = ["share_dir", "share_path", "urdf_path", "config_path", "PACKAGE_NAME"]


def _is_share_dir(path: Path) -> bool:
    manifest = path / "package.xml"
    try:
        return manifest.is_file() and f"<name>{PACKAGE_NAME}</name>" in manifest.read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return False


def _ament_share_dir() -> tuple[Path | None, str]:
    """(share dir or None, description of what was tried)."""
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None, "ament_index_python (not importable)"
    try:
        path = Path(get_package_share_directory(PACKAGE_NAME))
    except (LookupError, ValueError, OSError) as exc:  # PackageNotFoundError is a KeyError
        return None, f"ament_index_python ({type(exc).__name__}: {exc})"
    return path, f"ament_index_python ({path})"


def share_dir() -> Path:
    """Directory holding package.xml, config/, urdf/ and launch/ of tocpl_ros.

    Raises FileNotFoundError naming every place looked at.
    """
    looked: list[str] = []

    # (1) source checkout: <repo>/tocpl_ros/resources.py -> <repo>/package.xml
    source_root = Path(__file__).resolve().parent.parent
    if _is_share_dir(source_root):
        return source_root
    looked.append(f"source checkout {source_root}")

    # (2) colcon / ament install
    ament_dir, what = _ament_share_dir()
    if ament_dir is not None and _is_share_dir(ament_dir):
        return ament_dir
    looked.append(what)

    # (3) pip / venv install (data_files land under <prefix>/share)
    prefixes = [Path(sys.prefix)]
    user_base = getattr(site, "USER_BASE", None)
    if user_base:
        prefixes.append(Path(user_base))
    for prefix in prefixes:
        candidate = prefix / "share" / PACKAGE_NAME
        if _is_share_dir(candidate):
            return candidate
        looked.append(str(candidate))

    raise FileNotFoundError(
        f"share files of {PACKAGE_NAME} (package.xml) not found; looked at: "
        + "; ".join(looked)
    )


def share_path(*parts: str | Path) -> Path:
    """``share_dir() / parts...`` (not checked for existence)."""
    return share_dir().joinpath(*parts)


def _existing(path: Path, kind: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{kind} not found: {path}")
    return path


def urdf_path(name: str) -> Path:
    """Path of a URDF shipped with the package: ``urdf_path("ur5")`` or
    ``urdf_path("ur5.urdf")`` -> ``<share>/urdf/ur5.urdf``. Raises FileNotFoundError."""
    if not Path(name).suffix:
        name = f"{name}.urdf"
    return _existing(share_path("urdf", name), "URDF")


def config_path(*parts: str | Path) -> Path:
    """Path under the package's config folder, e.g.
    ``config_path("tasks", "ur5_reach.yaml")``; ``config_path()`` is the folder itself.
    Raises FileNotFoundError."""
    return _existing(share_path("config", *parts), "config file")


def console_command(name: str, module: str) -> list[str]:
    """How to run one of our console scripts: its installed script beside this Python, else
    ``python -m module`` (a source checkout without the editable install)."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]
