"""Errors a user can cause and fix: they end in one clear line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or environment, with the fix in its message."""


class WriteError(UserError):
    """A file could not be written (disk full, read-only, no permission); nothing half-written was kept."""


class DamagedFile(UserError):
    """A file tamperaudit wrote whole was found cut or changed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interruption so that a run stops through the same safe path as Ctrl-C."""


def is_out_of_memory(error: BaseException) -> bool:
    """CPU or GPU memory ran out (PyTorch raises RuntimeError subclasses; Python MemoryError)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text.lower() or "DefaultCPUAllocator: can't allocate memory" in text or "not enough memory" in text
    )


OUT_OF_MEMORY_HINT = (
    "out of memory; lower eval.batch_size (prompts per generation batch, e.g. --set eval.batch_size=32) "
    "or attack.batch_size, or use a smaller model"
)


def one_line(error: BaseException) -> str:
    """What went wrong, on one line, for a user: their error's text, the memory hint, or the exception's type and text."""
    if isinstance(error, Terminated):
        return "terminated (SIGTERM)"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(error, UserError):
        text = str(error)
    elif is_out_of_memory(error):
        text = OUT_OF_MEMORY_HINT
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())
