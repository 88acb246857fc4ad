"""Atomic writes and hashing: a file is either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from tamperaudit.errors import DamagedFile, WriteError
from tamperaudit.jsonrecord import RecordError, load


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename.

    A failed write (disk full, quota, read-only folder) leaves the previous file, if any,
    as it was, removes the temporary one, and ends in a ``WriteError`` naming ``path``.
    """
    path = Path(path)
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            raise WriteError(f"could not write {path} ({reason}); the previous version, if any, is unchanged") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, jsonl_text(rows))


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DamagedFile(f"{path} is not valid JSON ({error.msg}): it was cut or changed after it was written") from None
    except UnicodeDecodeError:
        raise DamagedFile(f"{path} is not UTF-8 text: it was cut or changed after it was written") from None


def read_text(path: Path) -> str:
    """A file tamperaudit wrote as UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DamagedFile(f"{path} is not UTF-8 text: the file was cut or changed after it was written") from None


def parse_jsonl(text: str, path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file's text; ``path`` names the file in the error."""
    rows = []
    # split on newlines only: str.splitlines would also cut at U+2028 and the like, which
    # json.dumps(ensure_ascii=False) leaves raw inside strings
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DamagedFile(
                    f"{path} line {number} is not valid JSON ({error.msg}): the file was cut or changed after it was written"
                ) from None
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return parse_jsonl(read_text(path), path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_record(path: Path, kind: Any) -> Any:
    """A JSON file read as a record type (or a union of them), every field checked: the one
    way tamperaudit reads back what it wrote. A file that does not fit is named in one line."""
    return _as_record(read_json(path), kind, path)


def parse_records(text: str, path: Path, kind: Any) -> list[Any]:
    """The lines of a JSONL file's text, each read as ``kind``."""
    return [_as_record(row, kind, path, f" line {number}") for number, row in enumerate(parse_jsonl(text, path), start=1)]


def _as_record(value: Any, kind: Any, path: Path, line: str = "") -> Any:
    try:
        return load(kind, value)
    except RecordError as error:
        raise DamagedFile(
            f"{path}{line} does not hold what tamperaudit writes there ({error}): it was changed, or written by "
            "another version"
        ) from None
