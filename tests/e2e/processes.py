"""Processes of the e2e harness: each in its own process group, logging to a file, always stopped.

Airflow services fork (LocalExecutor workers, task supervisors, uvicorn workers): stopping only the
parent would leave children behind, so a whole group gets SIGTERM, then SIGKILL after a deadline.
The services are started by ``scripts/demo_airflow.py`` (:data:`demo_airflow`), which ``make demo``
uses too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers import load_script

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
process_groups = load_script(SCRIPTS / "process_groups.py", "process_groups")
# After process_groups: demo_airflow imports it by that name.
demo_airflow = load_script(SCRIPTS / "demo_airflow.py", "demo_airflow")


class ServiceProcess:
    """One started service: ``name``, its log file and its process (the leader of its own group)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.log = log
        self.process = process
        self.pgid = process.pid

    def alive(self) -> bool:
        """Whether the service's main process still runs."""
        return self.process.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the service, SIGKILL whatever of it (task process groups included) still runs after
        ``grace`` seconds (``scripts/process_groups.py``, which the demo uses too)."""
        process_groups.stop_process_tree(self.process, grace=grace)

    def tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - 200 * lines))
        text = file.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
