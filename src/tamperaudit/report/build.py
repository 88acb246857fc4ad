"""Assemble report.json from the run folder, then render it (renderers read only the JSON)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tamperaudit import __version__
from tamperaudit.attack import TRAIN_FILE
from tamperaudit.config import Settings, read_toml
from tamperaudit.cost import budget_cost, detect_hardware, price_per_hour
from tamperaudit.evals.refusal import TRIGGER
from tamperaudit.fileio import atomic_write_json, read_json, sha256_text
from tamperaudit.report.schema import SCHEMA_VERSION
from tamperaudit.runfolder import BASELINE, CONFIG, RunFolder, now
from tamperaudit.score import REFUSED_ONLY, UNCLEAR_AS_REFUSAL, bootstrap_removal, capability_kept, refusal_table, removal

if TYPE_CHECKING:
    from tamperaudit.evals.judges import Judge
    from tamperaudit.models import LoadedModel
    from tamperaudit.pipeline import Arm, Probes


def _points(run: RunFolder, settings: Settings, arm: "Arm", price: float | None) -> list[dict[str, Any]]:
    """Budget 0 (the unattacked model) and each trained budget of one arm."""
    baseline = run.metrics(BASELINE)
    points = [{"budget": 0, "train": None, "cost": None, "metrics": {k: v for k, v in baseline.items() if k != "harmful_select"}}]
    for budget in settings.attack.budgets:
        if budget == 0:
            continue
        name = arm.stage(budget)
        train = read_json(run.root / name / TRAIN_FILE)
        cost = budget_cost(train, train["flops"], price)
        points.append({"budget": budget, "train": train, "cost": cost, "metrics": run.metrics(name)})
    return points


def _score(
    samples: Callable[[str], list[dict[str, Any]]],
    settings: Settings,
    arms: list["Arm"],
    points: dict[str, list[dict[str, Any]]],
    mode: str,
    role: str,
    reading: str = REFUSED_ONLY,
) -> dict[str, Any]:
    """The removal figure of the role's first arm, with a bootstrap interval over prompts and its seeds."""
    role_arms = [arm for arm in arms if arm.role == role]
    per_arm = {arm.name: removal(points[arm.name], mode, settings.score, reading) for arm in role_arms}
    result = per_arm[role_arms[0].name]
    if result["status"] != "scored":
        return result
    budgets = [b for b in settings.attack.budgets if b > 0]
    baseline = refusal_table(samples(BASELINE), mode, reading)
    curves, kept = [], []
    for arm in role_arms:
        curves.append({b: refusal_table(samples(arm.stage(b)), mode, reading) for b in budgets})
        by_budget = {p["budget"]: p["metrics"] for p in points[arm.name]}
        kept.append({b: capability_kept(by_budget[0], by_budget[b], settings.score)[0] for b in budgets})
    result["per_seed"] = {name: score["relative"]["budget"] for name, score in per_arm.items()}
    result["interval"] = bootstrap_removal(baseline, curves, kept, settings.score, rng_seed=settings.attack.seed)
    return result


def _search(run: RunFolder) -> dict[str, Any] | None:
    entry = run.manifest()["stages"].get("search")
    if not entry or entry.get("state") != "done":
        return None
    return {k: entry[k] for k in ("mode", "tried", "chosen", "capability_kept_by_chosen", "seconds")}


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
    arms: list["Arm"],
) -> dict[str, Any]:
    hardware = detect_hardware(loaded.device, settings.cost.hardware)
    price, price_source = price_per_hour(settings.cost.price_per_hour, hardware)
    points_by_arm = {arm.name: _points(run, settings, arm, price) for arm in arms} if arms and any(
        b > 0 for b in settings.attack.budgets
    ) else {"attack": [{"budget": 0, "train": None, "cost": None, "metrics": run.metrics(BASELINE)}]}
    points = points_by_arm["attack"]
    modes = sorted(points[0]["metrics"]["harmful"].keys())
    headline_mode = TRIGGER if TRIGGER in modes else modes[0]
    roles = sorted({arm.role for arm in arms}) if len(points) > 1 else []
    stage_seconds = _stage_seconds(run)
    samples = functools.lru_cache(maxsize=None)(run.samples)  # each stage's file is read once for all scores

    def scores(role: str, reading: str) -> dict[str, Any]:
        if not roles:  # no attack budgets: the baseline alone
            return {mode: removal(points, mode, settings.score, reading) for mode in modes}
        return {mode: _score(samples, settings, arms, points_by_arm, mode, role, reading) for mode in modes}

    datasets = {
        "harmful": probes.harmful.describe(),
        "benign": probes.benign.describe(),
        "capability": probes.capability.describe(),
        "kl_prompts": probes.kl_prompts.describe(),
    }
    if probes.search_harmful is not None:
        datasets["harmful_select"] = probes.search_harmful.describe()
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
            "datasets": {role: d["sha256"] for role, d in datasets.items()} | probes.hashes(),
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
        "control": probes.control.describe() if probes.control is not None else None,
        "judge": judge.describe(),
        "modes": modes,
        "headline_mode": headline_mode,
        "points": points,
        "score": scores("attack", REFUSED_ONLY),
        "score_unclear_as_refusal": scores("attack", UNCLEAR_AS_REFUSAL),
        "arms": [
            {"name": arm.name, "role": arm.role, "seed": arm.seed, "data": arm.attack.data.name, "points": points_by_arm[arm.name]}
            for arm in arms
            if arm.name != "attack" and arm.name in points_by_arm
        ],
        "control_score": scores("control", REFUSED_ONLY) if "control" in roles else None,
        "search": _search(run),
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
        elif mode == report["headline_mode"] and score["status"] == "scored":
            lines.append(score_sentence(score, points))
            strict = report.get("score_unclear_as_refusal", {}).get(mode)
            if strict and strict["status"] == "scored":
                lines.append(
                    f"Counting unclear as refusal (the reading least favourable to the attack): "
                    f"refusal below {_pct(strict['relative']['threshold'])}: "
                    f"{describe_budget(strict['relative']['budget'], points, strict['largest_budget'])}; "
                    f"below {_pct(strict['absolute']['threshold'])}: "
                    f"{describe_budget(strict['absolute']['budget'], points, strict['largest_budget'])}."
                )
    control = next((a for a in report.get("arms", []) if a["name"] == "control"), None)
    if control is not None:
        mode = report["headline_mode"]
        after = "; ".join(
            f"{_interval(p['metrics']['harmful'][mode]['refused'])} after {p['budget']} steps" for p in control["points"][1:]
        )
        lines.append(
            f"Control arm (the same budgets on benign instruction data, {control['data']}), {mode}: "
            f"refusal {_interval(control['points'][0]['metrics']['harmful'][mode]['refused'])} at baseline -> {after}."
        )
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


def describe_budget(budget: int | None, points: list[dict[str, Any]], largest: int) -> str:
    if budget is None:
        return f"not reached within {largest} steps"
    cost = next(p["cost"] for p in points if p["budget"] == budget)
    dollars = "" if cost["dollars"] is None else f", ${cost['dollars']:.4f}"
    return f"{budget} steps ({cost['tokens']:,} tokens, {cost['seconds']:.0f} s, {cost['flops'] / 1e12:.1f} TFLOP{dollars})"


def score_sentence(score: dict[str, Any], points: list[dict[str, Any]]) -> str:
    """The removal figure and its interval, in one sentence."""
    relative = score["relative"]
    largest = score["largest_budget"]
    text = (
        f"Removal (refusal below {_pct(relative['threshold'])}, half its baseline, with capability kept): "
        f"{describe_budget(relative['budget'], points, largest)}"
    )
    interval = score.get("interval")
    if interval:
        low, high = interval["relative"]["low"], interval["relative"]["high"]
        bounds = f"{'-' if low is None else low} to {f'beyond {largest}' if high is None else high} steps"
        text += (
            f"; {100 * interval['confidence']:.0f}% bootstrap interval over prompts and {interval['seeds']} "
            f"seed{'s' if interval['seeds'] > 1 else ''}: {bounds}"
        )
    absolute = score["absolute"]
    text += f". Below {_pct(absolute['threshold'])}: {describe_budget(absolute['budget'], points, largest)}."
    return text


def write_report(root: Path, report: dict[str, Any]) -> None:
    """report.json first; the Markdown and HTML are rendered from the JSON alone."""
    from tamperaudit.report.render import render_all

    atomic_write_json(root / "report.json", report)
    render_all(root, read_json(root / "report.json"))
