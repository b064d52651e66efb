"""The MPC's solver process (ROS-free).

Solving off the caller's thread: :class:`MPCWorker` runs a RecedingHorizonMPC in a process of
its own (a Python thread would not do: Crocoddyl's bindings keep the GIL for a whole solver
iteration), one request at a time, non-blocking submit and a receive with a timeout, restarted
if it dies; :class:`tocpl_ros.mpc.solver.InlineSolver` gives the same interface solving in the caller's thread (for
simulations and deterministic tests). A result is *fresh* while its state is at most
``min(deadline, horizon·dt)`` old (:attr:`RecedingHorizonMPC.fresh_for`); it carries the gains
of the plan steps that window covers, and :meth:`MPCResult.law` gives the local controller
(ū_k, x̄_k, K_k) of the step running at a given age, so a later tick can follow the plan.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from tocpl_ros.mpc.config import MPCConfig, MPCResult
from tocpl_ros.mpc.solver import RecedingHorizonMPC
from tocpl_ros.mpc.task_policy import TaskPolicy, policy_command
from tocpl_ros.policy_file import OnnxPolicy
from tocpl_ros.tasks import Task


class WorkerError(RuntimeError):
    """The solver process could not start (its message says why)."""


_WORKER_CODE = "import sys; from tocpl_ros.mpc.worker import worker_main; sys.exit(worker_main(int(sys.argv[1])))"


class MPCWorker:
    """A :class:`RecedingHorizonMPC` in a process of its own, so that a solve never holds up
    the caller (e.g. a control loop that must publish every period).

    Crocoddyl's Python bindings keep the GIL for a whole solver iteration (docs/mpc.md), so a
    thread would not do: the solve runs in a child Python process (``sys.executable``, a Unix socket pair, pickled requests and results).

    One request at a time: :meth:`submit` (non-blocking; False while a solve is running or the
    process is not ready) sends the state, target, its time ``now`` (any clock: only passed back
    as ``MPCResult.state_time`` and used for the 'shifted' warm start) and a ``budget`` (s) from
    the moment of the call; the process subtracts the time the request spent in transit.
    :meth:`receive` returns the result when it is there (waiting at most ``timeout`` s, the GIL
    released). The policy's command (:meth:`policy_command`) is computed here, in the caller's
    process, from its own copy of the ONNX policy.

    If the process dies (a crash, a kill), :meth:`receive`/:meth:`submit` notice it, count it in
    ``deaths`` and start a new one (``restarts``), at most once per ``restart_backoff`` seconds
    (doubling up to 30 s while restarts keep failing); meanwhile every request is refused, so
    the caller falls back to the policy. The process exits on its own when its socket closes (the
    caller exited or was killed). Build errors (a policy that does not fit the task, a bad
    config) raise :class:`WorkerError` from :meth:`wait_ready`.
    """

    def __init__(
        self,
        task: str | dict,
        policy_path: str,
        config: MPCConfig,
        *,
        task_object: Task | None = None,
        policy: OnnxPolicy | None = None,
        warm_up: int = 2,
        restart_backoff: float = 1.0,
    ):
        """``task``: name or YAML path (``load_task``), or ``{"name", "config"}`` (a policy file's
        embedded task: :func:`load_task_spec`), loaded again in the process; ``task_object``
        / ``policy``: already loaded copies for this process (the fallback command), else loaded
        here. A policy that does not fit the task raises PolicyFileError before any process starts."""
        self.task_spec = task if isinstance(task, dict) else str(task)
        self.policy_path = str(policy_path)
        self.config = config
        self.warm_up = int(warm_up)
        self.task = task_object if task_object is not None else load_task_spec(self.task_spec)
        self.task_name = self.task.name
        self.horizon = config.horizon or self.task.horizon
        self.fresh_for = min(config.deadline, self.horizon * self.task.dt)
        self.policy = TaskPolicy(policy if policy is not None else OnnxPolicy(self.policy_path), self.task)
        self.restart_backoff = self._backoff0 = float(restart_backoff)
        self.deaths = 0
        self.restarts = 0
        self.last_error = ""
        self.status = "starting"
        """'starting' (process started, not ready yet), 'ready', 'dead' (waiting to restart), 'closed'."""
        self._proc = None
        self._conn = None
        self._pending: int | None = None
        self._next_id = 0
        self._started_at = -math.inf
        self._start()

    # -- process management

    def _start(self) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(child.fileno())], pass_fds=(child.fileno(),))
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self._conn.send(("init", self.task_spec, self.policy_path, dataclasses.asdict(self.config), self.warm_up))
        self._started_at = time.monotonic()
        self._pending = None
        self.status = "starting"

    def _died(self, why: str) -> None:
        if self.status in ("dead", "closed"):
            return
        self.deaths += 1
        self.status = "dead"
        self._pending = None
        proc = self._proc
        self._stop_process(0.1)
        code = None if proc is None else proc.poll()
        self.last_error = why if code is None or "status" in why else f"{why}, exit status {code}"

    def _stop_process(self, timeout: float) -> None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
            conn.close()  # the process also exits when it sees its socket closed
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except Exception:
                pass
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=5.0)
                except Exception:
                    pass

    def _maybe_restart(self) -> None:
        if self.status == "dead" and time.monotonic() - self._started_at >= self.restart_backoff:
            self.restart_backoff = min(30.0, 2.0 * self.restart_backoff)  # reset once it is ready again
            self.restarts += 1
            try:
                self._start()
            except Exception as exc:  # e.g. no more processes: try again later
                self.last_error = f"restart failed: {type(exc).__name__}: {exc}"
                self.status = "dead"
                self._started_at = time.monotonic()

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the process has built the MPC and warmed up; WorkerError if it failed."""
        deadline = time.monotonic() + timeout
        while self.status == "starting":
            self.receive(max(0.0, min(0.5, deadline - time.monotonic())))
            if self.status == "starting" and time.monotonic() > deadline:
                self.close()
                raise WorkerError(f"the MPC solver process was not ready within {timeout:g} s")
        if self.status != "ready":
            raise WorkerError(self.last_error or f"the MPC solver process is {self.status}")

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def busy(self) -> bool:
        """A submitted solve has not returned yet."""
        return self._pending is not None

    # -- requests

    def policy_command(self, x: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        return policy_command(self.policy, self.task, x, target)

    def submit(self, x: np.ndarray, target: np.ndarray, now: float, budget: float) -> bool:
        """Send a solve request; False (nothing sent) while busy, starting or dead."""
        self._maybe_restart()
        if self.status != "ready" or self._pending is not None:
            return False
        if self._proc is not None and self._proc.poll() is not None:
            self._died(f"the solver process exited (status {self._proc.returncode})")
            return False
        self._next_id += 1
        try:
            self._conn.send(("solve", self._next_id, np.asarray(x, dtype=float), np.asarray(target, dtype=float),
                             float(now), float(budget), time.monotonic()))
        except (OSError, ValueError) as exc:
            self._died(f"sending to the solver process failed: {exc}")
            return False
        self._pending = self._next_id
        return True

    def receive(self, timeout: float = 0.0) -> MPCResult | None:
        """The result of the submitted solve if it has arrived (waiting up to ``timeout`` s), else None."""
        self._maybe_restart()
        end = time.monotonic() + max(0.0, timeout)
        while self._conn is not None:
            try:
                if not self._conn.poll(max(0.0, end - time.monotonic())):
                    if self._proc is not None and self._proc.poll() is not None:
                        self._died(f"the solver process exited (status {self._proc.returncode})")
                    return None
                message = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._died(f"the solver process is gone ({type(exc).__name__})")
                return None
            kind = message[0]
            if kind == "ready":
                self.status = "ready"
                self.restart_backoff = self._backoff0
            elif kind == "error":
                self._died(message[1])
                return None
            elif kind == "result" and message[1] == self._pending:
                self._pending = None
                return message[2]
        return None

    def reset(self) -> None:
        """Forget the previous solution (the next 'shifted' solve starts cold)."""
        if self._conn is not None:
            try:
                self._conn.send(("reset",))
            except (OSError, ValueError) as exc:
                self._died(f"sending to the solver process failed: {exc}")

    def close(self, timeout: float = 2.0) -> None:
        """Stop the process (a running solve ends first, up to ``timeout`` s, then it is killed)."""
        self._stop_process(timeout)
        self.status = "closed"
        self._pending = None


def load_task_spec(spec: str | dict) -> Task:
    """A task from a name or YAML path (``load_task``), or from ``{"name": ..., "config": {...}}``:
    the task a policy file embeds (``tocpl.task``, ``tocpl.task_config``), so that the OCP is the
    one the policy was trained on. ConfigError naming the key if the config is not valid here."""
    from tocpl_ros.config import load_dataclass
    from tocpl_ros.tasks import TaskConfig, load_task, make_task

    if isinstance(spec, dict):
        source = f"task_config of {spec.get('source') or 'the policy file'}"
        return make_task(spec["name"], load_dataclass(TaskConfig, spec["config"], source=source), source=source)
    return load_task(spec)


def worker_main(fd: int) -> int:
    """The solver process of :class:`MPCWorker` (the socket ``fd``): builds the task, policy and
    :class:`RecedingHorizonMPC`, warms up, then answers requests until told to stop or its
    socket closes."""
    import signal
    import traceback
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal: the parent decides
    conn = Connection(fd)
    try:
        message = conn.recv()
        _, task_spec, policy_path, config, warm_up = message
        try:
            if config.get("solver_nice"):
                import os

                os.nice(int(config["solver_nice"]))  # the caller's loop and the robot's driver come first
            task = load_task_spec(task_spec)
            mpc = RecedingHorizonMPC(task, OnnxPolicy(policy_path), MPCConfig(**config))
            nominal = mpc.task.nominal_problem() if hasattr(mpc.task, "nominal_problem") else mpc.task.sample(1, 0)
            for _ in range(warm_up):  # onnxruntime and Crocoddyl allocate on first use
                mpc.solve(nominal.x0[0], nominal.target[0])
            mpc.reset()
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return 1
        conn.send(("ready", {"pid": __import__("os").getpid()}))
        while True:
            message = conn.recv()
            kind = message[0]
            if kind == "stop":
                return 0
            if kind == "reset":
                mpc.reset()
            elif kind == "solve":
                _, request, x, target, now, budget, sent_at = message
                budget -= max(0.0, time.monotonic() - sent_at)
                result = mpc.solve(x, target, now, deadline=max(budget, 0.0))
                conn.send(("result", request, result))
    except (EOFError, OSError, KeyboardInterrupt):
        return 0  # the parent went away
    except Exception:
        traceback.print_exc()
        return 1
