"""Readers for the benchmark formats people already use, so their numbers compare.

Each reader turns one file (or folder) into items, and reports bad input as one
line naming the file, the line and the fix. The format is recognised from the
file's columns or fields, not its name:

- harmful requests: AdvBench (``goal``), HarmBench (``Behavior`` with
  ``FunctionalCategory``; standard behaviours only unless asked), StrongREJECT
  (``forbidden_prompt``, or the ``meli_query`` header some copies carry),
  SORRY-Bench-style JSONL (``turns``), or any CSV/JSONL with a ``prompt`` column
  (or the column named by ``eval.prompt_column``);
- over-refusal: XSTest (``label`` safe/unsafe: safe prompts measure over-refusal,
  unsafe contrast prompts are kept apart and reported as their own refusal rate);
- capability: MMLU CSVs (a file or a folder of them), ``query``/``choices``/``gold``
  JSONL (ARC, PIQA, BoolQ as converted by llm-foundry), WinoGrande
  ``context_options``/``continuation``, HellaSwag text (``.txt`` or ``.txt.bz2``,
  6 lines a task), TruthfulQA ``mc_task.json`` (MC1), and the built-in JSONL form;
- attack data: chat JSONL (``messages``), Alpaca (``instruction``/``input``/``output``,
  JSON list or JSONL), and the Qi et al. identity-shift form (a JSON list of
  conversations, each a list of messages).
"""

from __future__ import annotations

import bz2
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tamperaudit.data.items import QUESTION_FORMAT, Conversation, Prompt, Question
from tamperaudit.errors import UserError

MMLU_LETTERS = ("A", "B", "C", "D")


@dataclass
class Rows:
    """Items read from a file, where each came from, and notes on what was skipped and why."""

    items: list[Any] = field(default_factory=list)
    lines: list[int | str] = field(default_factory=list)  # line number, or "item N" in a JSON list
    notes: list[str] = field(default_factory=list)

    def add(self, item: Any, where: int | str) -> None:
        self.items.append(item)
        self.lines.append(where)


def read_text(path: Path) -> str:
    """UTF-8 text (a BOM is dropped), decompressing .bz2; bad encodings are a user error."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    data = path.read_bytes()
    if path.suffix == ".bz2":
        try:
            data = bz2.decompress(data)
        except OSError:
            raise UserError(f"{path}: not a valid bz2 file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text; re-save the file as UTF-8") from None


def csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs; line numbers count physical lines."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = []
        line = reader.line_num
        for row in reader:
            rows.append((line + 1, {k: (v or "") for k, v in row.items() if k is not None}))
            line = reader.line_num
    except csv.Error as error:
        raise UserError(f"{path}:{reader.line_num}: bad CSV ({error})") from None
    if not header or not rows:
        raise UserError(f"{path}: no rows; the file is empty or has only a header")
    return header, rows


def _checked(reader: Any, path: Path) -> Any:
    """Rows of a csv reader, with a CSV syntax error turned into a user error naming the line."""
    try:
        yield from reader
    except csv.Error as error:
        raise UserError(f"{path}:{reader.line_num}: bad CSV ({error})") from None


def jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
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


def json_document(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: bad JSON ({error.msg})") from None


def records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Rows of a CSV or JSONL file with the union of their keys; format from the suffix."""
    if path.suffix.lower() == ".csv":
        return csv_rows(path)
    rows = jsonl_rows(path)
    keys: list[str] = []
    for _, row in rows:
        keys += [k for k in row if k not in keys]
    return keys, rows


def require(path: Path, number: int, row: dict[str, Any], name: str, fix: str = "") -> str:
    value = row.get(name)
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{path}:{number}: empty or missing '{name}'" + (f"; {fix}" if fix else ""))
    return value


# --- harmful requests --------------------------------------------------------------------


def harmful_format(header: list[str], column: str) -> str:
    columns = set(header)
    if column:
        return "named"
    if {"Behavior", "FunctionalCategory"} <= columns:
        return "harmbench"
    if "goal" in columns:
        return "advbench"
    if "forbidden_prompt" in columns or "meli_query" in columns:
        return "strongreject"
    if "turns" in columns:
        return "sorry-bench"
    if "prompt" in columns:
        return "generic"
    return ""


def read_harmful(path: Path, column: str = "", harmbench_functional: tuple[str, ...] = ("standard",)) -> tuple[str, Rows]:
    """(format name, prompts)."""
    header, rows = records(path)
    kind = harmful_format(header, column)
    if not kind:
        raise UserError(
            f"{path}: no prompt column among {', '.join(header[:8])}; name it with "
            "--set eval.prompt_column=COLUMN (AdvBench, HarmBench, StrongREJECT and SORRY-Bench files are recognised)"
        )
    result = Rows()
    skipped: dict[str, int] = {}
    for number, row in rows:
        if kind == "harmbench":
            functional = row.get("FunctionalCategory", "")
            if functional not in harmbench_functional:
                skipped[functional] = skipped.get(functional, 0) + 1
                continue
            text = require(path, number, row, "Behavior")
            if row.get("ContextString", "").strip():
                text = f"{row['ContextString'].strip()}\n\n---\n\n{text}"  # HarmBench's contextual layout
            result.add(Prompt(row.get("BehaviorID") or f"line-{number}", row.get("SemanticCategory") or functional, text), number)
            continue
        name = {"advbench": "goal", "sorry-bench": "turns", "generic": "prompt", "named": column}.get(kind)
        if kind == "strongreject":
            name = "forbidden_prompt" if "forbidden_prompt" in row else "meli_query"
        text = require(path, number, row, name)
        identifier = str(row.get("id") or row.get("question_id") or f"line-{number}")
        category = str(row.get("category") or row.get("type") or kind)
        result.add(Prompt(identifier, category, text), number)
    if skipped:
        parts = ", ".join(f"{count} {name}" for name, count in sorted(skipped.items()))
        result.notes.append(
            f"HarmBench: kept {len(result.items)} behaviours of functional category {'/'.join(harmbench_functional)}; "
            f"skipped {parts} (set eval.harmbench_functional to include them)"
        )
    return kind, result


def read_benign(path: Path, column: str = "") -> tuple[str, Rows]:
    """Benign prompts; XSTest's unsafe contrast prompts get the group 'unsafe'."""
    header, rows = records(path)
    if {"prompt", "type", "label"} <= set(header):
        result = Rows()
        for number, row in rows:
            label = row.get("label", "").strip()
            if label not in ("safe", "unsafe"):
                raise UserError(f"{path}:{number}: XSTest 'label' must be safe or unsafe, got {label!r}")
            text = require(path, number, row, "prompt")
            group = "" if label == "safe" else "unsafe"
            result.add(Prompt(str(row.get("id") or f"line-{number}"), row["type"], text, group), number)
        unsafe = sum(1 for item in result.items if item.group)
        result.notes.append(f"XSTest: {len(result.items) - unsafe} safe prompts measure over-refusal; {unsafe} unsafe contrast prompts are reported apart")
        return "xstest", result
    name = column or "prompt"
    if name not in header:
        raise UserError(
            f"{path}: no '{name}' column among {', '.join(header[:8])}; name it with --set eval.benign_prompt_column=COLUMN"
        )
    result = Rows()
    for number, row in rows:
        text = require(path, number, row, name)
        category = str(row.get("type") or row.get("category") or "benign")
        result.add(Prompt(str(row.get("id") or f"line-{number}"), category, text), number)
    return "generic", result


# --- capability ----------------------------------------------------------------------------


def _answer_index(path: Path, number: int, value: Any, count: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
        raise UserError(f"{path}:{number}: the answer must be a choice index from 0 to {count - 1}; got {value!r}")
    return value


def _mmlu_file(path: Path, rows: Rows, prefix: str = "") -> None:
    """MMLU's header-less CSV: question, four options, answer letter; scored by the letter."""
    subject = path.stem.removesuffix("_test").removesuffix("_val").removesuffix("_dev")
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    count = 0
    for row in _checked(reader, path):
        count += 1
        number = reader.line_num
        if len(row) != 6:
            raise UserError(f"{path}:{number}: MMLU rows have 6 columns (question, A, B, C, D, answer); got {len(row)}")
        letter = row[5].strip()
        if letter not in MMLU_LETTERS:
            raise UserError(f"{path}:{number}: the answer must be one of A, B, C, D; got {letter!r}")
        listed = "\n".join(f"{l}. {o}" for l, o in zip(MMLU_LETTERS, row[1:5]))
        context = f"{row[0].strip()}\n{listed}\nAnswer:"
        question = Question.shared(f"{subject}-{count}", subject, context, MMLU_LETTERS, MMLU_LETTERS.index(letter))
        rows.add(question, f"{prefix}{number}")
    if not count:
        raise UserError(f"{path}: no rows; the file is empty")


def _hellaswag(path: Path, rows: Rows) -> None:
    """klosax's text form of HellaSwag: context, label, four endings; 6 lines a task."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or len(lines) % 6:
        raise UserError(f"{path}: HellaSwag text has 6 lines a task (context, label, 4 endings); got {len(lines)} lines")
    for task in range(len(lines) // 6):
        context, label, *endings = lines[task * 6 : task * 6 + 6]
        number = task * 6 + 2
        answer = _answer_index(path, number, label, 4)
        rows.add(Question.shared(f"hellaswag-{task + 1}", "hellaswag", context, endings, answer), number)


def _truthfulqa(path: Path, rows: Rows) -> None:
    """TruthfulQA's mc_task.json, scored as MC1 (one correct answer among the targets)."""
    document = json_document(path)
    if not isinstance(document, list) or not document:
        raise UserError(f"{path}: TruthfulQA mc_task.json must be a JSON list of questions")
    for index, item in enumerate(document, start=1):
        targets = item.get("mc1_targets") if isinstance(item, dict) else None
        if not isinstance(targets, dict) or list(targets.values()).count(1) != 1:
            raise UserError(f"{path}: question {index} needs 'mc1_targets' with exactly one correct answer")
        context = f"Q: {str(item.get('question', '')).strip()}\nA:"
        answer = list(targets.values()).index(1)
        rows.add(Question.shared(f"truthfulqa-{index}", "truthfulqa", context, list(targets), answer), f"item {index}")


def _choices(path: Path, number: int, row: dict[str, Any]) -> list[str]:
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise UserError(f"{path}:{number}: 'choices' must be a list of at least two non-empty strings")
    return choices


def _question_row(path: Path, number: int, row: dict[str, Any]) -> tuple[str, Question]:
    """One JSONL multiple-choice row in any of the three JSONL forms."""
    identifier = str(row.get("id") or f"line-{number}")
    if "context_options" in row:
        contexts, continuation = row.get("context_options"), row.get("continuation")
        if not isinstance(contexts, list) or len(contexts) < 2 or not isinstance(continuation, str):
            raise UserError(f"{path}:{number}: WinoGrande rows need 'context_options' (a list) and 'continuation' text")
        answer = _answer_index(path, number, row.get("gold"), len(contexts))
        return "winogrande", Question(identifier, "winogrande", tuple((c, continuation) for c in contexts), answer)
    if "query" in row:
        choices = _choices(path, number, row)
        context = f"{str(row['query']).rstrip()}\nAnswer:"
        answer = _answer_index(path, number, row.get("gold"), len(choices))
        return "query-choices-gold", Question.shared(identifier, str(row.get("category") or path.stem), context, choices, answer)
    if "question" in row and "choices" in row:
        choices = _choices(path, number, row)
        answer = row.get("answer")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise UserError(
                f"{path}:{number}: 'answer' must be the index of the right choice, 0 to {len(choices) - 1}; got {answer!r}"
            )
        context = QUESTION_FORMAT.format(question=require(path, number, row, "question"))
        category = str(row.get("domain") or row.get("category") or "uncategorized")
        return "tamperaudit", Question.shared(identifier, category, context, choices, answer)
    raise UserError(
        f"{path}:{number}: not a known multiple-choice row; expected question/choices/answer, "
        "query/choices/gold or context_options/continuation/gold"
    )


MMLU_SPLITS = ("test", "val", "dev")


def read_capability(path: Path, mmlu_split: str = "test") -> tuple[str, Rows]:
    """(format name, questions) from a file or a folder of MMLU CSVs. A folder laid out as MMLU
    is published (``dev/``, ``val/``, ``test/``) gives the questions of ``mmlu_split`` only: the
    same question ids recur across the splits."""
    rows = Rows()
    if path.is_dir():
        splits = [name for name in MMLU_SPLITS if (path / name).is_dir() and any((path / name).glob("*.csv"))]
        folder = path
        if splits:
            if mmlu_split not in splits:
                raise UserError(f"{path}: no {mmlu_split}/ folder of CSVs (found {', '.join(splits)}); set eval.mmlu_split")
            folder = path / mmlu_split
            rows.notes.append(f"MMLU {mmlu_split} split (eval.mmlu_split; the folder has {', '.join(splits)})")
        files = sorted(folder.rglob("*.csv"))
        if not files:
            raise UserError(f"{path}: a capability folder must hold MMLU-style CSV files; none found")
        for file in files:
            _mmlu_file(file, rows, prefix=f"{file.relative_to(path)}:")
        return "mmlu", rows
    name = path.name.lower()
    if name.endswith((".txt", ".txt.bz2")):
        _hellaswag(path, rows)
        return "hellaswag", rows
    if path.suffix.lower() == ".csv":
        _mmlu_file(path, rows)
        return "mmlu", rows
    if path.suffix.lower() == ".json":
        _truthfulqa(path, rows)
        return "truthfulqa-mc1", rows
    kind = ""
    for number, row in jsonl_rows(path):
        kind, question = _question_row(path, number, row)
        rows.add(question, number)
    return kind, rows


# --- attack data ---------------------------------------------------------------------------


def _messages(path: Path, where: str, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{path}:{where}: needs a list of {{'role', 'content'}} messages")
    clean = []
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("system", "user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise UserError(f"{path}:{where}: each message needs 'role' (system, user or assistant) and 'content' text")
        clean.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise UserError(f"{path}:{where}: no assistant message; nothing to train on")
    _check_role_order(path, where, [m["role"] for m in clean])
    return clean


def _check_role_order(path: Path, where: str, roles: list[str]) -> None:
    """System first if at all, then user and assistant turns taking turns, a user turn first:
    what chat templates render (and what the loss masking's prefix rendering assumes)."""
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if index % 2 == 0 else "assistant" for index in range(len(turns))]
    if turns != expected:
        position = next(i for i, (got, want) in enumerate(zip(turns, expected)) if got != want)
        number = position + 1 + (len(roles) - len(turns))
        raise UserError(
            f"{path}:{where}: message {number} has role {turns[position]} where {expected[position]} belongs; "
            "after an optional system message, user and assistant turns must alternate, starting with user"
        )


def _alpaca(path: Path, where: str, row: dict[str, Any]) -> list[dict[str, str]]:
    instruction = row.get("instruction")
    output = row.get("output")
    if not isinstance(instruction, str) or not instruction.strip() or not isinstance(output, str) or not output.strip():
        raise UserError(f"{path}:{where}: Alpaca rows need non-empty 'instruction' and 'output'")
    extra = row.get("input") or ""
    user = f"{instruction.strip()}\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else instruction.strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def read_conversations(path: Path) -> tuple[str, Rows]:
    """(format name, conversations) from chat JSONL, Alpaca, or the Qi et al. list form."""
    rows = Rows()
    kind = ""
    if path.suffix.lower() == ".json":
        document = json_document(path)
        if not isinstance(document, list) or not document:
            raise UserError(f"{path}: expected a JSON list of conversations or Alpaca records")
        entries: list[tuple[int | str, Any]] = [(f"item {i}", entry) for i, entry in enumerate(document, start=1)]
    else:
        entries = list(jsonl_rows(path))
    for where, entry in entries:
        fallback = f"item-{where}".replace(" ", "-") if isinstance(where, str) else f"line-{where}"
        if isinstance(entry, list):  # Qi et al.: each conversation is a bare list of messages
            kind, identifier, messages = "qi-identity-shift", fallback, _messages(path, str(where), entry)
        elif isinstance(entry, dict) and "messages" in entry:
            kind, identifier, messages = "chat", str(entry.get("id") or fallback), _messages(path, str(where), entry["messages"])
        elif isinstance(entry, dict) and "instruction" in entry:
            kind, identifier, messages = "alpaca", str(entry.get("id") or fallback), _alpaca(path, str(where), entry)
        else:
            raise UserError(f"{path}:{where}: needs 'messages' (chat), 'instruction'/'output' (Alpaca), or a list of messages")
        rows.add(Conversation(identifier, tuple(messages)), where)
    return kind, rows
