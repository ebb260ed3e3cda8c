"""Re-exporting a resource of a credential from scratch or from a day, as a person asks for it: by
the operator's ``reexport_from`` and by the DAG's params, run by real Airflow against the sandbox.

A re-export is idempotent (upserts by id), touches only what it names, and once its first page is
committed it is the checkpoint: an interrupted re-export is resumed by the retry of its run or
finished by the next run, never dropped for the old checkpoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import date, timedelta
from typing import Any

import pytest
from airflow.sdk.definitions.param import ParamValidationError
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy import Engine, delete, event, inspect

from airflow_provider_servicetitan.sync.reexport import (
    Reexport,
    check_reexport_request,
    parse_reexport_from,
    parse_reexport_resources,
)
from tests.dags.test_servicetitan_sync import load_dag_module
from tests.helpers import register

RESOURCES = ["customers", "jobs"]
PAGE_SIZE = 40
# Airflow retries at once; a breaker that stays closed, so a retry meets the sandbox as it is.
IMMEDIATE_RETRIES = {"retry_delay": timedelta(0), "retry_exponential_backoff": 0}
STEADY_BREAKER = {"failure_threshold": 100, "minimum_calls": 100}
# The in-call retries of the test connections (RETRY_SETTINGS): this many failed calls fail the task.
IN_CALL_ATTEMPTS = 3


def returned(dagrun, task_id: str, map_index: int = -1) -> Any:
    return dagrun.get_task_instance(task_id, map_index=map_index).xcom_pull(task_ids=task_id, map_indexes=map_index)


def export_requests(env) -> int:
    return env.sandbox.admin.stats()["requests_by_endpoint"].get("export", 0)


def lose(env, index: int, resource: str) -> None:
    """A person's accident: the warehouse loses every stored record of ``resource`` of a tenant."""
    with closing(env.warehouse.store()) as store, store.engine.begin() as conn:
        table = store.tables.records[resource]
        conn.execute(delete(table).where(table.c.tenant_id == env.tenant(index)))


def sync_dag(env, conn_id: str, **sync_args: Any):
    dag = env.dag()
    with dag:
        env.sync(conn_id, servicetitan_resources=RESOURCES, **sync_args)
    return dag


@contextmanager
def failing_after_first_checkpoint(env) -> Iterator[None]:
    """ServiceTitan fails every call from the moment a sync first writes a checkpoint.

    That write is in the transaction of the page it belongs to, and the sandbox holds the next
    request (``hold_after_pages``) until then, however far ahead the sync fetches: a deterministic
    "between page 1 and page 2", observed on SQLAlchemy itself.
    """
    done: list[bool] = []
    marker = f"INSERT INTO {env.warehouse.table_prefix}_sync_state"

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not done and statement.lstrip().startswith(marker):
            done.append(True)
            env.sandbox.admin.set_faults(error_rate=1.0, hold_after_pages=None)

    env.sandbox.admin.set_faults(hold_after_pages=1)
    event.listen(Engine, "after_cursor_execute", on_statement)
    try:
        yield
    finally:
        event.remove(Engine, "after_cursor_execute", on_statement)
        env.sandbox.admin.set_faults(hold_after_pages=None)
    assert done, "no checkpoint was written"


def service_back(env) -> Callable[[Any], None]:
    """An ``on_retry_callback``: ServiceTitan answers again before the next try."""
    return lambda _context: env.sandbox.admin.set_faults(error_rate=0.0)


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_value_is_no_reexport(value: str | None) -> None:
    assert parse_reexport_from(value) is None


def test_start_and_days_up_to_today_are_reexports() -> None:
    today = date(2025, 3, 1)
    assert parse_reexport_from("start", today=today) == Reexport(since=None)
    assert parse_reexport_from(" 2025-03-01 ", today=today) == Reexport(since=today)
    assert parse_reexport_from("2024-02-29", today=today) == Reexport(since=date(2024, 2, 29))
    assert Reexport(since=None).export_from is None
    assert Reexport(since=date(2024, 2, 29)).export_from == "2024-02-29"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("yesterday", "'yesterday' is not valid: use 'start' (from scratch) or a date YYYY-MM-DD"),
        ("Start", "'Start' is not valid"),
        ("2024-02-30", "'2024-02-30' is not a real date"),
        ("2024-1-5", "'2024-1-5' is not valid"),
        ("2025-03-02", "'2025-03-02' is in the future (today is 2025-03-01 UTC)"),
        ("x" * 10_000, "'" + "x" * 40 + "...' is not valid"),
        (20240101, "reexport_from must be text"),
    ],
)
def test_an_invalid_reexport_from_is_refused_clearly(value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as caught:
        parse_reexport_from(value, today=date(2025, 3, 1))
    assert len(str(caught.value)) < 200


def test_reexport_resources_are_a_list_or_the_text_a_template_renders() -> None:
    assert parse_reexport_resources(None, RESOURCES) == []
    assert parse_reexport_resources("", RESOURCES) == []
    assert parse_reexport_resources(" jobs,customers,jobs ", RESOURCES) == ["jobs", "customers"]
    assert parse_reexport_resources(["customers"], RESOURCES) == ["customers"]
    with pytest.raises(ValueError, match="'invoices', which are not among the resources synced here"):
        parse_reexport_resources("customers,invoices", RESOURCES)


@pytest.mark.parametrize(
    ("request_args", "problem"),
    [
        (("start", None, ["customers"]), "reexport_connection must be one of the connections of this run"),
        (("start", "st_other", ["customers"]), "must be one of the connections of this run (st_a, st_b)"),
        (("start", "st_a", None), "reexport_resources must name the resources to re-export"),
        (("start", "st_a", ["widgets"]), "'widgets', which are not among the resources synced here"),
        ((None, "st_a", ["customers"]), "reexport_connection and reexport_resources need reexport_from"),
        (("soon", "st_a", ["customers"]), "reexport_from 'soon' is not valid"),
    ],
)
def test_a_half_filled_or_wrong_reexport_request_is_refused(request_args: tuple[Any, Any, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_reexport_request(*request_args, connections=["st_a", "st_b"], exportable=RESOURCES)


def test_no_reexport_request_is_a_normal_run() -> None:
    assert check_reexport_request(None, None, None, connections=["st_a"], exportable=RESOURCES) is None
    assert check_reexport_request("", "", [], connections=["st_a"], exportable=RESOURCES) is None


@pytest.mark.parametrize("warehouse", ["sqlite", "postgresql"], indirect=True)
def test_reexport_from_scratch_brings_back_lost_records_once_and_only_where_asked(operator_env):
    env = operator_env(records=120, export_page_size=PAGE_SIZE)
    conn_id = env.connect(0)
    env.run(sync_dag(env, conn_id))
    lose(env, 0, "customers")
    lose(env, 0, "jobs")
    truth = env.truth(0, "customers")

    reexported = env.run(sync_dag(env, conn_id, reexport_from="start", reexport_resources=["customers"]))

    summaries = returned(reexported, f"sync_{conn_id}")
    assert summaries["customers"]["records_processed"] == summaries["customers"]["records_successful"] == len(truth)
    assert summaries["customers"]["message"] == "re-exported from start"
    assert summaries["jobs"]["records_processed"] == 0
    assert env.stored(0, "customers") == truth
    assert env.stored(0, "jobs") == {}
    with closing(env.warehouse.store()) as store:
        assert store.count_records(env.tenant(0), "customers") == len(truth)
        log = {row.resource: row.message for row in store.get_run_log(reexported.run_id)}
    assert log == {"customers": "re-exported from start", "jobs": None}

    after = env.run(sync_dag(env, conn_id))

    assert returned(after, f"sync_{conn_id}")["customers"]["records_processed"] == 0


def test_reexport_from_a_day_reads_the_changes_since_that_day(operator_env):
    env = operator_env(records=120, export_page_size=PAGE_SIZE)
    conn_id = env.connect(0)
    env.run(sync_dag(env, conn_id))
    since = env.truth(0, "customers")
    changed_since = [record_id for record_id, (modified_on, _, _) in since.items() if modified_on >= "2024-06-01"]
    assert 0 < len(changed_since) < len(since)

    reexported = env.run(sync_dag(env, conn_id, reexport_from="2024-06-01", reexport_resources="customers"))

    summary = returned(reexported, f"sync_{conn_id}")["customers"]
    assert summary["records_processed"] == len(changed_since)
    assert summary["message"] == "re-exported from 2024-06-01"
    assert env.stored(0, "customers") == since


def test_an_invalid_reexport_fails_the_task_at_once_without_syncing(operator_env):
    env = operator_env()
    conn_id = env.connect(0)

    failed = env.run(sync_dag(env, conn_id, reexport_from="2024-13-01", retries=2, **IMMEDIATE_RETRIES))

    ti = failed.get_task_instance(f"sync_{conn_id}")
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert export_requests(env) == 0
    with closing(env.warehouse.store()) as store:
        assert not [name for name in inspect(store.engine).get_table_names() if name.startswith(store.table_prefix)]


def test_an_interrupted_reexport_is_resumed_by_the_retry_of_its_run(operator_env):
    env = operator_env(records=200, export_page_size=PAGE_SIZE)
    conn_id = env.connect(0, breaker=STEADY_BREAKER)
    env.run(sync_dag(env, conn_id))
    lose(env, 0, "customers")
    truth = env.truth(0, "customers")
    pages = math.ceil(len(truth) / PAGE_SIZE)
    before = export_requests(env)

    # After the re-export's first page, ServiceTitan fails every call until the first try is over.
    with failing_after_first_checkpoint(env):
        dagrun = env.run(
            sync_dag(
                env,
                conn_id,
                reexport_from="start",
                reexport_resources=["customers"],
                retries=1,
                on_retry_callback=service_back(env),
                max_concurrency=1,
                **IMMEDIATE_RETRIES,
            )
        )

    ti = dagrun.get_task_instance(f"sync_{conn_id}")
    assert (ti.state, ti.try_number) == ("success", 2)
    # Try 1: customers page 1 and its failed attempts, then jobs' failed attempts.
    # Try 2: customers from page 2 on (a restart would read page 1 again, the old checkpoint none at
    # all), and jobs (caught up: one request).
    assert export_requests(env) - before == (1 + IN_CALL_ATTEMPTS) + IN_CALL_ATTEMPTS + (pages - 1 + 1)
    assert env.stored(0, "customers") == truth
    with closing(env.warehouse.store()) as store:
        (row,) = [row for row in store.get_run_log(dagrun.run_id) if row.resource == "customers"]
        assert (row.status, row.pages, row.records_successful) == ("success", pages, len(truth))
        assert store.count_records(env.tenant(0), "customers") == len(truth)


def test_an_interrupted_reexport_is_finished_by_the_next_run_not_dropped(operator_env):
    env = operator_env(records=200, export_page_size=PAGE_SIZE)
    conn_id = env.connect(0, breaker=STEADY_BREAKER)
    env.run(sync_dag(env, conn_id))
    with closing(env.warehouse.store()) as store:
        old = store.get_checkpoint(conn_id, "customers")
    lose(env, 0, "customers")
    truth = env.truth(0, "customers")

    with failing_after_first_checkpoint(env):
        interrupted = env.run(
            sync_dag(
                env, conn_id, reexport_from="start", reexport_resources=["customers"], retries=0, max_concurrency=1
            )
        )
    env.sandbox.admin.set_faults(error_rate=0.0)

    assert interrupted.get_task_instance(f"sync_{conn_id}").state == "failed"
    with closing(env.warehouse.store()) as store:
        checkpoint = store.get_checkpoint(conn_id, "customers")
    assert checkpoint.reexport_run_id == interrupted.run_id
    assert checkpoint.continue_from != old.continue_from
    assert len(env.stored(0, "customers")) == PAGE_SIZE

    finished = env.run(sync_dag(env, conn_id))

    assert returned(finished, f"sync_{conn_id}")["customers"]["records_processed"] == len(truth) - PAGE_SIZE
    assert env.stored(0, "customers") == truth


def test_the_dag_reexports_only_the_named_resource_of_the_named_connection(operator_env, monkeypatch):
    env = operator_env(tenants=2, records=60, export_page_size=30)
    dag = load_dag_module(
        monkeypatch,
        {
            "SERVICETITAN_WAREHOUSE_CONN_ID": env.warehouse.conn_id,
            "AIRFLOW__SERVICETITAN__REDIS_CONN_ID": env.redis_conn_id,
            "AIRFLOW__SERVICETITAN__REDIS_NAMESPACE": env.redis_namespace,
            "SERVICETITAN_TABLE_PREFIX": env.warehouse.table_prefix,
        },
    ).dag
    register(dag)
    connections = [env.connect(0), env.connect(1)]
    first = dag.test(run_conf={"connections": connections})
    assert first.state == "success"
    for index in range(2):
        lose(env, index, "customers")

    reexported = dag.test(
        logical_date=first.logical_date + timedelta(hours=1),
        run_conf={
            "connections": connections,
            "reexport_from": "start",
            "reexport_connection": connections[0],
            "reexport_resources": ["customers"],
        },
    )

    assert reexported.state == "success"
    named, other = (returned(reexported, "credential.sync", map_index=index) for index in range(2))
    assert named["customers"]["records_processed"] == len(env.truth(0, "customers"))
    assert named["jobs"]["records_processed"] == 0
    assert other["customers"]["records_processed"] == 0
    assert env.stored(0, "customers") == env.truth(0, "customers")
    assert env.stored(1, "customers") == {}


def test_the_dag_refuses_an_invalid_reexport_before_anything_syncs(monkeypatch):
    dag = load_dag_module(monkeypatch, {}).dag
    with pytest.raises(ParamValidationError):
        dag.params.get_param("reexport_from").resolve("yesterday")
    with pytest.raises(ParamValidationError):
        dag.params.get_param("reexport_resources").resolve(["widgets"])
    assert dag.params.get_param("reexport_from").resolve("2024-02-30") == "2024-02-30"  # the form's pattern only
    list_credentials = dag.get_task("list_credentials").python_callable

    # The first task checks what the form cannot: a real date, a connection of the run, named resources.
    with pytest.raises(
        AirflowFailException, match="invalid re-export request: reexport_from '2024-02-30' is not a real"
    ):
        list_credentials(
            {
                "connections": ["st_a"],
                "reexport_from": "2024-02-30",
                "reexport_connection": "st_a",
                "reexport_resources": ["customers"],
            }
        )
    with pytest.raises(AirflowFailException, match="reexport_connection must be one of the connections of this run"):
        list_credentials({"connections": ["st_a"], "reexport_from": "start", "reexport_resources": ["customers"]})
    assert list_credentials({"connections": ["st_a", "st_a"], "reexport_from": None}) == ["st_a"]
