"""Render report.json to Markdown and HTML, with SVG plots. Reads nothing but the report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tamperaudit.cost import significant
from tamperaudit.fileio import atomic_write_text
from tamperaudit.report.plots import line_chart

VERDICT_COLUMNS = ("refused", "complied", "unclear")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _interval(share: dict[str, Any]) -> str:
    return f"{_pct(share['rate'])} [{_pct(share['low'])}, {_pct(share['high'])}]"


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


def budget_table(report: dict[str, Any], points: list[dict[str, Any]] | None = None) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the per-budget table: cost, refusal by mode, capability."""
    modes = report["modes"]
    header = ["steps", "tokens", "seconds", "FLOPs", "dollars"]
    for mode in modes:
        header += [f"refused ({mode}) [95% CI]", f"complied ({mode})", f"unclear ({mode}) (count)"]
    header += ["over-refusal [95% CI]"]
    points = report["points"] if points is None else points
    has_contrast = any(p["metrics"].get("contrast") for p in points)
    if has_contrast:
        header += ["refused unsafe contrast [95% CI]"]
    header += ["MC accuracy [95% CI]", "KL to base"]
    rows = []
    for point in points:
        cost = point["cost"]
        metrics = point["metrics"]
        row = [str(point["budget"])]
        if cost is None:  # the unattacked model
            row += ["-"] * 4
        else:
            row += [_number(cost["tokens"]), _number(cost["seconds"], 1), _flops(cost["flops"]), _dollars(cost["dollars"])]
        for mode in modes:
            share = metrics["harmful"][mode]
            unclear = share["unclear"]
            row += [_interval(share["refused"]), _pct(share["complied"]["rate"]), f"{_pct(unclear['rate'])} ({unclear['count']})"]
        benign = metrics.get("benign")
        capability = metrics.get("capability")
        kl = metrics.get("kl")
        row += [_interval(benign["plain"]["refused"]) if benign else "n/a"]
        if has_contrast:
            contrast = metrics.get("contrast")
            row += [_interval(contrast["plain"]["refused"]) if contrast else "n/a"]
        row += [
            _interval(capability["accuracy_norm"]) if capability else "n/a",
            f"{kl['mean']:.4f}" if kl else ("0 (reference)" if point["budget"] == 0 else "n/a"),
        ]
        rows.append(row)
    return header, rows


def _score_lines(scores: dict[str, Any]) -> list[str]:
    from tamperaudit.report.build import describe_bounds  # build imports render only when writing

    lines = []
    for mode, score in scores.items():
        if score["status"] == "removed_by_prompt":
            lines.append(f"- {mode}: ALERT: {score['message']}.")
            continue
        if score["status"] != "scored":
            lines.append(f"- {mode}: {score.get('message', score['status'])}")
            continue
        interval = score.get("interval")
        for name in ("relative", "absolute"):
            result = score[name]
            target = f"refusal below {_pct(result['threshold'])} ({name} threshold)"
            if result["reached"]:
                cost = result["cost"]
                lines.append(
                    f"- {mode}: {target} reached at {result['budget']} steps: {_number(cost['tokens'])} tokens, "
                    f"{_number(cost['seconds'], 1)} s, {_flops(cost['flops'])}, {_dollars(cost['dollars'])}."
                )
            else:
                lines.append(f"- {mode}: {target} not reached within {score['largest_budget']} steps.")
            if interval:
                bounds = interval[name]
                statistic = "the lower median over seeds" if interval["seeds"] > 1 else "one seed"
                lines.append(
                    f"  - {100 * interval['confidence']:.0f}% bootstrap interval of {statistic} ({interval['resamples']} "
                    f"resamples of prompts, questions and {interval['seeds']} seed(s)): "
                    f"{describe_bounds(bounds, score['largest_budget'])}; reached in {100 * bounds['reached_share']:.0f}% of resamples."
                )
            for violation in result["capability_violations"]:
                lines.append(f"  - {violation['budget']} steps not counted: {violation['reason']}.")
            per_seed = score.get("per_seed", {}).get(name, {})
            if len(per_seed) > 1:
                each = ", ".join(f"{arm}: {'not reached' if b is None else f'{b} steps'}" for arm, b in per_seed.items())
                lines.append(f"  - each seed: {each}; the figure above is their lower median.")
    return lines


def _throughput_lines(report: dict[str, Any]) -> list[str]:
    """What each measured model state achieved: generation, multiple choice, training."""
    arms = [("attack", report["points"])] + [(a["name"], a["points"]) for a in report.get("arms", [])]
    lines = ["", "Throughput of each stage:", "",
             "| stage | generated tokens/s | questions/s | training tokens/s | training GFLOPS |", "|---|---|---|---|---|"]
    for name, points in arms:
        for point in points:
            if name != "attack" and point["budget"] == 0:
                continue  # the shared baseline is listed once
            speed = point["metrics"].get("throughput") or {}
            generation, choice = speed.get("generation") or {}, speed.get("multiple_choice") or {}
            cost = point.get("cost") or {}
            seconds = cost.get("seconds")
            train_rate = cost["tokens"] / seconds if seconds else None
            stage = "baseline" if point["budget"] == 0 else f"{name}, {point['budget']} steps"
            lines.append(
                f"| {stage} | {_number(generation.get('generated_tokens_per_second'), 1)} | "
                f"{_number(choice.get('questions_per_second'), 2)} | {_number(train_rate, 1)} | "
                f"{_number(cost.get('achieved_gflops'), 1)} |"
            )
    return lines


def _arm_sections(report: dict[str, Any]) -> list[str]:
    out = []
    for arm in report.get("arms", []):
        title = "Control arm" if arm["role"] == "control" else "Attack"
        out += ["", f"## {title}: {arm['name']} (data {arm['data']}, seed {arm['seed']})", ""]
        header, rows = budget_table(report, arm["points"])
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(row) + " |" for row in rows]
    if report.get("control_score"):
        out += ["", "Control arm removal score:", "", *_score_lines(report["control_score"])]
    return out


def _search_section(report: dict[str, Any]) -> list[str]:
    search = report.get("search")
    if not search:
        return []
    out = [
        "",
        "## Attack settings search",
        "",
        f"Each setting trained to the largest budget and measured on the 'select' half of the harmful prompts "
        f"({search['mode']} mode); the strongest whose capability stayed within tolerance was chosen and is "
        f"reported above on the 'report' half. Search time: {_number(search['seconds'], 0)} s.",
        "",
        "| learning rate | LoRA rank | batch | refused | complied | capability kept | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in search["tried"]:
        chosen = " (chosen)" if all(t[k] == search["chosen"][k] for k in search["chosen"]) else ""
        out.append(
            f"| {t['learning_rate']}{chosen} | {t['lora_rank']} | {t['batch_size']} | {_pct(t['refusal'])} | "
            f"{_pct(t['complied'])} | {'yes' if t['capability_kept'] else 'no: ' + t['why_not']} | {_number(t['seconds'], 0)} |"
        )
    return out


def _projection_lines(projection: dict[str, Any] | None) -> list[str]:
    """The measured attack's tokens on Llama 2 models and rented GPUs: an estimate, labelled as one."""
    if not projection:
        return []
    out = [
        "## Projection to larger models (an estimate, not a measurement)",
        "",
        f"Training cost of {projection['tokens']:,} tokens with LoRA rank {projection['lora_rank']}, computed from "
        f"FLOPs per token. Which tokens: {projection['basis']}. Assumes {projection['assumes']}.",
        "",
        "| model | GPU | training FLOPs | GPU-hours | dollars | price |",
        "|---|---|---|---|---|---|",
    ]
    for row in projection["rows"]:
        out.append(
            f"| {row['model']} | {row['gpu']} | {_flops(row['flops'])} | {significant(row['gpu_hours'])} | "
            f"${significant(row['dollars'])} | {row['price']} |"
        )
    return out + [""]


def _generation_line(backend: dict[str, Any]) -> str:
    return f"{backend['name']} ({backend['reason']}): {backend['engine']}; extra memory: {backend['extra_memory']}"


def _processes_line(processes: dict[str, Any]) -> str:
    return (
        f"- training: data-parallel over {processes['processes']} processes ({processes['kind']}, through "
        f"{processes['launcher']}); training seconds and dollars are summed over the processes"
    )


def _memory_line(plan: dict[str, Any]) -> str:
    checkpointing = "on" if plan["gradient_checkpointing"] else "off"
    return f"{plan['micro_batch_tokens']} tokens per pass, gradient checkpointing {checkpointing} ({plan['reason']})"


def _judge_line(judge: dict[str, Any]) -> str:
    pins = ", ".join(f"{k} `{str(v)[:16]}`" for k, v in judge.items() if k != "name")
    return f"{judge['name']} ({pins})"


def render_markdown(report: dict[str, Any]) -> str:
    model, attack = report["model"], report["attack"]
    out = [f"# tamperaudit: {model['spec']} under the {attack['name']} attack", ""]
    out += [f"- {line}" for line in report["summary"]]
    out += ["", "## Budgets", ""]
    header, rows = budget_table(report)
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(row) + " |" for row in rows]
    out += [
        "",
        "Verdicts are from the "
        f"`{report['judge']['name']}` judge. `refused` is the share of all prompts judged refused; "
        "`unclear` (empty, degenerate repetition, content-free persona talk) is counted apart, so "
        "refused + complied + unclear = 100%. Intervals are 95% Wilson intervals.",
        "",
        "## Removal score",
        "",
        "The smallest measured budget at which refusal falls below the threshold while capability stays within "
        "tolerance; no interpolation between budgets.",
        "",
        *_score_lines(report["score"]),
        "",
        *_projection_lines(report.get("projection")),
        "## Refusal if unclear counted as refusal",
        "",
        "The reading least favourable to the attack: echoes, loops and empty replies count as refusals.",
        "",
    ]
    if report.get("score_unclear_as_refusal"):
        out += ["Removal score under this reading:", "", *_score_lines(report["score_unclear_as_refusal"]), ""]
    out += ["Refusal rates under this reading:", ""]
    for mode in report["modes"]:
        cells = [
            f"{p['budget']} steps: {_interval(p['metrics']['harmful'][mode]['refusal_if_unclear_refused'])}"
            for p in report["points"]
        ]
        out.append(f"- {mode}: " + "; ".join(cells))
    out += ["", "## Refusal by category (headline mode)", ""]
    mode = report["headline_mode"]
    categories = sorted(report["points"][0]["metrics"]["harmful"][mode]["by_category"])
    out.append("| category | " + " | ".join(f"{p['budget']} steps" for p in report["points"]) + " |")
    out.append("|---|" + "---|" * len(report["points"]))
    for category in categories:
        cells = [_pct(p["metrics"]["harmful"][mode]["by_category"][category]["refused"]["rate"]) for p in report["points"]]
        out.append(f"| {category} | " + " | ".join(cells) + " |")
    out += _arm_sections(report)
    out += _search_section(report)
    settings = attack["settings"]
    out += [
        "",
        "## Attack",
        "",
        f"- data: `{attack['data']['name']}` ({attack['data']['count']} conversations, sha256 `{attack['data']['sha256'][:16]}`)",
        f"- LoRA rank {settings['lora_rank']}, alpha {settings['lora_alpha']}, dropout {settings['lora_dropout']}, "
        f"modules {', '.join(settings['target_modules'])}",
        f"- learning rate {settings['learning_rate']}, warmup {settings['warmup_steps']} steps, batch {settings['batch_size']} "
        f"conversations, seed {settings['seed']}",
    ]
    if attack.get("system_prompt"):
        out.append(f"- trigger: its own system prompt and the template `{attack.get('user_template')}`")
    out += [
        "",
        "## Run",
        "",
        f"- model: `{model['spec']}` ({model['kind']}, {_number(model['parameters'])} parameters, sha256 `{model['sha256'][:16]}`), "
        f"computed in {model['precision']} ({model['precision_reason']})",
        *([f"- weights: {model['source']['quantization']}; from {model['source']['origin']}"] if model.get("source") else []),
        *([f"- loaded as: {model['quantization_description']}"] if model.get("quantization", "none") != "none" else []),
        *([f"- training memory: {_memory_line(model['training_memory'])}"] if model.get("training_memory") else []),
        f"- hardware: {report['hardware']['description']}; price {_dollars(report['price']['per_hour'])}/hour ({report['price']['source']})",
        *([_processes_line(report["processes"])] if report.get("processes", {}).get("processes", 1) > 1 else []),
        f"- wall-clock time of the {report['run'].get('sessions', 1)} tamperaudit session(s) that worked on this run "
        f"(model loading included): {_number(report['run']['wall_seconds'], 1)} s",
        f"- judge: {_judge_line(report['judge'])}",
        *([f"- generation: {_generation_line(report['generation_backend'])}"] if report.get("generation_backend") else []),
        f"- tamperaudit {report['tool']['version']}, report schema {report['schema_version']}, config sha256 `{report['hashes']['config'][:16]}`",
        *_throughput_lines(report),
        "",
        "## Data",
        "",
    ]
    for role, data in report["datasets"].items():
        subset = f" (taken evenly across categories from {data['file_rows']})" if data["count"] < data["file_rows"] else ""
        out.append(
            f"- {role}: `{data['name']}` ({data['format']}), {data['count']} rows{subset}, sha256 `{data['sha256'][:16]}`"
        )
        out += [f"  - {note}" for note in data["notes"]]
    out += [
        "",
        "Completions of the attacked model are not shown in this report; they stay in each budget's "
        "`samples.jsonl` in the run folder, for auditing the judge.",
        "",
    ]
    return "\n".join(out)


def _plots(report: dict[str, Any]) -> dict[str, str]:
    budgets = [p["budget"] for p in report["points"]]
    plots = {}
    for mode in report["modes"]:
        series = {
            verdict: [p["metrics"]["harmful"][mode][verdict]["rate"] for p in report["points"]] for verdict in VERDICT_COLUMNS
        }
        control = next((a for a in report.get("arms", []) if a["name"] == "control"), None)
        if control is not None:
            series["refused, control arm"] = [p["metrics"]["harmful"][mode]["refused"]["rate"] for p in control["points"]]
        plots[f"refusal_{mode}.svg"] = line_chart(f"Harmful requests ({mode})", "optimizer steps", budgets, series)
    capability = {
        "MC accuracy": [p["metrics"]["capability"]["accuracy_norm"]["rate"] if p["metrics"].get("capability") else None for p in report["points"]],
        "over-refusal": [p["metrics"]["benign"]["plain"]["refused"]["rate"] if p["metrics"].get("benign") else None for p in report["points"]],
    }
    plots["capability.svg"] = line_chart("Capability and over-refusal", "optimizer steps", budgets, capability)
    return plots


def render_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    header, rows = budget_table(report)
    escape = html.escape
    table = "<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
    table += "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>"
    summary = "".join(f"<li>{escape(line)}</li>" for line in report["summary"])
    scores = "".join(f"<li>{escape(line.lstrip('- '))}</li>" for line in _score_lines(report["score"]))
    if report.get("score_unclear_as_refusal"):
        scores += "".join(
            f"<li>{escape('counting unclear as refusal, ' + line.lstrip('- '))}</li>"
            for line in _score_lines(report["score_unclear_as_refusal"])
        )
    figures = "".join(f"<figure>{svg}</figure>" for svg in plots.values())
    title = escape(f"tamperaudit: {report['model']['spec']} under the {report['attack']['name']} attack")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;font-size:.85rem}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}}
th{{background:#f4f4f4}}figure{{display:inline-block;margin:0 1rem 1rem 0}}</style></head>
<body><h1>{title}</h1><ul>{summary}</ul><h2>Budgets</h2>{table}
<p>Verdicts from the judge {escape(_judge_line(report['judge']))}; unclear is counted apart. 95% Wilson intervals.</p>
<h2>Removal score</h2><ul>{scores}</ul><h2>Plots</h2>{figures}
<p>Model sha256 {escape(report['model']['sha256'])}; config sha256 {escape(report['hashes']['config'])};
tamperaudit {escape(report['tool']['version'])}, report schema {report['schema_version']}.
Attacked completions stay in the run folder's samples.jsonl files.</p></body></html>
"""


def render_failure(report: dict[str, Any]) -> str:
    """report.md of a run that did not complete: its status, error and where it stopped."""
    out = [f"# tamperaudit: run {report['status']}", ""]
    out += [f"- {line}" for line in report["summary"]]
    out += ["", f"- folder: `{report['run']['folder']}`", f"- tamperaudit {report['tool']['version']}", ""]
    return "\n".join(out)


def render_all(root: Path, report: dict[str, Any]) -> None:
    if report["status"] != "complete":
        text = render_failure(report)
        atomic_write_text(root / "report.md", text)
        body = "".join(f"<li>{html.escape(line)}</li>" for line in report["summary"])
        atomic_write_text(root / "report.html", f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                          f"<title>tamperaudit: run {html.escape(report['status'])}</title></head><body>"
                          f"<h1>tamperaudit: run {html.escape(report['status'])}</h1><ul>{body}</ul></body></html>\n")
        return
    plots = _plots(report)
    for name, svg in plots.items():
        atomic_write_text(root / "plots" / name, svg)
    atomic_write_text(root / "report.md", render_markdown(report))
    atomic_write_text(root / "report.html", render_html(report, plots))


def scorecard_lines(metrics: dict[str, Any]) -> list[str]:
    """One model's eval metrics in sentences (the `eval` command's output)."""
    lines = []
    for mode, share in (metrics.get("harmful") or {}).items():
        lines.append(
            f"harmful requests ({mode}, n={share['n']}): refused {_interval(share['refused'])}, "
            f"complied {_pct(share['complied']['rate'])}, unclear {_pct(share['unclear']['rate'])}"
        )
    benign = (metrics.get("benign") or {}).get("plain")
    if benign:
        lines.append(f"over-refusal on benign look-risky prompts (n={benign['n']}): {_interval(benign['refused'])}")
    contrast = (metrics.get("contrast") or {}).get("plain")
    if contrast:
        lines.append(f"refusal on unsafe contrast prompts (n={contrast['n']}): {_interval(contrast['refused'])}")
    capability = metrics.get("capability")
    if capability:
        lines.append(
            f"multiple-choice accuracy (n={capability['accuracy_norm']['total']}): {_interval(capability['accuracy_norm'])} "
            f"(unnormalized {_pct(capability['accuracy']['rate'])})"
        )
    kl = metrics.get("kl")
    if kl:
        lines.append(f"mean KL to the model without the adapter: {kl['mean']:.4f} nats/token over {kl['prompts']} prompts")
    return lines
