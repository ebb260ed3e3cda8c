"""Where synced data goes: an Airflow connection turned into a :class:`SyncStore`.

``servicetitan_warehouse`` by default. A ``sqlite`` connection (host = file path) or a
``postgres`` connection (PostgreSQL in production). When the default connection is not defined,
a SQLite file ``servicetitan.db`` in ``$AIRFLOW_HOME`` is used, which suits a single machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from sqlalchemy.engine import URL

from airflow_provider_servicetitan.errors import CredentialValidationError
from airflow_provider_servicetitan.storage.dialects import POSTGRES_DRIVERNAME
from airflow_provider_servicetitan.storage.store import SyncStore

log = logging.getLogger(__name__)

DEFAULT_WAREHOUSE_CONN_ID = "servicetitan_warehouse"


def warehouse_url(conn_id: str = DEFAULT_WAREHOUSE_CONN_ID) -> str | URL:
    """The SQLAlchemy URL of the warehouse connection ``conn_id``."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if conn_id != DEFAULT_WAREHOUSE_CONN_ID:
            raise
        path = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "servicetitan.db"
        log.info("No %r connection: storing ServiceTitan data in SQLite at %s", conn_id, path)
        return f"sqlite:///{path}"
    if conn.conn_type == "sqlite":
        if not conn.host:
            raise CredentialValidationError("host", "the path of the SQLite file", conn_id=conn_id)
        return f"sqlite:///{conn.host}"
    if conn.conn_type in ("postgres", "postgresql"):
        return URL.create(
            POSTGRES_DRIVERNAME,
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        )
    raise CredentialValidationError("conn_type", "sqlite or postgres", conn_id=conn_id)


def open_store(conn_id: str = DEFAULT_WAREHOUSE_CONN_ID, *, table_prefix: str = "servicetitan") -> SyncStore:
    """A ready store for ``conn_id``: tables created (idempotent) before it is returned."""
    store = SyncStore(warehouse_url(conn_id), table_prefix=table_prefix)
    store.create_tables()
    return store
