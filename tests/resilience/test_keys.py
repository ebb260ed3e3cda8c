"""require_key_part: the one rule for names and namespaces inside Redis keys."""

from __future__ import annotations

import pytest

from airflow_provider_servicetitan.notifications.dedup import AlertDeduplicator
from airflow_provider_servicetitan.resilience.keys import require_key_part


@pytest.mark.parametrize("value", ["servicetitan", "tenant-42/prod", "a.b:c_d@e", "x" * 200])
def test_safe_names_are_accepted(value: str) -> None:
    require_key_part(value, "namespace")


@pytest.mark.parametrize("value", ["", "has space", "brace{", "x" * 201, "tab\t"])
def test_unsafe_names_are_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ValueError, match=r"^namespace must match .* got "):
        require_key_part(value, "namespace")


def test_alert_dedup_uses_the_rule() -> None:
    with pytest.raises(ValueError, match=r"^namespace must match"):
        AlertDeduplicator(None, namespace="has space")
