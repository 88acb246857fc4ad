"""The fault table: a run killed (SIGKILL) at every stage boundary and inside every kind of
stage, then resumed, measures what an uninterrupted run measures; a full disk or a damaged
run folder ends in one line naming the file, and nothing half-written is read back.

"Same metrics": every point's metrics, train counts and losses, identical; only times differ.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from conftest import TINY_SETTINGS, adapters_in
from processes import run_tamperaudit
from tamperaudit import fileio
from tamperaudit.cli import main
from tamperaudit.fileio import read_json

BUDGETS = "0,2,4"
SEARCH = ["--search", "--set", "search.learning_rates=0.001,0.01", "--set", "search.lora_ranks=4",
          "--set", "search.batch_sizes=2"]


def audit_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["audit", "--model", str(model_dir), "--out", str(out), "--budgets", BUDGETS, "--no-control", "--quiet",
            *TINY_SETTINGS, *extra]


def measured(root: Path) -> list:
    report = read_json(root / "report.json")
    assert report["status"] == "complete"
    return [
        {"budget": p["budget"], "metrics": {k: v for k, v in p["metrics"].items() if k != "throughput"},
         "train": p["train"] and {k: v for k, v in p["train"].items() if k != "seconds"}}
        for p in report["points"]
    ] + [report["score"], report["score_unclear_as_refusal"], report.get("search") and report["search"]["chosen"]]


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(audit_args(tiny_model_dir, out)) == 0
    return out


@pytest.fixture(scope="module")
def straight_search(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight-search") / "run"
    assert main(audit_args(tiny_model_dir, out, *SEARCH)) == 0
    return out


def killed_at(model_dir: Path, out: Path, point: str, *extra: str) -> None:
    process = run_tamperaudit(audit_args(model_dir, out, *extra), {"TAMPERAUDIT_FAULT": point})
    assert process.returncode == -9, f"not killed at {point}: {process.stderr[-1500:]}"


def resumed_cleanly(out: Path) -> None:
    assert main(["resume", str(out), "--quiet"]) == 0
    assert adapters_in(out) == []
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".adapter.staging"))


# Every point where a user's machine might stop an audit: inside each kind of eval (after its
# first batch), at each stage's boundaries in the manifest and between its two output files,
# within and between training steps, and before the report.
POINTS = [
    "generation", "multiple-choice", "kl-references", "eval-baseline", "write-baseline", "done-baseline",
    "running-attack", "train-step-1", "after-step-1", "train-step-2", "after-step-2", "running-budget-000002",
    "eval-budget-000002", "kl", "write-budget-000002", "done-budget-000002", "train-step-3", "after-step-4",
    "eval-budget-000004", "write-budget-000004", "done-budget-000004", "done-attack", "report",
]
TPE = ["--search", "tpe", "--trials", "3", "--set", "search.learning_rates=0.001,0.01", "--set", "search.lora_ranks=4",
       "--set", "search.batch_sizes=2"]
TPE_POINTS = ["search-asked-1", "search-asked-2", "search-trained", "search-asked-3"]
SEARCH_POINTS = ["running-search", "search-trained", "write-search/lr-0.001-r4-b2", "done-search/lr-0.001-r4-b2",
                 "done-search"]


@pytest.mark.slow  # starts processes (see the README's Development section)
@pytest.mark.parametrize("point", POINTS)
def test_killed_anywhere_then_resumed_measures_the_same(tiny_model_dir, tmp_path, straight, point):
    out = tmp_path / "run"
    killed_at(tiny_model_dir, out, point)
    resumed_cleanly(out)
    assert measured(out) == measured(straight)


@pytest.mark.slow  # starts processes (see the README's Development section)
@pytest.mark.parametrize("point", SEARCH_POINTS)
def test_killed_in_the_search_then_resumed_measures_the_same(tiny_model_dir, tmp_path, straight_search, point):
    out = tmp_path / "run"
    killed_at(tiny_model_dir, out, point, *SEARCH)
    resumed_cleanly(out)
    assert measured(out) == measured(straight_search)


@pytest.fixture(scope="module")
def straight_tpe(tiny_model_dir, tmp_path_factory) -> Path:
    pytest.importorskip("optuna", reason="the [search] extra (Optuna) is not installed")
    out = tmp_path_factory.mktemp("straight-tpe") / "run"
    assert main(audit_args(tiny_model_dir, out, *TPE)) == 0
    return out


@pytest.mark.slow  # starts processes (see the README's Development section)
@pytest.mark.parametrize("point", TPE_POINTS)
def test_a_tpe_search_killed_mid_trial_resumes_its_study_to_the_same_trials(tiny_model_dir, tmp_path, straight_tpe, point):
    out = tmp_path / "run"
    killed_at(tiny_model_dir, out, point, *TPE)
    resumed_cleanly(out)
    assert measured(out) == measured(straight_tpe)
    tried = read_json(out / "report.json")["search"]["tried"]
    assert [{k: v for k, v in t.items() if k != "seconds"} for t in tried] == [
        {k: v for k, v in t.items() if k != "seconds"} for t in read_json(straight_tpe / "report.json")["search"]["tried"]]


# --- a full disk ------------------------------------------------------------------------------------


def disk_full_at(monkeypatch, name: str, occurrence: int) -> list[Path]:
    """Make the ``occurrence``-th atomic write of a file called ``name`` fail as a full disk
    does, after its bytes reached the temporary file; return the paths refused."""
    original = os.fsync
    refused: list[Path] = []
    seen = [0]

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.name.startswith(f".{name}.") and not refused:
            seen[0] += 1
            if seen[0] == occurrence:
                refused.append(path)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    return refused


@pytest.mark.parametrize(
    "name, occurrence",
    [("samples.jsonl", 1), ("metrics.json", 2), ("manifest.json", 4), ("report.json", 1), ("train.json", 1)],
    ids=["baseline-samples", "budget-2-metrics", "manifest", "report", "checkpoint-train-json"],
)
def test_a_full_disk_is_one_line_and_resume_after_freeing_space_measures_the_same(
    tiny_model_dir, tmp_path, straight, monkeypatch, capsys, name, occurrence
):
    out = tmp_path / "run"
    refused = disk_full_at(monkeypatch, name, occurrence)
    assert main(audit_args(tiny_model_dir, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert refused and len(err) <= 2, err  # the error, and at most a warning that the failure report could not be written
    assert err[-1].startswith(f"tamperaudit: error: could not write {out}") and f"/{name} (No space left on device)" in err[-1]
    assert err[-1].endswith(f"finish it with `tamperaudit resume {out}`")
    assert not list(out.rglob("*.tmp"))  # the cut-off write left nothing behind
    if (out / "report.json").is_file():
        assert read_json(out / "report.json")["status"] == "error"
    monkeypatch.undo()
    resumed_cleanly(out)
    assert measured(out) == measured(straight)


def test_a_full_disk_while_writing_a_checkpoint_is_one_line(tiny_model_dir, tmp_path, straight, monkeypatch, capsys):
    from tamperaudit import attack

    out = tmp_path / "run"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(attack.LoraAttack, "_write_checkpoint", no_space)
    assert main(audit_args(tiny_model_dir, out)) == 2
    err = capsys.readouterr().err.strip()
    assert f"could not write the checkpoint in {out / 'budget-000002'} (No space left on device)" in err
    assert len(err.splitlines()) == 1
    assert read_json(out / "report.json")["status"] == "error"
    monkeypatch.undo()
    resumed_cleanly(out)
    assert measured(out) == measured(straight)


# --- a damaged run folder -----------------------------------------------------------------------


def damage(run: Path, how: str) -> tuple[list[str], str]:
    """Damage a copy of a finished run; return the resume command and the line it must print."""
    if how == "truncated-samples":
        path = run / "budget-000002" / "samples.jsonl"
        path.write_bytes(path.read_bytes()[:-40])
        manifest = read_json(run / "manifest.json")  # as a folder written before digests were recorded
        del manifest["stages"]["budget-000002"]["samples_sha256"]
        fileio.atomic_write_json(run / "manifest.json", manifest)
        return ["resume", str(run)], f"{path} line"
    if how == "samples-cut-at-a-line":
        path = run / "budget-000002" / "samples.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
        return ["resume", str(run)], f"{path} is not the file its stage wrote"
    if how == "metrics-not-json":
        path = run / "baseline" / "metrics.json"
        path.write_text("{not json")
        return ["resume", str(run)], f"{path} is not valid JSON"
    if how == "manifest-not-json":
        path = run / "manifest.json"
        path.write_text("")
        return ["resume", str(run)], f"{path} is not valid JSON"
    if how == "other-version":
        manifest = read_json(run / "manifest.json")
        fileio.atomic_write_json(run / "manifest.json", {**manifest, "tool_version": "0.0.1"})
        return ["resume", str(run)], "was started by tamperaudit 0.0.1"
    if how == "samples-missing":
        (run / "budget-000004" / "samples.jsonl").unlink()
        return ["resume", str(run)], f"{run / 'budget-000004' / 'samples.jsonl'} is missing although its stage is marked done"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["truncated-samples", "samples-cut-at-a-line", "metrics-not-json", "manifest-not-json", "other-version",
            "samples-missing"],
)
def test_a_damaged_run_folder_is_named_in_one_line(straight, tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    command, expected = damage(run, how)
    code = main([*command, *(["--quiet"] if command[0] == "resume" else [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("tamperaudit: error: "), err
    assert expected in err
    if how not in ("manifest-not-json", "other-version"):  # a damaged stage: the report no longer claims the run whole
        report = read_json(run / "report.json")
        assert report["status"] == "error" and report["error"] == err.removeprefix("tamperaudit: error: ")


def test_a_checkpoint_whose_adapter_went_missing_is_trained_again(tiny_model_dir, tmp_path, straight):
    # killed while measuring budget 2: its checkpoint is kept for resume; then its adapter is lost
    out = tmp_path / "run"
    killed_at(tiny_model_dir, out, "eval-budget-000002")
    shutil.rmtree(out / "budget-000002" / "adapter")
    resumed_cleanly(out)  # the checkpoint is incomplete, so training starts again from step 0
    assert measured(out) == measured(straight)
