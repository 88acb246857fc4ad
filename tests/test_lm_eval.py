"""Capability by lm-evaluation-harness (--capability lm-eval:TASK) on the tiny random model.

The tests write their own lm-eval task: a YAML reading a small JSONL of made-up
multiple-choice questions (nothing copied from a benchmark), in tamperaudit's own
question format, so that tamperaudit's scorer can score the same file.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from conftest import TINY_SETTINGS
from tamperaudit.cli import main
from tamperaudit.data import load_capability
from tamperaudit.errors import UserError
from tamperaudit.backends.hf import HfModel
from tamperaudit.evals.capability import aggregate_capability, score_questions
from tamperaudit.fileio import read_json

pytest.importorskip("lm_eval")

from tamperaudit.evals.lm_harness import resolve_tasks, score_tasks  # noqa: E402

COLOURS = ["green", "blue", "red", "yellow", "purple", "orange", "white", "black"]


def _questions(count: int) -> list[dict]:
    """Made-up questions about a made-up place, with choices of unequal length (acc and
    acc_norm then differ) and the right answer moving between positions."""
    rows = []
    for i in range(count):
        choices = [COLOURS[i % 8], f"a pale {COLOURS[(i + 3) % 8]} shade", COLOURS[(i + 5) % 8], f"deep {COLOURS[(i + 6) % 8]}"]
        rows.append({"id": f"toy-{i}", "question": f"What colour are the doors on street {i} of the invented town Brellow?",
                     "choices": choices, "answer": i % 4, "domain": "toy"})
    return rows


def write_task(folder: Path, name: str = "toytask", rows: int = 12, cache: Path | None = None) -> Path:
    """A local lm-eval task: its YAML (dataset_path json, data_files a JSONL of our own) in
    ``folder``; returns the JSONL's path. The datasets cache sits outside the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _questions(rows)))
    cache = cache or folder.parent / f"{folder.name}-datasets-cache"
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n"
        f"  cache_dir: {cache}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        # the context tamperaudit's scorer builds (QUESTION_FORMAT), the choices after a space
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_target: answer\n"
        'doc_to_choice: "{{choices}}"\n'
        "metadata:\n  version: 1.0\n"
    )
    return data


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm-eval") / "tasks"
    write_task(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32").eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def tasks(task_dir):
    return resolve_tasks("lm-eval:toytask", 0, str(task_dir))


def test_samples_aggregate_to_lm_evals_own_accuracy_and_match_tamperadits_scorer(tiny, tasks, task_dir):
    model, tokenizer = tiny
    samples, speed, harness = score_tasks(HfModel(model, tokenizer), tasks, label="test: ")
    assert [s.id for s in samples] == [f"toytask/{i}" for i in range(12)] and speed.questions == 12
    reported = harness.tasks["toytask"]
    assert reported.n == 12 and reported.num_fewshot == 0 and harness.version
    assert set(reported.metrics) >= {"acc", "acc_norm"}  # the ",none" filter suffix dropped
    assert reported.metrics["acc"].stderr > 0
    ours = aggregate_capability(samples)
    assert ours.accuracy.rate == pytest.approx(reported.metrics["acc"].value)
    assert ours.accuracy_norm.rate == pytest.approx(reported.metrics["acc_norm"].value)
    assert list(ours.by_category) == ["toytask"]

    # tamperaudit's scorer on the same file sees the same text: the same log-likelihoods and verdicts
    questions = load_capability(str(task_dir / "toytask.jsonl"), 0).items
    builtin, _ = score_questions(HfModel(model, tokenizer), questions)
    assert type(samples[0]) is type(builtin[0])  # the same record type
    for harnessed, own in zip(samples, builtin):
        assert harnessed.log_probs == pytest.approx(own.log_probs, abs=1e-3)
        for key in ("answer", "predicted", "predicted_norm", "correct", "correct_norm"):
            assert getattr(harnessed, key) == getattr(own, key), key

    again, _, _ = score_tasks(HfModel(model, tokenizer), tasks)  # deterministic
    assert again == samples


def test_the_adapter_is_active_and_the_model_is_left_as_found(tiny, tasks):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny
    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapter changes the outputs from the start
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    before = torch.get_rng_state()
    with_adapter, _, _ = score_tasks(HfModel(model, tokenizer), tasks)
    assert model.training and all(m.training for m in model.modules())  # training state as found
    assert torch.equal(torch.get_rng_state(), before)  # lm-eval's seeding does not leak
    with model.disable_adapter():
        without, _, _ = score_tasks(HfModel(model, tokenizer), tasks)
    assert not model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters  # active again
    gap = max(abs(a - b) for x, y in zip(with_adapter, without) for a, b in zip(x.log_probs, y.log_probs))
    assert gap > 1e-3
    merged = copy.deepcopy(model).merge_and_unload()
    reference, _, _ = score_tasks(HfModel(merged, tokenizer), tasks)
    for x, y in zip(with_adapter, reference):
        assert x.log_probs == pytest.approx(y.log_probs, abs=1e-4)


def test_halves_split_each_task_by_id_and_lm_eval_scores_exactly_them(tiny, tasks):
    select, report = tasks.half("select"), tasks.half("report")
    chosen, reported = set(select.docs["toytask"]), set(report.docs["toytask"])
    assert chosen and reported and not chosen & reported and chosen | reported == set(range(12))
    assert select.sha256 == report.sha256 == tasks.sha256 and select.describe().ids_sha256 != report.describe().ids_sha256
    samples, _, harness = score_tasks(HfModel(*tiny), report)
    assert [s.id for s in samples] == [f"toytask/{i}" for i in sorted(reported)]
    assert harness.tasks["toytask"].n == len(reported) and harness.split == "report"


def test_the_hash_follows_the_task_and_its_data(tmp_path, tasks):
    folder = tmp_path / "tasks"
    data = write_task(folder)
    same = resolve_tasks("lm-eval:toytask", 0, str(folder))
    limited = resolve_tasks("lm-eval:toytask", 5, str(folder))
    assert limited.sha256 != same.sha256 and len(limited) == 5 and limited.describe().file_rows == 12
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[3]["answer"] = (rows[3]["answer"] + 1) % 4
    changed_folder = tmp_path / "changed"
    changed = write_task(changed_folder)
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert resolve_tasks("lm-eval:toytask", 0, str(changed_folder)).sha256 != resolve_tasks("lm-eval:toytask", 0, str(folder)).sha256


def test_audit_with_lm_eval_capability_writes_its_figures_and_resumes(tiny_model_dir, task_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["audit", "--model", str(tiny_model_dir), "--out", str(out), "--budgets", "0,1", "--no-control", "--quiet",
            *TINY_SETTINGS, "--capability", "lm-eval:toytask", "--set", f"eval.lm_eval_tasks_dir={task_dir}"]
    assert main(argv) == 0
    for stage in ("baseline", "budget-000001"):
        metrics = read_json(out / stage / "metrics.json")
        harness = metrics["lm_eval"]
        assert harness["limit"] == 6 and harness["tasks"]["toytask"]["n"] == 6  # eval.capability_limit is lm-eval's limit
        assert metrics["capability"]["accuracy_norm"]["rate"] == pytest.approx(harness["tasks"]["toytask"]["metrics"]["acc_norm"]["value"])
        assert metrics["throughput"]["multiple_choice"]["questions"] == 6
    report = read_json(out / "report.json")
    assert report["status"] == "complete"
    assert report["datasets"]["capability"]["format"] == "lm-eval" and report["datasets"]["capability"]["count"] == 6
    assert "lm-evaluation-harness" in (out / "report.md").read_text()

    (out / "budget-000001" / "metrics.json").unlink()  # a lost stage: resume measures it again, the same
    assert main(["resume", str(out), "--quiet"]) == 0
    assert read_json(out / "budget-000001" / "metrics.json")["lm_eval"]["tasks"] == harness["tasks"]


def test_a_search_chooses_on_the_select_half_of_the_tasks_and_reports_on_the_other(tiny_model_dir, task_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["audit", "--model", str(tiny_model_dir), "--out", str(out), "--budgets", "0,1", "--no-control", "--quiet",
            *TINY_SETTINGS, "--set", "eval.capability_limit=0", "--capability", "lm-eval:toytask",
            "--set", f"eval.lm_eval_tasks_dir={task_dir}", "--search", "--set", "search.learning_rates=0.001",
            "--set", "search.lora_ranks=4", "--set", "search.batch_sizes=2"]
    assert main(argv) == 0
    report = read_json(out / "report.json")
    assert report["datasets"]["capability"]["notes"][-1].startswith("report half")
    assert report["datasets"]["capability_select"]["notes"][-1].startswith("select half")
    baseline = read_json(out / "baseline" / "metrics.json")
    assert baseline["lm_eval"]["split"] == "report" and baseline["select"]["capability"]["accuracy"]["total"] > 0

    def ids(stage: str, name: str) -> set:
        rows = (json.loads(line) for line in (out / stage / "samples.jsonl").read_text().splitlines())
        return {row["id"] for row in rows if row["eval"] == name}

    chosen, reported = ids("search/lr-0.001-r4-b2", "capability"), ids("budget-000001", "capability")
    assert chosen and reported and not chosen & reported and len(chosen | reported) == 12
    assert ids("baseline", "capability_select") == chosen


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_task_is_one_line_before_any_model_loads(capsys, tmp_path, task_dir):
    # the model does not exist: the task error comes first, so it came before loading
    err = _one_line_error(capsys, ["audit", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o"), "--quiet",
                                   "--capability", "lm-eval:toytsk", "--set", f"eval.lm_eval_tasks_dir={task_dir}"])
    assert "lm-eval task 'toytsk' not found" in err and "lm-eval ls tasks" in err and "toytask" in err


def test_missing_lm_eval_says_which_pip_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    err = _one_line_error(capsys, ["eval", "--out", str(tmp_path / "o"), "--quiet", "--capability", "lm-eval:arc_easy"])
    assert "pip install 'tamperaudit[lm-eval]'" in err


def test_a_task_without_accuracy_and_a_stray_tasks_dir_are_refused(tmp_path, task_dir):
    folder = tmp_path / "generative"
    write_task(folder, "toygen")
    yaml = folder / "toygen.yaml"
    yaml.write_text(yaml.read_text().replace("output_type: multiple_choice", "output_type: generate_until")
                    .replace('doc_to_choice: "{{choices}}"\n', "metric_list:\n  - metric: exact_match\n"))
    with pytest.raises(UserError, match="not per-question accuracy"):
        resolve_tasks("lm-eval:toygen", 0, str(folder))
    with pytest.raises(UserError, match="name at least one lm-eval task"):
        resolve_tasks("lm-eval: ,", 0, str(folder))
    from tamperaudit.config import resolve
    from tamperaudit.pipeline import load_capability_sets

    settings = resolve(environ={}, overrides={"eval": {"lm_eval_tasks_dir": str(task_dir)}})
    with pytest.raises(UserError, match="lm_eval_tasks_dir is set"):
        load_capability_sets(settings, False)


def test_a_task_whose_data_is_on_an_unreachable_hub_is_one_line(capsys, tmp_path, monkeypatch):
    """Offline, lm-eval's datasets library retries and then raises ConnectionError (seen with
    arc_easy and no network); here the task loader raises it at once, as it finally does."""
    from tamperaudit.evals import lm_harness

    def unreachable(lm_eval, manager, names):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_harness, "_leaf_tasks", unreachable)
    err = _one_line_error(capsys, ["eval", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o"), "--quiet",
                                   "--capability", "lm-eval:arc_easy"])
    assert "lm-eval task arc_easy needs the dataset allenai/ai2_arc from the Hugging Face Hub" in err
    assert "eval.lm_eval_tasks_dir" in err
