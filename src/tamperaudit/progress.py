"""Progress bars and status lines on standard error; silent in quiet mode."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from tqdm.auto import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def bar(total: int | float | None = None, desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr that stays quiet in quiet mode (and still counts)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=_quiet, file=sys.stderr, dynamic_ncols=True, **kwargs)


def note(message: str) -> None:
    if not _quiet:
        tqdm.write(message, file=sys.stderr)


def warn(message: str) -> None:
    """A line that matters even in quiet mode (where data goes, what could not be written)."""
    tqdm.write(f"tamperaudit: {message}", file=sys.stderr)


@contextlib.contextmanager
def spinner(description: str) -> Iterator[None]:
    """One line before and after a step that has no natural progress count."""
    start = time.perf_counter()
    note(f"{description} ...")
    yield
    note(f"{description}: done in {time.perf_counter() - start:.1f}s")
