"""A small client of Airflow's REST API (``/api/v2``), used the way a person's script or the UI uses it.

Every wait polls with a deadline; when the deadline passes the error says what the run looked like
(task instance states) and what the services logged (``diagnostics``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any

import httpx

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_POLL = 0.5
_PAGE = 100

TaskSelector = str | tuple[str, int]
"""A task id, or (task id, map index) for one mapped instance."""


class AirflowTimeout(AssertionError):
    """A wait reached its deadline; the message holds the run's task states and the services' logs."""


class AirflowRest:
    """Airflow's REST API as one user: ``POST /auth/token`` once, then ``Authorization: Bearer``.

    :param diagnostics: what to add to a timeout message (the tail of the services' logs).
    """

    def __init__(
        self, base_url: str, username: str, password: str, *, diagnostics: Callable[[], str] = lambda: ""
    ) -> None:
        self.base_url = base_url
        self.username = username
        self.diagnostics = diagnostics
        self.http = httpx.Client(base_url=base_url, timeout=30.0)
        token = self.http.post("/auth/token", json={"username": username, "password": password})
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw call (the caller checks the status, e.g. 403 for a viewer)."""
        return self.http.request(method, path, **kwargs)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call that must succeed; returns the decoded JSON (None for an empty answer)."""
        response = self.request(method, path, **kwargs)
        if response.is_error:
            raise AssertionError(f"{method} {path} as {self.username}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else None

    # DAGs and runs
    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/api/v2/dags/{dag_id}")
        if response.status_code == 404:
            return None
        if response.is_error:
            raise AssertionError(f"GET dag {dag_id}: {response.status_code} {response.text[:2000]}")
        dag: dict[str, Any] = response.json()
        return dag

    def import_errors(self) -> list[dict[str, Any]]:
        return self._all("/api/v2/importErrors", "import_errors")

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0, *, filename: str | None = None) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it; an import error of ``filename`` fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            dag = self.get_dag(dag_id)
            if dag is not None:
                return dag
            errors = [e for e in self.import_errors() if filename and str(e.get("filename", "")).endswith(filename)]
            if errors:
                details = "\n".join(f"{e.get('filename')}: {e.get('stack_trace', '')[-3000:]}" for e in errors)
                raise AssertionError(f"DAG {dag_id} not parsed; import errors:\n{details}")
            self._check_deadline(deadline, f"DAG {dag_id} to be parsed")

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, *, run_id: str | None = None) -> str:
        """Trigger a run now (as ``Trigger DAG`` does) and return its run id."""
        body: dict[str, Any] = {"logical_date": datetime.now(UTC).isoformat(), "conf": conf or {}}
        if run_id is not None:
            body["dag_run_id"] = run_id
        run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        return str(run["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        return run

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        states: Collection[str] = TERMINAL_RUN_STATES,
        timeout: float = 300.0,
        fail_on_task_states: Collection[str] = (),
    ) -> str:
        """Poll the run until its state is one of ``states``; return that state.

        :param fail_on_task_states: task instance states that end the wait at once with an error holding
            the failed tries' logs (e.g. ``{"up_for_retry", "failed"}`` when nothing should fail: the
            provider's own retries would otherwise take minutes).
        """
        deadline = time.monotonic() + timeout
        while True:
            state = str(self.dag_run(dag_id, run_id)["state"])
            if state in states:
                return state
            if fail_on_task_states:
                task_states = self.task_states(dag_id, run_id)
                if set(task_states.values()) & set(fail_on_task_states):
                    raise AssertionError(
                        f"run {dag_id}/{run_id} ({state}) has tasks in {sorted(fail_on_task_states)}: "
                        f"{task_states}\n{self.failure_logs(dag_id, run_id)}"
                    )
            self._check_deadline(deadline, f"run {dag_id}/{run_id} to be {sorted(states)} (is {state})", dag_id, run_id)

    # Task instances
    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones one per map index (``map_index`` -1 if not mapped)."""
        return self._all(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances")

    def task_states(self, dag_id: str, run_id: str) -> dict[TaskSelector, str | None]:
        """``task_id`` (or ``(task_id, map_index)`` for a mapped one) -> state."""
        return {_selector(ti): ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def wait_for_task_state(
        self,
        dag_id: str,
        run_id: str,
        task: TaskSelector,
        states: Collection[str],
        *,
        timeout: float = 180.0,
    ) -> dict[str, Any]:
        """Poll until the task instance ``task`` is in one of ``states`` (e.g. ``{"deferred"}``); return it."""
        deadline = time.monotonic() + timeout
        task_id, map_index = (task, -1) if isinstance(task, str) else task
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        if map_index >= 0:
            path += f"/{map_index}"
        while True:
            response = self.request("GET", path)
            if response.status_code != 404:
                if response.is_error:
                    raise AssertionError(f"GET {path}: {response.status_code} {response.text[:2000]}")
                instance: dict[str, Any] = response.json()
                if instance["state"] in states:
                    return instance
            self._check_deadline(deadline, f"{task} of {run_id} to be {sorted(states)}", dag_id, run_id)

    def clear(
        self,
        dag_id: str,
        run_id: str,
        tasks: Iterable[TaskSelector],
        *,
        only_failed: bool = True,
        include_downstream: bool = True,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Clear task instances of one run as the UI's Clear does (not a dry run); return those cleared."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [task if isinstance(task, str) else [task[0], task[1]] for task in tasks],
            "only_failed": only_failed,
            "include_downstream": include_downstream,
            **options,
        }
        cleared = self.call("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", json=body)
        instances: list[dict[str, Any]] = cleared["task_instances"]
        return instances

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, *, map_index: int = -1) -> str:
        """The whole log of one try, one line per log event."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        answer = self.call(
            "GET", path, params={"map_index": map_index, "full_content": True}, headers={"Accept": "application/json"}
        )
        content = answer["content"]
        if isinstance(content, str):
            return content
        return "\n".join(_log_line(item) for item in content)

    def failure_logs(self, dag_id: str, run_id: str, lines: int = 40) -> str:
        """The end of the last try's log of every failed task instance of the run, for a failure message."""
        parts = []
        for ti in self.task_instances(dag_id, run_id):
            if ti["state"] in ("failed", "up_for_retry") and ti["try_number"] > 0:
                log = self.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], map_index=ti["map_index"])
                tail = "\n".join(log.splitlines()[-lines:])
                parts.append(f"--- {ti['task_id']}[{ti['map_index']}] try {ti['try_number']} ---\n{tail}")
        return "\n".join(parts)

    # Connections and variables
    def create_connection(self, connection_id: str, conn_type: str, **fields: Any) -> None:
        """``POST /api/v2/connections``; ``extra`` may be a dict (sent as JSON text, as the UI does)."""
        self.call("POST", "/api/v2/connections", json=connection_body(connection_id, conn_type, **fields))

    def update_connection(self, connection_id: str, conn_type: str, **fields: Any) -> None:
        """``PATCH /api/v2/connections/{id}`` with the whole connection, as the UI's edit form saves it."""
        body = connection_body(connection_id, conn_type, **fields)
        self.call("PATCH", f"/api/v2/connections/{connection_id}", json=body)

    def test_connection(self, connection_id: str, conn_type: str, **fields: Any) -> dict[str, Any]:
        """``POST /api/v2/connections/test``: ``{"status": bool, "message": str}``."""
        result: dict[str, Any] = self.call(
            "POST", "/api/v2/connections/test", json=connection_body(connection_id, conn_type, **fields)
        )
        return result

    def set_variable(self, key: str, value: Any) -> None:
        """Create or update the Variable ``key``; a non-string value is stored as JSON text."""
        body = {"key": key, "value": value if isinstance(value, str) else json.dumps(value)}
        created = self.request("POST", "/api/v2/variables", json=body)
        if created.status_code == 409:
            self.call("PATCH", f"/api/v2/variables/{key}", json=body)
        elif created.is_error:
            raise AssertionError(f"POST variable {key}: {created.status_code} {created.text[:2000]}")

    def _all(self, path: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", path, params={"limit": _PAGE, "offset": len(items)})
            items.extend(page[key])
            if not page[key] or len(items) >= page["total_entries"]:
                return items

    def _check_deadline(self, deadline: float, waiting_for: str, dag_id: str = "", run_id: str = "") -> None:
        if time.monotonic() < deadline:
            time.sleep(_POLL)
            return
        states = ""
        if dag_id and run_id:
            listed = "\n".join(f"  {task}: {state}" for task, state in self.task_states(dag_id, run_id).items())
            states = f"\ntask instances:\n{listed}"
        raise AirflowTimeout(f"timed out waiting for {waiting_for}{states}\n{self.diagnostics()}")


def connection_body(connection_id: str, conn_type: str, **fields: Any) -> dict[str, Any]:
    extra = fields.pop("extra", None)
    body: dict[str, Any] = {"connection_id": connection_id, "conn_type": conn_type, **fields}
    if extra is not None:
        body["extra"] = extra if isinstance(extra, str) else json.dumps(extra)
    return body


def _selector(instance: dict[str, Any]) -> TaskSelector:
    map_index = int(instance.get("map_index", -1))
    return instance["task_id"] if map_index < 0 else (instance["task_id"], map_index)


def _log_line(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    fields = {k: v for k, v in item.items() if k not in ("event", "timestamp")}
    return f"{item.get('timestamp', '')} {item.get('event', '')} {fields if fields else ''}".strip()
