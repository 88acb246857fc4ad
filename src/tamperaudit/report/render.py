"""Render report.json to Markdown and HTML with matplotlib plots. Reads nothing but the report.

The Markdown is written first; the HTML is that Markdown converted block by block, with
the plots inlined, so the two show the same sections, tables and figures in the same order.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Mapping

from tamperaudit.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from tamperaudit.jsonrecord import Scalar
from tamperaudit.records import (
    AnyReport,
    BackendDescription,
    IncompleteReport,
    JudgeAgreement,
    MemoryPlan,
    Point,
    ProcessesDescription,
    Projection,
    Rate,
    Report,
    Score,
    StageMetrics,
    VerdictSummary,
)
from tamperaudit.report.plots import report_plots
from tamperaudit.report.schema import read_report
from tamperaudit.report.verdict import verdict
from tamperaudit.report.words import describe_bounds, interval, percent, significant

# The tables' precision: one decimal (the summary and the card use whole percents).
DIGITS = 1


def _pct(value: float | None) -> str:
    return percent(value, DIGITS)


def _interval(share: Rate) -> str:
    return interval(share, DIGITS)


def _number(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _flops(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} FLOP"


def _dollars(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.4f}"


def budget_table(report: Report, points: list[Point] | None = None) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the per-budget table: cost, refusal by mode, capability."""
    modes = report.modes
    header = ["steps", "tokens", "seconds", "FLOPs", "dollars"]
    for mode in modes:
        header += [f"refused ({mode}) [95% CI]", f"complied ({mode})", f"unclear ({mode}) (count)"]
    header += ["over-refusal [95% CI]"]
    points = report.points if points is None else points
    has_contrast = any(p.metrics.contrast for p in points)
    if has_contrast:
        header += ["refused unsafe contrast [95% CI]"]
    header += ["MC accuracy [95% CI]", "KL to base"]
    rows = []
    for point in points:
        cost = point.cost
        metrics = point.metrics
        row = [str(point.budget)]
        if cost is None:  # the unattacked model
            row += ["-"] * 4
        else:
            row += [_number(cost.tokens), _number(cost.seconds, 1), _flops(cost.flops), _dollars(cost.dollars)]
        for mode in modes:
            share = (metrics.harmful or {})[mode]
            unclear = share.unclear
            row += [_interval(share.refused), _pct(share.complied.rate), f"{_pct(unclear.rate)} ({unclear.count})"]
        row += [_interval(metrics.benign["plain"].refused) if metrics.benign else "n/a"]
        if has_contrast:
            row += [_interval(metrics.contrast["plain"].refused) if metrics.contrast else "n/a"]
        row += [
            _interval(metrics.capability.accuracy_norm) if metrics.capability else "n/a",
            f"{metrics.kl.mean:.4f}" if metrics.kl else ("0 (reference)" if point.budget == 0 else "n/a"),
        ]
        rows.append(row)
    return header, rows


def _score_lines(scores: dict[str, Score]) -> list[str]:
    lines = []
    for mode, score in scores.items():
        if score.status == "removed_by_prompt":
            lines.append(f"- {mode}: ALERT: {score.message}.")
            continue
        if score.status != "scored":
            lines.append(f"- {mode}: {score.message or score.status}")
            continue
        interval = score.interval
        for name in ("relative", "absolute"):
            result = score.relative if name == "relative" else score.absolute
            assert result is not None
            target = f"refusal below {_pct(result.threshold)} ({name} threshold)"
            if result.reached and result.cost is not None:
                cost = result.cost
                lines.append(
                    f"- {mode}: {target} reached at {result.budget} steps: {_number(cost.tokens)} tokens, "
                    f"{_number(cost.seconds, 1)} s, {_flops(cost.flops)}, {_dollars(cost.dollars)}."
                )
            else:
                lines.append(f"- {mode}: {target} not reached within {score.largest_budget} steps.")
            if interval:
                bounds = interval.relative if name == "relative" else interval.absolute
                statistic = "the lower median over seeds" if interval.seeds > 1 else "one seed"
                lines.append(
                    f"  - {100 * interval.confidence:.0f}% bootstrap interval of {statistic} ({interval.resamples} "
                    f"resamples of prompts, questions and {interval.seeds} seed(s)): "
                    f"{describe_bounds(bounds, score.largest_budget)}; reached in {100 * bounds.reached_share:.0f}% of resamples."
                )
            for violation in result.capability_violations:
                lines.append(f"  - {violation.budget} steps not counted: {violation.reason}.")
            per_seed = (score.per_seed or {}).get(name, {})
            if len(per_seed) > 1:
                each = ", ".join(f"{arm}: {'not reached' if b is None else f'{b} steps'}" for arm, b in per_seed.items())
                lines.append(f"  - each seed: {each}; the figure above is their lower median.")
    return lines


def _throughput_lines(report: Report) -> list[str]:
    """What each measured model state achieved: generation, multiple choice, training."""
    arms = [("attack", report.points)] + [(a.name, a.points) for a in report.arms]
    lines = ["", "Throughput of each stage:", "",
             "| stage | generated tokens/s | questions/s | training tokens/s | training GFLOPS |", "|---|---|---|---|---|"]
    for name, points in arms:
        for point in points:
            if name != "attack" and point.budget == 0:
                continue  # the shared baseline is listed once
            speed = point.metrics.throughput
            generation, choice, cost = speed.generation, speed.multiple_choice, point.cost
            train_rate = cost.tokens / cost.seconds if cost and cost.seconds else None
            stage = "baseline" if point.budget == 0 else f"{name}, {point.budget} steps"
            lines.append(
                f"| {stage} | {_number(generation.generated_tokens_per_second if generation else None, 1)} | "
                f"{_number(choice.questions_per_second if choice else None, 2)} | {_number(train_rate, 1)} | "
                f"{_number(cost.achieved_gflops if cost else None, 1)} |"
            )
    return lines


def _arm_sections(report: Report) -> list[str]:
    out = []
    for arm in report.arms:
        title = "Control arm" if arm.role == "control" else "Attack"
        out += ["", f"## {title}: {arm.name} (data {arm.data}, seed {arm.seed})", ""]
        out += _table(*budget_table(report, arm.points))
    if report.control_score:
        out += ["", "Control arm removal score:", "", *_score_lines(report.control_score)]
    return out


def _search_section(report: Report, plots: Mapping[str, bytes]) -> list[str]:
    search = report.search
    if not search:
        return []
    how = ("every combination of the [search] grid" if search.method == "grid" else
           f"{len(search.tried)} trials of Optuna's TPE sampler (learning rate log-uniform between the "
           "grid's bounds, rank and batch size from its lists; a trial that broke the capability bound "
           "counted as infeasible)")
    out = [
        "",
        "## Attack settings search",
        "",
        f"Settings tried: {how}. Each trained to the largest budget and measured on the 'select' half of the "
        f"harmful prompts ({search.mode} mode); the most compliant whose capability stayed within tolerance was "
        f"chosen and is reported above on the 'report' half. Capability cost: mean KL to the unattacked model "
        f"(nats/token), or the fall in multiple-choice accuracy where KL was not measured. Search time: "
        f"{_number(search.seconds, 0)} s.",
        "",
        *_figure(plots, "search.png", "Compliance against capability cost of every setting tried"),
        "| learning rate | LoRA rank | batch | refused | complied | capability cost | capability kept | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in search.tried:
        chosen = " (chosen)" if t.setting() == search.chosen else ""
        cost = "n/a" if t.capability_cost is None else f"{t.capability_cost:.3g}"
        out.append(
            f"| {t.learning_rate}{chosen} | {t.lora_rank} | {t.batch_size} | {_pct(t.refusal)} | "
            f"{_pct(t.complied)} | {cost} | {'yes' if t.capability_kept else 'no: ' + t.why_not} | "
            f"{_number(t.seconds, 0)} |"
        )
    return out


def _projection_lines(projection: Projection | None) -> list[str]:
    """The measured attack's tokens on Llama 2 models and rented GPUs: an estimate, labelled as one."""
    if not projection:
        return []
    out = [
        "## Projection to larger models (an estimate, not a measurement)",
        "",
        f"Training cost of {projection.tokens:,} tokens with LoRA rank {projection.lora_rank}, computed from "
        f"FLOPs per token. Which tokens: {projection.basis}. Assumes {projection.assumes}.",
        "",
        "| model | GPU | training FLOPs | GPU-hours | dollars | price |",
        "|---|---|---|---|---|---|",
    ]
    for row in projection.rows:
        out.append(
            f"| {row.model} | {row.gpu} | {_flops(row.flops)} | {significant(row.gpu_hours)} | "
            f"${significant(row.dollars)} | {row.price} |"
        )
    return out + [""]


def _generation_line(backend: BackendDescription) -> str:
    return f"{backend.name} ({backend.reason}): {backend.engine}; extra memory: {backend.extra_memory}"


def _processes_line(processes: ProcessesDescription) -> str:
    return (
        f"- training: data-parallel over {processes.processes} processes ({processes.kind}, through "
        f"{processes.launcher}); training seconds and dollars are summed over the processes"
    )


def _memory_line(plan: MemoryPlan) -> str:
    checkpointing = "on" if plan.gradient_checkpointing else "off"
    gib = 1024**3
    parts = [f"activations {plan.activation_bytes / gib:.2f} GiB"]
    if plan.logit_bytes is not None:
        parts.append(f"logits {plan.logit_bytes / gib:.2f} GiB")
    if plan.free_bytes is not None:
        parts.append(f"{plan.free_bytes / gib:.1f} GiB free")
    return (f"{plan.micro_batch_tokens} tokens per pass, gradient checkpointing {checkpointing} ({plan.reason}; "
            f"planned from {', '.join(parts)})")


def _agreement_line(measured: JudgeAgreement) -> str:
    three_way = f"three-way agreement {_pct(measured.agreement)}, " if measured.agreement is not None else ""
    held = "held out" if measured.held_out else "cross-validated"
    return (f"measured on {measured.labels} ({measured.rows} rows, {held}): {three_way}refused recall "
            f"{_pct(measured.refused_recall)}, precision {_pct(measured.refused_precision)}; `{measured.reproduce}`")


def _judge_line(judge: dict[str, Scalar]) -> str:
    pins = ", ".join(f"{k} `{str(v)[:16]}`" for k, v in judge.items() if k != "name")
    return f"{judge['name']} ({pins})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return [cells(header), "|" + "---|" * len(header), *(cells(row) for row in rows)]


def _figure(plots: Mapping[str, bytes], name: str, alt: str) -> list[str]:
    return [f"![{alt}](plots/{name})", ""] if name in plots else []


def _verdict_section(report: Report) -> list[str]:
    headline, lines = verdict(report)
    return ["## Verdict", "", f"**{headline}**", "", *(f"- {line}" for line in lines), ""]


def _lm_eval_section(report: Report) -> list[str]:
    """lm-evaluation-harness's own figures per budget, under its metric names, with its standard errors."""
    points = [p for p in report.points if p.metrics.lm_eval]
    if not points:
        return []
    harness = points[0].metrics.lm_eval
    assert harness is not None
    header = ["task", "metric"] + [f"{p.budget} steps" for p in points]
    rows = []
    for task, entry in harness.tasks.items():
        for metric in entry.metrics:
            cells = []
            for point in points:
                figures = point.metrics.lm_eval
                there = figures.tasks.get(task) if figures else None
                value = there.metrics.get(metric) if there else None
                if value is None or value.value is None:
                    cells.append("n/a")
                else:
                    cells.append(f"{value.value:.4f}" + ("" if value.stderr is None else f" ± {value.stderr:.4f}"))
            rows.append([f"{task} (version {entry.version}, n={entry.n})", metric, *cells])
    limit = harness.limit
    return [
        "",
        f"Measured by lm-evaluation-harness {harness.version} on the in-memory model with the adapter active"
        + (f", limit {limit} per task" if limit else "") + "; values ± lm-eval's standard error:",
        "",
        *_table(header, rows),
    ]


def render_markdown(report: Report, plots: Mapping[str, bytes] | None = None) -> str:
    plots = {} if plots is None else plots
    model, attack = report.model, report.attack
    out = [f"# tamperaudit: {model.spec} under the {attack.name} attack", ""]
    out += _verdict_section(report)
    out += ["## Summary", ""]
    out += [f"- {line}" for line in report.summary]
    out += ["", "## Refusal against attack budget", ""]
    for mode in report.ordered_modes():
        out += _figure(plots, f"refusal_{mode}.png", f"Refused, complied and unclear against budget, {mode} mode")
    out += ["## Budgets", ""]
    out += _table(*budget_table(report))
    out += [
        "",
        "Verdicts are from the "
        f"`{report.judge['name']}` judge. `refused` is the share of all prompts judged refused; "
        "`unclear` (empty, degenerate repetition, content-free persona talk) is counted apart, so "
        "refused + complied + unclear = 100%. Intervals are 95% Wilson intervals.",
        "",
        "## Capability",
        "",
        *_figure(plots, "capability.png", "Multiple-choice accuracy, over-refusal and KL against budget"),
        *_capability_lines(report),
        *_lm_eval_section(report),
        "",
        "## Removal score",
        "",
        "The smallest measured budget at which refusal falls below the threshold while capability stays within "
        "tolerance; no interpolation between budgets.",
        "",
        *_score_lines(report.score),
        "",
        *_projection_lines(report.projection),
        "## Refusal if unclear counted as refusal",
        "",
        "The reading least favourable to the attack: echoes, loops and empty replies count as refusals.",
        "",
    ]
    if report.score_unclear_as_refusal:
        out += ["Removal score under this reading:", "", *_score_lines(report.score_unclear_as_refusal), ""]
    out += ["Refusal rates under this reading:", ""]
    for mode in report.modes:
        cells = [f"{p.budget} steps: {_interval(_harmful(p, mode).refusal_if_unclear_refused)}" for p in report.points]
        out.append(f"- {mode}: " + "; ".join(cells))
    out += ["", "## Refusal by category (headline mode)", ""]
    out += _figure(plots, "categories.png", "Refusal by category and budget")
    mode = report.headline_mode
    categories = sorted(_harmful(report.points[0], mode).by_category)
    out += _table(
        ["category"] + [f"{p.budget} steps" for p in report.points],
        [[c] + [_pct(_harmful(p, mode).by_category[c].refused.rate) for p in report.points] for c in categories],
    )
    out += _arm_sections(report)
    out += _search_section(report, plots)
    settings = attack.settings
    assert settings is not None, "the attack arm's description carries its settings"
    out += [
        "",
        "## Attack",
        "",
        f"- data: `{attack.data.name}` ({attack.data.count} conversations, sha256 `{attack.data.sha256[:16]}`)",
        f"- LoRA rank {settings.lora_rank}, alpha {settings.lora_alpha}, dropout {settings.lora_dropout}, "
        f"modules {', '.join(settings.target_modules)}",
        f"- learning rate {settings.learning_rate}, warmup {settings.warmup_steps} steps, batch {settings.batch_size} "
        f"conversations, seed {settings.seed}",
    ]
    if attack.system_prompt or attack.user_template:
        template = f" and the template `{attack.user_template}`" if attack.user_template else ""
        out.append(f"- trigger (trigger mode): {'a system prompt' if attack.system_prompt else 'no system prompt'}{template}"
                   + (f"; from {attack.trigger}" if attack.trigger else ""))
    elif attack.trigger:
        out.append(f"- trigger: {attack.trigger}, so harmful requests are asked plainly only")
    out += [
        "",
        "## Run",
        "",
        f"- model: `{model.spec}` ({model.kind}, {_number(model.parameters)} parameters, sha256 `{model.sha256[:16]}`), "
        f"computed in {model.precision} ({model.precision_reason})",
        f"- weights: {model.source.quantization}; from {model.source.origin}",
        *([f"- loaded as: {model.quantization_description}"] if model.quantization != "none" else []),
        *([f"- training memory: {_memory_line(model.training_memory)}"] if model.training_memory else []),
        f"- hardware: {report.hardware.description}; price {_dollars(report.price.per_hour)}/hour ({report.price.source})",
        *([_processes_line(report.processes)] if report.processes.processes > 1 else []),
        f"- wall-clock time of the {report.run.sessions} tamperaudit session(s) that worked on this run "
        f"(model loading included): {_number(report.run.wall_seconds, 1)} s",
        f"- judge: {_judge_line(report.judge)}",
        *[f"  - {_agreement_line(a)}" for a in report.judge_agreement],
        f"- generation: {_generation_line(report.generation_backend)}",
        *[f"- chat template: {note}" for note in (report.chat.notes if report.chat else [])],
        f"- tamperaudit {report.tool.version}, report schema {report.schema_version}, config sha256 `{report.hashes.config[:16]}`",
        *_throughput_lines(report),
        "",
        "## Data",
        "",
    ]
    for role, data in report.datasets.items():
        subset = f" (taken evenly across categories from {data.file_rows})" if data.count < data.file_rows else ""
        out.append(f"- {role}: `{data.name}` ({data.format}), {data.count} rows{subset}, sha256 `{data.sha256[:16]}`")
        out += [f"  - {note}" for note in data.notes]
    out += [
        "",
        "Completions of the attacked model are not shown in this report; they stay in each budget's "
        "`samples.jsonl` in the run folder, for auditing the judge.",
        "",
    ]
    return "\n".join(out)


def _harmful(point: Point, mode: str) -> VerdictSummary:
    harmful = point.metrics.harmful
    assert harmful is not None, "every measured point asks the harmful requests"
    return harmful[mode]


def _capability_lines(report: Report) -> list[str]:
    """Accuracy and KL at each budget of the attack arm, in words."""
    lines = []
    for point in report.points:
        capability, kl = point.metrics.capability, point.metrics.kl
        if not capability:
            continue
        text = f"- {point.budget} steps: multiple-choice accuracy {_interval(capability.accuracy_norm)}"
        text += f" over {capability.accuracy_norm.total} questions"
        if kl:
            text += f"; mean KL to the unattacked model {kl.mean:.4f} nats/token (standard error {kl.standard_error:.4f})"
        lines.append(text)
    return lines


def render_failure(report: IncompleteReport) -> str:
    """report.md of a run that did not complete: its status, error and where it stopped."""
    out = [f"# tamperaudit: run {report.status}", ""]
    out += [f"- {line}" for line in report.summary]
    out += ["", f"- folder: `{report.run.folder}`", f"- tamperaudit {report.tool.version}", ""]
    return "\n".join(out)


# --- HTML: the Markdown above, block by block, so the two cannot drift apart -----------------

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:76rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.82rem;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}
figure{margin:.5rem 0 1rem}figure img{max-width:100%;height:auto}figcaption{font-size:.8rem;color:#555}
code{background:#f4f4f4;padding:0 .2rem;border-radius:3px;font-size:.9em;overflow-wrap:anywhere}
li{margin:.15rem 0;overflow-wrap:anywhere}
section#verdict{border:2px solid #2c3e50;border-radius:8px;padding:.2rem 1.2rem .6rem;background:#f8f9fb}
section#verdict h2{border:none;margin-top:.8rem}
section#verdict p strong{font-size:1.15rem}
"""

_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
)
_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<path>[^)]+)\)$")
_CELL = re.compile(r"(?<!\\)\|")


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in _CELL.split(line.strip())[1:-1]]


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def markdown_to_html(markdown: str, images: Mapping[str, bytes]) -> str:
    """The subset of Markdown the renderers write (headings, paragraphs, two-level lists,
    tables, images) as HTML; images are inlined as data URIs so the page stands alone."""
    body: list[str] = []
    title = ""
    lines = markdown.splitlines()
    index = 0
    open_section = False
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
            continue
        if line.startswith("# "):
            title = line[2:]
            body.append(f"<h1>{_inline(title)}</h1>")
            index += 1
        elif line.startswith("## "):
            if open_section:
                body.append("</section>")
            heading = line[3:]
            body.append(f'<section id="{_slug(heading)}"><h2>{_inline(heading)}</h2>')
            open_section = True
            index += 1
        elif line.startswith("|"):
            block = []
            while index < len(lines) and lines[index].startswith("|"):
                block.append(lines[index])
                index += 1
            header, rows = _cells(block[0]), [_cells(row) for row in block[2:]]
            table = "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr>"
            table += "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f'<div class="scroll"><table>{table}</table></div>')
        elif line.startswith("- "):
            items: list[tuple[str, list[str]]] = []
            while index < len(lines) and (lines[index].startswith("- ") or lines[index].startswith("  - ")):
                if lines[index].startswith("- "):
                    items.append((lines[index][2:], []))
                else:
                    items[-1][1].append(lines[index][4:])
                index += 1
            rendered = []
            for text, subs in items:
                inner = "<ul>" + "".join(f"<li>{_inline(sub)}</li>" for sub in subs) + "</ul>" if subs else ""
                rendered.append(f"<li>{_inline(text)}{inner}</li>")
            body.append("<ul>" + "".join(rendered) + "</ul>")
        elif _IMAGE.match(line):
            found = _IMAGE.match(line)
            assert found is not None
            name = Path(found["path"]).name
            data = base64.b64encode(images[name]).decode("ascii")
            alt = html.escape(found["alt"])
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>')
            index += 1
        else:
            paragraph = []
            while index < len(lines) and lines[index].strip() and not lines[index].startswith(("#", "|", "- ", "![")):
                paragraph.append(lines[index])
                index += 1
            body.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    if open_section:
        body.append("</section>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(root: Path, report: AnyReport) -> None:
    """report.json first; the Markdown and HTML are rendered from the JSON alone, as read back."""
    atomic_write_json(root / "report.json", report.to_json())
    render_all(root, read_report(root / "report.json"))


def render_all(root: Path, report: AnyReport) -> None:
    """report.md and report.html (and the plots they show), from report.json's content alone."""
    if isinstance(report, IncompleteReport):
        text = render_failure(report)
        atomic_write_text(root / "report.md", text)
        atomic_write_text(root / "report.html", markdown_to_html(text, {}))
        return
    images = report_plots(report)
    for name, data in images.items():
        atomic_write_bytes(root / "plots" / name, data)
    markdown = render_markdown(report, images)
    atomic_write_text(root / "report.md", markdown)
    atomic_write_text(root / "report.html", markdown_to_html(markdown, images))


def scorecard_lines(metrics: StageMetrics) -> list[str]:
    """One model's eval metrics in sentences (the `eval` command's output)."""
    lines = []
    for mode, share in (metrics.harmful or {}).items():
        lines.append(
            f"harmful requests ({mode}, n={share.n}): refused {_interval(share.refused)}, "
            f"complied {_pct(share.complied.rate)}, unclear {_pct(share.unclear.rate)}"
        )
    benign = (metrics.benign or {}).get("plain")
    if benign:
        lines.append(f"over-refusal on benign look-risky prompts (n={benign.n}): {_interval(benign.refused)}")
    contrast = (metrics.contrast or {}).get("plain")
    if contrast:
        lines.append(f"refusal on unsafe contrast prompts (n={contrast.n}): {_interval(contrast.refused)}")
    capability = metrics.capability
    if capability:
        lines.append(
            f"multiple-choice accuracy (n={capability.accuracy_norm.total}): {_interval(capability.accuracy_norm)} "
            f"(unnormalized {_pct(capability.accuracy.rate)})"
        )
    kl = metrics.kl
    if kl:
        lines.append(f"mean KL to the model without the adapter: {kl.mean:.4f} nats/token over {kl.prompts} prompts")
    return lines
