"""ONNX export (tocpl_training.export) and policy files (tocpl_ros.policy_file)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import tocpl_ros
from tocpl_ros.config import load_dataclass, to_dict
from tocpl_ros.policy_file import KEYS, OnnxPolicy, PolicyFileError, read_onnx_metadata
from tocpl_ros.tasks import TaskConfig, load_task, make_task
from tocpl_training import export as export_mod
from tocpl_training.checkpoint import policy_payload, save_checkpoint
from tocpl_training.export import OPSET, export_onnx, main
from tocpl_training.learning.policy import NumpyPolicy, make_policy

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["ur5_reach", "lqr", "pendulum"]
TRAIN_CONFIG = {"algorithm": "plal", "lr": 1e-3, "seed": 0, "hidden": [256, 256], "notes": "unit test"}


@pytest.fixture(scope="module", params=TASKS)
def task(request):
    return load_task(request.param)


@pytest.fixture(scope="module")
def ur5():
    return load_task("ur5_reach")


def perturbed_policy(task, seed=0):
    """A fresh policy with weights pushed away from init: large outputs, some saturated."""
    policy = make_policy(task, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in policy.net.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
        policy.net[-1].weight.mul_(4.0)
    return policy.eval()


def random_obs(policy, n, seed=0, spread=3.0):
    """Observations around the policy's normalisation (raw units), spread ± a few scales."""
    rng = np.random.default_rng(seed)
    mean = policy.obs_mean.double().numpy()
    scale = policy.obs_scale.double().numpy()
    return mean + scale * rng.uniform(-spread, spread, (n, len(mean)))


def torch_u(policy, obs):
    with torch.no_grad():
        return policy(torch.as_tensor(obs, dtype=torch.float32)).double().numpy()


@pytest.fixture(scope="module")
def exported(task, tmp_path_factory):
    policy = perturbed_policy(task)
    path = export_onnx(policy, task, tmp_path_factory.mktemp(task.name) / "policy.onnx", train_config=TRAIN_CONFIG)
    return policy, path


@pytest.fixture(scope="module")
def ur5_file(ur5, tmp_path_factory):
    policy = perturbed_policy(ur5)
    return policy, export_onnx(policy, ur5, tmp_path_factory.mktemp("ur5") / "policy.onnx", train_config=TRAIN_CONFIG)


# -- numerics -------------------------------------------------------------------


def test_onnxruntime_matches_torch(task, exported):
    policy, path = exported
    onnx_policy = OnnxPolicy(path)
    obs = random_obs(policy, 1000)
    expected = torch_u(policy, obs)
    # the perturbed policy is a real test: non-trivial outputs, some of them saturated
    normalised = (expected - policy.u_mid.double().numpy()) / policy.u_half.double().numpy()
    assert np.abs(normalised).max() > 0.999
    assert (np.abs(normalised) < 0.9).mean() > 0.1
    assert expected.std(axis=0).min() > 0.01 * task.u_max.min()

    # dynamic batch: 257-row chunks (the last one has 229 rows), then one at a time
    batched = np.concatenate([onnx_policy(obs[i : i + 257]) for i in range(0, 1000, 257)])
    single = np.stack([onnx_policy(o) for o in obs])
    for got in (batched, single):
        assert got.dtype == np.float64 and got.shape == (1000, task.nu)
        # float32 model: 1e-5 absolute on the tanh scale, i.e. relative to the torque range
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * task.u_max.max())
    assert onnx_policy(obs[0]).shape == (task.nu,)
    assert onnx_policy(obs[:1]).shape == (1, task.nu)

    # the raw session has the declared signature
    session = onnx_policy.session
    assert [i.name for i in session.get_inputs()] == ["obs"]
    assert [o.name for o in session.get_outputs()] == ["u"]
    assert session.get_inputs()[0].shape[1] == task.obs_dim
    assert session.get_outputs()[0].shape[1] == task.nu
    raw = session.run(["u"], {"obs": obs[:257].astype(np.float32)})[0]
    assert raw.dtype == np.float32 and raw.shape == (257, task.nu)


@pytest.mark.parametrize("activation", ["silu", "tanh"])
def test_smooth_activation_exports_and_has_its_numpy_twin(ur5, tmp_path, activation):
    """A policy with a smooth hidden activation: its ONNX file and NumpyPolicy (PLAL's consensus residual,
    value and input Jacobian) compute what torch does."""
    policy = make_policy(ur5, seed=0, hidden=(32, 32), activation=activation).eval()
    obs = random_obs(policy, 200)
    path = export_onnx(policy, ur5, tmp_path / "policy.onnx", train_config=TRAIN_CONFIG)
    np.testing.assert_allclose(OnnxPolicy(path)(obs), torch_u(policy, obs), rtol=1e-5, atol=1e-5 * ur5.u_max.max())
    twin, p64 = NumpyPolicy(policy), policy.double()
    for o in obs[:3]:
        u, jacobian = twin.value_and_jacobian(o)
        x = torch.as_tensor(o)
        np.testing.assert_allclose(u, p64(x).detach().numpy(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(jacobian, torch.autograd.functional.jacobian(p64, x).numpy(), rtol=0, atol=1e-9)


def test_outputs_stay_in_the_box_for_huge_inputs(task, exported):
    policy, path = exported
    onnx_policy = OnnxPolicy(path)
    rng = np.random.default_rng(1)
    signs = rng.choice([-1.0, 1.0], (500, task.obs_dim))
    obs = np.concatenate([1e6 * signs, -1e6 * signs, 1e6 * rng.uniform(-1, 1, (500, task.obs_dim))])
    u = onnx_policy(obs)
    assert np.isfinite(u).all()
    assert (u >= task.u_min).all() and (u <= task.u_max).all()
    # saturated: torques at (within float32 rounding of) the bounds
    at_bound = np.isclose(u, task.u_min, rtol=1e-6) | np.isclose(u, task.u_max, rtol=1e-6)
    assert at_bound.mean() > 0.5


def test_clamp_rounds_asymmetric_bounds_inwards(tmp_path):
    """Bounds that float32 cannot represent are still never exceeded."""
    task = load_task("lqr", overrides={"lqr.u_limit": 0.1})  # float32(0.1) > 0.1
    policy = perturbed_policy(task)
    onnx_policy = OnnxPolicy(export_onnx(policy, task, tmp_path / "p.onnx"))
    u = onnx_policy(1e6 * np.random.default_rng(0).choice([-1.0, 1.0], (200, task.obs_dim)))
    assert (u <= 0.1).all() and (u >= -0.1).all()
    assert np.abs(u).max() > 0.1 - 1e-7


# -- metadata ---------------------------------------------------------------------


def test_metadata_round_trip(task, exported):
    _, path = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert {k for k in props if k.startswith("tocpl.")} == {f"tocpl.{k}" for k in KEYS}
    assert json.loads(props["tocpl.train_config"]) == TRAIN_CONFIG

    meta = read_onnx_metadata(path)
    assert meta.task == task.name
    assert meta.joint_names == task.joint_names
    assert meta.obs_layout == [tuple(b) for b in task.obs_layout]
    assert meta.obs_dim == task.obs_dim and meta.nu == task.nu
    assert meta.u_min.dtype == np.float64 and meta.u_max.dtype == np.float64
    np.testing.assert_array_equal(meta.u_min, task.u_min)
    np.testing.assert_array_equal(meta.u_max, task.u_max)
    assert meta.dt == task.dt and meta.horizon == task.horizon
    assert meta.version == tocpl_ros.__version__
    assert meta.train_config == TRAIN_CONFIG
    assert meta.task_config == json.loads(json.dumps(to_dict(task.config)))
    assert meta.urdf == (task.robot.urdf_file.name if hasattr(task, "robot") else "")
    # the stored task config rebuilds the same task
    rebuilt = make_task(meta.task, load_dataclass(TaskConfig, meta.task_config, source="metadata"))
    assert rebuilt.obs_layout == task.obs_layout and rebuilt.joint_names == task.joint_names
    np.testing.assert_array_equal(rebuilt.u_max, task.u_max)


def test_metadata_specific_values(ur5_file, tmp_path):
    meta = read_onnx_metadata(ur5_file[1])
    assert meta.obs_layout == [("q", 6), ("v", 6), ("target", 3)]
    assert meta.joint_names == [
        "shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
        "wrist_1_joint", "wrist_2_joint", "wrist_3_joint",
    ]
    assert meta.urdf == "ur5.urdf" and meta.dt == 0.02 and meta.horizon == 50
    np.testing.assert_array_equal(meta.u_max, [150, 150, 150, 28, 28, 28])

    lqr = load_task("lqr")
    lqr_meta = read_onnx_metadata(export_onnx(perturbed_policy(lqr), lqr, tmp_path / "lqr.onnx"))
    assert lqr_meta.joint_names == [] and lqr_meta.urdf == "" and lqr_meta.obs_layout == [("x", 4)]
    assert lqr_meta.train_config == {}


# -- command line ---------------------------------------------------------------------


def write_checkpoint(path, policy, task):
    save_checkpoint(path, {**policy_payload(policy, task), "train_config": TRAIN_CONFIG, "iteration": 7})


def test_cli_exports_an_equivalent_file(ur5, ur5_file, tmp_path, capsys):
    policy, direct = ur5_file
    ckpt = tmp_path / "run" / "policy.pt"
    write_checkpoint(ckpt, policy, ur5)
    out = tmp_path / "out" / "policy.onnx"
    assert main([str(ckpt), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out

    meta, ref = read_onnx_metadata(out), read_onnx_metadata(direct)
    for key in KEYS:
        a, b = getattr(meta, key), getattr(ref, key)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, key
    obs = random_obs(policy, 300, seed=5)
    np.testing.assert_array_equal(OnnxPolicy(out)(obs), OnnxPolicy(direct)(obs))
    assert sorted(p.name for p in out.parent.iterdir()) == ["policy.onnx"]


def test_cli_as_a_program(ur5, ur5_file, tmp_path):
    ckpt = tmp_path / "policy.pt"
    write_checkpoint(ckpt, ur5_file[0], ur5)
    out = tmp_path / "policy.onnx"
    ok = subprocess.run(
        [sys.executable, "-m", "tocpl_training.export", str(ckpt), "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert read_onnx_metadata(out).task == "ur5_reach"
    bad = subprocess.run(
        [sys.executable, "-m", "tocpl_training.export", str(tmp_path / "nope.pt"), "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("tocpl-export: ") and "not found" in bad.stderr


@pytest.mark.parametrize("case", ["missing", "truncated", "not_a_checkpoint", "text_file"])
def test_cli_errors(case, ur5, ur5_file, tmp_path, capsys):
    ckpt = tmp_path / "policy.pt"
    if case == "truncated":
        write_checkpoint(ckpt, ur5_file[0], ur5)
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
        expected = "cannot read checkpoint"
    elif case == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(3)}, ckpt)
        expected = "is not a tocpl_ros checkpoint"
    elif case == "text_file":
        ckpt.write_text("hello\n")
        expected = "cannot read checkpoint"
    else:
        expected = "checkpoint not found"
    out = tmp_path / "policy.onnx"
    assert main([str(ckpt), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tocpl-export: ") and expected in err and str(ckpt) in err
    assert not out.exists()


# -- malformed policy files ----------------------------------------------------------


def edited(src, dst, edit):
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def set_prop(model, key, value):
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    raise KeyError(key)


def drop_prop(model, key):
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(keep))


def test_read_missing_file(tmp_path):
    with pytest.raises(PolicyFileError, match="policy file not found"):
        read_onnx_metadata(tmp_path / "absent.onnx")
    with pytest.raises(PolicyFileError, match="policy file not found"):
        OnnxPolicy(tmp_path / "absent.onnx")


def test_read_truncated_onnx(ur5_file, tmp_path):
    data = ur5_file[1].read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PolicyFileError, match="not a readable ONNX model"):
        read_onnx_metadata(bad)
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not protobuf\n" * 10)
    with pytest.raises(PolicyFileError, match="not a readable ONNX model"):
        read_onnx_metadata(junk)


@pytest.mark.parametrize(
    "key, edit, message",
    [
        ("u_min", lambda m: drop_prop(m, "tocpl.u_min"), r"'tocpl\.u_min': missing"),
        ("task", lambda m: drop_prop(m, "tocpl.task"), r"'tocpl\.task': missing"),
        ("joint_names", lambda m: set_prop(m, "tocpl.joint_names", '["a", "b"'), r"'tocpl\.joint_names': malformed JSON"),
        ("joint_names", lambda m: set_prop(m, "tocpl.joint_names", '{"a": 1}'), r"'tocpl\.joint_names': expected a list"),
        ("obs_layout", lambda m: set_prop(m, "tocpl.obs_layout", '[{"name": "q", "size": "6"}]'), r"'tocpl\.obs_layout': entry 0"),
        ("u_max", lambda m: set_prop(m, "tocpl.u_max", "[1, 2]"), r"'tocpl\.u_max': has 2 entries but u_min has 6"),
        ("u_max", lambda m: set_prop(m, "tocpl.u_max", '[1, 2, 3, 4, 5, "x"]'),
         r"'tocpl\.u_max': expected a non-empty list of finite numbers"),
        ("dt", lambda m: set_prop(m, "tocpl.dt", "-0.1"), r"'tocpl\.dt': expected a number > 0"),
        ("horizon", lambda m: set_prop(m, "tocpl.horizon", "2.5"), r"'tocpl\.horizon': expected an integer"),
        ("train_config", lambda m: set_prop(m, "tocpl.train_config", "[]"), r"'tocpl\.train_config': expected a JSON object"),
    ],
)
def test_read_bad_metadata(ur5_file, tmp_path, key, edit, message):
    bad = edited(ur5_file[1], tmp_path / "bad.onnx", edit)
    with pytest.raises(PolicyFileError, match=message) as info:
        read_onnx_metadata(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(PolicyFileError, match=message):
        OnnxPolicy(bad)


def test_read_signature_mismatch(ur5_file, tmp_path):
    src = ur5_file[1]
    # metadata promises 16 observations, the graph takes 15
    layout = [{"name": "q", "size": 6}, {"name": "v", "size": 6}, {"name": "target", "size": 4}]
    bad = edited(src, tmp_path / "layout.onnx", lambda m: set_prop(m, "tocpl.obs_layout", json.dumps(layout)))
    with pytest.raises(PolicyFileError, match=r"input 'obs' has size 15 but the metadata's obs_dim .* is 16"):
        read_onnx_metadata(bad)

    # the graph's declared input width changed under unchanged metadata
    def widen(model):
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 14
    with pytest.raises(PolicyFileError, match=r"input 'obs' has size 14 .* is 15"):
        read_onnx_metadata(edited(src, tmp_path / "input.onnx", widen))

    # 5 torques in the metadata, 6 outputs in the graph
    def five(model):
        set_prop(model, "tocpl.u_min", json.dumps([-1.0] * 5))
        set_prop(model, "tocpl.u_max", json.dumps([1.0] * 5))
    with pytest.raises(PolicyFileError, match=r"output 'u' has size 6 but the metadata's nu .* is 5"):
        read_onnx_metadata(edited(src, tmp_path / "nu.onnx", five))

    def rename(model):
        model.graph.input[0].name = "x"
        for node in model.graph.node:
            node.input[:] = ["x" if i == "obs" else i for i in node.input]
    with pytest.raises(PolicyFileError, match=r"expected one graph input named 'obs', found \['x'\]"):
        read_onnx_metadata(edited(src, tmp_path / "name.onnx", rename))


def test_wrong_observation_size(ur5_file):
    onnx_policy = OnnxPolicy(ur5_file[1])
    for obs in (np.zeros(14), np.zeros((3, 16)), np.zeros((2, 3, 15))):
        with pytest.raises(PolicyFileError, match=r"\[15\] or \[B, 15\]"):
            onnx_policy(obs)


def test_reader_does_not_import_torch(ur5_file):
    code = (
        "import sys, numpy as np\n"
        "from tocpl_ros.policy_file import OnnxPolicy\n"
        f"p = OnnxPolicy({str(ur5_file[1])!r})\n"
        "assert p(np.zeros(15)).shape == (6,)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr


# -- atomic writing --------------------------------------------------------------------


def test_failed_export_leaves_nothing(ur5, ur5_file, tmp_path, monkeypatch):
    policy = ur5_file[0]
    target = tmp_path / "policy.onnx"

    def boom(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="exporter exploded"):
        export_onnx(policy, ur5, target)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # a failure after bytes hit the disk (validation) removes the temp file, and an
    # existing policy file stays as it was
    target.write_bytes(b"previous policy")

    def reject(*args, **kwargs):
        raise PolicyFileError("validation failed")

    monkeypatch.setattr(export_mod, "validate_file", reject)
    with pytest.raises(PolicyFileError, match="validation failed"):
        export_onnx(policy, ur5, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]
    assert target.read_bytes() == b"previous policy"


def test_export_validates_against_torch(ur5, ur5_file, tmp_path, monkeypatch):
    """The written file is compared with the torch policy before it is renamed into place."""
    policy = ur5_file[0]
    real = export_mod.onnx_bytes

    def tampered(p, task, train_config=None):
        model = onnx.load_from_string(real(p, task, train_config))
        (init,) = [i for i in model.graph.initializer if i.name == "policy.net.4.bias"]
        array = onnx.numpy_helper.to_array(init) + 1.0  # pre-tanh shift of the last layer
        init.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), init.name))
        return model.SerializeToString()

    monkeypatch.setattr(export_mod, "onnx_bytes", tampered)
    with pytest.raises(PolicyFileError, match="differs from the torch policy"):
        export_onnx(policy, ur5, tmp_path / "policy.onnx")
    assert list(tmp_path.iterdir()) == []


# -- untrusted and inconsistent checkpoints ---------------------------------------------


class _CreatesFile:
    """A pickle payload: unpickling it calls Path.touch(marker), i.e. runs code of the file's choosing."""

    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_checkpoints(folder: Path, marker: Path, ur5_file, ur5) -> dict[str, Path]:
    """A torch zip checkpoint and a plain pickle, each carrying the payload next to valid-looking data."""
    from tocpl_training.checkpoint import FORMAT

    payload = {"format": FORMAT, **policy_payload(ur5_file[0], ur5), "train_config": _CreatesFile(marker)}
    zipped = folder / "zipped.pt"
    torch.save(payload, zipped)
    legacy = folder / "legacy.pt"
    with open(legacy, "wb") as f:
        pickle.dump({"format": FORMAT, "policy_spec": _CreatesFile(marker)}, f)
    return {"zipped": zipped, "legacy": legacy}


def test_malicious_pickle_checkpoint_is_refused_without_running_its_code(ur5, ur5_file, tmp_path, capsys):
    marker = tmp_path / "pwned"
    files = malicious_checkpoints(tmp_path, marker, ur5_file, ur5)
    with open(files["legacy"], "rb") as f:  # the payload is live: plain unpickling runs it
        pickle.load(f)
    assert marker.exists()
    marker.unlink()

    for name, ckpt in files.items():
        out = tmp_path / f"{name}.onnx"
        assert main([str(ckpt), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tocpl-export: ") and str(ckpt) in err and "never unpickled" in err, err
        assert "weights_only" not in err  # torch's advice to load it unsafely is not passed on
        assert not marker.exists(), f"{name}: unpickling ran the file's code"
        assert not out.exists()


def test_malicious_checkpoint_is_refused_on_resume(ur5, ur5_file, tmp_path, capsys):
    from tocpl_training.cli import main as train_main

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    malicious_checkpoints(tmp_path, marker, ur5_file, ur5)["zipped"].rename(run / "checkpoint.pt")
    assert train_main(["--resume", str(run)]) == 2
    assert "never unpickled" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("case", ["wrong_shapes", "spec_not_a_mapping", "task_config_not_a_mapping", "bad_task_config",
                                  "missing_policy_state", "train_config_not_a_mapping"])
def test_cli_inconsistent_checkpoints(case, ur5, ur5_file, tmp_path, capsys):
    """Checkpoints that load as plain data but do not describe a policy: a message, no traceback, no file."""
    payload = {**policy_payload(ur5_file[0], ur5), "train_config": TRAIN_CONFIG}
    if case == "wrong_shapes":  # weights of a smaller network under this spec
        payload["policy_state"] = make_policy(ur5, seed=0, hidden=[8]).state_dict()
        expected = "incomplete or inconsistent checkpoint"
    elif case == "spec_not_a_mapping":
        payload["policy_spec"] = [15, 6]
        expected = "incomplete or inconsistent checkpoint"
    elif case == "task_config_not_a_mapping":
        payload["task_config"] = "ur5_reach"
        expected = "expected a mapping"
    elif case == "bad_task_config":
        payload["task_config"] = {**payload["task_config"], "dt": -1.0}
        expected = "'dt'"
    elif case == "missing_policy_state":
        del payload["policy_state"]
        expected = "incomplete or inconsistent checkpoint"
    else:
        payload["train_config"] = [1, 2]
        expected = "train_config is a list"
    ckpt = tmp_path / "policy.pt"
    save_checkpoint(ckpt, payload)
    out = tmp_path / "policy.onnx"
    assert main([str(ckpt), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tocpl-export: ") and expected in err and str(ckpt) in err, err
    assert not out.exists()


def test_cli_unwritable_output_names_it(ur5, ur5_file, tmp_path, capsys):
    ckpt = tmp_path / "policy.pt"
    write_checkpoint(ckpt, ur5_file[0], ur5)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    out = blocker / "policy.onnx"
    assert main([str(ckpt), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tocpl-export: ") and f"cannot write {out}" in err and "Not a directory" in err, err


def test_read_empty_and_foreign_onnx(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(PolicyFileError, match="not a readable ONNX model"):
        OnnxPolicy(empty)
    # a valid ONNX model written by another tool: right names and shapes, no tocpl.* metadata
    x = onnx.helper.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("u", onnx.TensorProto.FLOAT, ["batch", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["obs"], ["u"])], "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)]), str(foreign))
    with pytest.raises(PolicyFileError, match=r"'tocpl\.task': missing \(not a tocpl_ros policy file"):
        OnnxPolicy(foreign)
    with pytest.raises(PolicyFileError, match="policy file not found"):
        OnnxPolicy(tmp_path)  # a folder is not a policy file


def test_inference_bench_times_the_three_regimes(ur5_file, tmp_path, capsys):
    """tocpl-inference-bench: one row per regime with finite times, and a clear refusal of a bad file."""
    from tocpl_ros.bench.inference import main

    assert main(["--policy", str(ur5_file[1]), "--calls", "20", "--period", "0.0005"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith(("back", "busy", "sleep"))]
    assert len(rows) == 3 and float(rows[0][-1]) == 1.0
    assert all(np.isfinite(float(v)) and float(v) > 0 for row in rows for v in row[-3:])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert main(["--policy", str(bad)]) == 2
    assert "bad.onnx" in capsys.readouterr().err
