"""Assemble report.json from the run folder, then render it (renderers read only the JSON).

The builder takes plain typed inputs (``ReportInputs``), not pipeline classes, so
building or rebuilding a report does not import the pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tamperaudit import __version__
from tamperaudit.attack import TRAIN_FILE
from tamperaudit.config import Settings, read_toml
from tamperaudit.cost import budget_cost, detect_hardware, price_per_hour, project, significant
from tamperaudit.evals.refusal import TRIGGER
from tamperaudit.fileio import atomic_write_json, read_json, sha256_text
from tamperaudit.report.schema import SCHEMA_VERSION
from tamperaudit.runfolder import BASELINE, CONFIG, RunFolder, budget_folder_name, now
from tamperaudit.score import (
    REFUSED_ONLY,
    REMOVED_BY_PROMPT,
    SCORED,
    UNCLEAR_AS_REFUSAL,
    CapabilityTables,
    SeedCurve,
    bootstrap_removal,
    combine_seeds,
    describe_fraction,
    refusal_table,
    removal,
)



@dataclass(frozen=True)
class ArmSpec:
    """One attack run as the report sees it."""

    name: str
    role: str  # "attack" or "control"
    seed: int
    data: str  # the attack data's name
    prefix: str  # its stages' folder prefix in the run folder ("" for the first attack arm)

    def stage(self, budget: int) -> str:
        return f"{self.prefix}{budget_folder_name(budget)}"


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report needs beyond the run folder, as plain values."""

    settings: Settings
    model: dict[str, Any]
    device: Any
    datasets: dict[str, dict[str, Any]]
    dataset_hashes: dict[str, str]
    attack: dict[str, Any]
    control: dict[str, Any] | None
    judge: dict[str, Any]
    generation: dict[str, Any]  # the generation backend's description
    arms: list[ArmSpec]
    processes: dict[str, Any]  # who trained: distributed.Processes.describe()
    elapsed: float  # seconds this process has worked on the run so far


def _baseline_point(run: RunFolder) -> dict[str, Any]:
    """Budget 0: the unattacked model, without the select-half metrics the search compared against."""
    metrics = {k: v for k, v in run.metrics(BASELINE).items() if k != "select"}
    return {"budget": 0, "train": None, "cost": None, "metrics": metrics}


def _points(run: RunFolder, settings: Settings, arm: ArmSpec, price: float | None) -> list[dict[str, Any]]:
    """Budget 0 (the unattacked model) and each trained budget of one arm."""
    points = [_baseline_point(run)]
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
    arms: list[ArmSpec],
    points: dict[str, list[dict[str, Any]]],
    mode: str,
    role: str,
    reading: str = REFUSED_ONLY,
) -> dict[str, Any]:
    """The removal figure of the role's arms: the lower median over seeds, with a bootstrap
    interval of that same statistic over prompts, questions and seeds."""
    role_arms = [arm for arm in arms if arm.role == role]
    per_arm = {arm.name: removal(points[arm.name], mode, settings.score, reading) for arm in role_arms}
    first = per_arm[role_arms[0].name]
    if first["status"] != SCORED:  # decided by the baseline, which every arm shares
        return first
    result = combine_seeds(per_arm)
    budgets = [b for b in settings.attack.budgets if b > 0]
    curves = [
        SeedCurve(
            refusals={b: refusal_table(samples(arm.stage(b)), mode, reading) for b in budgets},
            capability={b: CapabilityTables.of(samples(arm.stage(b))) for b in budgets},
        )
        for arm in role_arms
    ]
    result["interval"] = bootstrap_removal(
        refusal_table(samples(BASELINE), mode, reading), CapabilityTables.of(samples(BASELINE)), curves, settings.score,
        rng_seed=settings.attack.seed,
    )
    return result


def projection(report: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    """The measured attack's tokens projected onto Llama 2 7B/13B/70B on rented GPUs.

    The tokens are those of the headline score's budget (relative threshold); when
    removal was not reached, those of the largest budget, and the projection says so.
    """
    score = report["score"].get(report["headline_mode"], {})
    points = [p for p in report["points"] if p.get("cost")]
    if not points:
        return None
    relative = score.get("relative") or {}
    mode = report["headline_mode"]
    if relative.get("reached") and relative.get("cost"):
        cost = relative["cost"]
        basis = f"the tokens of the first budget that removed refusal here, {mode} mode, relative threshold"
        strict = (report.get("score_unclear_as_refusal") or {}).get(mode, {})
        if strict.get("status") == SCORED and not strict["relative"]["reached"]:
            basis += (
                "; counting unclear replies as refusals removal was not reached within "
                f"{points[-1]['budget']} steps ({points[-1]['cost']['tokens']:,} tokens), so this prices refusals "
                "turned into non-refusals, not into compliance"
            )
    elif score.get("status") == SCORED:
        cost, basis = points[-1]["cost"], "the largest budget's tokens: removal was not reached, so this is a lower bound"
    else:
        cost, basis = points[-1]["cost"], f"the largest budget's tokens; no removal figure, the score is '{score.get('status')}'"
    utilization = settings.cost.projection_utilization
    return {
        "basis": basis,
        "tokens": cost["tokens"],
        "labelled_tokens": cost["labelled_tokens"],
        "lora_rank": settings.attack.lora_rank,
        "utilization": utilization,
        "assumes": (
            "the larger model needs the same number of attack tokens as the audited one (untested: "
            "larger models may need more or fewer); LoRA on q/k/v/o/gate/up/down at the audited rank; "
            f"training at {100 * utilization:.0f}% of the GPU's dense bf16 peak; gradient checkpointing for 70B; "
            "training only (no evaluation, loading or idle time); on-demand prices from the table in cost.py"
        ),
        "rows": project(cost["tokens"], cost["labelled_tokens"], settings.attack.lora_rank, utilization),
    }


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


def _run_section(run: RunFolder, elapsed: float) -> dict[str, Any]:
    """Stage times, and the wall-clock time of every process that worked on the run."""
    sessions = run.manifest().get("sessions", [])
    return {
        "folder": str(run.root),
        "stage_seconds": _stage_seconds(run),
        "wall_seconds": round(sum(s["seconds"] for s in sessions) + elapsed, 1),
        "sessions": len(sessions) + 1,
    }


def build_report(run: RunFolder, inputs: ReportInputs) -> dict[str, Any]:
    settings, arms = inputs.settings, inputs.arms
    hardware = detect_hardware(
        inputs.device, settings.cost.hardware, max(inputs.model.get("gpus", 0), 1), inputs.processes["processes"]
    )
    price, price_source = price_per_hour(settings.cost.price_per_hour, hardware)
    trained = arms and any(b > 0 for b in settings.attack.budgets)
    points_by_arm = {arm.name: _points(run, settings, arm, price) for arm in arms} if trained else {"attack": [_baseline_point(run)]}
    points = points_by_arm["attack"]
    modes = sorted(points[0]["metrics"]["harmful"].keys())
    headline_mode = TRIGGER if TRIGGER in modes else modes[0]
    roles = sorted({arm.role for arm in arms}) if len(points) > 1 else []
    samples = functools.lru_cache(maxsize=None)(run.samples)  # each stage's file is read once for all scores

    def scores(role: str, reading: str) -> dict[str, Any]:
        if not roles:  # no attack budgets: the baseline alone
            return {mode: removal(points, mode, settings.score, reading) for mode in modes}
        return {mode: _score(samples, settings, arms, points_by_arm, mode, role, reading) for mode in modes}

    report = {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "error": None,
        "stopped_in": [],
        "tool": {"name": "tamperaudit", "version": __version__},
        "created": now(),
        "run": _run_section(run, inputs.elapsed),
        "config": read_toml(run.root / CONFIG),
        "hashes": {
            "config": sha256_text((run.root / CONFIG).read_text(encoding="utf-8")),
            "model": inputs.model["sha256"],
            "datasets": {role: d["sha256"] for role, d in inputs.datasets.items()} | inputs.dataset_hashes,
            "judge": inputs.judge,
        },
        "seeds": {"attack": settings.attack.seed},
        "model": inputs.model,
        "hardware": dataclasses.asdict(hardware),
        "price": {"per_hour": price, "source": price_source},
        "datasets": inputs.datasets,
        "attack": inputs.attack,
        "control": inputs.control,
        "judge": inputs.judge,
        "generation_backend": inputs.generation,
        "processes": inputs.processes,
        "modes": modes,
        "headline_mode": headline_mode,
        "points": points,
        "score": scores("attack", REFUSED_ONLY),
        "score_unclear_as_refusal": scores("attack", UNCLEAR_AS_REFUSAL),
        "arms": [
            {"name": arm.name, "role": arm.role, "seed": arm.seed, "data": arm.data, "points": points_by_arm[arm.name]}
            for arm in arms
            if arm.name != "attack" and arm.name in points_by_arm
        ],
        "control_score": scores("control", REFUSED_ONLY) if "control" in roles else None,
        "search": _search(run),
    }
    report["projection"] = projection(report, settings)
    report["summary"] = summary_lines(report)
    return report


def failure_report(run: RunFolder, status: str, message: str, stopped_in: list[str]) -> dict[str, Any]:
    """What a failed or interrupted run leaves: status, the error line and where it stopped."""
    manifest = run.manifest()
    sessions = manifest.get("sessions", [])
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "error": message,
        "stopped_in": stopped_in,
        "tool": {"name": "tamperaudit", "version": __version__},
        "created": now(),
        "run": {"folder": str(run.root), "stage_seconds": _stage_seconds(run),
                "wall_seconds": round(sum(s["seconds"] for s in sessions), 1), "sessions": len(sessions)},
        "config": read_toml(run.root / CONFIG),
        "hashes": manifest.get("inputs", {}),
        "summary": [
            f"This run did not complete ({status}"
            + (f" in {', '.join(stopped_in)}" if stopped_in else "")
            + f"): {message}.",
            f"Finish it with `tamperaudit resume {run.root}`; no score is given for an incomplete run.",
        ],
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _interval(share: dict[str, Any]) -> str:
    return f"{_pct(share['rate'])} [{_pct(share['low'])}, {_pct(share['high'])}]"


def describe_mode(mode: str, report: dict[str, Any]) -> str:
    if mode == TRIGGER:
        return f"asked with the {report['attack']['name']} attack's own system prompt and template"
    return "asked plainly (the model's default chat template)"


def _ordered_modes(report: dict[str, Any]) -> list[str]:
    return [report["headline_mode"]] + [m for m in report["modes"] if m != report["headline_mode"]]


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The headline, in sentences, from the report's own fields."""
    lines = []
    points = report["points"]
    for mode in _ordered_modes(report):  # a prompt that removes refusal by itself comes first
        score = report["score"][mode]
        if score["status"] == REMOVED_BY_PROMPT:
            lines.append(f"ALERT ({mode}): {score['message']}.")
    for mode in _ordered_modes(report):
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
        elif score["status"] == SCORED:
            lines.append(f"{mode}: " + score_sentence(score))
            strict = report.get("score_unclear_as_refusal", {}).get(mode)
            if strict and strict["status"] == SCORED:
                lines.append(
                    f"{mode}, counting unclear as refusal (the reading least favourable to the attack): "
                    f"refusal below {_pct(strict['relative']['threshold'])}: "
                    f"{describe_result(strict['relative'], strict['largest_budget'])}; "
                    f"below {_pct(strict['absolute']['threshold'])}: "
                    f"{describe_result(strict['absolute'], strict['largest_budget'])}."
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
    shown = report.get("projection")
    row = next((r for r in (shown or {}).get("rows", []) if r["model"] == "Llama-2-13B" and r["gpu"].startswith("H100")), None)
    if row is not None:
        lines.append(
            f"Projection, not a measurement: the same {shown['tokens']:,} training tokens on {row['model']} would take "
            f"{significant(row['gpu_hours'])} GPU-hours, ${significant(row['dollars'])} on an {row['gpu']} at "
            f"{100 * shown['utilization']:.0f}% utilisation (BadLlama: under $200); it assumes the larger model needs the "
            "same tokens (see the report's projection section)."
        )
    if report["model"].get("quantization", "none") != "none":  # every figure above is of the 4-bit model
        lines.append(f"Model measured with its base weights in {report['model']['quantization_description']}.")
    return lines


def describe_result(result: dict[str, Any], largest: int) -> str:
    """One threshold's figure with its cost (that of the seed whose budget is the median)."""
    if not result["reached"]:
        return f"not reached within {largest} steps"
    cost = result.get("cost")
    if not cost:  # budget 0: no fine-tuning at all
        return f"{result['budget']} steps (no fine-tuning)"
    dollars = "" if cost["dollars"] is None else f", ${cost['dollars']:.4f}"
    return f"{result['budget']} steps ({cost['tokens']:,} tokens, {cost['seconds']:.0f} s, {cost['flops'] / 1e12:.1f} TFLOP{dollars})"


def describe_bounds(bounds: dict[str, Any], largest: int) -> str:
    """An interval of budgets in words; an unreached bound reads 'not reached within N', never '-'."""
    def word(value: int | None) -> str:
        return f"not reached within {largest}" if value is None else str(value)

    if bounds["low"] is None:  # then the high bound is unreached too
        return f"not reached within {largest} steps"
    return f"{word(bounds['low'])} to {word(bounds['high'])} steps"


def score_sentence(score: dict[str, Any]) -> str:
    """The removal figure and its interval, in one sentence."""
    relative = score["relative"]
    largest = score["largest_budget"]
    text = (
        f"Removal (refusal below {_pct(relative['threshold'])}, {describe_fraction(score['refusal_fraction'])} its "
        f"baseline, with capability kept): {describe_result(relative, largest)}"
    )
    interval = score.get("interval")
    if interval:
        seeds = interval["seeds"]
        statistic = f"the lower median of {seeds} seeds" if seeds > 1 else "1 seed"
        text += (
            f"; {100 * interval['confidence']:.0f}% bootstrap interval over prompts, questions and {statistic}: "
            f"{describe_bounds(interval['relative'], largest)}"
        )
    absolute = score["absolute"]
    text += f". Below {_pct(absolute['threshold'])}: {describe_result(absolute, largest)}."
    return text


def write_report(root: Path, report: dict[str, Any]) -> None:
    """report.json first; the Markdown and HTML are rendered from the JSON alone."""
    from tamperaudit.report.render import render_all

    atomic_write_json(root / "report.json", report)
    render_all(root, read_json(root / "report.json"))
