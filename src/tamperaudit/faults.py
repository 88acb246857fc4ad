"""Fault injection for the resume tests: kill this process with SIGKILL at a named point.

Set ``TAMPERAUDIT_FAULT`` to a point name (``train-step-3``: inside optimizer
step 3, after its backward pass and before the weights change;
``eval-budget-000004``: inside that budget's eval, after its first eval;
``report``: before the report is written). ``TAMPERAUDIT_FAULT_SIGNAL`` picks
another signal (``TERM``, ``INT``) to test the graceful paths. Unset, this costs
one dictionary lookup. It exists so that tests can interrupt a run exactly where
a user's machine might, with no timing guesswork.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "TAMPERAUDIT_FAULT"
SIGNAL_VARIABLE = "TAMPERAUDIT_FAULT_SIGNAL"


def checkpoint(point: str) -> None:
    if os.environ.get(VARIABLE) == point:
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get(SIGNAL_VARIABLE, 'KILL')}"))
