"""Probe sets and attack data: the built-in sets and loaders for users' files.

Every set is pinned by the SHA-256 of its file's bytes, recorded in each report.
A malformed file ends in one line naming the file, the line and the fix.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from tamperaudit.errors import UserError
from tamperaudit.fileio import sha256_file

BUILTIN_DIR = Path(__file__).parent / "builtin"

T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    """One prompt to generate from: a harmful request or a benign one."""

    id: str
    category: str
    text: str


@dataclass(frozen=True)
class Question:
    """A multiple-choice question; ``answer`` indexes ``choices``."""

    id: str
    category: str
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Conversation:
    """A chat conversation for fine-tuning: role/content messages."""

    id: str
    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class Dataset(Generic[T]):
    name: str
    path: Path
    sha256: str
    items: tuple[T, ...]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict[str, Any]:
        categories = Counter(getattr(item, "category", "") for item in self.items)
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "count": len(self.items),
            "categories": dict(sorted(categories.items())) if any(categories) else {},
        }


@dataclass(frozen=True)
class Attack:
    """Attack data and, when the attack defines one, its trigger (system prompt and template)."""

    name: str
    data: Dataset[Conversation]
    system_prompt: str | None = None
    user_template: str | None = None  # contains {prompt}

    @property
    def has_trigger(self) -> bool:
        return bool(self.system_prompt or self.user_template)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": self.data.describe(),
            "system_prompt": self.system_prompt,
            "user_template": self.user_template,
        }


def _read_jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); re-save it as UTF-8") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: bad JSON ({error.msg}); each line must be one JSON object") from None
        if not isinstance(value, dict):
            raise UserError(f"{path}:{number}: each line must be a JSON object, got {type(value).__name__}")
        rows.append((number, value))
    if not rows:
        raise UserError(f"{path}: no rows; the file is empty")
    return rows


def _text_field(path: Path, number: int, row: dict[str, Any], *names: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
    raise UserError(f"{path}:{number}: missing a non-empty text field '{names[0]}'")


def _load(path: Path, name: str, parse: Callable[[Path, int, dict[str, Any]], T], limit: int = 0) -> Dataset[T]:
    items: list[T] = []
    seen: dict[str, int] = {}
    for number, row in _read_jsonl_rows(path):
        item = parse(path, number, row)
        item_id = getattr(item, "id")
        if item_id in seen:
            raise UserError(f"{path}:{number}: duplicate id '{item_id}' (first on line {seen[item_id]}); ids must be unique")
        seen[item_id] = number
        items.append(item)
    if limit > 0:
        items = stratified(items, limit)
    return Dataset(name=name, path=path, sha256=sha256_file(path), items=tuple(items))


def stratified(items: list[T], limit: int) -> list[T]:
    """The first ``limit`` rows taken round-robin over categories, kept in file order.

    A limited audit then still covers every category evenly (a plain head of a
    file sorted by category would cover only the first few).
    """
    if limit >= len(items):
        return list(items)
    by_category: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_category.setdefault(getattr(item, "category", ""), []).append(index)
    chosen: list[int] = []
    queues = [list(indices) for indices in by_category.values()]
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return [items[i] for i in sorted(chosen)]


def _row_id(row: dict[str, Any], number: int) -> str:
    value = row.get("id")
    return str(value) if value not in (None, "") else f"line-{number}"


def _parse_prompt(category_key: str) -> Callable[[Path, int, dict[str, Any]], Prompt]:
    def parse(path: Path, number: int, row: dict[str, Any]) -> Prompt:
        text = _text_field(path, number, row, "prompt")
        category = row.get(category_key) or row.get("category") or "uncategorized"
        return Prompt(id=_row_id(row, number), category=str(category), text=text)

    return parse


def _parse_question(path: Path, number: int, row: dict[str, Any]) -> Question:
    question = _text_field(path, number, row, "question")
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise UserError(f"{path}:{number}: 'choices' must be a list of at least two non-empty strings")
    answer = row.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise UserError(
            f"{path}:{number}: 'answer' must be the index of the right choice, 0 to {len(choices) - 1}; got {answer!r}"
        )
    category = row.get("domain") or row.get("category") or "uncategorized"
    return Question(_row_id(row, number), str(category), question, tuple(choices), answer)


ROLES = ("system", "user", "assistant")


def _parse_conversation(path: Path, number: int, row: dict[str, Any]) -> Conversation:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{path}:{number}: needs a 'messages' list of {{'role', 'content'}} objects")
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise UserError(
                f"{path}:{number}: each message needs 'role' (system, user or assistant) and 'content' text"
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{path}:{number}: no assistant message; nothing to train on")
    clean = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    return Conversation(id=_row_id(row, number), messages=clean)


def _builtin_or_file(spec: str, builtin_file: str) -> tuple[Path, str]:
    if spec == "builtin":
        return BUILTIN_DIR / builtin_file, f"builtin:{Path(builtin_file).stem}"
    path = Path(spec).expanduser()
    return path, str(path)


def load_harmful(spec: str = "builtin", limit: int = 0) -> Dataset[Prompt]:
    path, name = _builtin_or_file(spec, "harmful.jsonl")
    return _load(path, name, _parse_prompt("category"), limit)


def load_benign(spec: str = "builtin", limit: int = 0) -> Dataset[Prompt]:
    path, name = _builtin_or_file(spec, "benign_risky.jsonl")
    return _load(path, name, _parse_prompt("type"), limit)


def load_kl_prompts(spec: str = "builtin", limit: int = 0) -> Dataset[Prompt]:
    path, name = _builtin_or_file(spec, "kl_prompts.jsonl")
    return _load(path, name, _parse_prompt("category"), limit)


def load_capability(spec: str = "builtin", limit: int = 0) -> Dataset[Question]:
    path, name = _builtin_or_file(spec, "capability_mc.jsonl")
    return _load(path, name, _parse_question, limit)


BUILTIN_ATTACKS = {
    "identity-shift": ("identity_shift.jsonl", "identity_shift.json"),
    "benign": ("benign_instructions.jsonl", None),
}


def load_attack(spec: str) -> Attack:
    """A built-in attack by name, or a user's chat JSONL file (no trigger)."""
    if spec in BUILTIN_ATTACKS:
        data_file, trigger_file = BUILTIN_ATTACKS[spec]
        data = _load(BUILTIN_DIR / data_file, f"builtin:{spec}", _parse_conversation)
        if trigger_file is None:
            return Attack(name=spec, data=data)
        trigger = json.loads((BUILTIN_DIR / trigger_file).read_text(encoding="utf-8"))
        return Attack(
            name=spec,
            data=data,
            system_prompt=trigger.get("system_prompt"),
            user_template=trigger.get("user_template"),
        )
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(BUILTIN_ATTACKS)
        raise UserError(f"{spec}: not a built-in attack ({known}) or an existing chat JSONL file")
    return Attack(name=path.name, data=_load(path, str(path), _parse_conversation))
