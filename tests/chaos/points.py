"""Deterministic moments to break things at: right after the n-th export page arrived, or right
before the n-th page is stored."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import requests

from airflow_provider_servicetitan.client.client import ServiceTitanClient
from airflow_provider_servicetitan.storage.store import SyncStore


def at_export_pages(client: ServiceTitanClient, actions: Mapping[int, Callable[[], object]]) -> None:
    """Run ``actions[n]`` when the n-th export page (counted over the client's life) has arrived and
    before the sync stores it: the chaos lands between fetching a page and committing it.

    A ``requests`` response hook on the client's own session: the client and the engine run unchanged.
    """
    pages = 0

    def on_response(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        nonlocal pages
        if response.status_code == 200 and "/export/" in response.url:
            pages += 1
            action = actions.get(pages)
            if action is not None:
                action()

    client.session.hooks["response"].append(on_response)


def before_commits(store: SyncStore, actions: Mapping[int, Callable[[], object]]) -> None:
    """Run ``actions[n]`` right before the store commits its n-th page (counted over the store's
    life, failed commits included): the chaos lands between fetching a page and storing it, in
    the thread that stores it, however far ahead of the commits the sync fetches.
    """
    commits = 0
    commit_page = store.commit_page

    def commit_after_the_action(**page: Any) -> None:
        nonlocal commits
        commits += 1
        action = actions.get(commits)
        if action is not None:
            action()
        commit_page(**page)

    store.commit_page = commit_after_the_action  # type: ignore[method-assign]
