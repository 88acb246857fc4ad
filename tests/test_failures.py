"""Failure paths: every exit leaves a record and no measured adapter; errors a user can cause
end in one line (exit 2, an interrupt 130, SIGTERM 143)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY_SETTINGS, adapters_in
from processes import run_tamperaudit
from tamperaudit import pipeline
from tamperaudit import __version__
from tamperaudit.cli import main
from tamperaudit.fileio import read_json


def audit_args(model_dir: Path, out: Path, budgets: str = "0,1,2", *extra: str) -> list[str]:
    return ["audit", "--model", str(model_dir), "--out", str(out), "--budgets", budgets, "--no-control", "--quiet",
            *TINY_SETTINGS, *extra]


def fail_at(monkeypatch, stage: str, error: BaseException) -> None:
    """Make the eval of one stage raise ``error`` after its generation evals."""
    original = pipeline.evaluate

    def failing(ctx, model, name, label, base, *args):
        if name == stage:
            raise error
        return original(ctx, model, name, label, base, *args)

    monkeypatch.setattr(pipeline, "evaluate", failing)


def test_an_error_writes_a_failure_report_and_deletes_measured_adapters(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fail_at(monkeypatch, "budget-000002", ValueError("boom"))
    with pytest.raises(ValueError):  # a bug is not a user error: its traceback stays
        main(audit_args(tiny_model_dir, out))
    report = read_json(out / "report.json")
    assert report["status"] == "error" and report["error"] == "ValueError: boom"
    assert report["stopped_in"] == ["attack", "budget-000002"]
    manifest = read_json(out / "manifest.json")
    assert manifest["stages"]["budget-000002"]["state"] == "error"
    assert manifest["sessions"][-1]["outcome"] == "error"
    assert adapters_in(out) == ["budget-000002"]  # unmeasured: kept for resume; budget 1 (measured) gone
    assert "did not complete (error in attack, budget-000002)" in (out / "report.md").read_text()
    monkeypatch.undo()
    assert main(["resume", str(out), "--quiet"]) == 0
    assert read_json(out / "report.json")["status"] == "complete" and adapters_in(out) == []


def test_out_of_memory_is_one_line_with_the_batch_size_hint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fail_at(monkeypatch, "baseline", RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert main(audit_args(tiny_model_dir, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lower eval.batch_size" in err
    assert read_json(out / "report.json")["error"].startswith("out of memory; lower eval.batch_size")


def test_ctrl_c_is_recorded_as_interrupted_with_the_resume_hint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fail_at(monkeypatch, "budget-000002", KeyboardInterrupt())
    assert main(audit_args(tiny_model_dir, out)) == 130
    assert capsys.readouterr().err.strip() == f"tamperaudit: interrupted (Ctrl-C); finish it with `tamperaudit resume {out}`"
    report = read_json(out / "report.json")
    assert report["status"] == "interrupted" and report["stopped_in"] == ["attack", "budget-000002"]
    assert adapters_in(out) == ["budget-000002"]


@pytest.mark.slow  # starts processes (see the README's Development section)
@pytest.mark.parametrize("signal_name,code", [("TERM", 143), ("INT", 130)])
def test_a_signal_stops_the_run_at_a_safe_point(tiny_model_dir, tmp_path, signal_name, code):
    out = tmp_path / "run"
    env = {"TAMPERAUDIT_FAULT": "eval-budget-000002", "TAMPERAUDIT_FAULT_SIGNAL": signal_name}
    process = run_tamperaudit(audit_args(tiny_model_dir, out), env)
    assert process.returncode == code, process.stderr[-2000:]
    assert process.stderr.strip().splitlines()[-1].endswith(f"finish it with `tamperaudit resume {out}`")
    report = read_json(out / "report.json")
    assert report["status"] == "interrupted" and "budget-000002" in report["stopped_in"]
    assert adapters_in(out) == ["budget-000002"]


def test_resume_deletes_an_adapter_left_behind_by_a_crash_after_its_measurement(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(audit_args(tiny_model_dir, out, "0,1", "--keep-adapters")) == 0
    kept = out / "budget-000001" / "adapter"
    # the same run as if it had been killed between marking budget 1 done and deleting its adapter
    shutil.copytree(kept, tmp_path / "adapter")
    config = (out / "config.toml").read_text()
    shutil.rmtree(out)
    assert main(audit_args(tiny_model_dir, out, "0,1")) == 0
    shutil.copytree(tmp_path / "adapter", out / "budget-000001" / "adapter")
    (out / "budget-000001" / ".adapter.staging").mkdir()  # and a half-written one
    assert "keep_adapters = false" in (out / "config.toml").read_text() and "keep_adapters = true" in config
    assert main(["resume", str(out), "--quiet"]) == 0
    assert adapters_in(out) == [] and not (out / "budget-000001" / ".adapter.staging").exists()


def test_resume_refuses_other_kinds_of_run_versions_and_judges(tiny_model_dir, tmp_path, capsys):
    evaluated = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(evaluated), "--quiet", *TINY_SETTINGS]) == 0
    capsys.readouterr()
    assert main(["resume", str(evaluated)]) == 2
    assert "holds a tamperaudit eval run, not an audit" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(audit_args(tiny_model_dir, out, "0,1")) == 0
    manifest_path = out / "manifest.json"
    original = manifest_path.read_text()
    manifest = json.loads(original)
    manifest["tool_version"] = "0.0.1"
    manifest_path.write_text(json.dumps(manifest))
    assert main(["resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "was started by tamperaudit 0.0.1" in err and len(err.splitlines()) == 1
    manifest = json.loads(original)
    manifest["inputs"]["judge"]["rules_sha256"] = "0" * 64  # the keyword judge's rules changed since
    manifest_path.write_text(json.dumps(manifest))
    assert main(["resume", str(out)]) == 2
    assert "'judge' changed since this run began" in capsys.readouterr().err


def test_compare_refuses_incomplete_runs_and_other_versions(tiny_model_dir, tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(audit_args(tiny_model_dir, a, "0,1")) == 0
    assert main(audit_args(tiny_model_dir, b, "0,1")) == 0
    report = read_json(b / "report.json")
    report["tool"]["version"] = "0.0.1"
    (b / "report.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 2
    assert f"tamperaudit versions differ ({__version__} vs 0.0.1)" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--force"]) == 0
    c = tmp_path / "c"
    fail_at(monkeypatch, "budget-000001", KeyboardInterrupt())
    assert main(audit_args(tiny_model_dir, c, "0,1")) == 130
    capsys.readouterr()
    assert main(["compare", str(a), str(c), "--force"]) == 2
    assert "did not complete (interrupted" in capsys.readouterr().err


def test_interrupt_hints_fit_the_command(tiny_model_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(audit_args(tiny_model_dir, run, "0")) == 0
    labels = tmp_path / "labels.jsonl"

    def interrupted(prompt):
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", interrupted)
    capsys.readouterr()
    assert main(["label", str(run), "--out", str(labels)]) == 130
    err = capsys.readouterr().err
    assert "labels given so far are saved in" in err and "resume" not in err
    fail_at(monkeypatch, "eval", KeyboardInterrupt())
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--quiet", *TINY_SETTINGS]) == 130
    err = capsys.readouterr().err
    assert "run `tamperaudit eval` again with another --out" in err and "resume" not in err
