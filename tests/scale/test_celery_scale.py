"""One run of ``servicetitan_sync`` over many credentials on CeleryExecutor with several workers (issue 15).

The sandbox has N tenants (``SERVICETITAN_SCALE_TENANTS``, 200 by default) enforcing ServiceTitan's
60 requests/s per tenant; one tenant is in outage and one connection holds a wrong client secret. The
credentials fill ``ceil(N / max_map_length)`` shards. Once every other credential is done, the outage
ends and a person clears the waiting task (its breaker admits one probe and closes); see
:mod:`tests.scale.scenario`. Then the test checks what must hold whatever the number of workers: the
data, one token per credential, one alert per incident, each breaker transition once, no 429 of our
own, every credential named in the UI; and that one credential of the last shard can be cleared on
its own. Before asserting, it prints and writes (JSON, ``SERVICETITAN_SCALE_REPORT``) what the run
cost: credentials per minute, overhead per task, Redis commands per credential, worker memory.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

import pytest

from airflow_provider_servicetitan.catalog import EXPORTABLE_RESOURCES
from airflow_provider_servicetitan.shards import group_id
from airflow_provider_servicetitan.storage.store import SyncStore
from tests.chaos.audit import Audit, audit
from tests.e2e.session import DAG_ID, is_exact
from tests.e2e.test_run_semantics import alert_titles
from tests.scale.conftest import ScaleCluster
from tests.scale.figures import lines, scale_figures, write_report
from tests.scale.scenario import WRONG_SECRET, run_with_incidents, task_of
from tests.scale.settings import ScaleSettings

pytestmark = [pytest.mark.scale, pytest.mark.timeout(ScaleSettings.from_env().timeout())]

VERDICT = "all_credentials_synced"


def audits(cluster: ScaleCluster) -> dict[str, Audit]:
    """The warehouse against the truth, per credential."""
    session = cluster.session
    with closing(SyncStore(session.warehouse_url, table_prefix=session.table_prefix)) as store:
        return {
            conn_id: audit(session.sandbox, store, [session.tenant(index)], EXPORTABLE_RESOURCES, [conn_id])
            for index, conn_id in enumerate(session.credentials)
        }


def tries(instances: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    return {(ti["task_id"], ti["map_index"]): ti["try_number"] for ti in instances}


def test_one_run_over_many_credentials_on_celery(scale_cluster: ScaleCluster) -> None:
    cluster, settings, session = scale_cluster, scale_cluster.settings, scale_cluster.session
    credentials = session.credentials
    outage, rejected = credentials[settings.outage], credentials[settings.rejected]
    observed = run_with_incidents(cluster)
    figures = scale_figures(settings, observed, credentials)
    write_report(settings.report, figures)
    for line in lines(figures):
        cluster.report(line)
    cluster.report(f"scale: figures written to {settings.report}")
    states, stats = observed.states, observed.sandbox_stats

    # The run: everything but the rejected credential synced; the verdict fails the run for it.
    assert observed.state == "failed", states
    assert {(ti["task_id"], ti["map_index"]) for ti in observed.healing} >= {
        task_of(settings, settings.outage, "sync"),
        ("report", -1),
    }
    for index, conn_id in enumerate(credentials):
        for kind in ("sync", "recover"):
            expected = "failed" if (index, kind) == (settings.rejected, "sync") else "success"
            assert states[task_of(settings, index, kind)] == expected, (conn_id, kind, states)
    assert (states[("report", -1)], states[(VERDICT, -1)]) == ("success", "upstream_failed")
    # No Airflow retry anywhere: one try per sync, two for the cleared outage one.
    sync_tries = {
        ti["rendered_map_index"]: ti["try_number"] for ti in observed.instances if ti["task_id"].endswith(".sync")
    }
    assert sync_tries == {c: 2 if c == outage else 1 for c in credentials}

    # Every credential named in the UI by its connection id, in its shard, all N of them.
    for shard in range(1, settings.shards + 1):
        named = [ti["rendered_map_index"] for ti in observed.instances if ti["task_id"] == f"{group_id(shard)}.sync"]
        start = (shard - 1) * settings.max_map_length
        assert sorted(named) == sorted(credentials[start : start + settings.max_map_length]), shard

    # The data: every credential but the rejected one equals the truth, the healed outage one included.
    found = audits(cluster)
    wrong = {conn_id: result for conn_id, result in found.items() if conn_id != rejected and not is_exact(result)}
    assert not wrong, wrong
    assert found[rejected].in_warehouse == 0

    # One token per credential: the sandbox issued one to each but the rejected one, whose single token
    # request was refused (invalid_client: no retry, the task fails at once); every renewal was counted once.
    assert stats["token_requests_issued"] == settings.tenants - 1, stats
    assert stats["token_requests_total"] == settings.tenants, stats
    assert observed.renewals == {(c,): 1 for c in credentials if c != rejected}

    # One alert per incident, whichever worker saw it: the opened breaker (then its all-clear) and the
    # rejected secret; none for anybody else.
    assert alert_titles(session, outage) == ["Circuit breaker opened", "Resolved"]
    assert alert_titles(session, rejected) == ["Credential needs attention"]
    assert len(session.alerts.texts) == 3, session.alerts.texts
    assert not any(WRONG_SECRET in text for text in session.alerts.texts)

    # Each transition of the outage breaker once across workers, as the metrics counted them; no other breaker moved.
    assert observed.transitions == {
        (outage, "closed", "open"): 1,
        (outage, "open", "half_open"): 1,
        (outage, "half_open", "closed"): 1,
    }

    # ServiceTitan's 60 requests/s per tenant was never exceeded by our own traffic.
    assert stats["responses_429"] == 0, stats["requests_by_status"]
    # The work was spread over the Celery workers.
    assert all(count > 0 for count in observed.tasks_per_worker.values()), observed.tasks_per_worker

    clear_one_credential_of_the_last_shard(cluster, observed.run_id)


def clear_one_credential_of_the_last_shard(cluster: ScaleCluster, run_id: str) -> None:
    """A person clears one healthy credential's ``sync`` in the last shard: it alone runs again, and succeeds."""
    settings, rest = cluster.settings, cluster.session.rest
    conn_id = cluster.session.credentials[settings.cleared]
    sync, recover = (task_of(settings, settings.cleared, kind) for kind in ("sync", "recover"))
    before = tries(rest.task_instances(DAG_ID, run_id))

    cleared = rest.clear(DAG_ID, run_id, [sync], only_failed=False)
    assert {(ti["task_id"], ti["map_index"]) for ti in cleared} == {sync, recover, ("report", -1), (VERDICT, -1)}
    assert rest.wait_for_run(DAG_ID, run_id, timeout=settings.timeout()) == "failed"  # the rejected one still is

    instances = rest.task_instances(DAG_ID, run_id)
    after = tries(instances)
    # Only that credential's chain and the report ran again (the verdict, upstream_failed, never runs).
    again = {task for task in after if after[task] != before[task]}
    assert again == {sync, recover, ("report", -1)}
    assert all(after[task] == before[task] + 1 for task in again)
    states = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["rendered_map_index"]) for ti in instances}
    assert states[sync] == states[recover] == ("success", conn_id)
    assert states[(VERDICT, -1)][0] == "upstream_failed"
    assert cluster.session.matches_truth(settings.cleared), cluster.session.audit(settings.cleared)
    cluster.report(f"scale: cleared {conn_id} ({sync[0]}[{sync[1]}]) ran again alone and succeeded")
