"""An example downstream DAG: runs after each ``servicetitan_sync`` task that synced its resources.

A sync that found nothing new still announces its resources (the data is current as of that run):
the events' ``extra`` says how many records arrived, 0 included, so a task can skip work on 0.

Every resource a sync task synced is an Airflow asset event ``servicetitan://<connection id>/<resource>``
emitted through the asset alias ``servicetitan``, with the run's counts in its ``extra``
(``records_successful``, ``pages``, ...). Scheduling on the alias runs this DAG after any of
them; schedule on one asset instead to wait for one credential's resource, e.g.
``schedule=synced_asset("servicetitan_acme", "jobs")``.

Copy it next to ``servicetitan_sync.py`` and replace the task with your own transformation.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, AssetAlias, task

from airflow_provider_servicetitan.operators.sync import SERVICETITAN_ASSET_ALIAS

ALIAS = AssetAlias(name=SERVICETITAN_ASSET_ALIAS)

with DAG(
    dag_id="servicetitan_downstream_example",
    schedule=ALIAS,
    catchup=False,
    tags=["servicetitan", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def fresh_data(triggering_asset_events: Any) -> dict[str, int]:
        """What arrived: records synced by asset (credential and resource), from the events' extra."""
        synced: dict[str, int] = {}
        for event in triggering_asset_events[ALIAS]:
            synced[event.asset.uri] = synced.get(event.asset.uri, 0) + int(event.extra.get("records_successful", 0))
        print(f"Fresh ServiceTitan data: {synced}")
        return synced

    fresh_data()
