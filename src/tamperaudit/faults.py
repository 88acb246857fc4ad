"""Fault injection for the resume tests: kill this process with SIGKILL at a named point.

Set ``TAMPERAUDIT_FAULT`` to a point name (``train-step-3``: inside optimizer
step 3, after its backward pass and before the weights change;
``eval-budget-000004``: inside that budget's eval, after its first eval;
``report``: before the report is written). ``TAMPERAUDIT_FAULT_SIGNAL`` picks
another signal (``TERM``, ``INT``) to test the graceful paths;
``TAMPERAUDIT_FAULT_PROCESS`` limits it to one of the processes ``accelerate launch``
started (its RANK). Unset, this costs
one dictionary lookup. It exists so that tests can interrupt a run exactly where
a user's machine might, with no timing guesswork.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "TAMPERAUDIT_FAULT"
SIGNAL_VARIABLE = "TAMPERAUDIT_FAULT_SIGNAL"
PROCESS_VARIABLE = "TAMPERAUDIT_FAULT_PROCESS"


def checkpoint(point: str) -> None:
    if os.environ.get(VARIABLE) != point:
        return
    process = os.environ.get(PROCESS_VARIABLE)
    if process is None or process == os.environ.get("RANK", "0"):
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get(SIGNAL_VARIABLE, 'KILL')}"))
