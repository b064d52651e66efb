"""Installation of tocpl_ros: works both with `colcon build` (ament_python) and
with a plain `pip install [-e] .` into a virtualenv (see Makefile target `venv`).

Heavy/binary dependencies (torch, pin, crocoddyl, ros-* wheels) stay in
requirements.txt: colcon users get rclpy & co. from their ROS install / rosdep.
"""
import os
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE_NAME = "tocpl_ros"
HERE = Path(__file__).resolve().parent


def _rel_glob(pattern: str) -> list[str]:
    """Files matching `pattern` (relative to this file), as relative paths."""
    return sorted(
        p for p in glob(pattern, root_dir=HERE, recursive=True) if (HERE / p).is_file()
    )


def _tree(src_dir: str, pattern: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing src_dir/**/pattern under share/<pkg>/src_dir,
    preserving sub-folders (config/tasks/x.yaml -> share/tocpl_ros/config/tasks/)."""
    groups: dict[str, list[str]] = {}
    for f in _rel_glob(f"{src_dir}/**/{pattern}"):
        groups.setdefault(os.path.dirname(f), []).append(f)
    return [(f"share/{PACKAGE_NAME}/{d}", files) for d, files in sorted(groups.items())]


data_files = [
    ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
    (f"share/{PACKAGE_NAME}", ["package.xml"]),
]
launch_files = _rel_glob("launch/*.launch.py")
if launch_files:
    data_files.append((f"share/{PACKAGE_NAME}/launch", launch_files))
data_files += _tree("config", "*.yaml")
urdf_files = _rel_glob("urdf/*")
if urdf_files:
    data_files.append((f"share/{PACKAGE_NAME}/urdf", urdf_files))

setup(
    name=PACKAGE_NAME,
    version="0.2.0",
    description="Neural-network control policies learned from Crocoddyl trajectory "
    "optimization, run through ROS 2",
    license="BSD-3-Clause",
    maintainer="tocpl_ros maintainers",
    maintainer_email="maintainers@tocpl-ros.dev",
    python_requires=">=3.10",
    packages=find_packages(where=str(HERE), include=[PACKAGE_NAME, f"{PACKAGE_NAME}.*"])
    + ["tocpl_training"]
    + [f"tocpl_training.{p}" for p in find_packages(where=str(HERE / "training"))],
    package_dir={"tocpl_training": "training"},
    data_files=data_files,
    install_requires=["numpy", "pyyaml"],
    extras_require={"test": ["pytest"], "ray": ["ray"]},  # ray: the OC phase on Ray (docs/ray.md)
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "tocpl-solve = tocpl_ros.tools.solve:main",
            "tocpl-export = tocpl_training.export:main",
            "tocpl-train = tocpl_training.cli:main",
            "tocpl-train-bench = tocpl_training.bench.train:main",
            "tocpl-train-profile = tocpl_training.bench.profile:main",
            "tocpl-bench = tocpl_training.bench.compare:main",
            "tocpl-oc-bench = tocpl_training.bench.oc:main",
            "tocpl-inspect = tocpl_training.evaluation.inspect:main",
            "tocpl-mpc-bench = tocpl_ros.bench.mpc:main",
            "tocpl-mpc-loop-bench = tocpl_ros.bench.mpc_loop:main",
            "tocpl-load-bench = tocpl_ros.bench.load:main",
            "tocpl-inference-bench = tocpl_ros.bench.inference:main",
            # ROS 2 nodes (ros2 run tocpl_ros <name>) and the launch-free bring-up
            "arm_sim = tocpl_ros.ros.nodes.arm_sim:main",
            "ur5_sim = tocpl_ros.ros.nodes.ur5_sim:main",
            "policy_node = tocpl_ros.ros.nodes.policy_node:main",
            "mpc_node = tocpl_ros.ros.nodes.mpc_node:main",
            "tocpl-bringup = tocpl_ros.bringup.cli:main",
            "tocpl-demo = tocpl_ros.tools.demo:main",
        ],
    },
)
