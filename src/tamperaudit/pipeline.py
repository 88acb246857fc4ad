"""Stage order of an audit, and the run folder's stages.

    baseline -> [search] -> for each arm: [data selection] -> attack -> budget-NNNNNN ... -> report

An *arm* is one attack run: the attack data with one seed, or the control arm
(benign instruction data) with one seed. The first attack arm's stages sit at the
top of the run folder (``attack``, ``budget-000010``); other arms' stages sit in
a folder of their own (``control/budget-000010``, ``attack-seed-1/...``).

Each stage is one function with typed inputs that reads from and writes to the
run folder, so ``resume`` re-enters the same functions and skips what is done.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tamperaudit import faults, models, progress
from tamperaudit.attack import (
    ADAPTER_DIR,
    OPTIMIZER_FILE,
    TRAIN_FILE,
    Checkpoint,
    LoraAttack,
    TrainState,
    load_adapter_weights,
    tokenize_conversation,
)
from tamperaudit.config import Settings, from_dict, read_toml, to_toml
from tamperaudit.data import (
    Attack,
    Dataset,
    Prompt,
    Question,
    load_attack,
    load_benign,
    load_capability,
    load_harmful,
    load_kl_prompts,
)
from tamperaudit.errors import UserError
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
from tamperaudit.fileio import atomic_write_json, read_json, sha256_text
from tamperaudit.generation import GenerationStats
from tamperaudit.report.build import build_report, write_report
from tamperaudit.runfolder import BASELINE, CONFIG, DONE, RUNNING, RunFolder, budget_folder_name
from tamperaudit.score import capability_kept, refusal_rate

SEARCH = "search"
SELECTION_FILE = "selected.json"


@dataclass
class Probes:
    """The data every eval stage uses, loaded once per process."""

    harmful: Dataset[Prompt]
    benign: Dataset[Prompt]
    capability: Dataset[Question]
    kl_prompts: Dataset[Prompt]
    attack: Attack
    control: Attack | None
    search_harmful: Dataset[Prompt] | None  # the 'select' half, when a search chooses the settings

    def hashes(self) -> dict[str, str]:
        hashes = {
            "harmful": self.harmful.sha256,
            "benign": self.benign.sha256,
            "capability": self.capability.sha256,
            "kl_prompts": self.kl_prompts.sha256,
            "attack": self.attack.data.sha256,
        }
        if self.control is not None:
            hashes["control"] = self.control.data.sha256
        return hashes


def load_probes(settings: Settings) -> Probes:
    ev = settings.eval
    # A search picks settings on the 'select' half and the report uses the other half.
    split = "report" if settings.search.enabled else ev.harmful_split

    def harmful(half: str) -> Dataset[Prompt]:
        return load_harmful(ev.harmful, ev.harmful_limit, ev.prompt_column, ev.harmbench_functional, half)

    return Probes(
        harmful=harmful(split),
        benign=load_benign(ev.benign, ev.benign_limit, ev.prompt_column),
        capability=load_capability(ev.capability, ev.capability_limit),
        kl_prompts=load_kl_prompts(ev.kl_prompts, ev.kl_limit),
        attack=load_attack(settings.attack.data),
        control=load_attack(settings.attack.control_data) if settings.attack.control else None,
        search_harmful=harmful("select") if settings.search.enabled else None,
    )


def harmful_modes(settings: Settings, attack: Attack) -> list[str]:
    return [PLAIN, TRIGGER] if settings.eval.with_trigger and attack.has_trigger else [PLAIN]


@dataclass(frozen=True)
class Arm:
    """One attack run: its data, its seed, and where its stages live in the run folder."""

    name: str  # "attack", "attack-seed-1", "control", "control-seed-1"
    role: str  # "attack" or "control"
    attack: Attack
    seed: int

    @property
    def prefix(self) -> str:
        return "" if self.name == "attack" else f"{self.name}/"

    @property
    def train_stage(self) -> str:
        return f"{self.prefix}attack"

    def stage(self, budget: int) -> str:
        return f"{self.prefix}{budget_folder_name(budget)}"


def arms_of(settings: Settings, probes: Probes) -> list[Arm]:
    seeds = [settings.attack.seed + i for i in range(settings.attack.seeds)]
    arms = [Arm("attack" if i == 0 else f"attack-seed-{s}", "attack", probes.attack, s) for i, s in enumerate(seeds)]
    if probes.control is not None:
        arms += [Arm("control" if i == 0 else f"control-seed-{s}", "control", probes.control, s) for i, s in enumerate(seeds)]
    return arms


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


# --- evaluation ---------------------------------------------------------------------------------


def _generation_evals(
    ctx: Context, model: Any, label: str, harmful: Dataset[Prompt], modes: list[str], benign: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Harmful prompts in each mode, then (unless told not to) the benign prompts plainly."""
    ev = ctx.settings.eval
    specs = [PromptEval("harmful", mode, harmful.items) for mode in modes]
    if benign:
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
    """Every eval on one model state. Without base distributions (the unattacked model) it
    records its replies to the KL prompts; with them it measures KL to the unattacked model."""
    ev = ctx.settings.eval
    modes = harmful_modes(ctx.settings, ctx.probes.attack)
    samples, generation = _generation_evals(ctx, model, label, ctx.probes.harmful, modes)
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
    if ctx.probes.search_harmful is not None:  # the search compares against the same half
        select, _ = _generation_evals(ctx, ctx.loaded.model, "baseline (select half): ", ctx.probes.search_harmful, [_search_mode(ctx)], benign=False)
        samples += [dict(s, eval="harmful_select") for s in select]
        metrics["harmful_select"] = aggregate_verdicts([dict(s, eval="harmful") for s in select]).get("harmful")
    ctx.run.write_results(BASELINE, samples, metrics)
    ctx.run.mark(BASELINE, DONE, seconds=time.perf_counter() - started)


def _references(run: RunFolder) -> list[tuple[str, list[int], list[int]]]:
    return [(s["id"], s["prompt_ids"], s["reply_ids"]) for s in run.samples(BASELINE) if s["eval"] == "kl_reference"]


# --- training ---------------------------------------------------------------------------------------


def trained_budgets(settings: Settings) -> list[int]:
    return [b for b in settings.attack.budgets if b > 0]


def _latest_checkpoint(run: RunFolder, arm: Arm, budgets: list[int]) -> Checkpoint | None:
    """The largest budget whose adapter, optimizer state and train.json were all written."""
    for budget in sorted(budgets, reverse=True):
        folder = run.root / arm.stage(budget)
        if (folder / TRAIN_FILE).is_file() and (folder / OPTIMIZER_FILE).is_file() and (folder / ADAPTER_DIR).is_dir():
            return Checkpoint(budget, folder, TrainState.from_dict(read_json(folder / TRAIN_FILE)))
    return None


def stage_select_data(ctx: Context, arm: Arm) -> Attack:
    """For closest-benign: the pool examples nearest to harmful requests, chosen once per run."""
    if not arm.attack.select_closest:
        return arm.attack
    path = ctx.run.root / f"{arm.prefix}{SELECTION_FILE}"
    if not path.is_file():
        from tamperaudit.selection import closest_to_harmful

        # Anchors: the 'select' half of the built-in harmful requests, whatever set is reported on.
        anchors = load_harmful("builtin", split="select").items
        chosen = closest_to_harmful(
            ctx.loaded.model, ctx.tokenizer, arm.attack.data.items, anchors, ctx.settings.attack.closest_examples
        )
        atomic_write_json(path, {"anchors": "builtin harmful, select half", "selected": [{"id": i, "similarity": s} for i, s in chosen]})
    return arm.attack.subset([row["id"] for row in read_json(path)["selected"]])


def stage_train(ctx: Context, attacker: LoraAttack, arm: Arm, attack: Attack) -> None:
    """Train one arm to the largest budget, resuming from its last complete checkpoint."""
    budgets = trained_budgets(ctx.settings)
    if ctx.run.stage_state(arm.train_stage) == DONE:
        return
    ctx.run.mark(arm.train_stage, RUNNING)
    examples = [tokenize_conversation(ctx.tokenizer, c, attacker.settings.max_length) for c in attack.data.items]
    attacker.start(arm.seed)
    resume_from = _latest_checkpoint(ctx.run, arm, budgets)
    if resume_from is not None:
        progress.note(f"{arm.name}: resuming from the checkpoint at {resume_from.budget} steps")
    attacker.run(examples, budgets, lambda b: ctx.run.folder(arm.stage(b)), resume_from=resume_from, label=f"{arm.name} training")
    for budget in budgets:  # optimizer state is only needed to resume training
        (ctx.run.root / arm.stage(budget) / OPTIMIZER_FILE).unlink(missing_ok=True)
    final = read_json(ctx.run.root / arm.stage(budgets[-1]) / TRAIN_FILE)
    ctx.run.mark(arm.train_stage, DONE, seconds=final["seconds"])  # summed over restarts


def stage_budget(ctx: Context, attacker: LoraAttack, arm: Arm, budget: int, base: BaseDistributions) -> None:
    """Evaluate one budget's adapter with the same prompts as the baseline."""
    name = arm.stage(budget)
    folder = ctx.run.root / name
    if ctx.run.is_done(name):
        return
    if not (folder / ADAPTER_DIR).is_dir():
        raise RuntimeError(f"{folder}: the adapter is missing although its training is done")
    started = time.perf_counter()
    ctx.run.mark(name, RUNNING)
    load_adapter_weights(attacker.model, folder)
    samples, metrics = evaluate(ctx, attacker.model, name, f"{arm.name} {budget} steps: ", base)
    ctx.run.write_results(name, samples, metrics)
    ctx.run.mark(name, DONE, seconds=time.perf_counter() - started)
    if not ctx.settings.attack.keep_adapters:
        ctx.run.remove(folder / ADAPTER_DIR)


# --- the search over attack settings -----------------------------------------------------------------


def _search_mode(ctx: Context) -> str:
    return harmful_modes(ctx.settings, ctx.probes.attack)[-1]  # the trigger when there is one


def candidates(settings: Settings) -> list[dict[str, Any]]:
    search = settings.search
    return [
        {"learning_rate": lr, "lora_rank": rank, "batch_size": batch}
        for lr, rank, batch in itertools.product(search.learning_rates, search.lora_ranks, search.batch_sizes)
    ]


def _candidate_name(candidate: dict[str, Any]) -> str:
    return f"{SEARCH}/lr-{candidate['learning_rate']:g}-r{candidate['lora_rank']}-b{candidate['batch_size']}"


def stage_search_candidate(ctx: Context, candidate: dict[str, Any], base: BaseDistributions) -> dict[str, Any]:
    """Train one setting to the largest budget and measure it on the 'select' half."""
    name = _candidate_name(candidate)
    if ctx.run.is_done(name):
        return ctx.run.metrics(name)
    started = time.perf_counter()
    ctx.run.mark(name, RUNNING)
    settings = dataclasses.replace(ctx.settings.attack, **candidate)
    attacker = LoraAttack(ctx.loaded.model, ctx.tokenizer, settings, ctx.loaded.device)
    attack = stage_select_data(ctx, Arm("attack", "attack", ctx.probes.attack, settings.seed))
    examples = [tokenize_conversation(ctx.tokenizer, c, settings.max_length) for c in attack.data.items]
    folder = ctx.run.folder(name)
    largest = trained_budgets(ctx.settings)[-1]
    attacker.run(examples, [largest], lambda b: folder, label=f"search {name.split('/')[1]}")
    samples, _ = _generation_evals(ctx, attacker.model, "search: ", ctx.probes.search_harmful, [_search_mode(ctx)], benign=False)
    mc, _ = score_questions(attacker.model, ctx.tokenizer, ctx.probes.capability.items, label="search: ")
    kl, _ = kl_to_base(attacker.model, base, ctx.tokenizer.pad_token_id, label="search: ")
    metrics = _metrics(samples + mc + kl, {})
    metrics["candidate"] = candidate
    metrics["train"] = read_json(folder / TRAIN_FILE)
    ctx.run.write_results(name, samples + mc + kl, metrics)
    ctx.run.remove(folder / ADAPTER_DIR)
    ctx.run.remove(folder / OPTIMIZER_FILE)
    attacker.model.unload()  # take the LoRA layers out again (nothing is merged into the weights)
    ctx.run.mark(name, DONE, seconds=time.perf_counter() - started)
    return metrics


def strongest(tried: list[dict[str, Any]]) -> dict[str, Any]:
    """The search's pick: most compliance, then lowest refusal, among settings that keep capability.

    Not lowest refusal first: a setting that turns refusals into echoes or loops
    ("unclear") lowers refusal without getting the model to do what was asked. If
    no setting keeps capability, the pick is made among all (the report says so).
    Ties go to the earlier setting in the grid.
    """
    eligible = [t for t in tried if t["capability_kept"]] or tried
    return max(eligible, key=lambda t: (t["complied"], -t["refusal"]))


def stage_search(ctx: Context, base: BaseDistributions) -> Settings:
    """The strongest setting whose capability stays within tolerance; the settings to audit with."""
    if not ctx.settings.search.enabled:
        return ctx.settings
    if ctx.run.stage_state(SEARCH) != DONE:
        ctx.run.mark(SEARCH, RUNNING)
        started = time.perf_counter()
        mode = _search_mode(ctx)
        baseline = ctx.run.metrics(BASELINE)
        baseline = {**baseline, "harmful": baseline["harmful_select"]}
        tried = []
        for candidate in candidates(ctx.settings):
            metrics = stage_search_candidate(ctx, candidate, base)
            kept, why = capability_kept(baseline, metrics, ctx.settings.score)
            share = metrics["harmful"][mode]
            tried.append({**candidate, "refusal": refusal_rate(metrics, mode), "complied": share["complied"]["rate"],
                          "capability_kept": kept, "why_not": why, "seconds": ctx.run.manifest()["stages"][_candidate_name(candidate)]["seconds"]})
        chosen = strongest(tried)
        ctx.run.mark(SEARCH, DONE, seconds=time.perf_counter() - started, tried=tried, mode=mode,
                     chosen={k: chosen[k] for k in ("learning_rate", "lora_rank", "batch_size")},
                     capability_kept_by_chosen=chosen["capability_kept"])
    chosen = ctx.run.manifest()["stages"][SEARCH]["chosen"]
    return dataclasses.replace(ctx.settings, attack=dataclasses.replace(ctx.settings.attack, **chosen))


# --- the run as a whole ----------------------------------------------------------------------------


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
    arms = arms_of(ctx.settings, ctx.probes)
    if budgets:
        base = BaseDistributions(_references(ctx.run))
        ctx.settings = stage_search(ctx, base)
        attacker = LoraAttack(ctx.loaded.model, ctx.tokenizer, ctx.settings.attack, ctx.loaded.device)
        for arm in arms:
            attack = stage_select_data(ctx, arm)
            stage_train(ctx, attacker, arm, attack)
            for budget in budgets:
                stage_budget(ctx, attacker, arm, budget, base)
    report = build_report(ctx.run, ctx.settings, ctx.loaded, ctx.probes, ctx.judge, arms)
    write_report(ctx.run.root, report)
    return ctx.run.root


def new_run(settings: Settings, out: Path, **extra_inputs: Any) -> Context:
    """Load data, judge and model, and create the run folder with the inputs' hashes."""
    probes = load_probes(settings)
    judge = make_judge(settings.eval.judge)
    RunFolder.check_free(out)
    loaded = models.load(settings.model.name, settings.model.precision, settings.model.threads)
    config_text = to_toml(settings)
    inputs = inputs_of(config_text, loaded.source.sha256, probes, judge)
    # The precision 'auto' chose is recorded so that a resumed run computes in the same one.
    run = RunFolder.create(out, config_text, {**inputs, **extra_inputs, "precision": loaded.precision.name})
    return Context(settings, run, loaded, probes, judge)


def start_audit(settings: Settings, out: Path) -> Path:
    """A new run folder for these settings, run to the end."""
    return execute(new_run(settings, out))


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
    settings = dataclasses.replace(settings, attack=dataclasses.replace(settings.attack, control=False))
    ctx = new_run(settings, out, **({"adapter": str(adapter)} if adapter is not None else {}))
    run, loaded, probes = ctx.run, ctx.loaded, ctx.probes
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
