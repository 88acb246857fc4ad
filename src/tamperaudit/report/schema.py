"""report.json's contract: the report records of ``tamperaudit.records``, the JSON Schema
generated from them, and the one reader every consumer of a report uses.

The schema ships beside this file as ``report.schema.json`` (with each field's meaning as
its description), so that programs in other languages can check a report without
tamperaudit; ``python -m tamperaudit.report.schema`` writes it again from the types after
a change, and a test fails while the shipped file and the types disagree.

``read_report`` reads a complete report as ``Report`` and a failed or interrupted run's as
``IncompleteReport``, every field checked; a report of another schema version, or one
that was changed by hand, ends in one line naming the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tamperaudit import __version__
from tamperaudit.errors import DamagedFile
from tamperaudit.fileio import read_json, read_record
from tamperaudit.jsonrecord import json_schema
from tamperaudit.records import SCHEMA_VERSION, AnyReport

SCHEMA_FILE = Path(__file__).with_name("report.schema.json")


def report_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, complete or not, generated from the records."""
    return json_schema(AnyReport, "tamperaudit report.json", SCHEMA_VERSION)


def schema_text() -> str:
    return json.dumps(report_schema(), indent=2, ensure_ascii=False) + "\n"


def read_report(path: Path) -> AnyReport:
    """A report.json, read and checked; its schema version must be this tamperaudit's."""
    raw = read_json(path)
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        tool = raw.get("tool") if isinstance(raw, dict) else None
        writer = f"tamperaudit {tool['version']}" if isinstance(tool, dict) and "version" in tool else "another tamperaudit"
        raise DamagedFile(
            f"{path} has report schema {version}, written by {writer}; this tamperaudit ({__version__}) reads schema "
            f"{SCHEMA_VERSION}: read it with the version that wrote it, or run the audit again with this one"
        )
    return read_record(path, AnyReport)


def main(argv: list[str] | None = None) -> int:
    """Write report.schema.json from the records (``--check``: only say whether it is current)."""
    args = sys.argv[1:] if argv is None else argv
    text = schema_text()
    if "--check" in args:
        current = SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text(encoding="utf-8") == text
        print(f"{SCHEMA_FILE}: {'current' if current else 'out of date; run python -m tamperaudit.report.schema'}")
        return 0 if current else 1
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
