"""The ``/diagnostics`` message of the policy and MPC nodes, built in one place: the loop's own
values, its control timer's period statistics and one DiagnosticStatus named after the node."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from tocpl_ros.ros.runtime import PeriodMonitor

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN


def period_values(periods: PeriodMonitor) -> dict[str, str]:
    """The control timer's periods since the last call (that window is then cleared) and overruns."""
    loop = periods.stats.summary()
    periods.stats.clear()
    return {
        "loop_period_p50_ms": f"{loop['p50'] * 1e3:.3f}",
        "loop_period_p99_ms": f"{loop['p99'] * 1e3:.3f}",
        "loop_period_max_ms": f"{loop['max'] * 1e3:.3f}",
        "loop_period_samples": str(loop["n"]),
        "loop_period_max_ever_ms": f"{periods.stats.max_ever * 1e3:.3f}",
        "overruns": str(periods.overruns),
    }


def diagnostic_array(node, loop_name: str, level: bytes, message: str, hardware_id: str,
                     values: dict[str, str]) -> DiagnosticArray:
    """One status ``"<node name>: <loop_name>"`` with ``values`` as key/value pairs, stamped now."""
    status = DiagnosticStatus(
        level=level,
        name=f"{node.get_name()}: {loop_name}",
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg
