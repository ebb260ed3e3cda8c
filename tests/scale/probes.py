"""What the run costs outside Airflow's own figures: worker memory, the provider's Redis commands, metadata rows."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psutil
import redis
from sqlalchemy import create_engine, func, inspect, select, table

_SAMPLE_EVERY = 0.5


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of a process and all its descendants now (Celery pool processes, task supervisors
    and task processes). The RSS sum counts pages shared after a fork once per process (an upper bound);
    the PSS sum shares them out (what the tree costs the machine)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for member in members:
        try:
            memory = member.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += memory.rss
        pss += getattr(memory, "pss", 0)
    return rss, pss


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process and all its descendants used so far: each living member's own,
    plus those of its children that ended and were reaped (task processes, once done, count in their parent)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    seconds = 0.0
    for member in members:
        try:
            times = member.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds += times.user + times.system + times.children_user + times.children_system
    return seconds


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """:func:`tree_cpu_seconds` of each named process now."""
    return {name: tree_cpu_seconds(pid) for name, pid in pids.items()}


@dataclass
class MemorySampler:
    """Samples :func:`tree_memory` of each named process every half second in a thread; keeps the peaks."""

    pids: Mapping[str, int]
    peak_rss: dict[str, int] = field(default_factory=dict)
    peak_pss: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                rss, pss = tree_memory(pid)
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
                self.peak_pss[name] = max(self.peak_pss.get(name, 0), pss)
            self.samples += 1
            if self._stop.wait(_SAMPLE_EVERY):
                return

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def redis_info(url: str, *sections: str) -> list[dict[str, Any]]:
    """``INFO <section>`` of one Redis, for each of ``sections``, over one connection."""
    client = redis.Redis.from_url(url)
    try:
        return [client.info(section) for section in sections]
    finally:
        client.close()


@dataclass(frozen=True)
class CommandStats:
    """``INFO commandstats`` calls by command and ``total_commands_processed`` of one Redis, at one moment."""

    calls: Counter[str]
    total: int

    @classmethod
    def read(cls, url: str) -> CommandStats:
        stats, totals = redis_info(url, "commandstats", "stats")
        calls = Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})
        return cls(calls, int(totals["total_commands_processed"]))

    def since(self, before: CommandStats) -> CommandStats:
        """The commands between ``before`` and this reading (the two INFO calls of a reading included)."""
        calls = Counter({name: n - before.calls.get(name, 0) for name, n in self.calls.items()})
        return CommandStats(+calls, self.total - before.total)


@dataclass(frozen=True)
class RedisFootprint:
    """Keys (every database) and ``used_memory`` bytes of one Redis, at one moment."""

    keys: int
    used_memory: int

    @classmethod
    def read(cls, url: str) -> RedisFootprint:
        keyspace, memory = redis_info(url, "keyspace", "memory")
        return cls(sum(int(db["keys"]) for db in keyspace.values()), int(memory["used_memory"]))

    def since(self, before: RedisFootprint) -> RedisFootprint:
        """What was added between ``before`` and this reading."""
        return RedisFootprint(self.keys - before.keys, self.used_memory - before.used_memory)


def table_rows(url: str) -> Counter[str]:
    """Rows of every table of a database now (exact counts), e.g. of the Airflow metadata database."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = inspect(conn).get_table_names()
            return Counter(
                {name: int(conn.execute(select(func.count()).select_from(table(name))).scalar_one()) for name in names}
            )
    finally:
        engine.dispose()
