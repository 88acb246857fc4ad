"""`tamperaudit ...` in a process of its own, forked from a warm server instead of started afresh.

Tests that kill an audit (SIGKILL at a fault point) or signal it need it in another process.
A fresh `python -m tamperaudit` spends seconds importing torch and transformers before it does
anything; here a multiprocessing fork server imports them once per test session, and each run
is a fork of it: the same `main(argv)` in a new process, killed, interrupted or exiting as a
started one would. The server never computes anything (no OpenMP threads exist when it forks),
so its children start clean.

Only environment variables read while running reach a child (TAMPERAUDIT_FAULT*,
TAMPERAUDIT_CACHE); modules read others when they are imported, once, in the server.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PRELOAD = ["processes", "tamperaudit.cli", "tamperaudit.pipeline", "tamperaudit.attack", "peft", "transformers"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


@dataclass
class Finished:
    returncode: int  # the exit code, or minus the signal that ended it (-9: SIGKILL)
    stderr: str


def _main(argv: list[str], env: dict[str, str], output: str) -> None:
    # A shell that starts pytest in the background leaves SIGINT ignored, and a child would
    # inherit that: Ctrl-C raises KeyboardInterrupt, as in a Python started from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.update(env)
    handle = os.open(output, os.O_WRONLY | os.O_TRUNC)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    from tamperaudit.cli import main

    try:
        code = main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run_tamperaudit(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> Finished:
    """``tamperaudit <argv>`` in a forked process with ``env`` added; its exit code and output."""
    with tempfile.NamedTemporaryFile(prefix="tamperaudit-child-", suffix=".log", delete=False) as log:
        output = Path(log.name)
    try:
        child = _context.Process(target=_main, args=(list(argv), dict(env or {}), str(output)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise TimeoutError(f"tamperaudit {' '.join(argv)} ran past {timeout} s")
        return Finished(child.exitcode, output.read_text(errors="replace"))
    finally:
        output.unlink(missing_ok=True)
