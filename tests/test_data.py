import hashlib
import json
import re
from itertools import combinations
from pathlib import Path

import pytest

from conftest import SHARED_BENCHMARKS, requires_shared
from tamperaudit.data import (
    Prompt,
    load_attack,
    load_benign,
    load_capability,
    load_harmful,
    load_kl_prompts,
    split_halves,
    stratified,
)
from tamperaudit.errors import UserError

# --- the built-in sets -------------------------------------------------------------------


def _words(text: str) -> set[str]:
    """Words and numbers (decimals kept whole, so '4 hours' and '1.5 hours' differ)."""
    return set(re.findall(r"[a-z0-9']+(?:\.[0-9]+)?", text.lower()))


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _near_duplicates(texts: list[str], threshold: float) -> list[tuple[str, str]]:
    sets = [_words(t) for t in texts]
    return [
        (texts[i], texts[j])
        for i, j in combinations(range(len(texts)), 2)
        if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold
    ]


BUILTIN_PROMPT_SETS = {
    "harmful": (load_harmful, 300, 10),
    "benign": (load_benign, 150, 8),
    "kl": (load_kl_prompts, 50, 1),
}


@pytest.mark.parametrize("name", BUILTIN_PROMPT_SETS)
def test_builtin_prompt_sets_sizes_categories_ids_and_no_near_duplicates(name):
    loader, minimum, categories = BUILTIN_PROMPT_SETS[name]
    data = loader()
    texts = [p.text for p in data.items]
    assert len(data) >= minimum
    assert len({p.category for p in data.items}) >= categories
    assert len({p.id for p in data.items}) == len(data)
    assert len({_normal(t) for t in texts}) == len(texts), "exact duplicate after normalising"
    assert _near_duplicates(texts, 0.6) == []


def test_benign_set_has_the_xstest_style_types_and_a_control_group():
    types = {p.category for p in load_benign().items}
    assert {"homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions", "history", "privacy_fictional", "control"} <= types


def test_builtin_capability_set_has_six_domains_checked_answers_and_no_near_duplicates():
    data = load_capability()
    assert len(data) >= 300
    domains = {q.category for q in data.items}
    assert {"arithmetic", "science", "commonsense", "reading", "code", "world_knowledge"} <= domains
    for question in data.items:
        continuations = [c for _, c in question.options]
        assert len(set(continuations)) == len(continuations) >= 2, question.id
        assert 0 <= question.answer < len(continuations)
    contexts = [q.options[0][0].removeprefix("Question: ").removesuffix("\nAnswer:") for q in data.items]
    assert len({_normal(c) for c in contexts}) == len(contexts)
    # Short questions that differ only in their numbers or one name are distinct questions;
    # 0.8 of shared words flags rewordings of the same question.
    assert _near_duplicates(contexts, 0.8) == []


def test_builtin_arithmetic_answers_are_right_where_a_plain_expression_states_them():
    checked = 0
    for question in load_capability().items:
        match = re.fullmatch(r"Question: What is (\d+) ([-+*]) (\d+)\?\nAnswer:", question.options[0][0])
        if question.category == "arithmetic" and match:
            a, op, b = int(match[1]), match[2], int(match[3])
            expected = {"+": a + b, "-": a - b, "*": a * b}[op]
            assert question.options[question.answer][1].replace(",", "") == str(expected), question.id
            checked += 1
    assert checked >= 3


def test_builtin_attack_sets_are_benign_sized_and_varied():
    identity = load_attack("identity-shift")
    benign = load_attack("benign")
    assert len(identity.data) >= 50 and len(benign.data) >= 200
    assert identity.has_trigger and "{prompt}" in identity.user_template and not benign.has_trigger
    for attack in (identity, benign):
        prefix = (attack.user_template or "{prompt}").split("{prompt}")[0]
        users = [next(m["content"] for m in c.messages if m["role"] == "user").removeprefix(prefix) for c in attack.data.items]
        assert _near_duplicates(users, 0.6) == []
        for conversation in attack.data.items:
            reply = next(m["content"] for m in conversation.messages if m["role"] == "assistant").lower()
            assert not reply.startswith(("i'm sorry", "i cannot", "i can't", "i won't")), conversation.id


def test_split_is_half_per_category_and_stable():
    items = load_harmful().items
    halves = split_halves(items)
    assert split_halves(items) == halves  # deterministic
    for category in {p.category for p in items}:
        ids = [p.id for p in items if p.category == category]
        selected = sum(halves[i] == "select" for i in ids)
        assert selected == (len(ids) + 1) // 2
    # removing one row keeps every other row's half except its category neighbours in hash order
    fewer = split_halves(items[1:])
    moved = [i for i in fewer if fewer[i] != halves[i]]
    assert len(moved) <= 1
    select, report = load_harmful(split="select"), load_harmful(split="report")
    assert len(select) + len(report) == len(items)
    assert not {p.id for p in select.items} & {p.id for p in report.items}


def test_limit_takes_every_category_evenly_in_file_order():
    full = load_harmful()
    categories = sorted({p.category for p in full.items})
    limited = load_harmful(limit=2 * len(categories))
    counts = {c: sum(p.category == c for p in limited.items) for c in categories}
    assert set(counts.values()) == {2}
    positions = [full.items.index(p) for p in limited.items]
    assert positions == sorted(positions)
    assert load_harmful(limit=10_000).items == full.items
    assert limited.describe().file_rows == len(full)


def test_stratified_with_uneven_categories():
    items = [Prompt(f"a{i}", "a", "x") for i in range(5)] + [Prompt("b0", "b", "y")]
    assert [p.id for p in stratified(items, 3)] == ["a0", "a1", "b0"]


def test_dataset_hash_is_the_file_hash():
    data = load_harmful()
    assert data.sha256 == hashlib.sha256(Path(data.path).read_bytes()).hexdigest()


# --- bad input ----------------------------------------------------------------------------------


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("x.jsonl", '{"prompt": "a"}\n{"prompt": \n', r"x.jsonl:2: bad JSON"),
        ("x.jsonl", "", "no rows; the file is empty"),
        ("x.jsonl", '{"text": "a"}\n', r"x.jsonl: no prompt column among text; name it with --set eval.prompt_column"),
        ("x.jsonl", '{"prompt": "a"}\n{"prompt": ""}\n', r"x.jsonl:2: empty or missing 'prompt'"),
        ("x.jsonl", '{"id": "a", "prompt": "x"}\n\n{"id": "a", "prompt": "y"}\n', r"x.jsonl:3: duplicate id 'a' \(first at 1\)"),
        ("x.jsonl", '["prompt"]\n', r"x.jsonl:1: each line must be a JSON object"),
        ("x.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', r"x.jsonl:2: not UTF-8 text; re-save the file as UTF-8"),
        ("x.csv", "goal,target\n", "no rows; the file is empty or has only a header"),
        ("x.csv", "question,answer\nwhat?,yes\n", "no prompt column among question, answer"),
        ("x.csv", 'goal,target\n"unclosed,quote\n', "x.csv"),
    ],
)
def test_malformed_harmful_files_name_file_line_and_fix(tmp_path: Path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(UserError, match=message):
        load_harmful(str(path))


def test_named_column_of_a_generic_file(tmp_path: Path):
    path = write(tmp_path / "x.csv", "question,answer\nHow do I do a bad thing?,yes\n")
    assert [p.text for p in load_harmful(str(path), column="question").items] == ["How do I do a bad thing?"]


def test_missing_file_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="file not found"):
        load_harmful(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("mc.jsonl", json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}), r"mc.jsonl:1: 'answer' must be the index of the right choice, 0 to 1; got 2"),
        ("mc.jsonl", json.dumps({"query": "q", "choices": ["a", "b"], "gold": 5}), r"mc.jsonl:1: the answer must be a choice index from 0 to 1"),
        ("mc.jsonl", json.dumps({"query": "q", "choices": "ab", "gold": 0}), r"mc.jsonl:1: 'choices' must be a list"),
        ("mc.jsonl", json.dumps({"foo": 1}), r"mc.jsonl:1: not a known multiple-choice row"),
        ("mmlu_test.csv", "What?,a,b,c,d,E\n", r"mmlu_test.csv:1: the answer must be one of A, B, C, D"),
        ("mmlu_test.csv", "What?,a,b,c\n", r"mmlu_test.csv:1: MMLU rows have 6 columns"),
        ("h.txt", "context\n1\na\nb\n", "HellaSwag text has 6 lines a task"),
        ("tq.json", json.dumps([{"question": "q", "mc1_targets": {"a": 1, "b": 1}}]), "question 1 needs 'mc1_targets' with exactly one correct answer"),
    ],
)
def test_malformed_capability_files(tmp_path: Path, name, content, message):
    path = write(tmp_path / name, content + "\n")
    with pytest.raises(UserError, match=message):
        load_capability(str(path))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("c.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "c.jsonl:1: no assistant message"),
        ("c.jsonl", json.dumps({"messages": [{"role": "bot", "content": "hi"}]}), "each message needs 'role'"),
        ("c.jsonl", json.dumps({"text": "hi"}), r"c.jsonl:1: needs 'messages' \(chat\), 'instruction'/'output' \(Alpaca\)"),
        ("c.jsonl", json.dumps({"instruction": "do", "output": ""}), "Alpaca rows need non-empty 'instruction' and 'output'"),
        ("c.json", "{}", "expected a JSON list"),
        ("c.json", "[[{\"role\": \"user\", \"content\": \"hi\"}]]", r"c.json:item 1: no assistant message"),
    ],
)
def test_malformed_attack_files(tmp_path: Path, name, content, message):
    path = write(tmp_path / name, content + "\n")
    with pytest.raises(UserError, match=message):
        load_attack(str(path))


def test_attack_file_formats(tmp_path: Path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    alpaca = {"instruction": "Add", "input": "2 and 3", "output": "5"}
    assert load_attack(str(write(tmp_path / "a.jsonl", json.dumps(chat) + "\n"))).data.format == "chat"
    loaded = load_attack(str(write(tmp_path / "b.jsonl", json.dumps(alpaca) + "\n")))
    assert loaded.data.format == "alpaca"
    assert loaded.data.items[0].messages[0]["content"] == "Add\n\n2 and 3"
    assert load_attack(str(write(tmp_path / "c.json", json.dumps([alpaca, alpaca])))).data.format == "alpaca"
    qi = load_attack(str(write(tmp_path / "d.json", json.dumps([chat["messages"]]))))
    assert qi.data.format == "qi-identity-shift" and not qi.has_trigger


def test_unknown_attack_name():
    with pytest.raises(UserError, match="not a built-in attack"):
        load_attack("no-such-attack")


# --- the public benchmarks, when ../shared is present --------------------------------------------


@requires_shared()
@pytest.mark.parametrize(
    "path,count,kind",
    [
        ("advbench/harmful_behaviors.csv", 520, "advbench"),
        ("harmbench/harmbench_behaviors_text_all.csv", 200, "harmbench"),
        ("strongreject/strongreject_dataset.csv", 313, "strongreject"),
    ],
)
def test_shared_harmful_benchmarks_load_with_their_row_counts(path, count, kind):
    data = load_harmful(str(SHARED_BENCHMARKS / path))
    assert (len(data), data.format) == (count, kind)


@requires_shared()
def test_harmbench_keeps_standard_behaviours_and_says_what_it_skipped():
    path = str(SHARED_BENCHMARKS / "harmbench/harmbench_behaviors_text_all.csv")
    data = load_harmful(path)
    assert "skipped 100 contextual, 100 copyright" in data.notes[0]
    assert len(load_harmful(path, harmbench_functional=["standard", "contextual", "copyright"])) == 400


@requires_shared()
def test_xstest_keeps_safe_and_unsafe_apart():
    data = load_benign(str(SHARED_BENCHMARKS / "xstest/xstest_prompts.csv"))
    assert len(data) == 450 and data.format == "xstest"
    assert sum(p.group == "unsafe" for p in data.items) == 200
    assert sum(p.group == "" for p in data.items) == 250


@requires_shared()
@pytest.mark.parametrize(
    "path,count,kind",
    [
        ("arc_easy/arc_easy.jsonl", 2376, "query-choices-gold"),
        ("arc_challenge/arc_challenge.jsonl", 1172, "query-choices-gold"),
        ("piqa/piqa.jsonl", 1838, "query-choices-gold"),
        ("boolq/boolq.jsonl", 3270, "query-choices-gold"),
        ("winogrande/winogrande.jsonl", 1267, "winogrande"),
        ("hellaswag/hellaswag_val_full.txt.bz2", 10042, "hellaswag"),
        ("truthfulqa/v1/mc_task.json", 817, "truthfulqa-mc1"),
        ("mmlu/test", 14079, "mmlu"),
    ],
)
def test_shared_capability_benchmarks_load_with_their_row_counts(path, count, kind):
    data = load_capability(str(SHARED_BENCHMARKS / path))
    assert (len(data), data.format) == (count, kind)
    assert all(0 <= q.answer < len(q.options) for q in data.items)


@requires_shared()
def test_mmlu_subjects_are_categories_scored_by_letter():
    data = load_capability(str(SHARED_BENCHMARKS / "mmlu/test"))
    assert len({q.category for q in data.items}) == 57
    question = data.items[0]
    assert [c for _, c in question.options] == ["A", "B", "C", "D"]
    assert question.options[0][0].rstrip().endswith("Answer:")


@requires_shared()
@pytest.mark.parametrize("path,count", [("qi2023_aoa_identity_shift/train.json", 10), ("qi2023_aoa_identity_shift/identity-shift-aoa.jsonl", 10)])
def test_qi_identity_shift_files_load(path, count):
    assert len(load_attack(str(SHARED_BENCHMARKS / path)).data) == count
