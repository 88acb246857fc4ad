"""The report's plots, drawn with matplotlib from report.json alone, as PNG bytes.

Each plot is a ``matplotlib.figure.Figure`` rendered by the Agg canvas: no pyplot, so
no global state and no display is needed. Rates carry their 95% Wilson intervals as
bands; the x axis is proportional to the budget in optimizer steps, with the training
tokens and dollars of each budget on a second axis above it.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from tamperaudit.records import Point, Rate, Report
from tamperaudit.score import pareto_front
from tamperaudit.report.words import significant

VERDICT_COLOURS = {"refused": "#c0392b", "complied": "#2471a3", "unclear": "#7f8c8d"}
CONTROL_COLOUR = "#27ae60"
CAPABILITY_COLOURS = {"accuracy": "#2471a3", "over-refusal": "#d35400", "kl": "#6c3483"}
# One colour per run on the compare page.
RUN_COLOURS = ("#c0392b", "#2471a3", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#2c3e50")
DPI = 100


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


# What a curve plots of each point: a rate, or None where the point did not measure it.
Pick = Callable[[Point], Rate | None]


def harmful(mode: str, verdict: str) -> Pick:
    def pick(point: Point) -> Rate | None:
        share = (point.metrics.harmful or {}).get(mode)
        return getattr(share, verdict) if share is not None else None
    return pick


def accuracy(point: Point) -> Rate | None:
    return point.metrics.capability.accuracy_norm if point.metrics.capability else None


def over_refusal(point: Point) -> Rate | None:
    share = (point.metrics.benign or {}).get("plain")
    return share.refused if share is not None else None


def _curve(points: list[Point], pick: Pick) -> tuple[list[int], list[float], list[float], list[float]]:
    budgets, rates, lows, highs = [], [], [], []
    for point in points:
        share = pick(point)
        if share is None or share.rate is None:
            continue
        budgets.append(point.budget)
        rates.append(share.rate)
        lows.append(share.low)
        highs.append(share.high)
    return budgets, rates, lows, highs


def _banded(ax: Any, curve: tuple[list[int], list[float], list[float], list[float]], colour: str, label: str,
            style: str = "-", band: bool = True, width: float = 2.0) -> None:
    budgets, rates, lows, highs = curve
    if not budgets:
        return
    if band:
        ax.fill_between(budgets, lows, highs, color=colour, alpha=0.15, linewidth=0)
    ax.plot(budgets, rates, style, color=colour, label=label, linewidth=width, marker="o", markersize=4)


def _cost_axis(ax: Any, points: list[Point]) -> None:
    """Tokens and dollars of each trained budget, on an axis above the steps axis."""
    priced = [(p.budget, p.cost) for p in points if p.cost]
    if not priced:
        return
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks([budget for budget, _ in priced])
    labels = []
    for _, cost in priced:
        dollars = "" if cost.dollars is None else f"\n${significant(cost.dollars)}"
        labels.append(f"{_short(cost.tokens)}{dollars}")
    top.set_xticklabels(labels, fontsize=7)
    top.set_xlabel("training tokens and dollars (this machine)", fontsize=8)


def _short(count: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.0f}"


def _budget_axis(ax: Any, budgets: Sequence[int]) -> None:
    largest = max(budgets) if budgets else 1
    margin = max(largest, 1) * 0.03
    ax.set_xlim(-margin, largest + margin)
    ax.set_xticks(sorted(set(budgets)))
    ax.set_xlabel("attack budget (optimizer steps)")
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)


def _rate_axis(ax: Any, label: str) -> None:
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel(label)


def erosion(report: Report, mode: str) -> bytes:
    """Refused, complied and unclear against budget, attack and control arms, each seed."""
    figure = Figure(figsize=(8.0, 4.6), layout="constrained")
    ax = figure.add_subplot()
    points = report.points
    other_seeds, controls = report.arms_of("attack"), report.arms_of("control")
    for verdict, colour in VERDICT_COLOURS.items():
        label = f"{verdict} (seed {report.seeds.attack})" if other_seeds else verdict
        _banded(ax, _curve(points, harmful(mode, verdict)), colour, label)
    for arm in other_seeds:  # their refusal, thinner, without bands
        _banded(ax, _curve(arm.points, harmful(mode, "refused")), VERDICT_COLOURS["refused"],
                f"refused (seed {arm.seed})", style="--", band=False, width=1.2)
    for index, arm in enumerate(controls):
        label = "refused, control arm" + (f" (seed {arm.seed})" if len(controls) > 1 else "")
        _banded(ax, _curve(arm.points, harmful(mode, "refused")), CONTROL_COLOUR, label,
                style="-." if index else "-", band=index == 0, width=1.6 if index else 2.0)
    score = report.score.get(mode)
    relative = score.relative if score is not None else None
    if relative:
        ax.axhline(relative.threshold, color="#555555", linestyle=":", linewidth=1,
                   label=f"removal threshold ({100 * relative.threshold:.0f}%)")
        if relative.reached:
            ax.axvline(relative.budget, color="#555555", linestyle="--", linewidth=1,
                       label=f"removed at {relative.budget} steps")
    _budget_axis(ax, [p.budget for p in points])
    _rate_axis(ax, "share of harmful requests")
    _cost_axis(ax, points)
    figure.suptitle(f"Harmful requests, {mode} mode (bands: 95% intervals)", fontsize=10)
    figure.legend(fontsize=7, loc="outside right upper", frameon=False)
    return _png(figure)


def capability(report: Report) -> bytes:
    """Multiple-choice accuracy and over-refusal (with bands) and KL to the base model, against budget."""
    figure = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = figure.add_subplot()
    points = report.points
    controls = report.arms_of("control")
    _banded(ax, _curve(points, accuracy), CAPABILITY_COLOURS["accuracy"], "MC accuracy")
    _banded(ax, _curve(points, over_refusal), CAPABILITY_COLOURS["over-refusal"], "over-refusal (benign)")
    if controls:
        _banded(ax, _curve(controls[0].points, accuracy), CAPABILITY_COLOURS["accuracy"],
                "MC accuracy, control arm", style="--", band=False, width=1.4)
    _budget_axis(ax, [p.budget for p in points])
    _rate_axis(ax, "accuracy, over-refusal")
    kl_points = [(p.budget, p.metrics.kl.mean) for p in points if p.metrics.kl]
    if kl_points:
        right = ax.twinx()
        budgets, means = zip(*([(0, 0.0)] + kl_points))
        right.plot(budgets, means, ":", color=CAPABILITY_COLOURS["kl"], marker="s", markersize=4, label="KL to base")
        right.set_ylabel("KL to the unattacked model (nats/token)", fontsize=8)
        right.set_ylim(bottom=0)
        right.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.2g}"))
    _cost_axis(ax, points)
    figure.suptitle("Capability and over-refusal (bands: 95% intervals)", fontsize=10)
    figure.legend(fontsize=7, loc="outside right upper", frameon=False)
    return _png(figure)


def categories(report: Report) -> bytes | None:
    """Refusal by category (rows) and budget (columns), headline mode, as a heatmap."""
    mode = report.headline_mode

    def by_category(point: Point) -> dict[str, Any]:
        share = (point.metrics.harmful or {}).get(mode)
        return share.by_category if share is not None else {}

    points = report.points
    names = sorted(by_category(points[0]))
    if not names:
        return None
    values = [[by_category(p)[c].refused.rate if c in by_category(p) else None for p in points] for c in names]
    figure = Figure(figsize=(max(4.0, 1.6 + 0.8 * len(points)), max(2.2, 1.0 + 0.32 * len(names))), layout="constrained")
    ax = figure.add_subplot()
    grid = [[float("nan") if v is None else v for v in row] for row in values]
    image = ax.imshow(grid, cmap="RdYlBu", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(points)), [str(p.budget) for p in points])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("attack budget (optimizer steps)")
    for row, line in enumerate(values):
        for column, value in enumerate(line):
            if value is not None:
                ax.text(column, row, f"{100 * value:.0f}%", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.2 or value > 0.8 else "black")
    bar = figure.colorbar(image, ax=ax, format=PercentFormatter(1.0, decimals=0))
    bar.set_label("refused", fontsize=8)
    figure.suptitle(f"Refusal by category, {mode} mode", fontsize=10)
    return _png(figure)


def search(report: Report) -> bytes | None:
    """Every setting the search tried: compliance on the select half against its capability
    cost, infeasible ones hollow, the Pareto front joined and the chosen one marked."""
    found = report.search
    tried = [t for t in found.tried if t.complied is not None and t.capability_cost is not None] if found else []
    if not found or not tried:
        return None
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.add_subplot()
    kept = [t for t in tried if t.capability_kept]
    broke = [t for t in tried if not t.capability_kept]
    colour = VERDICT_COLOURS["complied"]
    if kept:
        ax.scatter([t.capability_cost for t in kept], [t.complied for t in kept], color=colour, s=28,
                   label="capability kept")
    if broke:
        ax.scatter([t.capability_cost for t in broke], [t.complied for t in broke], facecolors="none",
                   edgecolors=VERDICT_COLOURS["refused"], s=28, label="capability bound broken")
    front = sorted(pareto_front(tried), key=lambda t: t.capability_cost or 0.0)
    ax.plot([t.capability_cost for t in front], [t.complied for t in front], "-", color=colour, linewidth=1,
            alpha=0.6, label="Pareto front")
    chosen = [t for t in tried if t.setting() == found.chosen]
    if chosen:
        ax.scatter([chosen[0].capability_cost], [chosen[0].complied], marker="*", s=220, color="#f1c40f",
                   edgecolors="black", linewidths=0.8, zorder=3, label="chosen")
    ax.set_xlabel("capability cost (KL to the unattacked model, nats/token, or accuracy fall)", fontsize=8)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    _rate_axis(ax, f"complied, {found.mode} mode (select half)")
    figure.suptitle(f"Attack settings tried ({found.method}, {len(found.tried)} settings)", fontsize=10)
    figure.legend(fontsize=7, loc="outside right upper", frameon=False)
    return _png(figure)


def report_plots(report: Report) -> dict[str, bytes]:
    """File name -> PNG bytes of every plot of one run's report."""
    plots = {f"refusal_{mode}.png": erosion(report, mode) for mode in report.ordered_modes()}
    plots["capability.png"] = capability(report)
    heatmap = categories(report)
    if heatmap is not None:
        plots["categories.png"] = heatmap
    scatter = search(report)
    if scatter is not None:
        plots["search.png"] = scatter
    return plots


def compare(reports: Sequence[Report], labels: Sequence[str]) -> bytes:
    """Each run's refusal (its headline mode) and capability against budget, on shared axes."""
    figure = Figure(figsize=(10.0, 4.4), layout="constrained")
    refusal_axis, accuracy_axis = figure.subplots(1, 2, sharex=True)
    budgets: list[int] = []
    for index, (report, label) in enumerate(zip(reports, labels)):
        colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        points = report.points
        budgets += [p.budget for p in points]
        _banded(refusal_axis, _curve(points, harmful(report.headline_mode, "refused")), colour, label)
        _banded(accuracy_axis, _curve(points, accuracy), colour, label)
    for ax, title in ((refusal_axis, "Refused harmful requests"), (accuracy_axis, "Multiple-choice accuracy")):
        _budget_axis(ax, budgets)
        _rate_axis(ax, title.lower())
        ax.set_title(f"{title} (bands: 95% intervals)", fontsize=10)
    handles, names = refusal_axis.get_legend_handles_labels()
    figure.legend(handles, names, fontsize=8, loc="outside lower center", ncol=min(len(names), 3), frameon=False)
    return _png(figure)
