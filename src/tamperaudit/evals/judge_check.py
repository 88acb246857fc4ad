"""How far a judge agrees with reference labels, and a helper to make those labels.

``judge-check`` reads JSONL rows ``{"prompt", "completion", "label"}`` (label is
refused, complied or unclear; optional ``id`` and ``split``), or CSV files with prompt,
completion and label columns and a mapping of their labels onto the three verdicts (so
that XSTest- or HarmBench-style human labels are checked with one command), runs a judge
on them and reports agreement, Cohen's kappa, precision and recall of ``refused`` and the
confusion matrix, each share with its 95% interval, overall and per group (``--by``). ``label`` shows a run's completions one at a time, without the
judge's verdict, and appends the labeller's label to such a file. (The shipped set
was labelled by AI agents, not people: see its data card.)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from tamperaudit.data.formats import jsonl_rows
from tamperaudit.errors import UserError
from tamperaudit.evals.verdicts import REFUSED, VERDICTS, Judge
from tamperaudit.fileio import parse_records, read_text
from tamperaudit.jsonrecord import Record, Scalar, field
from tamperaudit.records import GenerationSample, Rate, Sample
from tamperaudit.report.words import interval
from tamperaudit.stats import rate


@dataclass(frozen=True)
class LabelColumns:
    """Where a CSV file keeps its rows' parts, and how its labels map onto the verdicts."""

    prompt: str = "prompt"
    completion: str = "completion"
    label: str = "label"
    mapping: tuple[tuple[str, str], ...] = ()  # (the file's label, a verdict); empty: the verdicts themselves

    @staticmethod
    def parse_mapping(text: str) -> tuple[tuple[str, str], ...]:
        """``2_full_refusal=refused,1_full_compliance=complied`` as pairs, each verdict checked."""
        pairs = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            theirs, equals, ours = part.rpartition("=")
            if not equals or not theirs or ours not in VERDICTS:
                raise UserError(f"--label-map: {part!r} must be THEIR_LABEL=VERDICT, the verdict one of {', '.join(VERDICTS)}")
            pairs.append((theirs.strip(), ours))
        return tuple(pairs)


def read_labels(path: Path, split: str = "", skip_truncated: bool = False,
                columns: LabelColumns | None = None) -> list[dict[str, Any]]:
    """Labelled rows from a JSONL file, or from a CSV file read through ``columns``."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_labels(path, columns or LabelColumns())
    rows = []
    for number, row in jsonl_rows(path):
        for key in ("prompt", "completion", "label"):
            if not isinstance(row.get(key), str):
                raise UserError(f"{path}:{number}: needs text fields 'prompt', 'completion' and 'label' ('{key}' is missing)")
        if row["label"] not in VERDICTS:
            raise UserError(f"{path}:{number}: 'label' must be refused, complied or unclear; got {row['label']!r}")
        if (not split or row.get("split") == split) and not (skip_truncated and row.get("truncated")):
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: no labelled rows" + (f" with split '{split}'" if split else ""))
    return rows


def _csv_labels(path: Path, columns: LabelColumns) -> list[dict[str, Any]]:
    import csv

    mapping = dict(columns.mapping) or {v: v for v in VERDICTS}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            header = reader.fieldnames or []
            wanted = (columns.prompt, columns.completion, columns.label)
            absent = [name for name in wanted if name not in header]
            if absent:
                raise UserError(f"{path}: no column {absent[0]!r} among {', '.join(header[:10])}; name the columns with "
                                "--prompt-column, --completion-column and --label-column")
            rows = []
            for number, row in enumerate(reader, start=2):
                theirs = (row[columns.label] or "").strip()
                if theirs not in mapping:
                    raise UserError(f"{path}:{number}: label {theirs!r} is not mapped to a verdict; map every label with "
                                    "--label-map THEIR_LABEL=VERDICT,...")
                rows.append({**row, "id": row.get("id") or f"{path.name}:{number}", "prompt": row[columns.prompt] or "",
                             "completion": row[columns.completion] or "", "label": mapping[theirs], "file": path.name})
    except FileNotFoundError:
        raise UserError(f"{path}: no such labels file") from None
    if not rows:
        raise UserError(f"{path}: no labelled rows")
    return rows


def confusion(labels: Sequence[str], judged: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts by [reference label][judge verdict]."""
    table = {h: {j: 0 for j in VERDICTS} for h in VERDICTS}
    for h, j in zip(labels, judged):
        table[h][j] += 1
    return table


def cohen_kappa(table: dict[str, dict[str, int]]) -> float | None:
    """Agreement beyond chance (Cohen 1960); None when chance agreement is total."""
    total = sum(sum(row.values()) for row in table.values())
    if not total:
        return None
    observed = sum(table[v][v] for v in VERDICTS) / total
    expected = sum(
        (sum(table[v].values()) / total) * (sum(table[h][v] for h in VERDICTS) / total) for v in VERDICTS
    )
    return None if expected == 1 else (observed - expected) / (1 - expected)


@dataclass(frozen=True, kw_only=True)
class Agreement(Record):
    """How far a judge's verdicts agree with reference labels."""

    n: int = field("labelled rows")
    agreement: Rate = field("rows whose verdict is the label (three-way)")
    cohen_kappa: float | None = field("agreement beyond chance; null when chance agreement is total")
    cohen_kappa_interval: list[float] | None = field(
        "95% bootstrap interval of the kappa (1,000 resamples of the rows, seed 0); null when it cannot be computed")
    refused_precision: Rate = field("of the rows judged refused, those labelled refused")
    refused_recall: Rate = field("of the rows labelled refused, those judged refused")
    confusion: dict[str, dict[str, int]] = field("counts by [label][verdict]")


@dataclass(frozen=True, kw_only=True)
class Disagreement(Record):
    """A row where the judge and the label differ."""

    id: Scalar = field("the row's id (its position when it has none)")
    label: str = field("the reference label")
    verdict: str = field("the judge's verdict")
    reason: str = field("the judge's reason")


@dataclass(frozen=True, kw_only=True)
class JudgeCheck(Agreement):
    """``judge-check``'s result: the agreement, the judge, and every disagreement."""

    judge: dict[str, Scalar] = field("the judge's identity")
    disagreements: list[Disagreement] = field("rows where verdict and label differ")
    by: str | None = field("the column (or 'file') the rows were grouped by, if any")
    groups: dict[str, Agreement] = field("the same figures for each group of rows")


def kappa_interval(labels: Sequence[str], judged: Sequence[str], resamples: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval (95%) of Cohen's kappa over resampled rows."""
    import numpy as np

    if len(labels) < 2:
        return None
    index = {v: i for i, v in enumerate(VERDICTS)}
    pairs = np.array([index[h] * len(VERDICTS) + index[j] for h, j in zip(labels, judged)])
    draws = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    kappas = []
    for draw in draws:
        counts = np.bincount(pairs[draw], minlength=len(VERDICTS) ** 2).reshape(len(VERDICTS), len(VERDICTS))
        value = cohen_kappa({h: {j: int(counts[a, b]) for b, j in enumerate(VERDICTS)} for a, h in enumerate(VERDICTS)})
        if value is not None:
            kappas.append(value)
    if len(kappas) < resamples / 2:
        return None
    low, high = np.percentile(kappas, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def _agreement(labels: Sequence[str], judged: Sequence[str]) -> dict[str, Any]:
    table = confusion(labels, judged)
    agree = sum(table[v][v] for v in VERDICTS)
    judged_refused = sum(table[h][REFUSED] for h in VERDICTS)
    labelled_refused = sum(table[REFUSED].values())
    return {
        "n": len(labels),
        "agreement": rate(agree, len(labels)),
        "cohen_kappa": cohen_kappa(table),
        "cohen_kappa_interval": kappa_interval(labels, judged),
        "refused_precision": rate(table[REFUSED][REFUSED], judged_refused),
        "refused_recall": rate(table[REFUSED][REFUSED], labelled_refused),
        "confusion": table,
    }


def agreement_report(labels: Sequence[str], judged: Sequence[str]) -> Agreement:
    return Agreement(**_agreement(labels, judged))


def check(judge: Judge, rows: Sequence[dict[str, Any]], by: str = "") -> JudgeCheck:
    """The judge's verdicts on ``rows`` against their labels; with ``by``, also per value of
    that field (a CSV column, or ``file`` for the file a row came from)."""
    if by and any(by not in r for r in rows):
        raise UserError(f"--by {by}: not every row has a {by!r} field (a CSV column, or 'file')")
    verdicts = judge.judge_many([(r["prompt"], r["completion"]) for r in rows])
    disagreements = [
        Disagreement(id=r.get("id", index), label=r["label"], verdict=v.label, reason=v.reason)
        for index, (r, v) in enumerate(zip(rows, verdicts))
        if r["label"] != v.label
    ]
    groups = {}
    for value in sorted({str(r[by]) for r in rows}) if by else ():
        chosen = [(r["label"], v.label) for r, v in zip(rows, verdicts) if str(r[by]) == value]
        groups[value] = agreement_report([h for h, _ in chosen], [j for _, j in chosen])
    return JudgeCheck(**_agreement([r["label"] for r in rows], [v.label for v in verdicts]), judge=judge.describe(),
                      disagreements=disagreements, by=by or None, groups=groups)


def _pct(share: Rate) -> str:
    return interval(share, digits=1)


def _kappa(result: Agreement) -> str:
    if result.cohen_kappa is None:
        return "n/a"
    bounds = result.cohen_kappa_interval
    return f"{result.cohen_kappa:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def _figures(result: Agreement, title: str) -> list[str]:
    lines = [
        title,
        f"agreement {_pct(result.agreement)}; Cohen's kappa {_kappa(result)}",
        f"refused: precision {_pct(result.refused_precision)}, recall {_pct(result.refused_recall)}",
        "confusion (rows: reference label, columns: judge verdict)",
        f"{'':>10}" + "".join(f"{v:>10}" for v in VERDICTS),
    ]
    for label in VERDICTS:
        lines.append(f"{label:>10}" + "".join(f"{result.confusion[label][v]:>10}" for v in VERDICTS))
    return lines


def format_check(result: JudgeCheck, source: str) -> str:
    lines = _figures(result, f"judge {result.judge['name']} on {source} (n={result.n})")
    for value, group in result.groups.items():
        lines += ["", *_figures(group, f"{result.by} = {value} (n={group.n})")]
    return "\n".join(lines)


# --- the labelling helper ---------------------------------------------------------------------

KEYS = {"r": "refused", "c": "complied", "u": "unclear"}


def label_candidates(run: Path, evals: Iterable[str]) -> list[dict[str, Any]]:
    """Every generated completion in a run folder, as rows to label (verdicts left out)."""
    wanted = set(evals)
    rows = []
    for samples in sorted(run.rglob("samples.jsonl")):  # arms in subfolders (control/budget-...) too
        stage = samples.parent.relative_to(run).as_posix()
        found: list[Sample] = parse_records(read_text(samples), samples, Sample)
        for sample in found:
            if isinstance(sample, GenerationSample) and sample.eval in wanted:
                rows.append(
                    {"id": f"{stage}/{sample.eval}/{sample.mode}/{sample.id}", "prompt": sample.prompt,
                     "completion": sample.completion}
                )
    if not rows:
        raise UserError(f"{run}: no completions to label (is it a run folder with samples.jsonl files?)")
    return rows


def label_session(
    rows: list[dict[str, Any]],
    out: Path,
    ask: Callable[[str], str],
    show: TextIO,
    sample: int = 0,
    seed: int = 0,
) -> int:
    """Ask for labels, appending each answer to ``out`` at once; return how many were added."""
    done = {row.get("id") for _, row in jsonl_rows(out)} if out.is_file() and out.stat().st_size else set()
    random.Random(seed).shuffle(rows)
    if sample:
        rows = rows[:sample]
    todo = [row for row in rows if row["id"] not in done]
    added = 0
    for position, row in enumerate(todo, start=1):
        show.write(f"\n--- {position}/{len(todo)}  {row['id']}\nPROMPT: {row['prompt']}\nCOMPLETION:\n{row['completion']}\n")
        while True:
            try:
                answer = ask("[r]efused [c]omplied [u]nclear [s]kip [q]uit: ").strip().lower()[:1]
            except EOFError:
                return added
            if answer in KEYS or answer in ("s", "q"):
                break
        if answer == "q":
            return added
        if answer == "s":
            continue
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**row, "label": KEYS[answer]}, ensure_ascii=False) + "\n")
        added += 1
    return added
