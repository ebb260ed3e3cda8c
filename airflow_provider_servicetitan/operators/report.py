"""ServiceTitanReportOperator: the run's totals in the task log, and the alerts a person needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_provider_servicetitan.hooks.warehouse import DEFAULT_WAREHOUSE_CONN_ID, open_store
from airflow_provider_servicetitan.notifications.alerts import AlertKind
from airflow_provider_servicetitan.notifications.classify import dead_letter_alert, resolved_alert
from airflow_provider_servicetitan.notifications.notifier import ServiceTitanAlertNotifier

_COUNTS = ("pages", "records_processed", "records_successful", "records_failed", "records_recovered", "retries")


class ServiceTitanReportOperator(BaseOperator):
    """Sum up a run per credential and alert on what needs a person.

    Alerts (deduplicated across workers by the notifier): a credential with more open dead letters
    than ``dead_letter_threshold``, and "resolved" once it is back under it. Credential rejections
    and exhausted retries alert from the failing task's callback, an opened circuit from the
    breaker; this task adds the totals.

    :param connections: the credentials of the run (templated; an XCom list works).
    :param warehouse_conn_id: the warehouse the sync wrote to (templated).
    :param notifier: where alerts go; ``None`` only logs.
    :param dead_letter_threshold: open dead letters per credential that call a person.

    Returns (XCom) ``{credential: {status, pages, records_processed, ..., open_dead_letters}}``.
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
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.connections = connections
        self.warehouse_conn_id = warehouse_conn_id
        self.table_prefix = table_prefix
        self.notifier = notifier
        self.dead_letter_threshold = dead_letter_threshold

    def execute(self, context: Context) -> dict[str, dict[str, object]]:
        run_id = str(context["run_id"])
        store = open_store(self.warehouse_conn_id, table_prefix=self.table_prefix)
        try:
            rows = store.get_run_log(run_id)
            totals: dict[str, dict[str, object]] = {}
            for credential in list(self.connections):
                mine = [row for row in rows if row.credential == credential]
                status = store.get_credential_status(credential)
                open_letters = store.count_unresolved_dead_letters(credential)
                totals[credential] = {
                    **{name: sum(int(getattr(row, name)) for row in mine) for name in _COUNTS},
                    "resources": {row.resource: row.status for row in mine},
                    "credential_status": status.status if status else "unknown",
                    "open_dead_letters": open_letters,
                }
                if self.notifier is None:
                    continue
                if open_letters > self.dead_letter_threshold:
                    self.notifier.send(dead_letter_alert(credential, open_letters, self.dead_letter_threshold))
                else:
                    self.notifier.send(resolved_alert(credential, AlertKind.DEAD_LETTERS_OVER_THRESHOLD))
        finally:
            store.close()
        for credential, line in totals.items():
            self.log.info("ServiceTitan sync %s for %s: %s", run_id, credential, line)
        return totals
