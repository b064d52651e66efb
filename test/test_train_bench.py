"""tocpl-train-bench's printed rows: a pose-target run shows its orientation figures (deg) next to the
position's, a position run's row is unchanged (rows made up: no training)."""

from __future__ import annotations

from tocpl_training.bench.train import format_row


def bench_row(**extra) -> dict:
    """A result row as run_one returns it, with a hold at T, a sequence and moving starts."""
    row = {"task": "reach_pose_panda", "variant": "PDDP+S", "seed": 0, "delivered": 15, "iterations": 15,
           "final_error_mean": 0.005, "final_error_p95": 0.01, "hold_error_p95": 0.012, "within_tolerance": 0.9,
           "cost_gap_median": 0.01, "max_bound_violation": 0.0, "dynamics_evaluations": 7e5, "wall_time": 200.0,
           "oc_total_seconds": 100.0, "hold_diverged": 0.0}
    for scenario in ("hold_T", "sequence", "moving_start"):
        row |= {f"{scenario}_error_mean": 0.004, f"{scenario}_error_p95": 0.009}
    row |= {"hold_T_speed_median": 1e-6, "sequence_within": 0.8}
    return row | extra


def test_pose_run_prints_orientation():
    pose = {"orientation_error_mean_deg": 1.25, "orientation_error_p95_deg": 4.5,
            "hold_T_orientation_mean_deg": 1.5, "hold_T_orientation_p95_deg": 4.75,
            "sequence_orientation_mean_deg": 1.75, "sequence_orientation_p95_deg": 3.5,
            "moving_start_orientation_mean_deg": 1.125, "moving_start_orientation_p95_deg": 2.5}
    text = format_row(bench_row(**pose), "m")
    assert "orientation (mean/p95 deg): at T 1.25/4.5" in text
    assert "hold T 0.4/0.9 1.5/4.75 deg" in text
    assert "sequence 0.4/0.9 1.75/3.5 deg" in text
    assert "moving starts 0.4/0.9 1.12/2.5 deg" in text


def test_position_run_has_no_orientation():
    text = format_row(bench_row(), "m")
    assert "deg" not in text and "orientation" not in text
    assert "hold T 0.4/0.9 (1e-06 rad/s)" in text
