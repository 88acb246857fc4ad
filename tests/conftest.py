"""Shared fixtures: a tiny random chat model built in the test (no download)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tamperaudit.testing import TINY_AUDIT_SETTINGS, build_tiny_model

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"

# Under pytest-xdist every core runs a worker: one thread each (and in the processes they
# start), or the workers' thread pools fight over the cores (measured: 390 s with two threads
# per worker on 2 cores, 243 s with one).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

def adapters_in(run: Path) -> list[str]:
    """The stages of a run folder that hold a LoRA adapter on disk."""
    return sorted(p.parent.relative_to(run).as_posix() for p in run.rglob("adapter"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TAMPERAUDIT_CACHE", str(cache))
    return cache


# Settings that make an audit of the tiny model take seconds.
TINY_SETTINGS = [*TINY_AUDIT_SETTINGS, "--set", "model.precision=float32"]


SHARED_REASON = "../shared/benchmarks is not present"


def requires_shared() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not SHARED_BENCHMARKS.is_dir(), reason=SHARED_REASON)


# CI sets TAMPERAUDIT_FAIL_ON_SKIP=1 where ../shared exists (see .ci/run): there, every test
# is expected to run, so a skip (a benchmark file or a model package gone missing) fails
# the session instead of passing silently. A bare checkout still skips, with the reason.
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


_VLLM_DESELECTED: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real-model tests first, so that under pytest-xdist one worker starts on them (the
    longest file) while the others take the rest. The vLLM tests run in the vLLM environment
    (README): where vLLM is not installed they are deselected, and the summary says so,
    instead of each one skipping."""
    import importlib.util

    items.sort(key=lambda item: item.get_closest_marker("realmodel") is None)  # stable: the rest keep their order
    if importlib.util.find_spec("vllm") is not None:
        return
    keep = [item for item in items if item.get_closest_marker("vllm") is None]
    _VLLM_DESELECTED[:] = [item.nodeid for item in items if item.get_closest_marker("vllm") is not None]
    if _VLLM_DESELECTED:
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("vllm") is not None])
        items[:] = keep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _VLLM_DESELECTED:
        terminalreporter.write_line(f"{len(_VLLM_DESELECTED)} vLLM tests deselected: vLLM is not installed here; "
                                    "they run in the vLLM environment (README, 'Generation through vLLM')")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("TAMPERAUDIT_FAIL_ON_SKIP") == "1" and _skipped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"TAMPERAUDIT_FAIL_ON_SKIP: {len(_skipped)} test(s) skipped: {', '.join(_skipped[:5])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_fault_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TAMPERAUDIT_FAULT", "TAMPERAUDIT_FAULT_SIGNAL", "TAMPERAUDIT_FAULT_PROCESS"):
        monkeypatch.delenv(name, raising=False)
        os.environ.pop(name, None)


# Every report.json the tests write, in this process or in the processes it starts, is checked
# against the shipped JSON Schema when the session ends (tests/test_schema.py checks that the
# schema is the one the records generate, and that it rejects a changed report).
@pytest.fixture(scope="session", autouse=True)
def _every_written_report_fits_the_schema(tmp_path_factory: pytest.TempPathFactory):
    yield
    import json

    import jsonschema

    from tamperaudit.report.schema import SCHEMA_FILE

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    failures = []
    # Reports in run folders (a manifest beside them): stand-ins that tests write by hand for
    # other versions or other tools have no manifest.
    for path in sorted(tmp_path_factory.getbasetemp().rglob("report.json")):
        if not (path.parent / "manifest.json").is_file():
            continue
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue  # a test that damages a report on purpose
        error = next(iter(validator.iter_errors(report)), None)
        if error is not None:
            failures.append(f"{path}: {error.json_path}: {error.message[:200]}")
    assert not failures, "reports that do not fit report.schema.json:\n" + "\n".join(failures)
