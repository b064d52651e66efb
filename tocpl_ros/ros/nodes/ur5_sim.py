"""``ur5_sim``: the simulated UR5, kept for the ``ur5_policy`` graph and its users.

The :class:`~tocpl_ros.ros.nodes.arm_sim.ArmSimNode` under the node name ``ur5_sim``, its defaults
from ``config/ur5_sim.yaml`` (``robot: ur5``): ``ur5_sim`` and ``arm_sim --ros-args -p robot:=ur5``
simulate the same arm with the same parameters. See :mod:`tocpl_ros.ros.nodes.arm_sim`.
"""

from __future__ import annotations

import sys

from tocpl_ros.interfaces import COMMAND_TOPICS, JOINT_STATES_TOPIC, SIM_NODE
from tocpl_ros.ros.nodes.arm_sim import ArmSimNode
from tocpl_ros.ros.runtime import run_node

__all__ = ["Ur5SimNode", "main", "COMMAND_TOPICS", "JOINT_STATES_TOPIC"]


class Ur5SimNode(ArmSimNode):
    """The ``ur5_sim`` node: ArmSimNode with the UR5's params file."""

    node_name = SIM_NODE


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ur5_sim`` (``ros2 run tocpl_ros ur5_sim``). SIGINT / SIGTERM stop
    it cleanly (exit 0, with a rate summary); bad parameters exit with 2 and an error naming
    the parameter (:func:`run_node`)."""
    return run_node(SIM_NODE, Ur5SimNode, args)


if __name__ == "__main__":
    sys.exit(main())
