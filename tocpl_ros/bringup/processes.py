"""The nodes of a graph as processes (ROS-free): their executables found (a venv's bin/, a colcon
install, PATH), started with one DDS environment, their output prefixed with their name, and all
stopped together (SIGINT, then SIGTERM, then SIGKILL) when one exits or on Ctrl-C.
:class:`Bringup` is ``tocpl-bringup``'s engine and ``tocpl-demo``'s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tocpl_ros.bringup.spec import BringupError, NodeSpec
from tocpl_ros.ros.environment import loopback_ros_env

PROG = "tocpl-bringup"
"""The name its own log lines carry."""

__all__ = ["Bringup", "NodeProcess", "find_executable", "resolve_commands"]


def executable_dirs(package: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """Where executables of ``package`` are looked for, in order: next to sys.executable, the
    colcon/ament install prefixes (``<prefix>/lib/<package>``), then PATH."""
    env = os.environ if env is None else env
    dirs = [Path(sys.executable).parent]
    for prefix in filter(None, env.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        dirs.append(Path(prefix) / "lib" / package)
    dirs += [Path(p) for p in filter(None, env.get("PATH", "").split(os.pathsep))]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_executable(name: str, package: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The executable ``name`` of ``package`` (see :func:`executable_dirs`), or None."""
    for d in executable_dirs(package, env):
        candidate = d / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def resolve_commands(specs: Sequence[NodeSpec], env: Mapping[str, str] | None = None) -> list[list[str]]:
    """The command line of every node; BringupError naming each missing executable."""
    commands, missing = [], []
    for spec in specs:
        path = find_executable(spec.executable, spec.package, env)
        if path is None:
            missing.append(spec)
        else:
            commands.append(spec.command(path))
    if missing:
        looked = ", ".join(str(d) for d in executable_dirs(missing[0].package, env)[:4]) + ", ..."
        lines = [
            f"executable '{s.executable}' of node '{s.name}' not found" + (f": {s.missing_hint}" if s.missing_hint else "")
            for s in missing
        ]
        raise BringupError("; ".join(lines) + f" (looked next to {sys.executable}, in lib/{missing[0].package} of "
                           f"AMENT_PREFIX_PATH and on PATH: {looked})")
    return commands


@dataclass
class NodeProcess:
    """One running node: its process, and how it ended."""

    spec: NodeSpec
    command: list[str]
    proc: subprocess.Popen
    reader: threading.Thread | None = None
    stopped_by_us: bool = False
    killed: bool = False
    signals: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def failed(self) -> bool:
        """Exited by itself with a non-zero status, or had to be SIGKILLed."""
        rc = self.proc.poll()
        if rc is None:
            return False
        return self.killed or (not self.stopped_by_us and rc != 0)

    def describe_exit(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return "running"
        how = f"exit status {rc}" if rc >= 0 else f"killed by {signal.Signals(-rc).name}"
        if self.stopped_by_us:
            how += f" after {', '.join(self.signals)}" if self.signals else ""
        return how


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default action.

    Started from a background job (``cmd &``, nohup, some CI runners) we inherit SIGINT ignored,
    and an ignored-at-start SIGINT stays ignored by sh traps and by Python: every node would then
    only stop on our SIGTERM escalation, seconds later and reported as killed.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Bringup:
    """Start the nodes of a graph as processes and keep them running together.

    ``env``: the environment of the nodes (default: :func:`loopback_ros_env` of ours, i.e.
    LOCALHOST discovery unless set, one shared domain id). ``out``: where the prefixed node
    output and our own messages go (None: node output discarded, messages to stderr).
    ``on_line(name, line)``: called for every output line (e.g. to wait for a log message).
    """

    def __init__(
        self,
        specs: Sequence[NodeSpec],
        env: Mapping[str, str] | None = None,
        out: IO[str] | None = sys.stdout,
        sigterm_timeout: float = 5.0,
        sigkill_timeout: float = 5.0,
        on_line: Callable[[str, str], None] | None = None,
    ):
        self.specs = list(specs)
        base = dict(os.environ if env is None else env)
        self.env = loopback_ros_env(base)  # the node_environment() of the launch file, plus the rest
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.out = out
        self.sigterm_timeout = sigterm_timeout
        self.sigkill_timeout = sigkill_timeout
        self.on_line = on_line
        self.nodes: list[NodeProcess] = []
        self.first_exit: NodeProcess | None = None
        self._lock = threading.Lock()
        self._interrupts = 0
        self.commands = resolve_commands(self.specs, self.env)  # all checked before any starts

    # -- output ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self._write(f"[{PROG}] {message}", stream=self.out if self.out is not None else sys.stderr)

    def _write(self, line: str, stream: IO[str] | None = None) -> None:
        stream = self.out if stream is None else stream
        if stream is None:
            return
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass

    def _read(self, node: NodeProcess) -> None:
        assert node.proc.stdout is not None
        for raw in node.proc.stdout:
            line = raw.rstrip("\n")
            if self.on_line is not None:
                try:
                    self.on_line(node.name, line)
                except Exception:  # a callback must not stop the output
                    pass
            self._write(f"[{node.name}] {line}")

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.log(
            f"DDS: ROS_AUTOMATIC_DISCOVERY_RANGE={self.env['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
            f"ROS_DOMAIN_ID={self.env['ROS_DOMAIN_ID']}"
        )
        try:
            for spec, command in zip(self.specs, self.commands):
                proc = subprocess.Popen(
                    command,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    bufsize=1,
                    start_new_session=True,  # Ctrl-C reaches us only; we stop the nodes in order
                    preexec_fn=_default_sigint,
                )
                node = NodeProcess(spec, command, proc)
                node.reader = threading.Thread(target=self._read, args=(node,), name=f"bringup-{spec.name}", daemon=True)
                node.reader.start()
                self.nodes.append(node)
                self.log(f"started {spec.name} (pid {proc.pid}): {' '.join(command)}")
        except BaseException:
            self.stop("start-up failed")
            raise

    def poll(self) -> NodeProcess | None:
        """The first node found to have exited (remembered), or None."""
        if self.first_exit is None:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    self.first_exit = node
                    break
        return self.first_exit

    def running(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def _signal(self, nodes: Sequence[NodeProcess], sig: signal.Signals) -> None:
        for node in nodes:
            if node.proc.poll() is None:
                node.stopped_by_us = True
                node.signals.append(sig.name)
                if sig == signal.SIGKILL:
                    node.killed = True
                try:
                    node.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline or self._interrupts >= 2:
                return False
            time.sleep(0.02)
        return True

    def stop(self, reason: str = "") -> None:
        """Stop every node still running: SIGINT, SIGTERM, SIGKILL (each after its timeout)."""
        if self.running():
            self.log(f"stopping {', '.join(n.name for n in self.running())}" + (f" ({reason})" if reason else ""))
        self._signal(self.running(), signal.SIGINT)
        if not self._wait_all(self.sigterm_timeout):
            if self._interrupts < 2:
                self.log(f"still running after SIGINT + {self.sigterm_timeout:g} s: SIGTERM to "
                         f"{', '.join(n.name for n in self.running())}")
                self._signal(self.running(), signal.SIGTERM)
            if not self._wait_all(self.sigkill_timeout):
                self.log(f"SIGKILL to {', '.join(n.name for n in self.running())}")
                self._signal(self.running(), signal.SIGKILL)
        for node in self.nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL always ends a process
                pass
            if node.reader is not None:
                node.reader.join(timeout=5)
            if node.proc.stdout is not None:
                node.proc.stdout.close()

    def interrupt(self) -> None:
        """Called on Ctrl-C / SIGTERM: the first asks the monitor loop to stop, a second one
        skips the SIGINT/SIGTERM grace periods."""
        self._interrupts += 1

    def run(self, should_stop: Callable[[], bool] | None = None, poll_interval: float = 0.05) -> int:
        """Wait until a node exits, an interrupt, or ``should_stop()``; stop everything; return
        the exit status (0 clean, 1 a node failed)."""
        reason = ""
        while True:
            exited = self.poll()
            if exited is not None:
                reason = f"{exited.name} exited ({exited.describe_exit()})"
                self.log(reason)
                break
            if self._interrupts:
                reason = "interrupted"
                break
            if should_stop is not None and should_stop():
                reason = "done"
                break
            time.sleep(poll_interval)
        self.stop(reason)
        return self.summary()

    def summary(self) -> int:
        failed = [n for n in self.nodes if n.failed]
        for node in self.nodes:
            self.log(f"{node.name}: {node.describe_exit()}" + (" -- FAILED" if node.failed else ""))
        return 1 if failed else 0

    def __enter__(self) -> Bringup:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop("leaving")


# ----------------------------------------------------------------------------- command line
