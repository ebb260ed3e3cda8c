"""Telling whether the process behind a ``running`` sync-log row is gone, and closing such rows.

A row says ``running`` from ``SyncStore.start_run`` until ``finish_run``. When the process dies in
between (SIGKILL, out of memory, a lost worker) or the database is down when it finishes, nothing
else would ever close it. The next sync of the same credential and resource marks it
``interrupted``, but only when its owner is provably gone: two runs may overlap (a manual run
beside a scheduled one, a new try while an old one still lives), and closing a live run's row would
report a healthy sync as dead. The rules, first match wins:

1. **This process** (same scope and PID): alive exactly while this process syncs that run,
   credential and resource (a registry of the syncs in progress here knows it). Otherwise its sync
   ended without closing its row, e.g. the database was down at the end: gone.
2. **Same scope** (same host name, boot and PID namespace, so a PID names a process of the same
   process table): gone when no process has that PID any more. A PID that exists may have been
   reused by another program, so it proves nothing either way: rule 3 decides.
3. **Anything else** (another host or container, an owner older versions did not record): gone when
   its heartbeat (set at start and at every committed page) is older than ``stale_after``. The
   default, one hour, is far beyond the longest a live sync spends on one page (a few retried
   requests of at most a minute each); a deployment with longer waits passes a longer bound.

Host and PID are stored together with a heartbeat so that each rule has what it needs: the PID
check is exact and immediate on the same machine, the heartbeat is the only evidence that works
across machines. Closing is a compare-and-set on owner and heartbeat (``SyncStore.mark_interrupted``),
so a row whose run committed a page or restarted after it was read is left alone.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow_provider_servicetitan.storage.models import RunLog, RunOwner
from airflow_provider_servicetitan.storage.store import SyncStore

log = logging.getLogger(__name__)

STALE_AFTER = timedelta(hours=1)
"""How long without a heartbeat a running row of another host is taken for dead."""

_RunKey = tuple[str, str, str]
_in_progress: Counter[_RunKey] = Counter()
_in_progress_lock = threading.Lock()


@functools.cache
def _scope() -> str:
    """Identity of this process table: host name, boot id and PID namespace (what Linux exposes)."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass  # not Linux: the host name alone
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def this_process() -> RunOwner:
    """The owner a sync started by this process records."""
    return RunOwner(host=socket.gethostname(), scope=_scope(), pid=os.getpid())


@contextmanager
def syncing(run_id: str, credential: str, resource: str) -> Iterator[RunOwner]:
    """Declare the sync of (run, credential, resource) in progress in this process while inside."""
    key = (run_id, credential, resource)
    with _in_progress_lock:
        _in_progress[key] += 1
    try:
        yield this_process()
    finally:
        with _in_progress_lock:
            _in_progress[key] -= 1
            if not _in_progress[key]:
                del _in_progress[key]


def _in_progress_here(row: RunLog) -> bool:
    with _in_progress_lock:
        return _in_progress[(row.run_id, row.credential, row.resource)] > 0


def _process_exists(pid: int) -> bool:
    """Whether some process has ``pid`` in this PID namespace (signal 0 checks without sending)."""
    if pid <= 0:
        return True  # not a process id: no proof it is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


def why_gone(row: RunLog, *, now: datetime, stale_after: timedelta = STALE_AFTER) -> str | None:
    """Why the process behind the running ``row`` is certainly gone, or ``None`` if it may be alive."""
    me = this_process()
    same_scope = row.owner_scope == me.scope
    if same_scope and row.owner_pid == me.pid:
        if _in_progress_here(row):
            return None
        return f"its sync in process {me.pid} on {me.host} ended without closing it (database unreachable?)"
    if same_scope and row.owner_pid is not None and not _process_exists(row.owner_pid):
        return f"its process {row.owner_pid} on {row.owner_host} is gone"
    last_sign = row.heartbeat_at or row.started_at
    if now - last_sign > stale_after:
        return f"no sign of life since {last_sign:%Y-%m-%d %H:%M:%S} UTC, more than {stale_after} ago"
    return None


def close_interrupted_runs(
    store: SyncStore,
    credential: str,
    resource: str,
    *,
    by_run_id: str,
    stale_after: timedelta = STALE_AFTER,
    now: datetime | None = None,
) -> list[RunLog]:
    """Mark ``interrupted`` every running row of ``credential`` and ``resource`` whose process is gone.

    The rows of ``by_run_id`` itself are left to its own sync, which takes them over.

    :param now: the moment heartbeats are compared with (default: now).
    :returns: the rows closed, as they were before.
    """
    now = now or datetime.now(UTC)
    closed: list[RunLog] = []
    for row in store.running_runs(credential, resource):
        if row.run_id == by_run_id:
            continue
        reason = why_gone(row, now=now, stale_after=stale_after)
        if reason is None:
            continue
        if store.mark_interrupted(row, by_run_id=by_run_id, message=f"interrupted: {reason}"):
            log.warning(
                "Run %s of %s for %s was left running and %s: marked interrupted",
                row.run_id,
                resource,
                credential,
                reason,
            )
            closed.append(row)
    return closed
