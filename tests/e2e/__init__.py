"""End-to-end tests: the provider's DAG run by real Airflow services (api-server, scheduler, ...)."""
