"""How ``servicetitan_sync`` lays out any number of credentials: shards of mapped task groups.

Airflow maps a task over at most ``[core] max_map_length`` values (1024 by default); past that the
task that lists them fails and nothing syncs. So the DAG has ``shards`` mapped task groups, each of
at most ``max_map_length`` credentials: shard 1 is the group ``credential``, shard k the group
``credential_k``. Credentials fill the shards in the order they are listed: the i-th (from 0) goes to
shard ``i // max_map_length + 1``, so appending a credential never moves another one to a different
group. Each credential stays its own mapped task instance, named by its connection id in the UI.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CREDENTIAL_GROUP",
    "SHARDS_SETTING",
    "check_capacity",
    "group_id",
    "parse_shards",
    "shard_of",
]

CREDENTIAL_GROUP = "credential"
SHARDS_SETTING = "SERVICETITAN_CREDENTIAL_SHARDS"
"""The environment variable of the DAG file that sets its number of shards (default 1)."""


def parse_shards(value: str | None) -> int:
    """The number of shards from the setting's text (``None`` or empty: 1); a clear error otherwise."""
    if value is None or not value.strip():
        return 1
    try:
        shards = int(value)
    except ValueError:
        shards = 0
    if shards < 1:
        raise ValueError(f"{SHARDS_SETTING} must be a whole number of at least 1, got {value!r}")
    return shards


def group_id(shard: int) -> str:
    """The task group of shard ``shard`` (from 1): ``credential``, ``credential_2``, ..."""
    return CREDENTIAL_GROUP if shard == 1 else f"{CREDENTIAL_GROUP}_{shard}"


def check_capacity(count: int, *, shards: int, max_map_length: int) -> None:
    """Raise ``ValueError``, saying what to change, when ``count`` credentials do not fit the shards."""
    if count <= shards * max_map_length:
        return
    needed = -(-count // max_map_length)
    raise ValueError(
        f"{count} credentials do not fit {shards} shard(s) of at most {max_map_length} ([core] max_map_length): "
        f"set {SHARDS_SETTING} to {needed} or more where the DAG file is parsed, or raise [core] max_map_length "
        "on every Airflow component"
    )


def shard_of(credentials: Sequence[str], shard: int, *, max_map_length: int) -> list[str]:
    """The credentials of shard ``shard`` (from 1): a slice of ``max_map_length`` in list order."""
    start = (shard - 1) * max_map_length
    return list(credentials[start : start + max_map_length])
