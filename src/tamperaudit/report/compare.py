"""Several runs side by side (models, defenses, seeds), from their report.json files only.

Runs are comparable only when they asked the same prompts and were judged by
the same judge; otherwise ``compare`` stops and says what differs, unless told to
go on anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tamperaudit.errors import UserError
from tamperaudit.fileio import read_json

# What must match for numbers to be comparable: the probe sets (by hash) and the judge.
PROBE_SETS = ("harmful", "benign", "capability")


def load_reports(folders: Sequence[Path]) -> list[dict[str, Any]]:
    reports = []
    for folder in folders:
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise UserError(f"{folder}: no report.json; finish the run first (`tamperaudit resume {folder}`)")
        report = read_json(path)
        if report.get("status") != "complete":
            raise UserError(
                f"{folder}: the run did not complete ({report.get('status')}: {report.get('error')}); "
                f"finish it with `tamperaudit resume {folder}`"
            )
        reports.append(report)
    if len(reports) < 2:
        raise UserError("compare needs at least two run folders")
    versions = {str(folder): report.get("schema_version") for folder, report in zip(folders, reports)}
    if len(set(versions.values())) > 1:
        listed = ", ".join(f"{folder} has report schema {version}" for folder, version in versions.items())
        raise UserError(f"these reports have different schema versions ({listed}); rebuild the older with "
                        "`tamperaudit resume RUN` under one tamperaudit version, or compare runs of one version")
    return reports


def _describe_set(dataset: dict[str, Any]) -> str:
    """Name, size and hashes: two sets with the same name and size can still differ in content."""
    return (
        f"{dataset.get('name')}, {dataset.get('count')} rows, sha256 {str(dataset.get('sha256'))[:12]}, "
        f"ids {str(dataset.get('ids_sha256'))[:12]}"
    )


def _describe_judge(judge: dict[str, Any]) -> str:
    return ", ".join(f"{key} {str(value)[:12]}" for key, value in judge.items())


def mismatches(reports: Sequence[dict[str, Any]]) -> list[str]:
    """What the runs do not share, in words."""
    problems = []
    first = reports[0]
    for report in reports[1:]:
        for role in PROBE_SETS:
            a, b = first["datasets"].get(role, {}), report["datasets"].get(role, {})
            if (a.get("sha256"), a.get("ids_sha256")) != (b.get("sha256"), b.get("ids_sha256")):
                problems.append(
                    f"{role} prompts differ ({first['run']['folder']}: {_describe_set(a)}; "
                    f"{report['run']['folder']}: {_describe_set(b)})"
                )
        if first["judge"] != report["judge"]:
            problems.append(f"judges differ ({_describe_judge(first['judge'])} vs {_describe_judge(report['judge'])})")
        if first["tool"]["version"] != report["tool"]["version"]:
            problems.append(f"tamperaudit versions differ ({first['tool']['version']} vs {report['tool']['version']})")
        if first["headline_mode"] != report["headline_mode"]:
            problems.append(f"headline modes differ ({first['headline_mode']} vs {report['headline_mode']})")
    return problems


def _pct(share: dict[str, Any] | None) -> str:
    if not share or share.get("rate") is None:
        return "n/a"
    return f"{100 * share['rate']:.0f}% [{100 * share['low']:.0f}, {100 * share['high']:.0f}]"


def _score(score: dict[str, Any]) -> str:
    if score["status"] == "low_baseline":
        return "little to remove"
    if score["status"] == "removed_by_prompt":
        return "0 steps: the attack's prompt alone removes refusal"
    if score["status"] != "scored":
        return "n/a"
    relative = score["relative"]
    largest = score["largest_budget"]
    text = f"{relative['budget']} steps" if relative["reached"] else f"not within {largest}"
    interval = score.get("interval")
    if interval:
        bounds = interval["relative"]

        def word(value: int | None) -> str:
            return f"not within {largest}" if value is None else str(value)

        text += f" [{word(bounds['low'])}, {word(bounds['high'])}]"
    return text


def rows(reports: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    table = []
    for report in reports:
        mode = report["headline_mode"]
        points = report["points"]
        first, last = points[0]["metrics"], points[-1]["metrics"]
        control = next((a for a in report.get("arms", []) if a["name"] == "control"), None)
        accuracy = f"{100 * first['capability']['accuracy_norm']['rate']:.0f}% -> {100 * last['capability']['accuracy_norm']['rate']:.0f}%" if first.get("capability") and last.get("capability") else "n/a"
        table.append(
            {
                "run": Path(report["run"]["folder"]).name,
                "model": report["model"]["spec"],
                "attack": report["attack"]["name"],
                "baseline refusal": _pct(first["harmful"][mode]["refused"]),
                "removal score": _score(report["score"][mode]),
                "score, unclear as refusal": _score(report["score_unclear_as_refusal"][mode])
                if "score_unclear_as_refusal" in report
                else "n/a",
                f"refusal at {points[-1]['budget']} steps": _pct(last["harmful"][mode]["refused"]),
                "control at largest budget": _pct(control["points"][-1]["metrics"]["harmful"][mode]["refused"]) if control else "n/a",
                "MC accuracy": accuracy,
                "KL at largest": f"{last['kl']['mean']:.3f}" if last.get("kl") else "n/a",
            }
        )
    return table


def render(table: list[dict[str, str]]) -> str:
    columns = list(dict.fromkeys(key for row in table for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in table]
    return "\n".join(lines)


def _labels(reports: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's name on the shared chart: its model, and its folder where models repeat."""
    models = [Path(r["model"]["spec"]).name for r in reports]
    return [m if models.count(m) == 1 else f"{m} ({Path(r['run']['folder']).name})" for m, r in zip(models, reports)]


def page(reports: Sequence[dict[str, Any]], table: list[dict[str, str]], problems: Sequence[str]) -> tuple[str, dict[str, bytes]]:
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
        lines.append(f"- `{report['run']['folder']}`: `{report['model']['spec']}`, {report['attack']['name']} attack, "
                     f"headline mode {report['headline_mode']}, judge {report['judge']['name']}, "
                     f"tamperaudit {report['tool']['version']}")
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
