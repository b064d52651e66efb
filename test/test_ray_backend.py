"""The OC phase on Ray: a real local Ray instance (2 CPUs, loopback, no dashboard UI, no usage
reporting) gives bit-identical OC solutions and trained weights to the process pool."""

import os
import sys

import numpy as np
import pytest
import torch

from tocpl_ros.config import ConfigError, FieldError
from tocpl_ros.tasks import load_task
from tocpl_ros.tasks.config import SolverConfig
from tocpl_training.cli import main as train_main
from tocpl_training.config import TrainConfig
from tocpl_training.learning.policy import NumpyPolicy, make_policy
from tocpl_training.oc.phase import OCJob, OCPhaseRunner, OCRequest
from tocpl_training.trainer import Trainer

ray = pytest.importorskip("ray", reason="the 'ray' extra is in requirements.txt; CI has it")


def _descendants(root: int) -> dict[int, str]:
    """{pid: command line} of every process below ``root``."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    found.discard(root)
    out = {}
    for pid in found:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return out


def _hex_addr(text: str) -> str:
    """/proc/net/tcp{,6} local address (hex, little-endian words) as an IP string."""
    import ipaddress

    raw = bytes.fromhex(text)
    data = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(data))


def _listening(pids) -> list[tuple[int, str]]:
    """(pid, local IP) of every listening TCP socket owned by ``pids``."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            pass
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    found.append((inodes[cols[9]], _hex_addr(cols[1].split(":")[0])))
    return found


def _is_loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or (addr.version == 6 and addr.ipv4_mapped is not None and addr.ipv4_mapped.is_loopback)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.xs, y.xs) and np.array_equal(x.us, y.us) and np.array_equal(x.K, y.K)
        and x.cost == y.cost and x.iterations == y.iterations for x, y in zip(a, b))


def test_ray_oc_phase_is_identical_to_the_process_pool_on_a_loopback_instance():
    task = load_task("pendulum")
    problems = task.sample(6, seed=3)
    plain = OCRequest([OCJob(problems.x0[i], problems.target[i]) for i in range(6)], SolverConfig(max_iter=30))
    policy = NumpyPolicy(make_policy(task, 0, hidden=[16, 16]))
    consensus = OCRequest([OCJob(problems.x0[i], problems.target[i], terms={"shift": np.full((task.horizon, task.nu), 0.1)})
                           for i in range(4)], SolverConfig(max_iter=10), "consensus", {"mu": 1.0, "policy": policy})
    assert not ray.is_initialized()
    with OCPhaseRunner(task, constrained=True, workers=2) as pool:
        expected = pool.solve(plain), pool.solve(consensus)
    with OCPhaseRunner(task, constrained=True, workers=2, backend="ray") as runner:
        got = runner.solve(plain), runner.solve(consensus)
        info = runner._ray.info()
        # the instance: 2 CPUs, every service on loopback, no web UI, no usage reporting
        assert ray.cluster_resources()["CPU"] == 2
        procs = _descendants(os.getpid())
        sockets = _listening(procs)
        assert any("gcs_server" in procs[pid] for pid, _ in sockets) and any("raylet" in procs[pid] for pid, _ in sockets)
        assert [(procs[pid][:60], ip) for pid, ip in sockets if not _is_loopback(ip)] == []
        dashboards = [cmd for cmd in procs.values() if "dashboard/dashboard.py" in cmd]
        assert all("--minimal" in cmd and "--disable-frontend" in cmd for cmd in dashboards)
        from ray._common.usage import usage_lib

        assert not usage_lib.usage_stats_enabled()
    # two actors in two processes, problems built once per mode with one Crocoddyl thread
    assert len({i["pid"] for i in info}) == 2 and {os.getpid()}.isdisjoint(i["pid"] for i in info)
    assert all(i["threads"] == {"plain": 1, "consensus": 1} for i in info)
    assert _same(expected[0], got[0]) and _same(expected[1], got[1])
    assert not _same(got[0][:4], got[1])  # the consensus terms changed the solutions
    # close() shut the instance down: no Ray process left behind
    assert not ray.is_initialized()
    assert not [cmd for cmd in _descendants(os.getpid()).values() if "raylet" in cmd or "gcs_server" in cmd]


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_training_on_ray_gives_the_same_weights_as_the_process_pool(tmp_path):
    base = dict(task="lqr", iterations=2, problems=8, epochs=3, eval_problems=10, workers=2, seed=0)
    pool = Trainer(TrainConfig(**base), tmp_path / "pool")
    rows_pool = pool.run()
    on_ray = Trainer(TrainConfig(**base, backend="ray"), tmp_path / "ray")
    rows_ray = on_ray.run()
    assert not ray.is_initialized()  # the run shut its instance down
    for a, b in zip(rows_pool, rows_ray, strict=True):
        for key in ("final_error_mean", "cost_gap_median", "dynamics_evaluations", "regression_loss"):
            assert a[key] == b[key], key
    for (name, ta), tb in zip(pool.policy.state_dict().items(), on_ray.policy.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert (tmp_path / "ray" / "config.yaml").read_text().count("backend: ray") == 1


def test_missing_ray_fails_with_the_extra_and_its_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the package
    with pytest.raises(ConfigError, match=r"'ray' extra.*pip install 'tocpl_ros\[ray\]'"):
        OCPhaseRunner(load_task("lqr"), constrained=True, workers=1, backend="ray")
    assert train_main(["--task", "lqr", "--iterations", "1", "--problems", "2", "--backend", "ray",
                       "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'tocpl_ros[ray]'" in capsys.readouterr().err


def test_backend_fields_are_validated():
    assert TrainConfig().backend == "process" and TrainConfig().ray_address == ""
    with pytest.raises(FieldError, match="backend"):
        TrainConfig(backend="dask")
    with pytest.raises(FieldError, match="ray_address"):
        TrainConfig(ray_address="10.0.0.1:6379")
    assert TrainConfig(backend="ray", ray_address="10.0.0.1:6379").ray_address == "10.0.0.1:6379"
    with pytest.raises(ConfigError, match="backend"):
        OCPhaseRunner(load_task("lqr"), constrained=True, backend="dask")


def test_oc_phase_problems_run_on_one_crocoddyl_thread_with_unchanged_solutions():
    task = load_task("pendulum")
    problems = task.sample(4, seed=5)
    request = OCRequest([OCJob(problems.x0[i], problems.target[i]) for i in range(4)], SolverConfig(max_iter=30))
    with OCPhaseRunner(task, constrained=True, workers=1) as one, \
            OCPhaseRunner(task, constrained=True, workers=1, crocoddyl_threads=None) as default:
        a, b = one.solve(request), default.solve(request)
        assert one._local.info()["threads"] == {"plain": 1}
    assert _same(a, b)
