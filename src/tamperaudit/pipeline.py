"""Stage order of an audit: baseline eval, attack, eval at each budget, report.

Each stage is one function with typed inputs that reads from and writes to the
run folder, so ``resume`` re-enters the same functions and skips what is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tamperaudit import faults, models, progress
from tamperaudit.attack import ADAPTER_DIR, OPTIMIZER_FILE, TRAIN_FILE, Checkpoint, LoraAttack, TrainState, load_adapter_weights, tokenize_conversation
from tamperaudit.config import Settings, from_dict, read_toml, to_toml
from tamperaudit.errors import UserError
from tamperaudit.data import Attack, Dataset, Prompt, Question, load_attack, load_benign, load_capability, load_harmful, load_kl_prompts
from tamperaudit.evals.capability import (
    BaseDistributions,
    aggregate_capability,
    aggregate_kl,
    kl_to_base,
    reference_replies,
    score_questions,
)
from tamperaudit.evals.judges import Judge, make_judge
from tamperaudit.evals.refusal import PLAIN, TRIGGER, PromptEval, aggregate_verdicts, run_prompt_eval
from tamperaudit.fileio import read_json, sha256_text
from tamperaudit.generation import GenerationStats
from tamperaudit.report.build import build_report, write_report
from tamperaudit.runfolder import BASELINE, CONFIG, DONE, RUNNING, RunFolder, budget_folder_name

ATTACK_STAGE = "attack"


@dataclass
class Probes:
    """The data every eval stage uses, loaded once per process."""

    harmful: Dataset[Prompt]
    benign: Dataset[Prompt]
    capability: Dataset[Question]
    kl_prompts: Dataset[Prompt]
    attack: Attack

    def hashes(self) -> dict[str, str]:
        return {
            "harmful": self.harmful.sha256,
            "benign": self.benign.sha256,
            "capability": self.capability.sha256,
            "kl_prompts": self.kl_prompts.sha256,
            "attack": self.attack.data.sha256,
        }


def load_probes(settings: Settings) -> Probes:
    ev = settings.eval
    return Probes(
        harmful=load_harmful(ev.harmful, ev.harmful_limit, ev.prompt_column, ev.harmbench_functional, ev.harmful_split),
        benign=load_benign(ev.benign, ev.benign_limit, ev.prompt_column),
        capability=load_capability(ev.capability, ev.capability_limit),
        kl_prompts=load_kl_prompts(ev.kl_prompts, ev.kl_limit),
        attack=load_attack(settings.attack.data),
    )


def harmful_modes(settings: Settings, attack: Attack) -> list[str]:
    return [PLAIN, TRIGGER] if settings.eval.with_trigger and attack.has_trigger else [PLAIN]


@dataclass
class Context:
    """What the stages share in one process: settings, model, data, judge, run folder."""

    settings: Settings
    run: RunFolder
    loaded: models.LoadedModel
    probes: Probes
    judge: Judge

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer


def _generation_evals(ctx: Context, model: Any, label: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Harmful prompts in each mode, then benign prompts plainly."""
    ev = ctx.settings.eval
    specs = [PromptEval("harmful", mode, ctx.probes.harmful.items) for mode in harmful_modes(ctx.settings, ctx.probes.attack)]
    safe = [p for p in ctx.probes.benign.items if p.group != "unsafe"]
    contrast = [p for p in ctx.probes.benign.items if p.group == "unsafe"]
    specs.append(PromptEval("benign", PLAIN, safe))
    if contrast:  # XSTest's unsafe contrast prompts: a refusal rate of their own
        specs.append(PromptEval("contrast", PLAIN, contrast))
    samples: list[dict[str, Any]] = []
    total = GenerationStats()
    for spec in specs:
        rows, stats = run_prompt_eval(model, ctx.tokenizer, spec, ctx.judge, ctx.probes.attack, ev.max_new_tokens, ev.batch_size, label)
        samples += rows
        total.add(stats)
    return samples, total.as_dict()


def _metrics(samples: list[dict[str, Any]], throughput: dict[str, Any]) -> dict[str, Any]:
    verdicts = aggregate_verdicts(samples)
    return {
        "harmful": verdicts.get("harmful"),
        "benign": verdicts.get("benign"),
        "contrast": verdicts.get("contrast"),
        "capability": aggregate_capability(samples),
        "kl": aggregate_kl(samples),
        "throughput": throughput,
    }


def evaluate(
    ctx: Context, model: Any, stage: str, label: str, base: BaseDistributions | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every eval on one model state. Without references (the unattacked model) it records
    its replies to the KL prompts; with them it measures KL to the adapter-disabled model."""
    ev = ctx.settings.eval
    samples, generation = _generation_evals(ctx, model, label)
    faults.checkpoint(f"eval-{stage}")
    mc, mc_speed = score_questions(model, ctx.tokenizer, ctx.probes.capability.items, label=label)
    throughput = {"generation": generation, "multiple_choice": mc_speed}
    if base is None:
        extra, _ = reference_replies(model, ctx.tokenizer, ctx.probes.kl_prompts.items, ev.kl_tokens, ev.batch_size, label)
    else:
        extra, throughput["kl"] = kl_to_base(model, base, ctx.tokenizer.pad_token_id, label=label)
    samples += mc + extra
    return samples, _metrics(samples, throughput)


def stage_baseline(ctx: Context) -> None:
    """Evaluate the unattacked model, and record its replies to the KL prompts."""
    if ctx.run.is_done(BASELINE):
        return
    started = time.perf_counter()
    ctx.run.mark(BASELINE, RUNNING)
    samples, metrics = evaluate(ctx, ctx.loaded.model, BASELINE, "baseline: ", None)
    ctx.run.write_results(BASELINE, samples, metrics)
    ctx.run.mark(BASELINE, DONE, seconds=time.perf_counter() - started)


def trained_budgets(settings: Settings) -> list[int]:
    return [b for b in settings.attack.budgets if b > 0]


def _latest_checkpoint(run: RunFolder, budgets: list[int]) -> Checkpoint | None:
    """The largest budget whose adapter, optimizer state and train.json were all written."""
    for budget in sorted(budgets, reverse=True):
        folder = run.root / budget_folder_name(budget)
        if (folder / TRAIN_FILE).is_file() and (folder / OPTIMIZER_FILE).is_file() and (folder / ADAPTER_DIR).is_dir():
            return Checkpoint(budget, folder, TrainState.from_dict(read_json(folder / TRAIN_FILE)))
    return None


def stage_attack(ctx: Context, attacker: LoraAttack) -> None:
    """Train to the largest budget, resuming from the last complete checkpoint."""
    budgets = trained_budgets(ctx.settings)
    if not budgets or ctx.run.stage_state(ATTACK_STAGE) == DONE:
        return
    ctx.run.mark(ATTACK_STAGE, RUNNING)
    examples = [tokenize_conversation(ctx.tokenizer, c, ctx.settings.attack.max_length) for c in ctx.probes.attack.data.items]
    resume_from = _latest_checkpoint(ctx.run, budgets)
    if resume_from is not None:
        progress.note(f"attack: resuming from the checkpoint at {resume_from.budget} steps")
    attacker.run(examples, budgets, lambda b: ctx.run.folder(budget_folder_name(b)), resume_from=resume_from)
    for budget in budgets:  # optimizer state is only needed to resume training
        (ctx.run.root / budget_folder_name(budget) / OPTIMIZER_FILE).unlink(missing_ok=True)
    final = read_json(ctx.run.root / budget_folder_name(budgets[-1]) / TRAIN_FILE)
    ctx.run.mark(ATTACK_STAGE, DONE, seconds=final["seconds"])  # summed over restarts


def stage_budget(ctx: Context, attacker: LoraAttack, budget: int, base: BaseDistributions) -> None:
    """Evaluate one budget's adapter with the same prompts as the baseline."""
    name = budget_folder_name(budget)
    folder = ctx.run.root / name
    if ctx.run.is_done(name):
        return
    if not (folder / ADAPTER_DIR).is_dir():
        raise RuntimeError(f"{folder}: the adapter is missing although the attack stage is done")
    started = time.perf_counter()
    ctx.run.mark(name, RUNNING)
    load_adapter_weights(attacker.model, folder)
    samples, metrics = evaluate(ctx, attacker.model, name, f"{budget} steps: ", base)
    ctx.run.write_results(name, samples, metrics)
    ctx.run.mark(name, DONE, seconds=time.perf_counter() - started)
    if not ctx.settings.attack.keep_adapters:
        ctx.run.remove(folder / ADAPTER_DIR)


def _references(run: RunFolder) -> list[tuple[str, list[int], list[int]]]:
    return [(s["id"], s["prompt_ids"], s["reply_ids"]) for s in run.samples(BASELINE) if s["eval"] == "kl_reference"]


def inputs_of(config_text: str, loaded_sha: str, probes: Probes, judge: Judge) -> dict[str, Any]:
    """What a run's results depend on, by hash; ``resume`` refuses if any of it changed.

    The configuration is pinned by the text of the run's config.toml, so editing it
    is caught while a newer tamperaudit with more (defaulted) settings still resumes.
    """
    return {
        "config_sha256": sha256_text(config_text),
        "model_sha256": loaded_sha,
        "datasets_sha256": probes.hashes(),
        "judge": judge.describe(),
    }


def execute(ctx: Context) -> Path:
    """Run every stage that is not done, then write the report."""
    stage_baseline(ctx)
    budgets = trained_budgets(ctx.settings)
    if budgets:
        attacker = LoraAttack(ctx.loaded.model, ctx.tokenizer, ctx.settings.attack, ctx.loaded.device)
        stage_attack(ctx, attacker)
        base = BaseDistributions(_references(ctx.run))
        for budget in budgets:
            stage_budget(ctx, attacker, budget, base)
    report = build_report(ctx.run, ctx.settings, ctx.loaded, ctx.probes, ctx.judge)
    write_report(ctx.run.root, report)
    return ctx.run.root


def start_audit(settings: Settings, out: Path) -> Path:
    """A new run folder for these settings, run to the end."""
    probes = load_probes(settings)
    judge = make_judge(settings.eval.judge)
    RunFolder.check_free(out)
    loaded = models.load(settings.model.name, settings.model.precision, settings.model.threads)
    config_text = to_toml(settings)
    inputs = inputs_of(config_text, loaded.source.sha256, probes, judge)
    # The precision 'auto' chose is recorded so that a resumed run computes in the same one.
    run = RunFolder.create(out, config_text, {**inputs, "precision": loaded.precision.name})
    return execute(Context(settings, run, loaded, probes, judge))


def resume_audit(root: Path) -> Path:
    """Finish an interrupted run with the configuration and precision it recorded."""
    run = RunFolder.open(root)
    config_text = (run.root / CONFIG).read_text(encoding="utf-8")
    settings = from_dict(read_toml(run.root / CONFIG), str(run.root / CONFIG))
    probes = load_probes(settings)
    judge = make_judge(settings.eval.judge)
    precision = run.manifest()["inputs"]["precision"]
    loaded = models.load(settings.model.name, precision, settings.model.threads)
    run.check_inputs(inputs_of(config_text, loaded.source.sha256, probes, judge))
    return execute(Context(settings, run, loaded, probes, judge))


EVAL_STAGE = "eval"


def _load_user_adapter(model: Any, adapter: Path) -> Any:
    """A PEFT adapter folder with safetensors weights (pickle files are refused)."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UserError(
            f"{adapter}: no adapter_model.safetensors; tamperaudit loads safetensors only, because unpickling can run code"
        )
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=False)


def run_eval(settings: Settings, out: Path, adapter: Path | None) -> tuple[Path, dict[str, Any]]:
    """The scorecard of one model (optionally with an adapter), no attack."""
    probes = load_probes(settings)
    judge = make_judge(settings.eval.judge)
    RunFolder.check_free(out)
    loaded = models.load(settings.model.name, settings.model.precision, settings.model.threads)
    config_text = to_toml(settings)
    inputs = inputs_of(config_text, loaded.source.sha256, probes, judge)
    if adapter is not None:
        inputs["adapter"] = str(adapter)
    run = RunFolder.create(out, config_text, {**inputs, "precision": loaded.precision.name})
    ctx = Context(settings, run, loaded, probes, judge)
    started = time.perf_counter()
    run.mark(EVAL_STAGE, RUNNING)
    base = None
    model = loaded.model
    if adapter is not None:
        model = _load_user_adapter(model, adapter)
        with model.disable_adapter():
            replies, _ = reference_replies(
                model, ctx.tokenizer, probes.kl_prompts.items, settings.eval.kl_tokens, settings.eval.batch_size, "base: "
            )
        base = BaseDistributions([(s["id"], s["prompt_ids"], s["reply_ids"]) for s in replies])
    samples, metrics = evaluate(ctx, model, EVAL_STAGE, "", base)
    run.write_results(EVAL_STAGE, samples, metrics)
    run.mark(EVAL_STAGE, DONE, seconds=time.perf_counter() - started)
    return run.root, metrics
