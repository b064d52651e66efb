"""tocpl-inspect (tocpl_training.evaluation.inspect): figures of an exported policy, and its user errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tocpl_ros.tasks import load_task
from tocpl_training.evaluation.inspect import continuous_figure, main
from tocpl_training.export import export_onnx
from tocpl_training.learning.policy import make_policy

from reference_policies import braking_policy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ur5():
    return load_task("ur5_reach")


@pytest.fixture(scope="module")
def ur5_onnx(ur5, tmp_path_factory):
    """A randomly initialised UR5 policy exported by the project's exporter (plumbing only)."""
    path = tmp_path_factory.mktemp("run") / "policy.onnx"
    return export_onnx(make_policy(ur5, seed=0, hidden=(16, 16)), ur5, path, train_config={"eval_seed": 11})


def assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, path
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_writes_the_three_figures_for_a_run_folder(ur5_onnx, tmp_path, capsys):
    out = tmp_path / "figs"
    rc = main([str(ur5_onnx.parent), "--out", str(out), "--problems", "6",
               "--compare", str(ur5_onnx), "--compare-label", "other"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("continuous.png", "final_positions.png", "trajectories.png"):
        assert_png(out / name)
        assert str(out / name) in printed
    assert "seed 11" in printed  # the trainer's eval_seed from the policy's train_config
    assert "other_mean_cm" in printed and "warm_iterations" in printed


def test_lqr_skips_the_robot_figures(tmp_path, capsys):
    lqr = load_task("lqr")
    path = export_onnx(make_policy(lqr, seed=0, hidden=(8,)), lqr, tmp_path / "lqr.onnx")
    assert main([str(path), "--out", str(tmp_path / "o"), "--problems", "3", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "continuous.png: skipped" in printed and "final_positions.png: skipped" in printed
    assert_png(tmp_path / "o" / "trajectories.png")
    assert not (tmp_path / "o" / "continuous.png").exists()


def test_continuous_figures_are_finite_for_a_holding_policy(ur5, tmp_path):
    problems = ur5.sample(5, 3)
    figures = continuous_figure(ur5, braking_policy(ur5), problems, tmp_path)
    assert isinstance(figures, dict) and np.isfinite(list(figures.values())).all()
    assert figures["diverged"] == 0 and figures["max_speed_end_of_hold_rad_s"] < 1e-3
    assert 0 < figures["peak_torque_share"] <= 1.0
    # it stays put: the error to the last target is that of the start posture
    start = 100 * ur5.final_error(problems.x0[:1], problems.target[4:5])[0]
    assert figures["error_end_of_hold_cm"] == pytest.approx(start, rel=0.05)
    assert_png(tmp_path / "continuous.png")


def foreign_onnx(path):
    """A valid ONNX model that is no tocpl_ros policy (no tocpl.* metadata)."""
    graph = helper.make_graph([helper.make_node("Identity", ["obs"], ["u"])], "g",
                              [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 15])],
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 15])])
    onnx.save(helper.make_model(graph), str(path))


@pytest.mark.parametrize("case, message", [
    ("missing", "no such policy file or run folder"),
    ("not_onnx", "not a readable ONNX model"),
    ("foreign", "not a tocpl_ros policy file"),
    ("empty_run", "holds no policy.onnx"),
    ("compare_missing", "no such policy file or run folder"),
])
def test_user_errors_exit_2_naming_the_path(case, message, ur5_onnx, tmp_path, capsys):
    bad = tmp_path / {"missing": "nope.onnx", "not_onnx": "notes.onnx", "foreign": "other.onnx",
                      "empty_run": "run", "compare_missing": "gone.onnx"}[case]
    if case == "not_onnx":
        bad.write_text("not a model\n")
    elif case == "foreign":
        foreign_onnx(bad)
    elif case == "empty_run":
        bad.mkdir()
        (bad / "checkpoint.pt").write_bytes(b"")
    argv = [str(ur5_onnx), "--compare", str(bad)] if case == "compare_missing" else [str(bad)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and "Traceback" not in err
    if case == "empty_run":
        assert "tocpl-export" in err  # tells how to get the policy out of the checkpoint
