"""Processes of the e2e harness: each in its own process group, logging to a file, always stopped.

Airflow services fork (LocalExecutor workers, task supervisors, uvicorn workers): stopping only the
parent would leave children behind, so a whole group gets SIGTERM, then SIGKILL after a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_POLL = 0.1


class ServiceProcess:
    """One started command: ``name``, its log file and its process group."""

    def __init__(self, name: str, command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                list(command),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session, hence its own process group
            )
        self.pgid = self.process.pid

    def alive(self) -> bool:
        """Whether the service's main process still runs."""
        return self.process.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the service, SIGKILL whatever of it still runs after ``grace`` seconds.

        Task processes put themselves in process groups of their own (the task SDK's supervisor calls
        ``setpgid``), so the groups of every descendant, found before the first signal, are stopped too.
        """
        self.process.poll()
        groups = {self.pgid} | {_pgid(pid) for pid in _descendants(self.pgid)}
        groups -= {os.getpgrp(), 0}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self._any_alive(groups):
                return
            targets = {self.pgid} if sig is signal.SIGTERM else groups
            for group in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._any_alive(groups):
                time.sleep(_POLL)

    def tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def _any_alive(self, groups: set[int]) -> bool:
        self.process.poll()  # the leader is our child: reaped, it is no longer a zombie of its group
        return any(_live_processes(lambda stat: stat.pgid in groups))


@dataclass(frozen=True)
class _Stat:
    pid: int
    state: str
    ppid: int
    pgid: int


def _stats() -> Iterator[_Stat]:
    """Every process of the machine as ``/proc/<pid>/stat`` describes it (Linux)."""
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield _Stat(int(path.parent.name), fields[0], int(fields[1]), int(fields[2]))


def _live_processes(keep: Callable[[_Stat], bool]) -> Iterator[_Stat]:
    """Processes that match ``keep``, zombies left out: orphans are reaped by PID 1, which in a container
    may never do it."""
    return (stat for stat in _stats() if stat.state != "Z" and keep(stat))


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in _live_processes(lambda _: True):
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return 0


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - 200 * lines))
        text = file.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
