"""tocpl_ros.resources finds the share files in a source checkout, an ament (colcon)
install and a plain pip install."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tocpl_ros
from tocpl_ros import resources

REPO = Path(__file__).resolve().parent.parent
MANIFEST = '<package format="3"><name>tocpl_ros</name></package>\n'


def test_source_checkout_found():
    assert (REPO / "package.xml").is_file()
    if Path(tocpl_ros.__file__).resolve().parent.parent != REPO:
        pytest.skip("tocpl_ros is not imported from this source checkout")
    assert resources.share_dir() == REPO
    assert resources.share_path("package.xml") == REPO / "package.xml"
    assert resources.share_path("package.xml").is_file()


def test_config_and_urdf_helpers():
    if resources.share_dir() != REPO:
        pytest.skip("tocpl_ros is not imported from this source checkout")
    if not (REPO / "config").is_dir():
        pytest.skip("no config/ folder yet")
    assert resources.config_path() == REPO / "config"
    for yaml_file in sorted((REPO / "config").rglob("*.yaml")):
        rel = yaml_file.relative_to(REPO / "config")
        assert resources.config_path(*rel.parts) == yaml_file
    with pytest.raises(FileNotFoundError):
        resources.config_path("no_such_file.yaml")
    with pytest.raises(FileNotFoundError):
        resources.urdf_path("no_such_robot")
    if (REPO / "urdf" / "ur5.urdf").is_file():
        assert resources.urdf_path("ur5") == REPO / "urdf" / "ur5.urdf"
        assert resources.urdf_path("ur5.urdf") == REPO / "urdf" / "ur5.urdf"


@pytest.fixture
def not_in_source(monkeypatch, tmp_path):
    """Pretend tocpl_ros is imported from an install without package.xml beside it;
    also hide sys.prefix / user base installs and the ament index."""
    fake_pkg = tmp_path / "site-packages" / "tocpl_ros"
    fake_pkg.mkdir(parents=True)
    monkeypatch.setattr(resources, "__file__", str(fake_pkg / "resources.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "empty_prefix"))
    monkeypatch.setattr(resources.site, "USER_BASE", str(tmp_path / "empty_user"))
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    return tmp_path


def _make_share(prefix: Path) -> Path:
    share = prefix / "share" / "tocpl_ros"
    (share / "config").mkdir(parents=True)
    (share / "package.xml").write_text(MANIFEST)
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "tocpl_ros").write_text("")
    return share


def test_not_found_names_places(not_in_source):
    with pytest.raises(FileNotFoundError) as info:
        resources.share_dir()
    msg = str(info.value)
    assert "source checkout" in msg
    assert "ament_index_python" in msg
    assert str(not_in_source / "empty_prefix" / "share" / "tocpl_ros") in msg


def test_ament_install_found(not_in_source, monkeypatch):
    pytest.importorskip("ament_index_python")
    share = _make_share(not_in_source / "ament_prefix")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(not_in_source / "ament_prefix"))
    assert resources.share_dir() == share
    assert resources.config_path() == share / "config"


def test_pip_prefix_found(not_in_source, monkeypatch):
    share = _make_share(not_in_source / "venv")
    monkeypatch.setattr(sys, "prefix", str(not_in_source / "venv"))
    assert resources.share_dir() == share


def test_other_package_xml_is_not_taken(not_in_source, monkeypatch):
    # A package.xml of another package next to the import location is ignored.
    (not_in_source / "site-packages" / "package.xml").write_text(
        MANIFEST.replace("tocpl_ros", "other_pkg")
    )
    with pytest.raises(FileNotFoundError):
        resources.share_dir()


def _copy_source(dst: Path) -> None:
    """Copy what the package build needs (not .venv, build/ or .git)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "package.xml", "MANIFEST.in"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dst / name)
    for name in ("resource", "tocpl_ros", "training", "config", "urdf", "launch"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dst / name, ignore=ignore)


@pytest.mark.slow
def test_real_pip_install_finds_share_files(tmp_path):
    """`pip install .` (non-editable) into a fresh venv: data_files under
    <venv>/share/tocpl_ros are found by share_dir() imported from that venv, and the
    console script lands in <venv>/bin."""
    src = tmp_path / "src"
    src.mkdir()
    _copy_source(src)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    vpy = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "PIP_USER")}
    # Build the wheel with this venv's setuptools (no network), install it into the
    # fresh venv (which has neither pip nor setuptools) with this venv's pip.
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(wheels), str(src)],
        check=True, timeout=300, env=env, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("tocpl_ros-*.whl")
    subprocess.run(
        [*pip, "--python", str(vpy), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True, timeout=300, env=env, cwd=tmp_path,
    )
    share = venv / "share" / "tocpl_ros"
    assert (share / "package.xml").is_file()
    assert (venv / "share" / "ament_index" / "resource_index" / "packages" / "tocpl_ros"
            ).is_file()
    for yaml_file in (REPO / "config").rglob("*.yaml"):
        assert (share / yaml_file.relative_to(REPO)).is_file(), yaml_file
    for urdf in (REPO / "urdf").glob("*"):
        assert (share / "urdf" / urdf.name).is_file(), urdf
    assert (venv / "bin" / "tocpl-solve").is_file()
    assert not (venv / "lib" / "tocpl_ros").exists()

    code = textwrap.dedent("""
        import sys, tocpl_ros, tocpl_training
        from tocpl_ros.resources import share_dir
        print(tocpl_ros.__file__)
        print(tocpl_training.__file__)
        print(share_dir())
    """)
    out = subprocess.run([str(vpy), "-I", "-c", code], check=True, capture_output=True,
                         text=True, timeout=60, env=env, cwd=tmp_path).stdout.splitlines()
    lib = (venv / "lib").resolve()
    assert Path(out[0]).resolve().is_relative_to(lib), out
    assert Path(out[1]).resolve().is_relative_to(lib), out
    assert Path(out[2]).resolve() == share.resolve(), out
