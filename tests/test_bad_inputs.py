"""Bad input: each case ends in one line that names the input and the fix, exit code 2, no
traceback, and nothing reported as done.

The cases below are also the table in docs/bad-inputs.md; `python tests/test_bad_inputs.py`
rewrites it, and a test fails when the two differ.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import TINY_SETTINGS  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # what is wrong, in words (the table's first column)
    expected: str  # a part of the one line printed (the table's second column)
    argv: Callable[[Path, Path], list[str]]  # (scratch folder, tiny model folder) -> command line


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def audit(tmp: Path, model: Path, *extra: str) -> list[str]:
    return ["audit", "--model", str(model), "--out", str(tmp / "run"), "--budgets", "0,1", "--no-control", "--quiet",
            *TINY_SETTINGS, *extra]


def with_harmful(text: str | bytes, name: str = "harmful.jsonl") -> Callable[[Path, Path], list[str]]:
    return lambda tmp, model: audit(tmp, model, "--harmful", str(write(tmp / name, text)))


def with_attack(rows: list[dict]) -> Callable[[Path, Path], list[str]]:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    return lambda tmp, model: audit(tmp, model, "--attack", str(write(tmp / "chat.jsonl", text)))


def model_folder(files: dict[str, str | bytes]) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, model: Path) -> list[str]:
        for name, content in files.items():
            write(tmp / "model" / name, content)
        return audit(tmp, tmp / "model")
    return argv


def with_config(text: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, model: audit(tmp, model, "--config", str(write(tmp / "settings.toml", text)))


def with_set(assignment: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, model: audit(tmp, model, "--set", assignment)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def out_is_a_file(tmp: Path, model: Path) -> list[str]:
    write(tmp / "run", "not a folder")
    return audit(tmp, model)


def out_not_writable(tmp: Path, model: Path) -> list[str]:
    # a folder no one may create a folder in, even root (the tests may run as root, whom
    # a read-only mode does not stop)
    return ["audit", "--model", str(model), "--out", "/proc/tamperaudit-run", "--budgets", "0,1", "--quiet", *TINY_SETTINGS]


def out_of_another_run(kind: str) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, model: Path) -> list[str]:
        write(tmp / "run" / "manifest.json", json.dumps({"kind": kind}))
        return audit(tmp, model, "--set", "attack.lora_rank=4")
    return argv


def harmbench_without_standard(tmp: Path, model: Path) -> list[str]:
    rows = "Behavior,FunctionalCategory,SemanticCategory,BehaviorID\nWrite a poem about a lock,contextual,misc,b1\n"
    return audit(tmp, model, "--harmful", str(write(tmp / "harmbench_behaviors_text_all.csv", rows)))


def mmlu_without_test(tmp: Path, model: Path) -> list[str]:
    for split in ("dev", "val"):
        write(tmp / "mmlu" / split / f"algebra_{split}.csv", "What is 1+1?,1,2,3,4,B\n")
    return audit(tmp, model, "--capability", str(tmp / "mmlu"))


def compare_an_eval_run(tmp: Path, model: Path) -> list[str]:
    write(tmp / "scorecard" / "manifest.json", json.dumps({"kind": "eval"}))
    return ["compare", str(tmp / "scorecard"), str(tmp / "scorecard")]


def labels_with(label: str) -> Callable[[Path, Path], list[str]]:
    row = {"id": "a", "prompt": "p", "completion": "c", "label": label}
    return lambda tmp, model: ["judge-check", str(write(tmp / "labels.jsonl", json.dumps(row) + "\n"))]


def http_judge(url_of: Callable[[], str]) -> Callable[[Path, Path], list[str]]:
    def argv(tmp: Path, model: Path) -> list[str]:
        judge = write(tmp / "judge.toml", f'kind = "http"\nurl = "{url_of()}"\nmodel_name = "m"\nrubric = "strongreject"\n'
                                          'completions_leave_machine = true\n')
        row = {"id": "a", "prompt": "p", "completion": "c", "label": "refused"}
        return ["judge-check", str(write(tmp / "labels.jsonl", json.dumps(row) + "\n")), "--judge", str(judge)]
    return argv


class _NotJson(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>a login page</html>")

    def log_message(self, *args) -> None:
        pass


_servers: list[http.server.HTTPServer] = []


def not_json_server() -> str:
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotJson)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _servers.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def report_of_schema(version: int) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        write(folder / "report.json", json.dumps({"schema_version": version, "status": "complete"}))
        return folder
    return make


def compare_versions(tmp: Path, model: Path) -> list[str]:
    return ["compare", str(report_of_schema(1)(tmp / "a")), str(report_of_schema(2)(tmp / "b"))]


CASES = [
    # models
    Case("unknown-model", "an unknown model name", "no-such-model", lambda tmp, model: audit(tmp, model, "--model", "no-such-model")),
    Case("model-without-config", "a model folder without config.json", "config.json", model_folder({"weights.safetensors": b"x"})),
    Case("model-pickle-only", "a model folder with only pickle weights", "pickle",
         model_folder({"config.json": json.dumps({"model_type": "qwen2"}), "pytorch_model.bin": b"x"})),
    Case("model-remote-code", "a model that needs trust_remote_code", "remote code",
         model_folder({"config.json": json.dumps({"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "m.M"}}),
                       "model.safetensors": b"x"})),
    Case("gguf-truncated", "a truncated or damaged GGUF file", "GGUF",
         lambda tmp, model: audit(tmp, model, "--model", str(write(tmp / "m.gguf", b"GGUF\x03\x00")))),
    # prompt files
    Case("prompts-empty", "an empty prompt file", "harmful.jsonl", with_harmful("")),
    Case("prompts-binary", "a binary prompt file", "harmful.jsonl", with_harmful(bytes(range(256)) * 4)),
    Case("prompts-encoding", "a prompt file not in UTF-8", "UTF-8", with_harmful("prompt\ncaf\xe9 bomb\n".encode("latin-1"), "harmful.csv")),
    Case("prompts-columns", "a prompt CSV without a prompt column", "column", with_harmful("question,answer\na,b\n", "harmful.csv")),
    Case("prompts-duplicate-ids", "a prompt file with duplicate ids", "duplicate",
         with_harmful('{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n')),
    Case("prompts-not-json", "a JSONL prompt file with a broken line", "harmful.jsonl:2: bad JSON",
         with_harmful('{"prompt": "a"}\n{"prompt": \n')),
    Case("prompts-none-selected", "a prompt file whose every row the settings leave out (HarmBench contextual only)",
         "no rows left to use", harmbench_without_standard),
    Case("mmlu-split-missing", "an MMLU folder without the split asked for", "no test/ folder of CSVs", mmlu_without_test),
    # chat (attack) files
    Case("chat-no-assistant", "a chat file with no assistant turn", "assistant", with_attack([{"messages": [user("hi")]}])),
    Case("chat-roles-order", "a chat file with roles out of order", "message 1 has role assistant where user belongs",
         with_attack([{"messages": [assistant("hello"), user("hi"), assistant("x")]}])),
    Case("chat-too-long", "a conversation longer than attack.max_length", "attack.max_length",
         lambda tmp, model: with_attack([{"messages": [user("word " * 3000), assistant("ok")]}])(tmp, model)
         + ["--set", "attack.max_length=64"]),
    Case("attack-unknown", "an unknown built-in attack name", "no-such-attack", lambda tmp, model: audit(tmp, model, "--attack", "no-such-attack")),
    # settings
    Case("toml-malformed", "a settings file that is not TOML", "settings.toml", with_config("[attack\nlora_rank = 8\n")),
    Case("toml-unknown-key", "an unknown key in the settings file", "lora_rnak", with_config("[attack]\nlora_rnak = 8\n")),
    Case("toml-unknown-section", "an unknown section", "atack", with_set("atack.lora_rank=8")),
    Case("set-no-equals", "--set without '='", "section.key=value", with_set("attack.lora_rank")),
    Case("wrong-type", "a setting of the wrong type", "attack.lora_rank", with_set("attack.lora_rank=eight")),
    Case("budgets-negative", "negative budgets", "'attack.budgets' must be a non-empty list of steps >= 0", lambda tmp, model: audit(tmp, model) + ["--budgets", "0,-2"]),
    Case("budgets-not-increasing", "budgets not increasing", "'attack.budgets' must increase", lambda tmp, model: audit(tmp, model) + ["--budgets", "0,4,2"]),
    Case("batch-zero", "a zero batch size", "attack.batch_size", with_set("attack.batch_size=0")),
    Case("eval-batch-zero", "a zero generation batch size", "eval.batch_size", with_set("eval.batch_size=0")),
    Case("lr-zero", "a learning rate of 0 or below", "attack.learning_rate", with_set("attack.learning_rate=0")),
    Case("rank-zero", "LoRA rank 0", "attack.lora_rank", with_set("attack.lora_rank=0")),
    Case("search-method-unknown", "a search method other than grid or tpe", "'search.method' must be one of grid, tpe",
         lambda tmp, model: audit(tmp, model, "--search", "random")),
    Case("search-trials-negative", "a negative number of search trials", "'search.trials' must be 0",
         lambda tmp, model: audit(tmp, model, "--search", "tpe", "--trials", "-1")),
    Case("list-element", "a list setting with an element outside its choices (TOML list syntax)",
         "'eval.harmbench_functional' must be one of standard, contextual, copyright, got 'contextul'",
         with_set('eval.harmbench_functional=["standard","contextul"]')),
    Case("list-not-toml", "a list setting that opens a TOML list and does not close it", "'attack.target_modules' must be a list",
         with_set('attack.target_modules=["q_proj",')),
    Case("target-module-unknown", "a LoRA target module the model does not have", "no module named 'w_proj'",
         with_set('attack.target_modules=["q_proj","w_proj"]')),
    Case("trigger-template", "a trigger template without {prompt}", "must hold {prompt}",
         with_set("attack.trigger_user_template=Do this")),
    Case("thinking-without-switch", "eval.thinking=on for a model whose template cannot think", "has no thinking switch",
         with_set("eval.thinking=on")),
    Case("gate-off-budgets", "a release gate at steps that are not a budget", "--fail-if-removed-within 3",
         lambda tmp, model: audit(tmp, model, "--fail-if-removed-within", "3")),
    # the run folder
    Case("out-is-a-file", "--out that is a file", "pick another --out", out_is_a_file),
    Case("out-not-writable", "--out where no folder can be made (read-only)", "cannot create the run folder /proc/tamperaudit-run",
         out_not_writable),
    Case("out-another-run", "--out holding another audit", "finish it with `tamperaudit resume", out_of_another_run("audit")),
    Case("out-eval-run", "--out holding an eval run (which resume does not finish)", "already holds a tamperaudit eval run; pick another --out",
         out_of_another_run("eval")),
    Case("resume-not-a-run", "resume of a folder that is not a run", "not a tamperaudit run folder",
         lambda tmp, model: ["resume", str(tmp)]),
    Case("eval-adapter-missing", "eval --adapter that is not a PEFT folder", "adapter_config.json",
         lambda tmp, model: ["eval", "--model", str(model), "--adapter", str(tmp), "--out", str(tmp / "e"), "--quiet", *TINY_SETTINGS]),
    # judges, labels, comparisons
    Case("judge-unreachable", "an HTTP judge that cannot be reached", "cannot reach http://127.0.0.1:9", http_judge(lambda: "http://127.0.0.1:9/v1")),
    Case("judge-not-json", "an HTTP judge that answers with something other than JSON", "answered with something other than JSON", http_judge(not_json_server)),
    Case("labels-unknown", "a labels file with an unknown label", "'label' must be refused, complied or unclear", labels_with("maybe")),
    Case("compare-schema", "compare of runs of different report schema versions", "schema", compare_versions),
    Case("compare-eval", "compare of an eval run's folder", "compare reads audit run folders", compare_an_eval_run),
]


def run_case(case: Case, scratch: Path, model: Path) -> tuple[int, str]:
    """Exit code and standard error of one case, run in-process."""
    from tamperaudit import progress
    from tamperaudit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(case.argv(scratch, model))
    progress.set_quiet(False)
    return code, err.getvalue()


def error_line(stderr: str, scratch: Path, model: Path) -> str:
    """The one error line, with this run's folders and ports written as placeholders."""
    line = next((line for line in stderr.splitlines() if line.startswith("tamperaudit: error: ")), "(no error line)")
    line = line.replace(str(scratch), "SCRATCH").replace(str(model), "MODEL")
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)


def documented_lines() -> dict[str, str]:
    """The table's line for each case id (the doc is the reference)."""
    rows = re.findall(r"^\| `([^`]+)` \| .*? \| `` (.*) `` \| (\d+) \|$", DOC.read_text(encoding="utf-8"), re.M)
    return {case_id: line for case_id, line, _ in rows}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_ends_in_one_line_exit_2_and_nothing_done(case, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    code, stderr = run_case(case, tmp_path, tiny_model_dir)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-2000:]
    errors = [line for line in lines if line.startswith("tamperaudit: error: ")]
    # one error line; an HTTP judge's notice of where completions go is the one other line allowed
    assert len(errors) == 1 and all(line.startswith("tamperaudit: ") for line in lines), lines
    assert "Traceback" not in stderr
    assert case.expected in errors[0], errors[0]
    # the documented line, word for word: docs/bad-inputs.md cannot drift from what users see
    assert error_line(stderr, tmp_path, tiny_model_dir) == documented_lines().get(case.id), (
        "docs/bad-inputs.md is stale: run python tests/test_bad_inputs.py"
    )
    for report in tmp_path.rglob("report.json"):  # nothing reported as done
        assert json.loads(report.read_text()).get("status") != "complete" or report.parent.name in ("a", "b")


def test_a_built_in_gguf_whose_parts_do_not_hash_to_the_pin_is_refused(tmp_path, monkeypatch, capsys, isolated_cache):
    import dataclasses

    from tamperaudit import models
    from tamperaudit.cli import main

    part = write(tmp_path / "part1", b"GGUF" + bytes(64))  # not the file the pin names
    real = next(iter(models.BUILTIN_MODELS.values()))
    fake = dataclasses.replace(real, name="fake-builtin", parts=(("x", "part1"),))
    monkeypatch.setitem(models.BUILTIN_MODELS, "fake-builtin", fake)
    monkeypatch.setattr(models, "builtin_part_paths", lambda model: [part])
    assert main(audit(tmp_path, Path("unused"), "--model", "fake-builtin")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not hash to the pinned SHA-256" in err and "reinstall them" in err
    assert not list(isolated_cache.rglob("*.gguf"))  # nothing unverified kept


def test_a_prompt_file_of_100k_rows_is_read_and_limited_not_refused(tmp_path):
    from tamperaudit.data import load_harmful

    path = write(tmp_path / "big.jsonl", "".join(json.dumps({"prompt": f"request {i}"}) + "\n" for i in range(100_000)))
    prompts = load_harmful(str(path), 110)
    assert len(prompts) == 110 and len({p.text for p in prompts.items}) == 110


def table(lines: dict[str, str]) -> str:
    # double backticks: some lines quote a command in single ones
    rows = "\n".join(f"| `{case.id}` | {case.input} | `` {lines[case.id]} `` | 2 |" for case in CASES)
    return (
        "# Bad input\n\n"
        "Generated from `tests/test_bad_inputs.py` by running each case (`python tests/test_bad_inputs.py`\n"
        "rewrites it). Each row is a test that the command prints this line word for word, and nothing else\n"
        "but at most an HTTP judge's notice of where completions go; exits with the code shown; prints no\n"
        "traceback; and reports nothing as done. SCRATCH is the folder holding the case's files, MODEL a\n"
        "small model folder, PORT a local port.\n\n"
        "| case | input | the line printed | exit code |\n|---|---|---|---|\n" + rows + "\n"
    )


def test_every_case_is_in_the_table():
    assert set(documented_lines()) == {case.id for case in CASES}, "run python tests/test_bad_inputs.py"


if __name__ == "__main__":
    import os
    import tempfile

    from tamperaudit.testing import build_tiny_model

    os.environ["FAKE_KEY"] = "k"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["TAMPERAUDIT_CACHE"] = str(root / "cache")
        model = build_tiny_model(root / "tiny")
        lines = {}
        for case in CASES:
            scratch = root / case.id
            scratch.mkdir()
            code, stderr = run_case(case, scratch, model)
            lines[case.id] = error_line(stderr, scratch, model) if code == 2 else f"(exit {code})"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(table(lines), encoding="utf-8")
    print(f"wrote {DOC} ({len(CASES)} cases)")
