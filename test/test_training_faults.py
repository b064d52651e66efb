"""Training under faults: SIGKILL at a random moment, full disk, oversized files, unwritable run folders.

Every test runs the real ``tocpl-train`` program (or the real file code under a
real kernel limit) and then checks what a user finds on disk: whole, loadable
files, and a ``--resume`` that finishes with every iteration exactly once.
"""

from __future__ import annotations

import csv
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml

from tocpl_ros.policy_file import OnnxPolicy
from tocpl_training.checkpoint import load_checkpoint, save_checkpoint
from tocpl_training.cli import build_parser, main as train_main, resolve_config
from tocpl_training.trainer import CHECKPOINT, Trainer

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 6
SMALL = ["--task", "lqr", "--problems", "4", "--eval-problems", "5", "--epochs", "2", "--workers", "1",
         "--hidden", "16", "16", "--seed", "3", "--sobolev", "--replay", "2", "--eval-every", "2"]
DETERMINISTIC = ("final_error_mean", "cost_gap_median", "dynamics_evaluations", "regression_loss")


def tocpl_train() -> list[str]:
    exe = Path(sys.executable).parent / "tocpl-train"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "tocpl_training.cli"]


class Training:
    """A real ``tocpl-train`` process whose progress lines (one per completed iteration) are followed."""

    def __init__(self, args: list[str], preexec_fn=None):
        self.proc = subprocess.Popen(tocpl_train() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.progress_times: list[float] = []  # when each iteration's progress line arrived
        self.stderr = ""
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("["):
                self.progress_times.append(time.monotonic())

    def _read_stderr(self):
        self.stderr = self.proc.stderr.read()

    def completed(self) -> int:
        return len(self.progress_times)

    def wait_for_iterations(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.completed() < n:
            assert self.proc.poll() is None, f"tocpl-train exited early:\n{''.join(self.lines)}{self.stderr}"
            assert time.monotonic() < deadline, f"no {n} iterations within {timeout} s"
            time.sleep(0.02)

    def finish(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout)
        self._out.join(5)
        self._err.join(5)
        return code


def read_metrics_csv(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def check_run_folder_is_whole(run: Path) -> int:
    """Everything a killed run left under its final names loads; returns the checkpoint's iteration count."""
    data = load_checkpoint(run / CHECKPOINT)
    done = int(data["algorithm"]["iteration"])
    assert [int(r["iteration"]) for r in data["metrics"]] == list(range(1, done + 1))
    rows = read_metrics_csv(run)
    iterations = [int(r["iteration"]) for r in rows]
    # the checkpoint is written first: the CSV holds the same rows, or one fewer if the kill came in between
    assert iterations == list(range(1, len(rows) + 1)) and len(rows) in (done, done - 1), (iterations, done)
    for row, saved in zip(rows, data["metrics"]):  # the CSV shows what the checkpoint holds, evaluated or not
        assert row == pytest.approx({k: float(saved[k]) for k in row}, rel=1e-15)
        assert ("final_error_mean" in row) == ("final_error_mean" in saved) == (int(row["iteration"]) % 2 == 0)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["task"] == "lqr"
    if (run / "learning_curve.png").exists():
        assert matplotlib.image.imread(run / "learning_curve.png").ndim == 3
    return done


def tensorboard_steps(run: Path, tag: str = "dynamics_evaluations") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_sigkill_at_random_moments_then_resume_loses_and_repeats_nothing(tmp_path):
    rng = random.Random(20240611)  # seeded: the kill moments are random but reproducible
    run = tmp_path / "run"
    kills = []

    training = Training(SMALL + ["--iterations", str(ITERATIONS), "--out", str(run)])
    for attempt in range(2):
        # two checkpoints written by this process, then a random moment within about one more
        # iteration (OC phase, supervised phase, evaluation, checkpoint or log writes)
        training.wait_for_iterations(2)
        iteration_time = training.progress_times[1] - training.progress_times[0]
        time.sleep(rng.uniform(0.0, 1.0) * iteration_time)
        assert training.proc.poll() is None, "the run finished before the kill: raise ITERATIONS"
        training.proc.send_signal(signal.SIGKILL)
        assert training.finish() == -signal.SIGKILL
        kills.append(check_run_folder_is_whole(run))
        if (run / "policy.onnx").exists():  # killed during the final export: whole or absent, never partial
            OnnxPolicy(run / "policy.onnx")
        args = ["--resume", str(run)] + (["--iterations", str(ITERATIONS)] if attempt == 0 else [])
        training = Training(args)
    assert training.finish() == 0, training.stderr
    assert kills[0] >= 2 and kills[1] >= kills[0] + 2  # the second kill may even land in the export

    # every iteration exactly once, in the checkpoint, the CSV and TensorBoard
    data = load_checkpoint(run / CHECKPOINT)
    rows = read_metrics_csv(run)
    assert [int(r["iteration"]) for r in rows] == list(range(1, ITERATIONS + 1))
    assert [int(r["iteration"]) for r in data["metrics"]] == list(range(1, ITERATIONS + 1))
    assert tensorboard_steps(run) == list(range(1, ITERATIONS + 1))
    assert not list(run.glob(".*.tmp")), "temporary files of the killed writes were not cleaned up"
    assert OnnxPolicy(run / "policy.onnx")(np.zeros(4)).shape == (2,)

    # nothing lost: the killed-and-resumed run computed what an uninterrupted run computes
    config = resolve_config(build_parser().parse_args(SMALL + ["--iterations", str(ITERATIONS)]))
    straight = Trainer(config, tmp_path / "straight").run()
    for got, expected in zip(rows, straight):
        assert [key in got for key in DETERMINISTIC] == [key in expected for key in DETERMINISTIC]
        for key in DETERMINISTIC:
            if key in expected:
                assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), (int(got["iteration"]), key, kills)
    assert rows[-1]["wall_time"] > rows[0]["wall_time"]


def children_of(pid: int) -> set[int]:
    """Pids of the live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return found


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_oc_workers_of_a_killed_training_exit(tmp_path):
    # A pool worker waits on the job queue's lock, which a SIGKILLed trainer never releases:
    # without their own watch the workers would outlive it for good (seen: idle orphans for hours).
    training = Training(SMALL + ["--workers", "2", "--iterations", str(ITERATIONS), "--out", str(tmp_path / "run")])
    training.wait_for_iterations(1)
    workers = children_of(training.proc.pid)
    assert len(workers) >= 2, workers
    training.proc.send_signal(signal.SIGKILL)
    training.finish()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(running(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if running(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"OC workers {alive} outlived their killed trainer"


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_rows_logged_after_the_last_checkpoint_are_replaced_on_resume(tmp_path):
    """A kill between the checkpoint and the logs, or a log row the checkpoint never got: no duplicates."""
    run = tmp_path / "run"
    config = resolve_config(build_parser().parse_args(SMALL + ["--iterations", "2"]))
    Trainer(config, run).run()
    # a run killed during iteration 3 after logging it but before its checkpoint landed
    rows = read_metrics_csv(run)
    ghost = {**rows[-1], "iteration": 3.0, "final_error_mean": 123.0}
    with open(run / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    with open(run / "metrics.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=header).writerow(ghost)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tensorboard")) as writer:
        writer.add_scalar("final_error_mean", 123.0, 3)
        writer.add_scalar("dynamics_evaluations", 123.0, 3)
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")  # what SIGKILL inside atomic_write leaves

    resumed = Trainer.resume(run, iterations=4).run()
    rows = read_metrics_csv(run)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert 123.0 not in [r.get("final_error_mean") for r in rows]
    assert [r.get("final_error_mean") for r in rows] == [r.get("final_error_mean") for r in resumed]
    assert [int(r["iteration"]) for r in rows if "final_error_mean" in r] == [2, 4]
    assert tensorboard_steps(run) == [1, 2, 3, 4]
    assert tensorboard_steps(run, "final_error_mean") == [2, 4]  # the ghost's step 3 is forgotten
    assert not (run / ".checkpoint.pt.abc123.tmp").exists()


# -- disk faults -----------------------------------------------------------------------


def ignore_sigxfsz():
    # an ignored SIGXFSZ survives exec: writes past RLIMIT_FSIZE then fail with EFBIG instead of killing
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_file_size_limit_fails_the_write_and_keeps_the_previous_checkpoint(tmp_path):
    """A real kernel write failure (RLIMIT_FSIZE -> EFBIG) inside save_checkpoint."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"weights": torch.arange(10.0)})
    before = path.read_bytes()
    code = (
        "import resource, sys, torch\n"
        "from tocpl_training.checkpoint import WriteError, save_checkpoint\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        f"    save_checkpoint({str(path)!r}, {{'weights': torch.zeros(100_000)}})\n"
        "except WriteError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                           preexec_fn=ignore_sigxfsz, timeout=60)
    assert child.returncode == 3, child.stderr
    assert f"cannot write {path}" in child.stdout and "File too large" in child.stdout
    assert "previous checkpoint.pt is unchanged" in child.stdout
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_write_failure_during_training_stops_cleanly_and_resumes(tmp_path):
    """The run folder stops taking large files mid-run (kernel limit set from outside with prlimit)."""
    run = tmp_path / "run"
    training = Training(SMALL + ["--iterations", "4", "--out", str(run)], preexec_fn=ignore_sigxfsz)
    training.wait_for_iterations(1)
    resource.prlimit(training.proc.pid, resource.RLIMIT_FSIZE, (2048, 2048))  # the next checkpoint cannot be written
    assert training.finish() == 1
    err = training.stderr
    assert "cannot write" in err and "File too large" in err and str(run) in err, err
    assert f"tocpl-train --resume {run}" in err and "Traceback" not in err, err
    done = check_run_folder_is_whole(run)
    assert 1 <= done < 4
    assert not (run / "policy.onnx").exists() and not list(run.glob(".*.tmp"))

    resumed = Training(["--resume", str(run), "--quiet"])
    assert resumed.finish() == 0, resumed.stderr
    assert [int(r["iteration"]) for r in read_metrics_csv(run)] == list(range(1, 5))


def test_unwritable_run_folder_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file where the run folder's parent should be\n")
    out = blocker / "run"
    assert train_main(SMALL + ["--iterations", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "run folder is not writable" in err and "Not a directory" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]

    # a run folder inside a read-only file system (root cannot write there either)
    out = Path("/proc/tocpl_run")
    assert train_main(SMALL + ["--iterations", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "run folder is not writable" in err, err
    assert not out.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 20 MiB file system (tmpfs), if this machine lets the tests mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``: the next write there fails with ENOSPC."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush on close
        for block in (2**20, 4096):
            try:
                while f.write(b"\0" * block):
                    pass
            except OSError:
                pass
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_too_little_free_space_is_refused_before_training(small_disk, capsys):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (8 * 2**20))  # 12 MiB left, under the 16 MiB floor
    out = small_disk / "run"
    assert train_main(SMALL + ["--iterations", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "MiB free, training needs at least" in err, err
    assert not out.exists()


@pytest.mark.slow  # a training budget (make test-fast leaves it out)
def test_disk_full_during_training_stops_cleanly_and_resumes(small_disk):
    run = small_disk / "run"
    training = Training(SMALL + ["--iterations", "4", "--out", str(run)])
    training.wait_for_iterations(1)
    filler = fill(small_disk)
    assert training.finish() == 1
    err = training.stderr
    assert "No space left on device" in err and str(run) in err and "--resume" in err and "Traceback" not in err, err
    done = check_run_folder_is_whole(run)
    assert done < 4 and not (run / "policy.onnx").exists()

    filler.unlink()
    resumed = Training(["--resume", str(run), "--quiet"])
    assert resumed.finish() == 0, resumed.stderr
    assert [int(r["iteration"]) for r in read_metrics_csv(run)] == list(range(1, 5))
    assert not list(run.glob(".*.tmp"))
