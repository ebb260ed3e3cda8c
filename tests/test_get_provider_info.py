"""The provider registers with Airflow: metadata valid, listed by the CLI, connection form declared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema

from airflow_provider_servicetitan.get_provider_info import get_provider_info

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_cli(*args: str) -> str:
    result = subprocess.run(
        [AIRFLOW, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_provider_info_matches_airflow_schema():
    schema = json.loads(resources.files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_entry_point_is_registered():
    found = [ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_provider_")]
    assert [ep.load() for ep in found] == [get_provider_info]


def test_connection_form_declares_every_field():
    (conn_type,) = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"]
    assert conn_type["connection-type"] == "servicetitan"
    assert set(fields) == {
        "app_key",
        "tenant_id",
        "environment",
        "auth_url",
        "api_url",
        "rate_limit_per_second",
        "token_rate_limit_per_second",
    }
    assert fields["rate_limit_per_second"]["schema"]["type"] == ["number", "null"]
    assert fields["app_key"]["schema"]["format"] == "password"
    assert fields["environment"]["schema"]["enum"] == ["production", "integration"]
    assert conn_type["ui-field-behaviour"]["relabeling"] == {"login": "Client ID", "password": "Client secret"}


def test_airflow_cli_lists_provider_and_connection_type():
    providers = json.loads(airflow_cli("providers", "list", "--output", "json"))
    assert "airflow-provider-servicetitan" in {p["package_name"] for p in providers}

    hooks = json.loads(airflow_cli("providers", "hooks", "--output", "json"))
    ours = [h for h in hooks if h["connection_type"] == "servicetitan"]
    assert len(ours) == 1
    assert ours[0]["class"] == "airflow_provider_servicetitan.hooks.servicetitan.ServiceTitanHook"
    assert ours[0]["package_name"] == "airflow-provider-servicetitan"
    assert ours[0]["conn_id_attribute_name"] == "servicetitan_conn_id"


def test_the_config_section_is_declared_with_its_defaults():
    options = get_provider_info()["config"]["servicetitan"]["options"]
    assert {name: option["default"] for name, option in options.items()} == {
        "redis_conn_id": "redis_default",
        "redis_namespace": "servicetitan",
    }


def test_airflow_reads_the_config_section_from_its_defaults_and_the_environment(monkeypatch):
    monkeypatch.delenv("AIRFLOW__SERVICETITAN__REDIS_NAMESPACE", raising=False)
    assert airflow_cli("config", "get-value", "servicetitan", "redis_namespace").strip() == "servicetitan"
    assert airflow_cli("config", "get-value", "servicetitan", "redis_conn_id").strip() == "redis_default"

    monkeypatch.setenv("AIRFLOW__SERVICETITAN__REDIS_NAMESPACE", "servicetitan_prod")
    assert airflow_cli("config", "get-value", "servicetitan", "redis_namespace").strip() == "servicetitan_prod"


def test_airflow_cli_lists_the_breaker_trigger():
    triggers = json.loads(airflow_cli("providers", "triggers", "--output", "json"))
    ours = [t for t in triggers if t["package_name"] == "airflow-provider-servicetitan"]
    assert [t["class"] for t in ours] == ["airflow_provider_servicetitan.triggers.breaker"]
