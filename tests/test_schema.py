"""report.json's contract: the JSON Schema shipped beside the code is the one the records
generate, it and the reader reject a changed report, and every report the tests write fits it
(checked when the session ends, in conftest.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import TINY_SETTINGS
from tamperaudit.cli import main
from tamperaudit.errors import DamagedFile
from tamperaudit.records import SCHEMA_VERSION, IncompleteReport, Report
from tamperaudit.report.schema import SCHEMA_FILE, read_report, report_schema, schema_text


def test_the_shipped_schema_is_the_one_the_records_generate():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), "run python -m tamperaudit.report.schema"
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    # every field says what it means, so the schema documents the format
    for name, definition in schema["$defs"].items():
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


@pytest.fixture(scope="module")
def written(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("schema") / "run"
    assert main(["audit", "--model", str(tiny_model_dir), "--out", str(out), "--budgets", "0,1", "--no-control", "--quiet",
                 *TINY_SETTINGS]) == 0
    return out / "report.json"


def _damaged(report: dict, change: str) -> dict:
    damaged = json.loads(json.dumps(report))
    if change == "wrong-type":
        damaged["points"][0]["metrics"]["harmful"]["plain"]["refused"]["rate"] = "half"
    elif change == "unknown-key":
        damaged["points"][0]["metrics"]["extra"] = 1
    elif change == "missing-key":
        del damaged["score"]["plain"]["status"]
    elif change == "bad-verdict-status":
        damaged["score"]["plain"]["status"] = "maybe"
    elif change == "complete-with-error":
        damaged["error"] = "something"
    return damaged


@pytest.mark.parametrize("change", ["wrong-type", "unknown-key", "missing-key", "bad-verdict-status", "complete-with-error"])
def test_a_changed_report_fails_the_schema_and_the_reader(written, tmp_path, change):
    report = json.loads(written.read_text())
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert not list(validator.iter_errors(report))
    assert isinstance(read_report(written), Report)
    damaged = tmp_path / "damaged.json"  # not report.json: the session's check skips it
    damaged.write_text(json.dumps(_damaged(report, change)))
    assert list(validator.iter_errors(json.loads(damaged.read_text())))
    with pytest.raises(DamagedFile, match=str(damaged)):
        read_report(damaged)


def test_the_reader_round_trips_a_written_report_byte_for_byte(written):
    report = read_report(written)
    assert json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n" == written.read_text()


def test_another_schema_version_is_named_in_one_line(written, tmp_path):
    report = json.loads(written.read_text())
    report["schema_version"] = SCHEMA_VERSION - 1
    old = tmp_path / "old.json"
    old.write_text(json.dumps(report))
    with pytest.raises(DamagedFile, match=f"has report schema {SCHEMA_VERSION - 1}.*reads schema {SCHEMA_VERSION}"):
        read_report(old)


def test_an_incomplete_report_is_read_as_one(tiny_model_dir, tmp_path, monkeypatch):
    from tamperaudit import pipeline

    original = pipeline.evaluate

    def interrupted(ctx, model, name, *args, **kwargs):
        if name == "budget-000001":
            raise KeyboardInterrupt
        return original(ctx, model, name, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate", interrupted)
    out = tmp_path / "run"
    assert main(["audit", "--model", str(tiny_model_dir), "--out", str(out), "--budgets", "0,1", "--no-control", "--quiet",
                 *TINY_SETTINGS]) == 130
    report = read_report(out / "report.json")
    assert isinstance(report, IncompleteReport) and report.status == "interrupted"
    assert "budget-000001" in report.stopped_in and report.hashes.precision == "float32"
