"""A native crash in a sync thread ends the task process with its stacks; it never spins forever.

Each case runs in a child process: it installs a Python ``SIGSEGV`` handler as Airflow's DAG importer
does in a task process, then faults in a thread (``ctypes.string_at(0)``), as a driver would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import ctypes, signal, threading

    # What airflow.dag_processing.importers.python_importer leaves behind in a task process.
    signal.signal(signal.SIGSEGV, lambda signum, frame: None)
    signal.signal(signal.SIGBUS, lambda signum, frame: None)

    from airflow_provider_servicetitan.operators.crash import die_on_native_crash

    die_on_native_crash()

    def resource_thread():
        ctypes.string_at(0)

    worker = threading.Thread(target=resource_thread)
    worker.start()
    worker.join()
    print("survived")
    """
)


def test_a_segfault_in_a_thread_kills_the_process_with_every_stack():
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=False)

    assert child.returncode == -signal.SIGSEGV, (child.returncode, child.stderr[-2000:])
    assert "survived" not in child.stdout
    assert "Fatal Python error: Segmentation fault" in child.stderr
    assert "in resource_thread" in child.stderr
    assert "Current thread" in child.stderr


def test_outside_the_main_thread_nothing_changes():
    from threading import Thread

    from airflow_provider_servicetitan.operators.crash import die_on_native_crash

    def handler(signum, frame):
        return None

    previous = signal.signal(signal.SIGSEGV, handler)
    try:
        worker = Thread(target=die_on_native_crash)
        worker.start()
        worker.join()
        assert signal.getsignal(signal.SIGSEGV) is handler
    finally:
        signal.signal(signal.SIGSEGV, previous)


@pytest.mark.parametrize("untouched", [signal.SIG_IGN, signal.SIG_DFL])
def test_a_handler_that_is_not_python_is_left_alone(untouched):
    from airflow_provider_servicetitan.operators.crash import die_on_native_crash

    previous = signal.signal(signal.SIGFPE, untouched)
    try:
        die_on_native_crash()
        assert signal.getsignal(signal.SIGFPE) == untouched
    finally:
        signal.signal(signal.SIGFPE, previous)
