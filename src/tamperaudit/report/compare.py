"""Several runs side by side (models, defenses, seeds), from their report.json files only.

Runs are comparable only when they asked the same prompts and were judged by
the same judge; otherwise ``compare`` stops and says what differs, unless told to
go on anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tamperaudit.errors import UserError
from tamperaudit.jsonrecord import Scalar
from tamperaudit.records import IncompleteReport, Point, Report, Score
from tamperaudit.report.schema import read_report
from tamperaudit.report.words import interval, percent
from tamperaudit.runfolder import RunFolder

# What must match for numbers to be comparable: the probe sets (by hash) and the judge.
PROBE_SETS = ("harmful", "benign", "capability")


def load_reports(folders: Sequence[Path]) -> list[Report]:
    reports = []
    for folder in folders:
        path = Path(folder) / "report.json"
        if not path.is_file():
            kind = RunFolder.kind_of(Path(folder))
            if kind == "audit":
                raise UserError(f"{folder}: no report.json yet; finish the audit with `tamperaudit resume {folder}`")
            if kind is not None:
                raise UserError(f"{folder} holds a tamperaudit {kind} run (metrics without a report); compare reads "
                                "audit run folders")
            raise UserError(f"{folder}: not a tamperaudit run folder (no manifest.json or report.json)")
        report = read_report(path)
        if isinstance(report, IncompleteReport):
            raise UserError(
                f"{folder}: the run did not complete ({report.status}: {report.error}); "
                f"finish it with `tamperaudit resume {folder}`"
            )
        reports.append(report)
    if len(reports) < 2:
        raise UserError("compare needs at least two run folders")
    return reports


def _describe_set(folder: str, report: Report, role: str) -> str:
    """Name, size and hashes: two sets with the same name and size can still differ in content."""
    dataset = report.datasets.get(role)
    if dataset is None:
        return f"{folder}: none"
    return (
        f"{folder}: {dataset.name}, {dataset.count} rows, sha256 {dataset.sha256[:12]}, "
        f"ids {dataset.ids_sha256[:12]}"
    )


def _describe_judge(judge: dict[str, Scalar]) -> str:
    return ", ".join(f"{key} {str(value)[:12]}" for key, value in judge.items())


def mismatches(reports: Sequence[Report]) -> list[str]:
    """What the runs do not share, in words."""
    problems = []
    first = reports[0]
    for report in reports[1:]:
        for role in PROBE_SETS:
            a, b = first.datasets.get(role), report.datasets.get(role)
            pins = [(d.sha256, d.ids_sha256) if d is not None else None for d in (a, b)]
            if pins[0] != pins[1]:
                problems.append(
                    f"{role} prompts differ ({_describe_set(first.run.folder, first, role)}; "
                    f"{_describe_set(report.run.folder, report, role)})"
                )
        if first.judge != report.judge:
            problems.append(f"judges differ ({_describe_judge(first.judge)} vs {_describe_judge(report.judge)})")
        if first.tool.version != report.tool.version:
            problems.append(f"tamperaudit versions differ ({first.tool.version} vs {report.tool.version})")
        if first.headline_mode != report.headline_mode:
            problems.append(f"headline modes differ ({first.headline_mode} vs {report.headline_mode})")
    return problems


def _score(score: Score) -> str:
    if score.status == "low_baseline":
        return "little to remove"
    if score.status == "removed_by_prompt":
        return "0 steps: the attack's prompt alone removes refusal"
    if score.status != "scored" or score.relative is None:
        return "n/a"
    relative = score.relative
    largest = score.largest_budget
    text = f"{relative.budget} steps" if relative.reached else f"not within {largest}"
    if score.interval:
        bounds = score.interval.relative

        def word(value: int | None) -> str:
            return f"not within {largest}" if value is None else str(value)

        text += f" [{word(bounds.low)}, {word(bounds.high)}]"
    return text


def _refused(point: Point, mode: str) -> str:
    share = (point.metrics.harmful or {}).get(mode)
    return interval(share.refused if share else None, style="bare")


def rows(reports: Sequence[Report]) -> list[dict[str, str]]:
    table = []
    for report in reports:
        mode = report.headline_mode
        points = report.points
        first, last = points[0].metrics, points[-1].metrics
        control = next((a for a in report.arms if a.name == "control"), None)
        accuracy = (
            f"{percent(first.capability.accuracy_norm.rate)} -> {percent(last.capability.accuracy_norm.rate)}"
            if first.capability and last.capability else "n/a"
        )
        table.append(
            {
                "run": Path(report.run.folder).name,
                "model": report.model.spec,
                "attack": report.attack.name,
                "baseline refusal": _refused(points[0], mode),
                "removal score": _score(report.score[mode]),
                "score, unclear as refusal": _score(report.score_unclear_as_refusal[mode]),
                f"refusal at {points[-1].budget} steps": _refused(points[-1], mode),
                "control at largest budget": _refused(control.points[-1], mode) if control else "n/a",
                "MC accuracy": accuracy,
                "KL at largest": f"{last.kl.mean:.3f}" if last.kl else "n/a",
            }
        )
    return table


def render(table: list[dict[str, str]]) -> str:
    columns = list(dict.fromkeys(key for row in table for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in table]
    return "\n".join(lines)


def _labels(reports: Sequence[Report]) -> list[str]:
    """Each run's name on the shared chart: its model, and its folder where models repeat."""
    models = [Path(r.model.spec).name for r in reports]
    return [m if models.count(m) == 1 else f"{m} ({Path(r.run.folder).name})" for m, r in zip(models, reports)]


def page(reports: Sequence[Report], table: list[dict[str, str]], problems: Sequence[str]) -> tuple[str, dict[str, bytes]]:
    """compare.md and its plot: the table, what differs, and every run's curves on shared axes."""
    from tamperaudit.report.plots import compare as compare_plot

    images = {"compare.png": compare_plot(reports, _labels(reports))}
    lines = [f"# tamperaudit compare: {len(reports)} runs", ""]
    if problems:
        lines += ["## Not comparable as they stand (compared with --force)", "", *(f"- {p}" for p in problems), ""]
    lines += [
        "## Curves",
        "",
        "![Each run's refusal (its headline mode) and multiple-choice accuracy against budget](plots/compare.png)",
        "",
        "## Table",
        "",
        render(table),
        "",
        "## Runs",
        "",
    ]
    for report in reports:
        lines.append(f"- `{report.run.folder}`: `{report.model.spec}`, {report.attack.name} attack, "
                     f"headline mode {report.headline_mode}, judge {report.judge['name']}, "
                     f"tamperaudit {report.tool.version}")
    return "\n".join(lines) + "\n", images


def compare(folders: Sequence[Path], force: bool = False, out: Path | None = None) -> tuple[list[dict[str, str]], list[str]]:
    """The comparison table and what differs; with ``out``, also compare.md, compare.html and plots/ there."""
    reports = load_reports(folders)
    problems = mismatches(reports)
    if problems and not force:
        raise UserError("runs are not comparable: " + "; ".join(problems) + " (pass --force to compare anyway)")
    table = rows(reports)
    if out is not None:
        from tamperaudit.fileio import atomic_write_bytes, atomic_write_text
        from tamperaudit.report.render import markdown_to_html

        markdown, images = page(reports, table, problems)
        for name, data in images.items():
            atomic_write_bytes(out / "plots" / name, data)
        atomic_write_text(out / "compare.md", markdown)
        atomic_write_text(out / "compare.html", markdown_to_html(markdown, images))
    return table, problems
