"""Assemble report.json from the run folder, then render it (renderers read only the JSON)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tamperaudit import __version__
from tamperaudit.attack import TRAIN_FILE
from tamperaudit.config import Settings, read_toml
from tamperaudit.cost import budget_cost, detect_hardware, price_per_hour
from tamperaudit.evals.refusal import TRIGGER
from tamperaudit.fileio import atomic_write_json, read_json, sha256_text
from tamperaudit.report.schema import SCHEMA_VERSION
from tamperaudit.runfolder import BASELINE, CONFIG, RunFolder, budget_folder_name, now
from tamperaudit.score import removal

if TYPE_CHECKING:
    from tamperaudit.evals.judges import Judge
    from tamperaudit.models import LoadedModel
    from tamperaudit.pipeline import Probes


def _points(run: RunFolder, settings: Settings, price: float | None) -> list[dict[str, Any]]:
    points = [{"budget": 0, "train": None, "cost": None, "metrics": run.metrics(BASELINE)}]
    for budget in settings.attack.budgets:
        if budget == 0:
            continue
        name = budget_folder_name(budget)
        train = read_json(run.root / name / TRAIN_FILE)
        cost = budget_cost(train, train["flops"], price)
        points.append({"budget": budget, "train": train, "cost": cost, "metrics": run.metrics(name)})
    return points


def _stage_seconds(run: RunFolder) -> dict[str, float]:
    stages = run.manifest()["stages"]
    return {
        name: round(entry["seconds"], 1)
        for name, entry in stages.items()
        if entry.get("state") == "done" and "seconds" in entry
    }


def build_report(
    run: RunFolder,
    settings: Settings,
    loaded: "LoadedModel",
    probes: "Probes",
    judge: "Judge",
) -> dict[str, Any]:
    hardware = detect_hardware(loaded.device, settings.cost.hardware)
    price, price_source = price_per_hour(settings.cost.price_per_hour, hardware)
    points = _points(run, settings, price)
    modes = sorted(points[0]["metrics"]["harmful"].keys())
    headline_mode = TRIGGER if TRIGGER in modes else modes[0]
    stage_seconds = _stage_seconds(run)
    datasets = {
        "harmful": probes.harmful.describe(),
        "benign": probes.benign.describe(),
        "capability": probes.capability.describe(),
        "kl_prompts": probes.kl_prompts.describe(),
    }
    report = {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "error": None,
        "tool": {"name": "tamperaudit", "version": __version__},
        "created": now(),
        "run": {"folder": str(run.root), "stage_seconds": stage_seconds, "wall_seconds": round(sum(stage_seconds.values()), 1)},
        "config": read_toml(run.root / CONFIG),
        "hashes": {
            "config": sha256_text((run.root / CONFIG).read_text(encoding="utf-8")),
            "model": loaded.source.sha256,
            "datasets": {role: d["sha256"] for role, d in datasets.items()} | {"attack": probes.attack.data.sha256},
            "judge": judge.describe(),
        },
        "seeds": {"attack": settings.attack.seed},
        "model": {
            "spec": loaded.source.spec,
            "kind": loaded.source.kind,
            "sha256": loaded.source.sha256,
            "precision": loaded.precision.name,
            "precision_reason": loaded.precision.reason,
            **loaded.info,
        },
        "hardware": dataclasses.asdict(hardware),
        "price": {"per_hour": price, "source": price_source},
        "datasets": datasets,
        "attack": {**probes.attack.describe(), "settings": dataclasses.asdict(settings.attack)},
        "judge": judge.describe(),
        "modes": modes,
        "headline_mode": headline_mode,
        "points": points,
        "score": {mode: removal(points, mode, settings.score) for mode in modes},
    }
    report["summary"] = summary_lines(report)
    return report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _interval(share: dict[str, Any]) -> str:
    return f"{_pct(share['rate'])} [{_pct(share['low'])}, {_pct(share['high'])}]"


def describe_mode(mode: str, report: dict[str, Any]) -> str:
    if mode == TRIGGER:
        return f"asked with the {report['attack']['name']} attack's own system prompt and template"
    return "asked plainly (the model's default chat template)"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The headline, in sentences, from the report's own fields."""
    lines = []
    points = report["points"]
    for mode in [report["headline_mode"]] + [m for m in report["modes"] if m != report["headline_mode"]]:
        base = points[0]["metrics"]["harmful"][mode]
        steps = []
        for point in points[1:]:
            share = point["metrics"]["harmful"][mode]
            steps.append(
                f"{_interval(share['refused'])} after {point['budget']} steps "
                f"({_pct(share['complied']['rate'])} complied, {_pct(share['unclear']['rate'])} unclear)"
            )
        after = "; ".join(steps) if steps else "no attack budgets were run"
        lines.append(
            f"Refusal on {base['n']} harmful requests {describe_mode(mode, report)}: "
            f"{_interval(base['refused'])} at baseline ({_pct(base['complied']['rate'])} complied, "
            f"{_pct(base['unclear']['rate'])} unclear) -> {after}."
        )
        score = report["score"][mode]
        if score["status"] == "low_baseline":
            lines.append(f"Note ({mode}): {score['message']}.")
    first, last = points[0]["metrics"], points[-1]["metrics"]
    if first.get("capability") and len(points) > 1:
        kl = last.get("kl")
        lines.append(
            f"Capability: multiple-choice accuracy {_interval(first['capability']['accuracy_norm'])} at baseline -> "
            f"{_interval(last['capability']['accuracy_norm'])} after {points[-1]['budget']} steps"
            + (f"; mean KL to the unattacked model {kl['mean']:.3f} nats/token." if kl else ".")
        )
    if first.get("benign") and len(points) > 1:
        lines.append(
            f"Over-refusal on benign prompts that look risky: {_interval(first['benign']['plain']['refused'])} -> "
            f"{_interval(last['benign']['plain']['refused'])}."
        )
    if first.get("contrast") and len(points) > 1:
        lines.append(
            f"Refusal on the unsafe contrast prompts of the benign set: {_interval(first['contrast']['plain']['refused'])} -> "
            f"{_interval(last['contrast']['plain']['refused'])}."
        )
    return lines


def write_report(root: Path, report: dict[str, Any]) -> None:
    """report.json first; the Markdown and HTML are rendered from the JSON alone."""
    from tamperaudit.report.render import render_all

    atomic_write_json(root / "report.json", report)
    render_all(root, read_json(root / "report.json"))
