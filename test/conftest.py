"""Session-wide test settings: ROS 2 / DDS traffic stays on loopback.

Set at import time (before any test module can import rclpy and call rclpy.init) and
re-checked by a session-wide autouse fixture. Tests force LOCALHOST even if the caller's
environment opened discovery up; the domain id is kept from the environment (the
Makefile exports one per run) or derived per run.
"""
import os

import pytest

from tocpl_ros.ros.environment import (
    DISCOVERY_RANGE_VAR,
    DOMAIN_ID_VAR,
    LOOPBACK_RANGE,
    apply_loopback_defaults,
    derive_domain_id,
)

os.environ[DISCOVERY_RANGE_VAR] = LOOPBACK_RANGE
_ROS_TEST_ENV = apply_loopback_defaults()


@pytest.fixture(scope="session", autouse=True)
def _clean_dead_fastdds_segments():
    """After the session: the shared-memory segments of the DDS participants the tests killed."""
    yield
    from ros_harness import remove_dead_fastdds_segments

    remove_dead_fastdds_segments()


@pytest.fixture(scope="session", autouse=True)
def ros_loopback_env():
    """The ROS variables every test runs with ({name: value})."""
    os.environ[DISCOVERY_RANGE_VAR] = LOOPBACK_RANGE
    os.environ.update(_ROS_TEST_ENV)
    return dict(_ROS_TEST_ENV)


@pytest.fixture
def ros_node_env(ros_loopback_env):
    """For node tests: ``ros_node_env(offset)`` → (domain, env) for a node subprocess on a
    domain of its own (derived from the run's and ``offset``), DDS on loopback."""

    def make(offset: int) -> tuple[int, dict[str, str]]:
        from ros_harness import node_env

        domain = derive_domain_id(int(ros_loopback_env[DOMAIN_ID_VAR]) + offset)
        return domain, node_env(domain)

    return make
