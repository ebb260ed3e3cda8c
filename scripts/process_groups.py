"""Stopping a service and everything it started (Linux ``/proc``), for the demo and the e2e tests.

Airflow services fork (LocalExecutor workers, task supervisors, uvicorn workers) and task processes
put themselves in process groups of their own (the task SDK's supervisor calls ``setpgid``):
stopping only the parent would leave them behind. So the groups of every descendant are found
first; the service's own group gets SIGTERM, and whatever of any of them still runs after the grace
period gets SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

_POLL = 0.1


def stop_process_tree(process: subprocess.Popen[bytes], *, grace: float = 20.0) -> None:
    """Stop ``process`` (started with ``start_new_session=True``) and every process group below it."""
    process.poll()
    groups = {process.pid} | {_pgid(pid) for pid in _descendants(process.pid)}
    groups -= {os.getpgrp(), 0}
    for sig, targets in ((signal.SIGTERM, {process.pid}), (signal.SIGKILL, groups)):
        if not _any_alive(groups, process):
            break
        for group in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _any_alive(groups, process):
            time.sleep(_POLL)
    process.wait()


def _stats() -> list[tuple[int, str, int, int]]:
    """(pid, state, ppid, pgid) of every process of the machine."""
    found = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.append((int(path.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return found


def _any_alive(groups: set[int], leader: subprocess.Popen[bytes]) -> bool:
    """Whether a process of ``groups`` still runs; zombies left out (orphans are reaped by PID 1, which
    in a container may never do it; the leader is our child: reaped, it is no longer a zombie)."""
    leader.poll()
    return any(state != "Z" and pgid in groups for _, state, _, pgid in _stats())


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for child, state, parent, _ in _stats():
        if state != "Z":
            children.setdefault(parent, []).append(child)
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
