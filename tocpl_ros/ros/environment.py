"""Keep ROS 2 / DDS traffic on the loopback interface by default (ROS-free module).

With default settings FastDDS discovery multicasts on the machine's external interface;
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` keeps everything on loopback while nodes in
separate processes still talk. Every test, CI run and demo/bring-up path uses these
defaults. A deployment on a real robot opens discovery up by setting
``ROS_AUTOMATIC_DISCOVERY_RANGE`` (e.g. ``SUBNET``) explicitly in its environment: an
explicit (non-empty) setting is always kept.

``ROS_DOMAIN_ID``: the given one, else the one in the environment, else one derived per
run (from the process id) in 1..100, so concurrent runs on one machine rarely share a
domain and the default domain 0 is avoided.

This module must not import rclpy: call :func:`apply_loopback_defaults` *before*
``rclpy.init()`` (the middleware reads the variables at init).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

DISCOVERY_RANGE_VAR = "ROS_AUTOMATIC_DISCOVERY_RANGE"
DOMAIN_ID_VAR = "ROS_DOMAIN_ID"
LOOPBACK_RANGE = "LOCALHOST"
# Valid ROS_DOMAIN_ID values (port arithmetic of the DDS spec) on Linux: 0..101 and
# 215..232. We only check the broad bound here.
MAX_DOMAIN_ID = 232

__all__ = [
    "loopback_ros_env",
    "apply_loopback_defaults",
    "derive_domain_id",
    "DISCOVERY_RANGE_VAR",
    "DOMAIN_ID_VAR",
    "LOOPBACK_RANGE",
]


def derive_domain_id(seed: int | None = None) -> int:
    """A domain id in 1..100 derived from ``seed`` (default: this process' pid)."""
    if seed is None:
        seed = os.getpid()
    return 1 + int(seed) % 100


def _check_domain_id(value: int | str) -> int:
    try:
        domain_id = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{DOMAIN_ID_VAR} must be an integer, got {value!r}") from None
    if not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise ValueError(f"{DOMAIN_ID_VAR} must be in 0..{MAX_DOMAIN_ID}, got {domain_id}")
    return domain_id


def loopback_ros_env(
    base: Mapping[str, str] | None = None, domain_id: int | None = None
) -> dict[str, str]:
    """A copy of ``base`` (default: ``os.environ``) with loopback ROS defaults.

    - ``ROS_AUTOMATIC_DISCOVERY_RANGE``: kept if ``base`` sets it (non-empty),
      else ``LOCALHOST``.
    - ``ROS_DOMAIN_ID``: ``domain_id`` if given, else kept from ``base`` if set
      (non-empty), else :func:`derive_domain_id`.
    """
    env = dict(os.environ if base is None else base)
    if not env.get(DISCOVERY_RANGE_VAR, "").strip():
        env[DISCOVERY_RANGE_VAR] = LOOPBACK_RANGE
    if domain_id is not None:
        env[DOMAIN_ID_VAR] = str(_check_domain_id(domain_id))
    elif env.get(DOMAIN_ID_VAR, "").strip():
        env[DOMAIN_ID_VAR] = str(_check_domain_id(env[DOMAIN_ID_VAR].strip()))
    else:
        env[DOMAIN_ID_VAR] = str(derive_domain_id())
    return env


def apply_loopback_defaults(domain_id: int | None = None) -> dict[str, str]:
    """Apply :func:`loopback_ros_env` to ``os.environ`` in-process (call before
    ``rclpy.init``). Returns the two resulting values."""
    env = loopback_ros_env(domain_id=domain_id)
    values = {k: env[k] for k in (DISCOVERY_RANGE_VAR, DOMAIN_ID_VAR)}
    os.environ.update(values)
    return values
