"""Session-wide test settings: ROS 2 / DDS traffic stays on loopback.

Set at import time (before any test module can import rclpy and call rclpy.init) and
re-checked by a session-wide autouse fixture. Tests force LOCALHOST even if the caller's
environment opened discovery up; the domain id is kept from the environment (the
Makefile exports one per run) or derived per run.

The marker ``ros`` (pytest.ini) is set here on every test that starts rclpy nodes or ROS
processes, by one rule: such a test gets its ROS domain from a fixture of ROS_FIXTURES (or
carries the marker itself). ``make test-fast`` leaves these tests out. A test without the marker
that creates an in-process ROS node (tocpl_ros.ros.probe.SpinningNode: every test node and the
probe) fails, so the rule cannot be forgotten silently.
"""
import os

import pytest

from tocpl_ros.ros.environment import (
    DISCOVERY_RANGE_VAR,
    DOMAIN_ID_VAR,
    LOOPBACK_RANGE,
    apply_loopback_defaults,
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
        from ros_harness import domain_for, node_env

        domain = domain_for(int(ros_loopback_env[DOMAIN_ID_VAR]), offset)
        return domain, node_env(domain)

    return make


@pytest.fixture
def ros_quiet_domain(ros_loopback_env):
    """For node tests: ``ros_quiet_domain(make, offset, **kwargs)`` → (harness, domain, env):
    ``make(domain, **kwargs)`` (a test node: ros_harness.SpinningTestNode, Probe) on a domain
    where no other ROS node shows up (ros_harness.quiet_harness), and the environment of node
    processes there."""

    def make_quiet(make, offset: int, **kwargs):
        from ros_harness import node_env, quiet_harness

        harness, domain = quiet_harness(make, int(ros_loopback_env[DOMAIN_ID_VAR]), offset, **kwargs)
        return harness, domain, node_env(domain)

    return make_quiet


ROS_FIXTURES = {"ros_node_env", "ros_quiet_domain"}
"""The fixtures that give a test a ROS domain of its own: a test using one is marked ``ros``."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if ROS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ros)


@pytest.fixture(autouse=True)
def _ros_needs_the_marker(request, monkeypatch):
    """A test not marked ``ros`` may not start an in-process ROS node (see the module's docstring)."""
    if request.node.get_closest_marker("ros") is not None:
        return
    from tocpl_ros.ros.probe import SpinningNode

    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts a ROS node: get its domain from a fixture of "
                           f"{sorted(ROS_FIXTURES)} (conftest.py), which marks it 'ros'")

    monkeypatch.setattr(SpinningNode, "__init__", refuse)
