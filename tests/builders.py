"""Records built by hand for tests of pure functions: scores, gates, verdict cards.

Each builder fills what a test does not care about with plain, valid values, so a test
states only the figures it is about.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tamperaudit.config import Settings
from tamperaudit.records import (
    SCHEMA_VERSION,
    AttackDescription,
    BackendDescription,
    CapabilitySummary,
    Cost,
    DatasetDescription,
    Hardware,
    KlSummary,
    Point,
    Price,
    ProcessesDescription,
    Rate,
    Report,
    ReportHashes,
    ReportModel,
    RunSection,
    Score,
    Seeds,
    SourceDescription,
    StageMetrics,
    ThresholdResult,
    Throughput,
    Tool,
    VerdictSummary,
)


def share(rate: float, n: int = 100) -> Rate:
    """A rate of ``rate`` over ``n`` with a degenerate interval (the tests read the rate)."""
    return Rate(count=round(rate * n), total=n, rate=rate, low=rate, high=rate)


def shares(refused: float, unclear: float = 0.0, n: int = 100, unclear_as_refusal: float | None = None) -> VerdictSummary:
    """Verdict shares: ``refused`` and ``unclear`` as given, the rest complied."""
    complied = max(0.0, 1.0 - refused - unclear)
    return VerdictSummary(
        n=n, refused=share(refused, n), complied=share(complied, n), unclear=share(unclear, n),
        refusal_if_unclear_refused=share(refused + unclear if unclear_as_refusal is None else unclear_as_refusal, n),
        refusal_among_clear=share(refused / (refused + complied) if refused + complied else 0.0, n), by_category={},
    )


def capability(accuracy: float, n: int = 100) -> CapabilitySummary:
    return CapabilitySummary(accuracy=share(accuracy, n), accuracy_norm=share(accuracy, n), by_category={})


def kl(mean: float) -> KlSummary:
    return KlSummary(mean=mean, max=mean, prompts=10, tokens=100, standard_error=0.0)


def metrics(harmful: dict[str, VerdictSummary], accuracy: float | None = 0.7, kl_mean: float | None = None) -> StageMetrics:
    return StageMetrics(
        harmful=harmful, benign=None, contrast=None, capability=None if accuracy is None else capability(accuracy),
        kl=None if kl_mean is None else kl(kl_mean), throughput=Throughput(),
    )


def cost(budget: int) -> Cost:
    return Cost(steps=budget, examples=4 * budget, tokens=budget * 100, labelled_tokens=budget * 40, seconds=float(budget),
                flops=1.0, achieved_gflops=None, dollars=0.0)


def point(budget: int, refusal: float, accuracy: float = 0.7, kl_mean: float | None = 0.1, mode: str = "trigger") -> Point:
    """A point whose harmful requests in ``mode`` are refused at ``refusal``."""
    return Point(
        budget=budget, train=None, cost=None if budget == 0 else cost(budget),
        metrics=metrics({mode: shares(refusal)}, accuracy, None if budget == 0 else kl_mean),
    )


def with_harmful(point: Point, mode: str, summary: VerdictSummary) -> Point:
    """The point with ``mode``'s verdict shares replaced (or added)."""
    harmful = {**(point.metrics.harmful or {}), mode: summary}
    return dataclasses.replace(point, metrics=dataclasses.replace(point.metrics, harmful=harmful))


def threshold(budget: int | None, value: float = 0.3) -> ThresholdResult:
    return ThresholdResult(threshold=value, reached=budget is not None, budget=budget, capability_violations=[])


def score(status: str = "scored", relative: int | None = None, absolute: int | None = None, message: str | None = None,
          mode: str = "trigger") -> Score:
    """A score: scored with the budgets at which each threshold was reached (None: not), or another status."""
    scored = status == "scored"
    return Score(
        mode=mode, reading="refused", baseline_refusal=0.6, largest_budget=10, refusal_fraction=0.5, status=status,
        relative=threshold(relative) if scored else None, absolute=threshold(absolute, 0.1) if scored else None,
        message=message,
    )


def dataset(name: str = "builtin:harmful") -> DatasetDescription:
    return DatasetDescription(name=name, path=name, sha256="0" * 64, ids_sha256="1" * 64, count=10, file_rows=10,
                              format="builtin", notes=[], categories={})


def report(points: list[Point], score: dict[str, Score], strict: dict[str, Score] | None = None, **fields: Any) -> Report:
    """A complete report around the given points and scores (its modes are the scores' keys)."""
    settings = Settings()
    modes = sorted(score)
    values: dict[str, Any] = dict(
        schema_version=SCHEMA_VERSION, status="complete", error=None, stopped_in=[],
        tool=Tool(name="tamperaudit", version="test"), created="2026-01-01T00:00:00+00:00",
        run=RunSection(folder="runs/test", stage_seconds={}, wall_seconds=1.0, sessions=1), config=settings,
        hashes=ReportHashes(config="c" * 64, model="m" * 64, datasets={}, judge={"name": "keyword"}),
        seeds=Seeds(attack=0),
        model=ReportModel(
            spec="tiny", kind="folder", sha256="m" * 64,
            source=SourceDescription(origin="a folder", quantization="none"), precision="float32",
            precision_reason="asked for", parameters=1000, embedding_parameters=100, head_parameters=100,
            body_parameters=800, architecture="Test", vocab_size=100, layers=2, hidden_size=32, quantization="none",
            quantization_description="none", weight_bytes=4000, devices=["cpu"], gpus=0, training_memory=None,
        ),
        hardware=Hardware(description="a CPU", device="cpu", threads=2), price=Price(per_hour=0.1, source="test"),
        datasets={"harmful": dataset()},
        attack=AttackDescription(name="identity-shift", data=dataset("builtin:identity-shift"), system_prompt="You are X.",
                                 user_template="{prompt}", select_closest=False, settings=settings.attack),
        control=None, judge={"name": "keyword"},
        generation_backend=BackendDescription(name="hf", reason="test", engine="the loop", extra_memory="none"),
        processes=ProcessesDescription(processes=1, kind="single process", launcher=None),
        modes=modes, headline_mode="trigger" if "trigger" in modes else modes[0], points=points, score=score,
        score_unclear_as_refusal=strict if strict is not None else score, arms=[], control_score=None, search=None,
        projection=None, summary=[],
    )
    values.update(fields)
    return Report(**values)

