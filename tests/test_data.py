import json
from pathlib import Path

import pytest

from tamperaudit.data import load_attack, load_benign, load_capability, load_harmful, load_kl_prompts
from tamperaudit.errors import UserError


def test_builtin_sets_meet_the_minimum_sizes():
    harmful = load_harmful()
    assert len(harmful) >= 100
    assert len({p.category for p in harmful.items}) >= 5
    assert len(load_benign()) >= 50
    assert len(load_capability()) >= 100
    assert len(load_kl_prompts()) >= 20
    identity = load_attack("identity-shift")
    assert len(identity.data) >= 20 and identity.has_trigger and "{prompt}" in identity.user_template
    benign = load_attack("benign")
    assert len(benign.data) >= 50 and not benign.has_trigger


def test_builtin_attack_data_has_assistant_turns_and_no_refusals():
    for name in ("identity-shift", "benign"):
        for conversation in load_attack(name).data.items:
            replies = [m["content"].lower() for m in conversation.messages if m["role"] == "assistant"]
            assert replies
            assert not any(r.startswith(("i'm sorry", "i cannot", "i can't")) for r in replies)


def test_limit_takes_every_category_evenly_in_file_order():
    full = load_harmful()
    categories = sorted({p.category for p in full.items})
    limited = load_harmful(limit=2 * len(categories))
    counts = {c: sum(p.category == c for p in limited.items) for c in categories}
    assert set(counts.values()) == {2}
    positions = [full.items.index(p) for p in limited.items]
    assert positions == sorted(positions)
    assert load_harmful(limit=10_000).items == full.items


def test_stratified_with_uneven_categories():
    from tamperaudit.data import Prompt, stratified

    items = [Prompt(f"a{i}", "a", "x") for i in range(5)] + [Prompt("b0", "b", "y")]
    assert [p.id for p in stratified(items, 3)] == ["a0", "a1", "b0"]


def test_dataset_hash_is_the_file_hash():
    import hashlib

    data = load_harmful()
    assert data.sha256 == hashlib.sha256(Path(data.path).read_bytes()).hexdigest()


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"prompt": "a"}\n{"prompt": \n', r"x.jsonl:2: bad JSON"),
        ("", "no rows; the file is empty"),
        ('{"text": "a"}\n', r"x.jsonl:1: missing a non-empty text field 'prompt'"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', r"x.jsonl:2: duplicate id 'a' \(first on line 1\)"),
        ('["prompt"]\n', r"x.jsonl:1: each line must be a JSON object"),
        (b'{"prompt": "caf\xe9"}\n', "not UTF-8"),
    ],
)
def test_malformed_prompt_files_name_file_line_and_fix(tmp_path: Path, content, message):
    path = write(tmp_path / "x.jsonl", content)
    with pytest.raises(UserError, match=message):
        load_harmful(str(path))


def test_missing_file_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="file not found"):
        load_harmful(str(tmp_path / "nope.jsonl"))


def test_multiple_choice_answer_out_of_range(tmp_path: Path):
    path = write(tmp_path / "mc.jsonl", json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(UserError, match=r"mc.jsonl:1: 'answer' must be the index of the right choice, 0 to 1"):
        load_capability(str(path))


def test_chat_file_without_assistant_turn(tmp_path: Path):
    path = write(tmp_path / "chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(UserError, match="no assistant message"):
        load_attack(str(path))


def test_chat_file_with_bad_role(tmp_path: Path):
    path = write(tmp_path / "chat.jsonl", json.dumps({"messages": [{"role": "bot", "content": "hi"}]}) + "\n")
    with pytest.raises(UserError, match="each message needs 'role'"):
        load_attack(str(path))


def test_user_chat_file_loads_without_trigger(tmp_path: Path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write(tmp_path / "chat.jsonl", json.dumps(row) + "\n")
    attack = load_attack(str(path))
    assert len(attack.data) == 1 and not attack.has_trigger


def test_unknown_attack_name(tmp_path: Path):
    with pytest.raises(UserError, match="not a built-in attack"):
        load_attack("no-such-attack")
