"""The DAG tests reuse the Airflow, warehouse, Redis and sandbox fixtures of the operator tests."""

from tests.notifications.conftest import webhook
from tests.operators.conftest import operator_env, warehouse

__all__ = ["operator_env", "warehouse", "webhook"]
