"""The DAG tests reuse the Airflow, warehouse, Redis and sandbox fixtures of the operator tests."""

from tests.notifications.conftest import webhook
from tests.operators.conftest import airflow_db, operator_env, redis_connection, warehouse

__all__ = ["airflow_db", "operator_env", "redis_connection", "warehouse", "webhook"]
