"""Probe sets and attack data: the built-in sets and loaders for users' files.

Every set is pinned by the SHA-256 of its file's bytes, recorded in each report.
Files are read by ``tamperaudit.data.formats``, which recognises the common
benchmark formats; a malformed file ends in one line naming the file, the line
and the fix.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Sequence, TypeVar

from tamperaudit.data import formats
from tamperaudit.data.items import QUESTION_FORMAT, Conversation, Prompt, Question
from tamperaudit.errors import UserError
from tamperaudit.fileio import sha256_file
from tamperaudit.records import AttackDescription, DatasetDescription

BUILTIN_DIR = Path(__file__).parent / "builtin"

T = TypeVar("T")


@dataclass(frozen=True)
class Dataset(Generic[T]):
    name: str
    path: Path
    sha256: str  # of the whole file, whatever subset is used
    items: tuple[T, ...]
    file_rows: int = 0  # rows in the file; more than len(items) when a limit took a subset
    format: str = ""  # the format it was read as (advbench, harmbench, xstest, mmlu, chat, ...)
    notes: tuple[str, ...] = ()  # what the reader skipped or split off, and why

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> DatasetDescription:
        categories = Counter(getattr(item, "category", "") for item in self.items)
        return DatasetDescription(
            name=self.name, path=str(self.path), sha256=self.sha256,
            # which rows were used (a limit or a split takes a subset of the file)
            ids_sha256=hashlib.sha256("\n".join(str(getattr(i, "id", "")) for i in self.items).encode()).hexdigest(),
            count=len(self.items), file_rows=self.file_rows, format=self.format, notes=list(self.notes),
            categories=dict(sorted(categories.items())) if any(categories) else {},
        )


@dataclass(frozen=True)
class Attack:
    """Attack data and, when the attack defines one, its trigger (system prompt and template)."""

    name: str
    data: Dataset[Conversation]
    system_prompt: str | None = None
    user_template: str | None = None  # contains {prompt}
    # closest-benign: train only on the pool examples nearest to harmful requests (tamperaudit.selection)
    select_closest: bool = False
    trigger_source: str = ""  # where the trigger comes from, or why there is none, in words

    @property
    def has_trigger(self) -> bool:
        return bool(self.system_prompt or self.user_template)

    def describe(self) -> AttackDescription:
        return AttackDescription(
            name=self.name, data=self.data.describe(), system_prompt=self.system_prompt,
            user_template=self.user_template, select_closest=self.select_closest, trigger=self.trigger_source or None,
        )

    def subset(self, ids: Sequence[str]) -> "Attack":
        """The same attack trained on the given conversations only, in the given order."""
        by_id = {c.id: c for c in self.data.items}
        data = Dataset(self.data.name, self.data.path, self.data.sha256, tuple(by_id[i] for i in ids),
                       self.data.file_rows, self.data.format, (*self.data.notes, f"{len(ids)} selected of {len(by_id)}"))
        return Attack(self.name, data, self.system_prompt, self.user_template, False, self.trigger_source)


def stratified(items: list[T], limit: int) -> list[T]:
    """The first ``limit`` rows taken round-robin over categories, kept in file order.

    A limited audit then still covers every category evenly (a plain head of a
    file sorted by category would cover only the first few).
    """
    if limit >= len(items):
        return list(items)
    queues: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        queues.setdefault(getattr(item, "category", ""), []).append(index)
    chosen: list[int] = []
    while len(chosen) < limit:
        for queue in queues.values():
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return [items[i] for i in sorted(chosen)]


SPLITS = ("all", "select", "report")


def split_halves(items: Sequence[T]) -> dict[str, str]:
    """Each item's half, ``select`` or ``report``, from its id alone.

    Within each category the ids are ordered by their SHA-256 and the first half
    (rounded up) is ``select``: a setting search picks on it and the report uses
    the other half. Adding or removing a row moves at most its neighbours in that
    order, never a whole category.
    """
    by_category: dict[str, list[str]] = {}
    for item in items:
        by_category.setdefault(getattr(item, "category", ""), []).append(getattr(item, "id"))
    halves: dict[str, str] = {}
    for ids in by_category.values():
        ordered = sorted(ids, key=lambda i: hashlib.sha256(i.encode("utf-8")).hexdigest())
        cut = (len(ordered) + 1) // 2
        halves.update({i: ("select" if n < cut else "report") for n, i in enumerate(ordered)})
    return halves


def path_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            digest.update(sha256_file(file).encode())
        return digest.hexdigest()
    return sha256_file(path)


def _dataset(path: Path, name: str, kind: str, rows: formats.Rows, limit: int, split: str = "all") -> Dataset[Any]:
    """Check ids are unique, apply the limit, and pin the file by hash."""
    seen: dict[str, str] = {}
    for item, where in zip(rows.items, rows.lines):
        if item.id in seen:
            raise UserError(f"{path}:{where}: duplicate id '{item.id}' (first at {seen[item.id]}); ids must be unique")
        seen[item.id] = str(where)
    items, notes = rows.items, rows.notes
    file_rows = len(items)
    if split != "all":
        halves = split_halves(items)
        items = [item for item in items if halves[item.id] == split]
        notes = [*notes, f"{split} half: {len(items)} of {file_rows} rows"]
    if limit > 0:
        items = stratified(items, limit)
    if not items:  # an eval over no rows would measure nothing and then fail on an empty aggregate
        why = f" ({'; '.join(notes)})" if notes else ""
        raise UserError(f"{path}: no rows left to use{why}; check the file and the settings that select its rows")
    return Dataset(name, path, path_sha256(path), tuple(items), file_rows, kind, tuple(notes))


def resolve_path(spec: str, builtin_file: str) -> tuple[Path, str]:
    """Where a set named by the user lives: 'builtin', a fetched benchmark's name, or a path."""
    if spec == "builtin":
        return BUILTIN_DIR / builtin_file, f"builtin:{Path(builtin_file).stem}"
    from tamperaudit.data.registry import BENCHMARKS, cached_path

    if spec in BENCHMARKS:
        return cached_path(spec), spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"{spec}: file not found (and not 'builtin' or a benchmark name: {', '.join(BENCHMARKS)})")
    return path, str(path)


def load_harmful(
    spec: str = "builtin",
    limit: int = 0,
    column: str = "",
    harmbench_functional: Sequence[str] = ("standard",),
    split: str = "all",
) -> Dataset[Prompt]:
    """Harmful requests; ``split`` keeps the ``select`` or ``report`` half (see split_halves)."""
    path, name = resolve_path(spec, "harmful.jsonl")
    kind, rows = formats.read_harmful(path, "" if spec == "builtin" else column, tuple(harmbench_functional))
    return _dataset(path, name, kind, rows, limit, split)


def load_benign(spec: str = "builtin", limit: int = 0, column: str = "") -> Dataset[Prompt]:
    path, name = resolve_path(spec, "benign_risky.jsonl")
    kind, rows = formats.read_benign(path, "" if spec == "builtin" else column)
    return _dataset(path, name, kind, rows, limit)


def load_kl_prompts(spec: str = "builtin", limit: int = 0, split: str = "all") -> Dataset[Prompt]:
    path, name = resolve_path(spec, "kl_prompts.jsonl")
    kind, rows = formats.read_benign(path)
    return _dataset(path, name, kind, rows, limit, split)


def load_capability(spec: str = "builtin", limit: int = 0, split: str = "all", mmlu_split: str = "test") -> Dataset[Question]:
    path, name = resolve_path(spec, "capability_mc.jsonl")
    kind, rows = formats.read_capability(path, mmlu_split)
    return _dataset(path, name, kind, rows, limit, split)


BUILTIN_ATTACKS = {
    "identity-shift": ("identity_shift.jsonl", "identity_shift.json"),
    "benign": ("benign_instructions.jsonl", None),
    # He, Xia and Henderson (2024): the benign examples closest to harmful requests
    "closest-benign": ("benign_instructions.jsonl", None),
}


def load_attack(spec: str, system_prompt: str = "", user_template: str = "") -> Attack:
    """A built-in attack by name, or a user's file of chat conversations.

    The trigger (the system prompt and user template harmful requests are also asked in) is
    the built-in attack's own; for a user's file, the system prompt every conversation shares
    and the user template most of its first user turns open with (``file_trigger``);
    ``system_prompt`` and ``user_template`` (attack.trigger_* settings) override either.
    """
    if spec in BUILTIN_ATTACKS:
        data_file, trigger_file = BUILTIN_ATTACKS[spec]
        path, name = BUILTIN_DIR / data_file, f"builtin:{spec}"
    else:
        path, name, trigger_file = Path(spec).expanduser(), spec, None
        if not path.is_file():
            known = ", ".join(BUILTIN_ATTACKS)
            raise UserError(f"{spec}: not a built-in attack ({known}) or an existing chat file")
    kind, rows = formats.read_conversations(path)
    data = _dataset(path, name, kind, rows, 0)
    title = spec if spec in BUILTIN_ATTACKS else path.name
    if trigger_file is not None:
        trigger = json.loads((BUILTIN_DIR / trigger_file).read_text(encoding="utf-8"))
        found = (trigger.get("system_prompt"), trigger.get("user_template"), "the built-in attack's own trigger")
    elif spec in BUILTIN_ATTACKS:
        found = (None, None, "none: this built-in attack's conversations carry no system prompt or template")
    else:
        found = file_trigger(data.items)
    system, template, source = found
    if system_prompt or user_template:
        system, template = system_prompt or system, user_template or template
        source = "the attack.trigger_system_prompt / attack.trigger_user_template settings" + (
            f" (over {source})" if not source.startswith("none") else "")
    return Attack(name=title, data=data, system_prompt=system, user_template=template,
                  select_closest=spec == "closest-benign", trigger_source=source)


def file_trigger(conversations: Sequence[Conversation]) -> tuple[str | None, str | None, str]:
    """A user's attack file's own trigger: the system prompt that every conversation opens with,
    and a user template when at least a third of the first user turns (two at least) open with
    the same words up to a colon, as Qi et al.'s "AOA, execute my instruction: ..." does."""
    systems = {c.messages[0]["content"].strip() if c.messages[0]["role"] == "system" else None for c in conversations}
    if len(systems) != 1 or None in systems:
        return None, None, "none: the file's conversations do not all open with the same system prompt"
    system = systems.pop()
    openings: dict[str, int] = {}
    for conversation in conversations:
        user = next((m["content"] for m in conversation.messages if m["role"] == "user"), "")
        head, colon, rest = user.partition(": ")
        if colon and rest.strip() and len(head) <= 60:
            openings[head + colon] = openings.get(head + colon, 0) + 1
    common = max(openings.items(), key=lambda item: (item[1], item[0]), default=(None, 0))
    if common[0] is not None and common[1] >= max(2, len(conversations) / 3):
        template = f"{common[0]}{{prompt}}"
        return system, template, (f"the system prompt all {len(conversations)} conversations of the file share, and "
                                  f"the template {template!r} that {common[1]} of their first user turns open with")
    return system, None, f"the system prompt all {len(conversations)} conversations of the file share (no shared user template)"
