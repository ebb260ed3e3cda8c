"""Airflow triggers: waits that run in the triggerer instead of holding a worker slot."""
