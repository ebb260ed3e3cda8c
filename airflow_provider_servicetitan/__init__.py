"""Apache Airflow provider for ServiceTitan: resilient, checkpointed sync of many credentials."""

__version__ = "0.1.0"
