"""ServiceTitanReportOperator: the run's totals in the task log, and the alerts a person needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_servicetitan.hooks.warehouse import DEFAULT_WAREHOUSE_CONN_ID, open_store
from airflow_provider_servicetitan.notifications.alerts import AlertKind
from airflow_provider_servicetitan.notifications.classify import dead_letter_alert
from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier
from airflow_provider_servicetitan.storage.models import CredentialTotals, RunLog


class ServiceTitanReportOperator(BaseOperator):
    """Sum up a run per credential and alert on what needs a person.

    Alerts (deduplicated across workers by the notifier): a credential with more open dead letters
    than ``dead_letter_threshold`` or with any that only a person can resolve, and "resolved" once
    neither holds. Credential rejections and exhausted retries alert from the failing task's
    callback, an opened circuit from the breaker; this task adds the totals.

    :param connections: the credentials of the run (templated; an XCom list works). ``None``, as an
        XCom of a listing task that failed resolves, skips the report: there is no run to sum up, and
        failing (then retrying) would only delay the run's verdict.
    :param warehouse_conn_id: the warehouse the sync wrote to (templated).
    :param notifier: where alerts go; ``None`` only logs.
    :param dead_letter_threshold: open dead letters per credential that call a person.
    :param max_recovery_attempts: the recovery task's ``max_attempts``: a dead letter that failed
        that many times needs a person.

    Returns (XCom) ``{credential: {pages, records_processed, ..., breaker_events, resources,
    credential_status, open_dead_letters, needs_attention, interrupted}}`` (the counters are the sync
    log's, see ``storage.RUN_COUNTERS``): ``needs_attention`` counts the open dead
    letters only a person can resolve (no usable id, or recovery gave up); ``interrupted`` lists
    the earlier runs this run's syncs found left ``running`` by a process that is gone.
    """

    template_fields: Sequence[str] = ("connections", "warehouse_conn_id")

    def __init__(
        self,
        *,
        connections: Sequence[str] | Any,
        warehouse_conn_id: str = DEFAULT_WAREHOUSE_CONN_ID,
        table_prefix: str = "servicetitan",
        notifier: ServiceTitanAlertNotifier | None = None,
        dead_letter_threshold: int = 50,
        max_recovery_attempts: int = 3,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.connections = connections
        self.warehouse_conn_id = warehouse_conn_id
        self.table_prefix = table_prefix
        self.notifier = notifier
        self.dead_letter_threshold = dead_letter_threshold
        self.max_recovery_attempts = max_recovery_attempts

    def execute(self, context: Context) -> dict[str, dict[str, object]]:
        if self.connections is None:
            raise AirflowSkipException("the run's credentials were not listed: nothing to report")
        run_id = str(context["run_id"])
        with open_store(self.warehouse_conn_id, table_prefix=self.table_prefix) as store:
            totals = store.run_totals(
                run_id, max_recovery_attempts=self.max_recovery_attempts, credentials=list(self.connections)
            )
        report = {credential: self._credential_line(line) for credential, line in totals.items()}
        for credential, line in report.items():
            self.log.info("ServiceTitan sync %s for %s: %s", run_id, credential, line)
        return report

    def _credential_line(self, totals: CredentialTotals) -> dict[str, object]:
        """One credential's line of the report; alerts on its dead letters, or resolves that alert."""
        credential = totals.credential
        for row in totals.interrupted:
            self.log.warning("%s: run %s of %s: %s", credential, row.run_id, row.resource, row.message)
        if self.notifier is not None:
            if totals.open_dead_letters > self.dead_letter_threshold or totals.needs_attention:
                alert = dead_letter_alert(credential, totals.open_dead_letters, self.dead_letter_threshold)
                self.notifier.send(alert.with_details(needs_a_person=totals.needs_attention))
            else:
                self.notifier.resolve(credential, [AlertKind.DEAD_LETTERS_OVER_THRESHOLD])
        return {
            **totals.counts.counters(),
            "resources": dict(totals.resources),
            "credential_status": totals.credential_status or "unknown",
            "open_dead_letters": totals.open_dead_letters,
            "needs_attention": totals.needs_attention,
            "interrupted": [_interrupted_entry(row) for row in totals.interrupted],
        }


def _interrupted_entry(row: RunLog) -> dict[str, str | None]:
    """What the report says about a run found interrupted: JSON-ready, no record data."""
    return {
        "run_id": row.run_id,
        "resource": row.resource,
        "started_at": row.started_at.isoformat(),
        "last_heartbeat": row.heartbeat_at.isoformat() if row.heartbeat_at else None,
        "interrupted_at": row.finished_at.isoformat() if row.finished_at else None,
        "message": row.message,
    }
