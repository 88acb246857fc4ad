"""Assemble report.json from the run folder (renderers read only the JSON).

The builder takes plain typed inputs (``ReportInputs``), not pipeline classes, so
building or rebuilding a report does not import the pipeline; it builds records and
never renders them (``tamperaudit.report.render`` does).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable

from tamperaudit import __version__
from tamperaudit.attack import TRAIN_FILE
from tamperaudit.config import Settings, from_dict, read_toml
from tamperaudit.cost import budget_cost, detect_hardware, price_per_hour, project
from tamperaudit.fileio import read_record, sha256_text
from tamperaudit.jsonrecord import Scalar
from tamperaudit.evals.agreement import measured_agreement
from tamperaudit.records import (
    REFUSED_ONLY,
    SCHEMA_VERSION,
    TRIGGER,
    UNCLEAR_AS_REFUSAL,
    ArmPoints,
    AttackDescription,
    BackendDescription,
    ChatDescription,
    DatasetDescription,
    IncompleteReport,
    Point,
    Price,
    ProcessesDescription,
    Projection,
    Report,
    ReportHashes,
    ReportModel,
    ReportSearch,
    RunSection,
    Sample,
    Score,
    Seeds,
    Tool,
    TrainState,
    VerdictSummary,
    references,
)
from tamperaudit.report.words import describe_bounds, describe_fraction, describe_result, interval, percent, significant
from tamperaudit.runfolder import BASELINE, CONFIG, DONE, RunFolder, budget_folder_name, now
from tamperaudit.score import (
    REMOVED_BY_PROMPT,
    SCORED,
    CapabilityTables,
    SeedCurve,
    bootstrap_removal,
    combine_seeds,
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
    """Everything the report needs beyond the run folder, as typed values."""

    settings: Settings  # the settings the attack ran with (the search's choice, when a search ran)
    model: ReportModel
    device: Any  # torch.device the model computes on
    datasets: dict[str, DatasetDescription]
    dataset_hashes: dict[str, str]
    attack: AttackDescription
    control: AttackDescription | None
    judge: dict[str, Scalar]
    generation: BackendDescription  # the generation backend's description
    chat: ChatDescription  # how the chat template was used
    arms: list[ArmSpec]
    processes: ProcessesDescription  # who trained
    elapsed: float  # seconds this process has worked on the run so far


def _baseline_point(run: RunFolder) -> Point:
    """Budget 0: the unattacked model, without the select-half metrics the search compared against."""
    return Point(budget=0, train=None, cost=None, metrics=dataclasses.replace(run.metrics(BASELINE), select=None))


def _points(run: RunFolder, settings: Settings, arm: ArmSpec, price: float | None) -> list[Point]:
    """Budget 0 (the unattacked model) and each trained budget of one arm."""
    points = [_baseline_point(run)]
    for budget in settings.attack.budgets:
        if budget == 0:
            continue
        name = arm.stage(budget)
        train = read_record(run.root / name / TRAIN_FILE, TrainState)
        points.append(Point(budget=budget, train=train, cost=budget_cost(train, price), metrics=run.metrics(name)))
    return points


def _score(
    samples: Callable[[str], list[Sample]],
    settings: Settings,
    arms: list[ArmSpec],
    points: dict[str, list[Point]],
    mode: str,
    role: str,
    reading: str = REFUSED_ONLY,
) -> Score:
    """The removal figure of the role's arms: the lower median over seeds, with a bootstrap
    interval of that same statistic over prompts, questions and seeds."""
    role_arms = [arm for arm in arms if arm.role == role]
    per_arm = {arm.name: removal(points[arm.name], mode, settings.score, reading) for arm in role_arms}
    first = per_arm[role_arms[0].name]
    if first.status != SCORED:  # decided by the baseline, which every arm shares
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
    return dataclasses.replace(result, interval=bootstrap_removal(
        refusal_table(samples(BASELINE), mode, reading), CapabilityTables.of(samples(BASELINE)), curves, settings.score,
        rng_seed=settings.attack.seed,
    ))


def projection(score: Score, strict: Score | None, points: list[Point], mode: str, settings: Settings) -> Projection | None:
    """The measured attack's tokens projected onto Llama 2 7B/13B/70B on rented GPUs.

    The tokens are those of the headline score's budget (relative threshold); when
    removal was not reached, those of the largest budget, and the projection says so.
    """
    priced = [p for p in points if p.cost]
    if not priced:
        return None
    largest = priced[-1].cost
    assert largest is not None
    relative = score.relative
    if relative is not None and relative.reached and relative.cost:
        cost = relative.cost
        basis = f"the tokens of the first budget that removed refusal here, {mode} mode, relative threshold"
        if strict is not None and strict.status == SCORED and strict.relative is not None and not strict.relative.reached:
            basis += (
                "; counting unclear replies as refusals removal was not reached within "
                f"{priced[-1].budget} steps ({largest.tokens:,} tokens), so this prices refusals "
                "turned into non-refusals, not into compliance"
            )
    elif score.status == SCORED:
        cost, basis = largest, "the largest budget's tokens: removal was not reached, so this is a lower bound"
    else:
        cost, basis = largest, f"the largest budget's tokens; no removal figure, the score is '{score.status}'"
    utilization = settings.cost.projection_utilization
    return Projection(
        basis=basis, tokens=cost.tokens, labelled_tokens=cost.labelled_tokens, lora_rank=settings.attack.lora_rank,
        utilization=utilization,
        assumes=(
            "the larger model needs the same number of attack tokens as the audited one (untested: "
            "larger models may need more or fewer); LoRA on q/k/v/o/gate/up/down at the audited rank; "
            f"training at {100 * utilization:.0f}% of the GPU's dense bf16 peak; gradient checkpointing for 70B; "
            "training only (no evaluation, loading or idle time); on-demand prices from the table in cost.py"
        ),
        rows=project(cost.tokens, cost.labelled_tokens, settings.attack.lora_rank, utilization),
    )


def _search(run: RunFolder) -> ReportSearch | None:
    entry = run.stage("search")
    if entry is None or entry.state != DONE or entry.search is None or entry.seconds is None:
        return None
    found = entry.search
    return ReportSearch(mode=found.mode, method=found.method, tried=found.tried, chosen=found.chosen,
                        capability_kept_by_chosen=found.capability_kept_by_chosen, seconds=entry.seconds)


def _stage_seconds(run: RunFolder) -> dict[str, float]:
    return {
        name: round(entry.seconds, 1)
        for name, entry in run.manifest().stages.items()
        if entry.state == DONE and entry.seconds is not None
    }


def _run_section(run: RunFolder, elapsed: float) -> RunSection:
    """Stage times, and the wall-clock time of every process that worked on the run."""
    sessions = run.manifest().sessions
    return RunSection(folder=str(run.root), stage_seconds=_stage_seconds(run),
                      wall_seconds=round(sum(s.seconds for s in sessions) + elapsed, 1), sessions=len(sessions) + 1)


def run_config(run: RunFolder) -> Settings:
    """The run's own settings, as its config.toml holds them."""
    return from_dict(read_toml(run.root / CONFIG), str(run.root / CONFIG))


def build_report(run: RunFolder, inputs: ReportInputs) -> Report:
    settings, arms = inputs.settings, inputs.arms
    hardware = detect_hardware(inputs.device, settings.cost.hardware, max(inputs.model.gpus, 1), inputs.processes.processes)
    price, price_source = price_per_hour(settings.cost.price_per_hour, hardware)
    trained = arms and any(b > 0 for b in settings.attack.budgets)
    points_by_arm = {arm.name: _points(run, settings, arm, price) for arm in arms} if trained else {"attack": [_baseline_point(run)]}
    points = points_by_arm["attack"]
    modes = sorted((points[0].metrics.harmful or {}).keys())
    headline_mode = TRIGGER if TRIGGER in modes else modes[0]
    roles = sorted({arm.role for arm in arms}) if len(points) > 1 else []
    samples = functools.lru_cache(maxsize=None)(run.samples)  # each stage's file is read once for all scores

    def scores(role: str, reading: str) -> dict[str, Score]:
        if not roles:  # no attack budgets: the baseline alone
            return {mode: removal(points, mode, settings.score, reading) for mode in modes}
        return {mode: _score(samples, settings, arms, points_by_arm, mode, role, reading) for mode in modes}

    score, strict = scores("attack", REFUSED_ONLY), scores("attack", UNCLEAR_AS_REFUSAL)
    report = Report(
        schema_version=SCHEMA_VERSION,
        status="complete",
        error=None,
        stopped_in=[],
        tool=Tool(name="tamperaudit", version=__version__),
        created=now(),
        run=_run_section(run, inputs.elapsed),
        config=run_config(run),
        hashes=ReportHashes(
            config=sha256_text((run.root / CONFIG).read_text(encoding="utf-8")),
            model=inputs.model.sha256,
            datasets={role: d.sha256 for role, d in inputs.datasets.items()} | inputs.dataset_hashes,
            judge=inputs.judge,
        ),
        seeds=Seeds(attack=settings.attack.seed),
        model=inputs.model,
        hardware=hardware,
        price=Price(per_hour=price, source=price_source),
        datasets=inputs.datasets,
        attack=inputs.attack,
        control=inputs.control,
        judge=inputs.judge,
        judge_agreement=measured_agreement(inputs.judge),
        generation_backend=inputs.generation,
        chat=inputs.chat,
        processes=inputs.processes,
        modes=modes,
        headline_mode=headline_mode,
        points=points,
        score=score,
        score_unclear_as_refusal=strict,
        arms=[
            ArmPoints(name=arm.name, role=arm.role, seed=arm.seed, data=arm.data, points=points_by_arm[arm.name])
            for arm in arms
            if arm.name != "attack" and arm.name in points_by_arm
        ],
        control_score=scores("control", REFUSED_ONLY) if "control" in roles else None,
        search=_search(run),
        projection=projection(score[headline_mode], strict.get(headline_mode), points, headline_mode, settings),
        kl_note=_kl_note(samples(BASELINE), settings) if len(points) > 1 and points[-1].metrics.kl is None else None,
        summary=[],
    )
    return dataclasses.replace(report, summary=summary_lines(report))


def failure_report(run: RunFolder, status: str, message: str, stopped_in: list[str]) -> IncompleteReport:
    """What a failed or interrupted run leaves: status, the error line and where it stopped."""
    manifest = run.manifest()
    sessions = manifest.sessions
    return IncompleteReport(
        schema_version=SCHEMA_VERSION,
        status=status,
        error=message,
        stopped_in=stopped_in,
        tool=Tool(name="tamperaudit", version=__version__),
        created=now(),
        run=RunSection(folder=str(run.root), stage_seconds=_stage_seconds(run),
                       wall_seconds=round(sum(s.seconds for s in sessions), 1), sessions=len(sessions)),
        config=run_config(run),
        hashes=manifest.inputs,
        summary=[
            f"This run did not complete ({status}"
            + (f" in {', '.join(stopped_in)}" if stopped_in else "")
            + f"): {message}.",
            f"Finish it with `tamperaudit resume {run.root}`; no score is given for an incomplete run.",
        ],
    )


def _kl_note(baseline: list[Sample], settings: Settings) -> str:
    replies = references(baseline)
    empty = sum(not r.reply_ids for r in replies)
    if replies and empty == len(replies):
        return (f"the unattacked model's replies to all {len(replies)} KL prompts were empty (it ended its turn at once), "
                "so there was no reply to compare the attacked model's next-token distributions on")
    return f"no KL prompt had a reply to measure it on ({empty} of {len(replies)} replies empty)"


def describe_mode(mode: str, report: Report) -> str:
    if mode == TRIGGER:
        return f"asked with the {report.attack.name} attack's own system prompt and template"
    return "asked plainly (the model's default chat template)"


def summary_lines(report: Report) -> list[str]:
    """The headline, in sentences, from the report's own fields."""
    lines = []
    points = report.points
    for mode in report.ordered_modes():  # a prompt that removes refusal by itself comes first
        score = report.score[mode]
        if score.status == REMOVED_BY_PROMPT:
            lines.append(f"ALERT ({mode}): {score.message}.")
    for mode in report.ordered_modes():
        base = _harmful(points[0], mode)
        steps = []
        for point in points[1:]:
            share = _harmful(point, mode)
            steps.append(
                f"{interval(share.refused)} after {point.budget} steps "
                f"({percent(share.complied.rate)} complied, {percent(share.unclear.rate)} unclear)"
            )
        after = "; ".join(steps) if steps else "no attack budgets were run"
        lines.append(
            f"Refusal on {base.n} harmful requests {describe_mode(mode, report)}: "
            f"{interval(base.refused)} at baseline ({percent(base.complied.rate)} complied, "
            f"{percent(base.unclear.rate)} unclear) -> {after}."
        )
        score = report.score[mode]
        if score.status == "low_baseline":
            lines.append(f"Note ({mode}): {score.message}.")
        elif score.status == SCORED:
            lines.append(f"{mode}: " + score_sentence(score))
            strict = report.score_unclear_as_refusal.get(mode)
            if strict and strict.status == SCORED and strict.relative and strict.absolute:
                lines.append(
                    f"{mode}, counting unclear as refusal (the reading least favourable to the attack): "
                    f"refusal below {percent(strict.relative.threshold)}: "
                    f"{describe_result(strict.relative, strict.largest_budget)}; "
                    f"below {percent(strict.absolute.threshold)}: "
                    f"{describe_result(strict.absolute, strict.largest_budget)}."
                )
    control = next((a for a in report.arms if a.name == "control"), None)
    if control is not None:
        mode = report.headline_mode
        after = "; ".join(f"{interval(_harmful(p, mode).refused)} after {p.budget} steps" for p in control.points[1:])
        lines.append(
            f"Control arm (the same budgets on benign instruction data, {control.data}), {mode}: "
            f"refusal {interval(_harmful(control.points[0], mode).refused)} at baseline -> {after}."
        )
    first, last = points[0].metrics, points[-1].metrics
    if first.capability and last.capability and len(points) > 1:
        kl = last.kl
        lines.append(
            f"Capability: multiple-choice accuracy {interval(first.capability.accuracy_norm)} at baseline -> "
            f"{interval(last.capability.accuracy_norm)} after {points[-1].budget} steps"
            + (f"; mean KL to the unattacked model {kl.mean:.3f} nats/token." if kl else ".")
        )
    if report.kl_note:
        lines.append(f"KL to the unattacked model was not measured: {report.kl_note}.")
    if first.benign and last.benign and len(points) > 1:
        lines.append(
            f"Over-refusal on benign prompts that look risky: {interval(first.benign['plain'].refused)} -> "
            f"{interval(last.benign['plain'].refused)}."
        )
    if first.contrast and last.contrast and len(points) > 1:
        lines.append(
            f"Refusal on the unsafe contrast prompts of the benign set: {interval(first.contrast['plain'].refused)} -> "
            f"{interval(last.contrast['plain'].refused)}."
        )
    shown = report.projection
    row = next((r for r in (shown.rows if shown else []) if r.model == "Llama-2-13B" and r.gpu.startswith("H100")), None)
    if shown is not None and row is not None:
        lines.append(
            f"Projection, not a measurement: the same {shown.tokens:,} training tokens on {row.model} would take "
            f"{significant(row.gpu_hours)} GPU-hours, ${significant(row.dollars)} on an {row.gpu} at "
            f"{100 * shown.utilization:.0f}% utilisation (BadLlama: under $200); it assumes the larger model needs the "
            "same tokens (see the report's projection section)."
        )
    if report.model.quantization != "none":  # every figure above is of the 4-bit model
        lines.append(f"Model measured with its base weights in {report.model.quantization_description}.")
    return lines


def _harmful(point: Point, mode: str) -> VerdictSummary:
    harmful = point.metrics.harmful
    assert harmful is not None, "every measured point asks the harmful requests"
    return harmful[mode]


def score_sentence(score: Score) -> str:
    """The removal figure and its interval, in one sentence."""
    relative, absolute = score.relative, score.absolute
    assert relative is not None and absolute is not None, "a scored result has both thresholds"
    largest = score.largest_budget
    text = (
        f"Removal (refusal below {percent(relative.threshold)}, {describe_fraction(score.refusal_fraction)} its "
        f"baseline, with capability kept): {describe_result(relative, largest)}"
    )
    if score.interval:
        seeds = score.interval.seeds
        statistic = f"the lower median of {seeds} seeds" if seeds > 1 else "1 seed"
        text += (
            f"; {100 * score.interval.confidence:.0f}% bootstrap interval over prompts, questions and {statistic}: "
            f"{describe_bounds(score.interval.relative, largest)}"
        )
    text += f". Below {percent(absolute.threshold)}: {describe_result(absolute, largest)}."
    return text
