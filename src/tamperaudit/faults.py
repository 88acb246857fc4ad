"""Fault injection for the resume tests: kill this process with SIGKILL at a named point.

Set ``TAMPERAUDIT_FAULT`` to a point name; the process is killed the first time it
passes that point. The points (``tests/test_faults.py`` drives every one):

- ``generation``, ``multiple-choice``, ``kl-references``, ``kl``: inside that kind of
  eval, after its first batch (the first stage that runs one);
- ``eval-STAGE``: inside STAGE's eval, after its generation evals;
- ``write-STAGE``: between STAGE's samples.jsonl and its metrics.json;
- ``running-STAGE``, ``done-STAGE``: just after the manifest marks STAGE so;
- ``train-step-N``: inside optimizer step N, after its backward pass, before the
  weights change; ``after-step-N``: after step N, before the next;
- ``search-trained``: a search candidate trained, not yet measured;
- ``search-asked-N``: the TPE search's study just asked its N-th trial (N-1 finished);
- ``report``: before the report is written.

``TAMPERAUDIT_FAULT_SIGNAL`` picks another signal (``TERM``, ``INT``) to test the
graceful paths; ``TAMPERAUDIT_FAULT_PROCESS`` limits it to one of the processes
``accelerate launch`` started (its RANK). Unset, this costs one dictionary lookup. It
exists so that tests can interrupt a run exactly where a user's machine might, with no
timing guesswork.
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
