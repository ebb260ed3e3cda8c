"""A crash in native code fails the task; it must not hang the worker slot.

Airflow 3.3 parses the DAG file inside the task process with ``python_importer``, which installs a
Python-level ``SIGSEGV`` handler (to report a DAG file that crashes the parser) and never removes
it. With a Python handler, a segmentation fault in native code (a database driver, a C extension)
returns to the faulting instruction, which faults again, forever: the thread spins holding the GIL,
so no timeout can fire, the supervisor keeps heart-beating for it, and the task holds its slot until
someone kills it. Seen once in about 250 sync tasks under Celery (``make scale``): a resource thread
faulted in SQLAlchemy's compiled cache-key code while two others connected to PostgreSQL.

:func:`die_on_native_crash` restores the default action of the fatal signals and lets
``faulthandler`` print every thread's stack first (into the task log). The process then dies, the
supervisor reports the signal, the try fails, and Airflow's retry resumes the sync from its
checkpoints: nothing is lost, and the crash is visible.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading

__all__ = ["FATAL_SIGNALS", "die_on_native_crash"]

log = logging.getLogger(__name__)

FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)
"""The signals ``faulthandler`` handles: each must end the process, after the stacks are printed."""


def die_on_native_crash() -> None:
    """Make a native crash end this process (stacks printed to stderr) instead of spinning forever.

    Only the main thread may change signal handlers; elsewhere (a thread of a test) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for fatal in FATAL_SIGNALS:
        if callable(signal.getsignal(fatal)):
            signal.signal(fatal, signal.SIG_DFL)
    # faulthandler chains to the handler it replaces, now the default action: print, then die.
    for stream in (sys.stderr, sys.__stderr__):
        if stream is None:
            continue
        try:
            faulthandler.enable(file=stream, all_threads=True)
            return
        except (AttributeError, ValueError, OSError):  # no file descriptor behind this stream
            continue
    log.warning("faulthandler could not be enabled: a native crash will end the task without its stacks")
