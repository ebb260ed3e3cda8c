"""The CeleryExecutor scale test (issue 15): ``make scale``, marker ``scale``."""
