"""The Airflow UI page and JSON API of credential and breaker health (the ``servicetitan`` plugin).

Modules: :mod:`.health` (Airflow-free reads: one Redis round trip per 100 credentials, bounded SQL),
:mod:`.handled` (a dead letter closed by a person, with a note), :mod:`.sources` (Airflow:
which credentials, their breakers and token keys, the latest task of each, audit log, triggering
the DAG), :mod:`.api` (the FastAPI app), :mod:`.page` (the HTML page) and :mod:`.plugin`
(the ``AirflowPlugin``). See ``docs/health-page.md``.
"""
