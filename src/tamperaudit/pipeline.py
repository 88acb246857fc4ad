"""Stage order of an audit, and the run folder's stages.

    baseline -> [search] -> [data selection] -> for each arm: (train to a budget -> measure it) ... -> report

An *arm* is one attack run: the attack data with one seed, or the control arm
(benign instruction data) with one seed. The first attack arm's stages sit at the
top of the run folder (``attack``, ``budget-000010``); other arms' stages sit in
a folder of their own (``control/budget-000010``, ``attack-seed-1/...``).

Each arm trains to its first unmeasured budget, writes that checkpoint, measures
it, deletes its adapter (unless ``attack.keep_adapters``), then trains on. So at
most one unmeasured adapter exists at any time: the one ``resume`` needs. A
resume whose last checkpoint was measured and deleted trains again from step 0,
which gives the same weights (data order and dropout depend on seed and step only).

Each stage is one function with typed inputs that reads from and writes to the
run folder, so ``resume`` re-enters the same functions and skips what is done.
A run that fails or is interrupted writes ``report.json`` with its status, the
error and the stage it stopped in, and deletes the adapters of measured budgets.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tamperaudit import __version__, distributed, faults, models, progress
from tamperaudit.attack import (
    ADAPTER_DIR,
    OPTIMIZER_FILE,
    TRAIN_FILE,
    Checkpoint,
    Example,
    LoraAttack,
    MemoryPlan,
    TrainState,
    check_batch_split,
    check_target_modules,
    free_memory,
    plan_memory,
    tokenize_conversation,
)
from tamperaudit.backends import Backend, LanguageModel
from tamperaudit.backends.choose import DEFAULT_MAX_MODEL_LEN, VllmPlan, choose_backend, make_backend, plan_vllm
from tamperaudit.backends.hf import HfModel
from tamperaudit.chat import ChatFormat
from tamperaudit.config import AttackSettings, Settings, from_dict, read_toml, to_toml
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
from tamperaudit.distributed import Processes
from tamperaudit.errors import DamagedFile, UserError, one_line
from tamperaudit.evals.capability import (
    BaseDistributions,
    aggregate_capability,
    aggregate_kl,
    kl_to_base,
    reference_replies,
    score_questions,
)
from tamperaudit.evals.choose import make_judge
from tamperaudit.evals.judges import Judge
from tamperaudit.evals.lm_harness import HarnessTasks, is_harness, resolve_tasks, score_tasks
from tamperaudit.evals.refusal import PLAIN, TRIGGER, PromptEval, aggregate_verdicts, run_prompt_eval
from tamperaudit.fileio import atomic_write_json, read_json, read_record, sha256_text
from tamperaudit.generation import GenerationStats
from tamperaudit.records import (
    Candidate,
    ChoiceSample,
    ChoiceThroughput,
    GenerationSample,
    GenerationThroughput,
    HarnessFigures,
    DatasetDescription,
    PinnedInputs,
    ReportModel,
    RunInputs,
    Sample,
    SearchResult,
    SelectedExample,
    Selection,
    StageMetrics,
    Throughput,
    Trial,
    in_select_half,
    references,
)
from tamperaudit.report.build import ArmSpec, ReportInputs, build_report, failure_report
from tamperaudit.report.render import write_report
from tamperaudit.runfolder import BASELINE, CONFIG, DONE, RUNNING, RunFolder
from tamperaudit.score import capability_cost, capability_kept, refusal_rate
from tamperaudit.search_tpe import tpe_search

SEARCH = "search"
SELECTION_FILE = "selected.json"
AUDIT, EVAL = "audit", "eval"  # the kinds of run folder; ``resume`` finishes audits only


# The capability set: tamperaudit's multiple-choice questions, or lm-evaluation-harness tasks
# (eval.capability = "lm-eval:TASK,..."), scored by lm-eval on the in-memory model.
Capability = Dataset[Question] | HarnessTasks


@dataclass
class SelectHalf:
    """The halves of the probe sets that the settings search and the data selection look at.

    Whatever chooses the attack (its settings, or its training examples) sees only
    these; the report is computed on the other halves, so the choice cannot be
    fitted to the reported numbers. ``capability`` and ``kl_prompts`` are split only
    when a search runs (selection looks at harmful requests alone).
    """

    harmful: Dataset[Prompt]
    capability: Capability | None = None
    kl_prompts: Dataset[Prompt] | None = None


@dataclass
class Probes:
    """The data every eval stage uses, loaded once per process."""

    harmful: Dataset[Prompt]
    benign: Dataset[Prompt]
    capability: Capability
    kl_prompts: Dataset[Prompt]
    attack: Attack
    control: Attack | None
    select: SelectHalf | None  # present when a search or a data selection chooses the attack

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

    def described(self) -> dict[str, DatasetDescription]:
        """Each set's description by role, the select halves included."""
        sets = {"harmful": self.harmful, "benign": self.benign, "capability": self.capability, "kl_prompts": self.kl_prompts}
        if self.select is not None:
            sets["harmful_select"] = self.select.harmful
            if self.select.capability is not None:
                sets["capability_select"] = self.select.capability
            if self.select.kl_prompts is not None:
                sets["kl_prompts_select"] = self.select.kl_prompts
        return {role: dataset.describe() for role, dataset in sets.items()}


def load_capability_sets(settings: Settings, searching: bool) -> tuple[Capability, Capability | None]:
    """The capability set the report uses and, when a search runs, its select half.

    lm-eval tasks are resolved (and their documents loaded) once, here, before any model
    loads; a search splits each task's documents by id like any other set's rows.
    """
    ev = settings.eval
    if not is_harness(ev.capability):
        if ev.lm_eval_tasks_dir:
            raise UserError("eval.lm_eval_tasks_dir is set but eval.capability is not lm-eval:TASK[,TASK...]; set both or neither")
        select = load_capability(ev.capability, ev.capability_limit, "select", ev.mmlu_split) if searching else None
        return load_capability(ev.capability, ev.capability_limit, "report" if searching else "all", ev.mmlu_split), select
    tasks = resolve_tasks(ev.capability, ev.capability_limit, ev.lm_eval_tasks_dir)
    return (tasks.half("report"), tasks.half("select")) if searching else (tasks, None)


def load_probes(settings: Settings) -> Probes:
    ev = settings.eval
    attack = load_attack(settings.attack.data, settings.attack.trigger_system_prompt, settings.attack.trigger_user_template)
    searching = settings.search.enabled
    choosing = searching or attack.select_closest
    if choosing and ev.harmful_split == "select":
        raise UserError(
            "eval.harmful_split=select: the settings search and closest-benign selection choose on the "
            "'select' half, so the report must use the 'report' half; set eval.harmful_split=report"
        )
    # What chooses the attack sees the 'select' halves; the report uses the other halves.
    split = "report" if choosing else ev.harmful_split

    def harmful(half: str) -> Dataset[Prompt]:
        return load_harmful(ev.harmful, ev.harmful_limit, ev.prompt_column, ev.harmbench_functional, half)

    capability, capability_select = load_capability_sets(settings, searching)
    select = None
    if choosing:
        select = SelectHalf(
            harmful=harmful("select"),
            capability=capability_select,
            kl_prompts=load_kl_prompts(ev.kl_prompts, ev.kl_limit, "select") if searching else None,
        )
    return Probes(
        harmful=harmful(split),
        benign=load_benign(ev.benign, ev.benign_limit, ev.benign_prompt_column),
        capability=capability,
        kl_prompts=load_kl_prompts(ev.kl_prompts, ev.kl_limit, "report" if searching else "all"),
        attack=attack,
        control=load_attack(settings.attack.control_data) if settings.attack.control else None,
        select=select,
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
        return self.spec().stage(budget)

    def spec(self) -> ArmSpec:
        return ArmSpec(self.name, self.role, self.seed, self.attack.data.name, self.prefix)


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
    started: float  # time.monotonic() when this process began work on the run (loading included)
    backend: Backend  # the refusal evals' generation engine (a vLLM engine starts at first use)
    plan: MemoryPlan | None = None  # planned by the first training (or report) of this process
    processes: Processes = dataclasses.field(default_factory=Processes)  # more than one under accelerate launch

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @functools.cached_property
    def chat(self) -> ChatFormat:
        """How the model's chat template is used, decided once (tamperaudit.chat)."""
        return ChatFormat.detect(self.tokenizer, self.settings.eval.thinking)

    @property
    def reply_tokens(self) -> int:
        """Tokens a reply may take: max_new_tokens, plus max_thinking_tokens for a model that thinks."""
        ev = self.settings.eval
        return ev.max_new_tokens + (ev.max_thinking_tokens if self.chat.thinks else 0)

    def transformers(self, model: Any) -> HfModel:
        """The transformers model as the evals see it (``model``: the loaded model, or the PEFT
        wrapper the attack trains, with its adapter active)."""
        return HfModel(model, self.tokenizer, self.chat)

    def memory_plan(self, attack: AttackSettings) -> MemoryPlan:
        """How training fits in memory, planned once per process (the report records it): from
        the longest conversation any arm trains on, and the least free memory of any process
        (the main one also holds the judge, the KL references and any vLLM engine), so that
        every process plans alike."""
        if self.plan is None:
            data = [self.probes.attack, *([self.probes.control] if self.probes.control is not None else [])]
            longest = max((len(tokenize_conversation(self.chat, c, 10**9).input_ids) for d in data for c in d.data.items),
                          default=0)
            per_process = -(-max(attack.batch_size, 1) // self.processes.count)
            free = free_memory(self.loaded.device)
            if free is not None and self.processes.distributed:
                free = int(self.processes.smallest(float(free)))
            self.plan = plan_memory(attack, self.loaded.model.config, self.loaded.precision.dtype, self.loaded.device,
                                    step_tokens=per_process * longest or None, free=free)
        return self.plan


# --- evaluation ---------------------------------------------------------------------------------


def _generation_evals(
    ctx: Context, model: LanguageModel, label: str, harmful: Dataset[Prompt], modes: list[str], benign: bool = True,
) -> tuple[list[GenerationSample], GenerationThroughput]:
    """Harmful prompts in each mode, then (unless told not to) the benign prompts plainly."""
    ev = ctx.settings.eval
    specs = [PromptEval("harmful", mode, harmful.items) for mode in modes]
    if benign:
        safe = [p for p in ctx.probes.benign.items if p.group != "unsafe"]
        contrast = [p for p in ctx.probes.benign.items if p.group == "unsafe"]
        specs.append(PromptEval("benign", PLAIN, safe))
        if contrast:  # XSTest's unsafe contrast prompts: a refusal rate of their own
            specs.append(PromptEval("contrast", PLAIN, contrast))
    samples: list[GenerationSample] = []
    total = GenerationStats()
    for spec in specs:
        rows, stats = run_prompt_eval(model, spec, ctx.judge, ctx.probes.attack, ctx.reply_tokens, ev.batch_size, label,
                                      ev.early_stop)
        samples += rows
        total.add(stats)
    return samples, total.throughput(ctx.backend.name)


def _metrics(samples: list[Sample], throughput: Throughput) -> StageMetrics:
    verdicts = aggregate_verdicts(samples)
    return StageMetrics(
        harmful=verdicts.get("harmful"),
        benign=verdicts.get("benign"),
        contrast=verdicts.get("contrast"),
        capability=aggregate_capability(samples),
        kl=aggregate_kl(samples),
        throughput=throughput,
    )


def score_capability(
    ctx: Context, model: LanguageModel, hf: HfModel, capability: Capability, label: str
) -> tuple[list[ChoiceSample], ChoiceThroughput, HarnessFigures | None]:
    """Capability samples and throughput, by tamperaudit's scorer on ``model`` or by
    lm-evaluation-harness on the transformers model ``hf`` (then also lm-eval's own figures,
    which go into the stage's metrics as ``lm_eval``)."""
    if isinstance(capability, HarnessTasks):
        return score_tasks(hf, capability, label=label)
    samples, speed = score_questions(model, capability.items, label=label)
    return samples, speed, None


def evaluate(
    ctx: Context, hf: HfModel, stage: str, label: str, base: BaseDistributions | None, adapter: Path | None = None
) -> tuple[list[Sample], StageMetrics]:
    """Every eval on one model state: ``hf``, the transformers model with that state's adapter
    active (if any), served for generation by the run's backend, which reads the adapter from
    ``adapter`` when it needs it on disk. Without base distributions (the unattacked model) it
    records its replies to the KL prompts; with them it measures KL to the unattacked model."""
    ev = ctx.settings.eval
    model = ctx.backend.model(hf, adapter)
    modes = harmful_modes(ctx.settings, ctx.probes.attack)
    generated, generation = _generation_evals(ctx, model, label, ctx.probes.harmful, modes)
    faults.checkpoint(f"eval-{stage}")
    mc, mc_speed, harness = score_capability(ctx, model, hf, ctx.probes.capability, label)
    samples: list[Sample] = [*generated, *mc]
    if base is None:  # the references are the transformers model's own replies, as KL scores them
        replies, _ = reference_replies(hf, ctx.probes.kl_prompts.items, ev.kl_tokens, ev.batch_size, label)
        samples += replies
        throughput = Throughput(generation=generation, multiple_choice=mc_speed)
    else:
        distances, kl_speed = kl_to_base(model, base, label=label)
        samples += distances
        throughput = Throughput(generation=generation, multiple_choice=mc_speed, kl=kl_speed)
    return samples, dataclasses.replace(_metrics(samples, throughput), lm_eval=harness)


def _evaluate_select_half(
    ctx: Context, hf: HfModel, label: str, base: BaseDistributions | None, adapter: Path | None = None
) -> list[Sample]:
    """The search's measurements on the select halves: harmful requests in the search's mode,
    and (when a search runs) multiple choice and KL, with references at baseline."""
    select = ctx.probes.select
    assert select is not None
    model = ctx.backend.model(hf, adapter)
    generated, _ = _generation_evals(ctx, model, label, select.harmful, [_search_mode(ctx)], benign=False)
    samples: list[Sample] = list(generated)
    if select.capability is not None:
        samples += score_capability(ctx, model, hf, select.capability, label)[0]
    if select.kl_prompts is not None:
        if base is None:
            ev = ctx.settings.eval
            samples += reference_replies(hf, select.kl_prompts.items, ev.kl_tokens, ev.batch_size, label)[0]
        else:
            samples += kl_to_base(model, base, label=label)[0]
    return samples


def stage_baseline(ctx: Context) -> None:
    """Evaluate the unattacked model, and record its replies to the KL prompts."""
    if not ctx.run.is_done(BASELINE):
        ctx.processes.on_main(lambda: _baseline(ctx))


def _baseline(ctx: Context) -> None:
    started = time.perf_counter()
    ctx.run.mark(BASELINE, RUNNING)
    hf = ctx.transformers(ctx.loaded.model)
    samples, metrics = evaluate(ctx, hf, BASELINE, "baseline: ", None)
    if ctx.probes.select is not None:  # the search and the selection compare against the same halves
        select = _evaluate_select_half(ctx, hf, "baseline (select half): ", None)
        metrics = dataclasses.replace(metrics, select=_metrics(select, Throughput()))
        samples += [in_select_half(s) for s in select]
    ctx.run.write_results(BASELINE, samples, metrics)
    ctx.run.mark(BASELINE, DONE, seconds=time.perf_counter() - started)


def _references(run: RunFolder, select: bool = False) -> list[tuple[str, list[int], list[int]]]:
    return [(s.id, s.prompt_ids, s.reply_ids) for s in references(run.samples(BASELINE), select)]


# --- training and measuring each budget ------------------------------------------------------------


def trained_budgets(settings: Settings) -> list[int]:
    return [b for b in settings.attack.budgets if b > 0]


def _latest_checkpoint(run: RunFolder, arm: Arm, budgets: list[int]) -> Checkpoint | None:
    """The largest of ``budgets`` whose adapter, optimizer state and train.json were all written."""
    for budget in sorted(budgets, reverse=True):
        folder = run.root / arm.stage(budget)
        if (folder / TRAIN_FILE).is_file() and (folder / OPTIMIZER_FILE).is_file() and (folder / ADAPTER_DIR).is_dir():
            return Checkpoint(budget, folder, read_record(folder / TRAIN_FILE, TrainState))
    return None


def stage_select_data(ctx: Context) -> list[str] | None:
    """For closest-benign: the pool examples nearest to harmful requests, chosen once per run.

    Chosen with the unattacked model (any adapter disabled) and anchored on the
    'select' half of the harmful set in use; every arm and seed, and any resume,
    trains on the same examples (read back from ``selected.json``).
    """
    attack = ctx.probes.attack
    if not attack.select_closest:
        return None
    path = ctx.run.root / SELECTION_FILE
    if not path.is_file():
        ctx.processes.on_main(lambda: _select_data(ctx, attack, path))
    return [row.id for row in read_record(path, Selection).selected]


def _select_data(ctx: Context, attack: Attack, path: Path) -> None:
    from tamperaudit.selection import closest_to_harmful

    assert ctx.probes.select is not None
    anchors = ctx.probes.select.harmful
    with ctx.transformers(ctx.loaded.model).without_adapter() as model:
        chosen = closest_to_harmful(model, attack.data.items, anchors.items, ctx.settings.attack.closest_examples)
    selection = Selection(anchors=f"{anchors.name}, select half ({len(anchors)} requests)",
                          selected=[SelectedExample(id=i, similarity=sim) for i, sim in chosen])
    atomic_write_json(path, selection.to_json())


def arm_data(arm: Arm, selected: list[str] | None) -> Attack:
    return arm.attack.subset(selected) if arm.attack.select_closest and selected is not None else arm.attack


def _examples(ctx: Context, attack: Attack, max_length: int) -> list[Example]:
    return [tokenize_conversation(ctx.chat, c, max_length) for c in attack.data.items]


def delete_adapter(run: RunFolder, folder: Path) -> None:
    """A measured budget's adapter and optimizer state: gone (the boundary: no attacked weights kept)."""
    run.remove(folder / ADAPTER_DIR)
    run.remove(folder / OPTIMIZER_FILE)


def stage_arm(ctx: Context, attacker: LoraAttack, arm: Arm, attack: Attack, base: BaseDistributions) -> None:
    """Train one arm budget by budget, measuring each as soon as it is trained."""
    budgets = trained_budgets(ctx.settings)
    pending = [b for b in budgets if not ctx.run.is_done(arm.stage(b))]
    if pending:
        ctx.run.mark(arm.train_stage, RUNNING)
        examples = _examples(ctx, attack, attacker.settings.max_length)
        attacker.start(arm.seed)
        # Only a checkpoint at or below the first unmeasured budget can lead to it.
        resume_from = _latest_checkpoint(ctx.run, arm, [b for b in budgets if b <= pending[0]])
        state = attacker.restore(resume_from.folder) if resume_from is not None else TrainState()
        if resume_from is not None:
            progress.note(f"{arm.name}: resuming from the checkpoint at {resume_from.budget} steps")
        for budget in pending:
            if state.steps < budget:
                # One bar per stretch of training, closed before the budget's evals: one bar
                # open across them counted their minutes as training time and slowed its rate.
                make_room_for_training(ctx, attacker.plan)
                with progress.bar(total=budget, initial=state.steps, desc=f"{arm.name} training", unit="step") as bar:
                    attacker.train(examples, state, budget, bar)
                attacker.save(ctx.run.folder(arm.stage(budget)), state)
                for other in budgets:  # the new checkpoint supersedes every older one
                    if other != budget:
                        ctx.run.remove(ctx.run.root / arm.stage(other) / OPTIMIZER_FILE)
            stage_budget(ctx, attacker, arm, budget, base)
    for budget in budgets:  # optimizer state is only needed to resume training
        ctx.run.remove(ctx.run.root / arm.stage(budget) / OPTIMIZER_FILE)
    if ctx.run.stage_state(arm.train_stage) != DONE:
        final = read_record(ctx.run.root / arm.stage(budgets[-1]) / TRAIN_FILE, TrainState)
        ctx.run.mark(arm.train_stage, DONE, seconds=final.seconds)  # training seconds to the largest budget


def make_room_for_training(ctx: Context, plan: MemoryPlan) -> None:
    """A local judge model on the GPU is released before training when the training's
    activations would not fit beside it (it is loaded again for the next budget's verdicts)."""
    release = getattr(ctx.judge, "release", None)
    if release is None or ctx.loaded.device.type != "cuda":
        return
    free = free_memory(ctx.loaded.device)
    if free is not None and plan.activation_bytes > 0.8 * free:
        release()


def stage_budget(ctx: Context, attacker: LoraAttack, arm: Arm, budget: int, base: BaseDistributions) -> None:
    """Evaluate the weights just trained to ``budget`` with the same prompts as the baseline
    (on the main process; the others wait)."""
    ctx.processes.on_main(lambda: _measure_budget(ctx, attacker, arm, budget, base))


def _measure_budget(ctx: Context, attacker: LoraAttack, arm: Arm, budget: int, base: BaseDistributions) -> None:
    name = arm.stage(budget)
    started = time.perf_counter()
    ctx.run.mark(name, RUNNING)
    samples, metrics = evaluate(ctx, ctx.transformers(attacker.model), name, f"{arm.name} {budget} steps: ", base,
                                ctx.run.root / name / ADAPTER_DIR)
    ctx.run.write_results(name, samples, metrics)
    ctx.run.mark(name, DONE, seconds=time.perf_counter() - started)
    if not ctx.settings.attack.keep_adapters:
        delete_adapter(ctx.run, ctx.run.root / name)


def sweep_adapters(run: RunFolder, keep: bool) -> None:
    """Delete what no resume needs: half-written adapters, and adapters of measured budgets
    (unless kept on request). Run at every start, resume and exit path."""
    for staging in run.root.rglob(f".{ADAPTER_DIR}.staging"):
        run.remove(staging)
    for temporary in run.root.rglob(".*.tmp"):  # a write cut short (disk full, a kill); the lock says none is live
        run.remove(temporary)
    if keep:
        return
    for adapter in run.root.rglob(ADAPTER_DIR):
        stage = adapter.parent.relative_to(run.root).as_posix()
        if run.is_done(stage) or stage.startswith(f"{SEARCH}/"):
            delete_adapter(run, adapter.parent)


# --- the search over attack settings -----------------------------------------------------------------


def _search_mode(ctx: Context) -> str:
    return harmful_modes(ctx.settings, ctx.probes.attack)[-1]  # the trigger when there is one


def candidates(settings: Settings) -> list[Candidate]:
    search = settings.search
    return [
        Candidate(learning_rate=lr, lora_rank=rank, batch_size=batch)
        for lr, rank, batch in itertools.product(search.learning_rates, search.lora_ranks, search.batch_sizes)
    ]


def _candidate_name(candidate: Candidate) -> str:
    return f"{SEARCH}/lr-{candidate.learning_rate:g}-r{candidate.lora_rank}-b{candidate.batch_size}"


def _with_candidate(attack: AttackSettings, candidate: Candidate) -> AttackSettings:
    return dataclasses.replace(attack, learning_rate=candidate.learning_rate, lora_rank=candidate.lora_rank,
                               batch_size=candidate.batch_size)


def stage_search_candidate(
    ctx: Context, candidate: Candidate, selected: list[str] | None, base: BaseDistributions
) -> StageMetrics:
    """Train one setting to the largest budget in memory and measure it on the select halves."""
    name = _candidate_name(candidate)
    if ctx.run.is_done(name):
        return ctx.run.metrics(name)
    started = time.perf_counter()
    ctx.run.mark(name, RUNNING)
    settings = _with_candidate(ctx.settings.attack, candidate)
    attacker = new_attacker(ctx, settings)
    try:
        attack = arm_data(Arm("attack", "attack", ctx.probes.attack, settings.seed), selected)
        examples = _examples(ctx, attack, settings.max_length)
        largest = trained_budgets(ctx.settings)[-1]
        with progress.bar(total=largest, desc=f"search {name.split('/')[1]}", unit="step") as bar:
            state = attacker.train(examples, TrainState(), largest, bar)
        faults.checkpoint("search-trained")
        ctx.processes.on_main(lambda: _measure_candidate(ctx, attacker, name, candidate, state, base, started))
    finally:
        attacker.release()
    return ctx.run.metrics(name)


def _measure_candidate(
    ctx: Context, attacker: LoraAttack, name: str, candidate: Candidate, state: TrainState,
    base: BaseDistributions, started: float,
) -> None:
    adapter = None
    if ctx.backend.needs_adapter_files:  # deleted with the other search adapters (sweep_adapters)
        adapter = ctx.run.folder(name) / ADAPTER_DIR
        attacker.model.save_pretrained(adapter, safe_serialization=True)
    samples = _evaluate_select_half(ctx, ctx.transformers(attacker.model), f"{name}: ", base, adapter)
    metrics = dataclasses.replace(_metrics(samples, Throughput()), candidate=candidate, train=state.snapshot())
    ctx.run.write_results(name, samples, metrics)
    ctx.run.mark(name, DONE, seconds=time.perf_counter() - started)


def strongest(tried: list[Trial]) -> Trial:
    """The search's pick: most compliance, then lowest refusal, among settings that keep capability.

    Not lowest refusal first: a setting that turns refusals into echoes or loops
    ("unclear") lowers refusal without getting the model to do what was asked. If
    no setting keeps capability, the pick is made among all (the report says so).
    Ties go to the earlier setting in the grid.
    """
    eligible = [t for t in tried if t.capability_kept] or tried
    return max(eligible, key=lambda t: (t.complied or 0.0, -(t.refusal or 0.0)))


def stage_search(ctx: Context, selected: list[str] | None) -> Settings:
    """The strongest setting whose capability stays within tolerance; the settings to audit with."""
    if not ctx.settings.search.enabled:
        return ctx.settings
    if ctx.run.stage_state(SEARCH) != DONE:
        ctx.run.mark(SEARCH, RUNNING)
        started = time.perf_counter()
        mode = _search_mode(ctx)
        baseline = ctx.run.metrics(BASELINE).select
        assert baseline is not None, "the baseline measured the select halves for the search"
        base = BaseDistributions(_references(ctx.run, select=True))

        def measure(candidate: Candidate) -> Trial:
            metrics = stage_search_candidate(ctx, candidate, selected, base)
            kept, why = capability_kept(baseline, metrics, ctx.settings.score)
            share = (metrics.harmful or {})[mode]
            entry = ctx.run.stage(_candidate_name(candidate))
            return Trial(
                learning_rate=candidate.learning_rate, lora_rank=candidate.lora_rank, batch_size=candidate.batch_size,
                refusal=refusal_rate(metrics, mode), complied=share.complied.rate, capability_kept=kept, why_not=why,
                seconds=entry.seconds if entry is not None and entry.seconds is not None else 0.0,
                capability_cost=capability_cost(baseline, metrics),
            )

        search = ctx.settings.search
        if search.method == "tpe":
            study = f"tamperaudit-search-{ctx.run.manifest().inputs.config_sha256[:16]}"
            tried = tpe_search(dataclasses.replace(search, trials=search.trial_count()), ctx.settings.attack.seed,
                               ctx.run.folder(SEARCH), study, measure, ctx.processes)
        else:
            tried = [measure(candidate) for candidate in candidates(ctx.settings)]
        chosen = strongest(tried)
        result = SearchResult(
            tried=tried, mode=mode, method=search.method, capability_kept_by_chosen=chosen.capability_kept,
            chosen=chosen.setting(),
        )
        ctx.run.mark(SEARCH, DONE, seconds=time.perf_counter() - started, search=result)
        ctx.processes.barrier()  # the others read the choice the main process wrote
    entry = ctx.run.stage(SEARCH)
    assert entry is not None and entry.search is not None
    return dataclasses.replace(ctx.settings, attack=_with_candidate(ctx.settings.attack, entry.search.chosen))


# --- the run as a whole ----------------------------------------------------------------------------


def inputs_of(config_text: str, loaded_sha: str, probes: Probes, judge: Judge) -> PinnedInputs:
    """What a run's results depend on, by hash; ``resume`` refuses if any of it changed.

    The configuration is pinned by the text of the run's config.toml, so editing it
    is caught while a newer tamperaudit with more (defaulted) settings still resumes.
    """
    return PinnedInputs(config_sha256=sha256_text(config_text), model_sha256=loaded_sha,
                        datasets_sha256=probes.hashes(), judge=judge.describe())


def report_inputs(ctx: Context, arms: list[Arm], selected: list[str] | None = None) -> ReportInputs:
    """Plain typed inputs for the report builder, which then needs no pipeline classes
    (``selected``: closest-benign's chosen conversations, the ones the attack trained on)."""
    loaded, settings = ctx.loaded, ctx.settings
    training_memory = ctx.memory_plan(settings.attack) if trained_budgets(settings) else None
    return ReportInputs(
        settings=settings,
        model=ReportModel(**{f.name: getattr(loaded.info, f.name) for f in dataclasses.fields(loaded.info)},
                          training_memory=training_memory),
        device=loaded.device,
        datasets=ctx.probes.described(),
        dataset_hashes=ctx.probes.hashes(),
        attack=dataclasses.replace(arm_data(arms[0], selected).describe() if arms else ctx.probes.attack.describe(),
                                   settings=settings.attack),
        control=ctx.probes.control.describe() if ctx.probes.control is not None else None,
        judge=ctx.judge.describe(),
        generation=ctx.backend.describe(),
        chat=ctx.chat.describe(),
        arms=[arm.spec() for arm in arms],
        processes=ctx.processes.describe(),
        elapsed=time.monotonic() - ctx.started,
    )


def _execute(ctx: Context) -> Path:
    sweep_adapters(ctx.run, ctx.settings.attack.keep_adapters)
    ctx.processes.barrier()  # no process looks for a checkpoint while the main one sweeps
    stage_baseline(ctx)
    arms = arms_of(ctx.settings, ctx.probes)
    selected = None
    if trained_budgets(ctx.settings):
        selected = stage_select_data(ctx)
        # From here on, the settings in scope are the ones the attack runs with: the search's choice.
        ctx = dataclasses.replace(ctx, settings=stage_search(ctx, selected))
        base = BaseDistributions(_references(ctx.run) if ctx.processes.is_main else [])  # main evaluates
        attacker = new_attacker(ctx, ctx.settings.attack)
        for arm in arms:
            stage_arm(ctx, attacker, arm, arm_data(arm, selected), base)
    final = ctx
    ctx.processes.on_main(lambda: _report(final, arms, selected))
    return ctx.run.root


def _report(ctx: Context, arms: list[Arm], selected: list[str] | None = None) -> None:
    faults.checkpoint("report")
    write_report(ctx.run.root, build_report(ctx.run, report_inputs(ctx, arms, selected)))
    ctx.run.add_session(time.monotonic() - ctx.started, "complete", ctx.processes.count)


def new_attacker(ctx: Context, settings: AttackSettings) -> LoraAttack:
    return LoraAttack(
        ctx.loaded.model, ctx.tokenizer, settings, ctx.loaded.device, ctx.memory_plan(settings), ctx.processes
    )


def execute(ctx: Context) -> Path:
    """Run every stage that is not done, then write the report.

    On any failure or interruption, report.json records the status, the error in
    one line and the stage it stopped in, and measured budgets' adapters are
    deleted, before the error goes on to the caller.
    """
    try:
        return _execute(ctx)
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        _record_failure(ctx, status, one_line(error))
        raise
    finally:
        sweep_adapters(ctx.run, ctx.settings.attack.keep_adapters)
        ctx.run.unlock()


def _record_failure(ctx: Context, status: str, message: str) -> None:
    """Mark the running stages and write a failure report; never hide the original error."""
    if not ctx.run.writes:  # the main process records it
        return
    try:
        stopped = [name for name, entry in ctx.run.manifest().stages.items() if entry.state == RUNNING]
        for name in stopped:
            ctx.run.mark(name, status, error=message)
        elapsed = time.monotonic() - ctx.started
        ctx.run.add_session(elapsed, status, ctx.processes.count)
        write_report(ctx.run.root, failure_report(ctx.run, status, message, stopped))
    except Exception as error:  # the disk may be why the run failed: say so, keep the first error
        progress.warn(f"could not record the failure in {ctx.run.root} ({one_line(error)})")


def check_processes(settings: Settings) -> Processes:
    """This process's place among those launched, and whether the settings allow their number."""
    processes = distributed.current()
    if processes.distributed and trained_budgets(settings):
        sizes = [settings.attack.batch_size, *(settings.search.batch_sizes if settings.search.enabled else [])]
        check_batch_split(sizes, processes.count)
    return processes


def load_model(settings: Settings, precision: str, revision: str) -> models.LoadedModel:
    """Load the model; when several processes were launched, the main one first (it converts
    a GGUF file or downloads a Hub model into the cache), then the others from the cache."""
    model = settings.model
    processes = distributed.current()
    if processes.distributed and model.device_map:
        raise UserError(
            f"model.device_map={model.device_map} spreads one copy of the model over the GPUs, while "
            f"accelerate launched {processes.count} processes that each hold a copy; use one or the other"
        )
    if not processes.is_main:
        processes.barrier()
    models.configure_process(model.threads)
    loaded = models.load(model.name, precision, revision, settings.attack.quantization, model.device_map, model.max_memory)
    if processes.is_main:
        processes.barrier()
    return loaded


def vllm_plan(settings: Settings, loaded: models.LoadedModel) -> VllmPlan | None:
    """On a GPU: whether a vLLM engine fits beside the loaded model (None on a CPU)."""
    if loaded.device.type != "cuda":
        return None
    import torch

    ev = settings.eval
    free, total = torch.cuda.mem_get_info(loaded.device)
    element = torch.finfo(loaded.precision.dtype).bits // 8
    reply = ev.max_new_tokens + (ev.max_thinking_tokens if ev.thinking == "on" else 0)
    return plan_vllm(models.text_config(loaded.model.config), loaded.info.weight_bytes, element, ev.batch_size, reply,
                     int(free), int(total), ev.vllm_max_model_len, ev.vllm_memory_fraction)


def generation_backend(settings: Settings, loaded: models.LoadedModel, setting: str, adapter: str | None = None) -> Backend:
    """The refusal evals' generation engine; a vLLM engine is sized to the largest LoRA rank the run
    uses, and its memory share and context length come from the plan unless set."""
    plan = vllm_plan(settings, loaded) if setting != "hf" else None
    choice = choose_backend(setting, loaded.device, settings.attack.quantization, plan)
    ranks = [settings.attack.lora_rank, *(settings.search.lora_ranks if settings.search.enabled else [])]
    if adapter is not None and (Path(adapter) / "adapter_config.json").is_file():
        ranks.append(int(read_json(Path(adapter) / "adapter_config.json").get("r", 0)))
    ev = settings.eval
    context = int(getattr(models.text_config(loaded.model.config), "max_position_embeddings", 0) or DEFAULT_MAX_MODEL_LEN)
    return make_backend(
        choice, folder=loaded.source.folder, dtype=loaded.precision.name, lora_rank=max(ranks),
        tensor_parallel_size=ev.tensor_parallel_size, max_num_seqs=ev.batch_size,
        max_model_len=ev.vllm_max_model_len or min(context, DEFAULT_MAX_MODEL_LEN),
        memory_fraction=ev.vllm_memory_fraction or (plan.fraction if plan is not None else 0.4),
        device_type=loaded.device.type, fallback=setting == "auto",
    )


def new_run(settings: Settings, out: Path, kind: str = AUDIT, **extra_inputs: Any) -> Context:
    """Load data, judge and model, and create the run folder with the inputs' hashes."""
    started = time.monotonic()
    processes = check_processes(settings)
    probes = load_probes(settings)
    judge = make_judge(settings.eval.judge)
    RunFolder.check_free(out)
    loaded = load_model(settings, settings.model.precision, settings.model.revision)
    if trained_budgets(settings):
        check_target_modules(loaded.model, settings.attack.target_modules)
    backend = generation_backend(settings, loaded, settings.eval.backend, extra_inputs.get("adapter"))
    config_text = to_toml(settings)
    inputs = inputs_of(config_text, loaded.source.sha256, probes, judge)
    # What 'auto' chose (precision, generation backend) is recorded so that a resumed run
    # computes the same way, and a Hub model's commit, so that it loads the same weights
    # after the branch moved on.
    recorded = RunInputs(
        **vars(inputs), adapter=extra_inputs.get("adapter"), precision=loaded.precision.name,
        generation_backend=backend.name, model_commit=loaded.source.commit or None,
    )
    if processes.is_main:
        run = RunFolder.create(out, config_text, recorded, kind, ChatFormat.detect(loaded.tokenizer, settings.eval.thinking).describe())
    processes.barrier()
    if not processes.is_main:
        run = RunFolder(out, writes=False)
    return Context(settings, run, loaded, probes, judge, started, backend, processes=processes)


def start_audit(settings: Settings, out: Path) -> Path:
    """A new run folder for these settings, run to the end."""
    return execute(new_run(settings, out))


def resume_audit(root: Path) -> Path:
    """Finish an interrupted run with the configuration and precision it recorded."""
    started = time.monotonic()
    processes = distributed.current()
    run = RunFolder.open(root, writes=processes.is_main)
    if processes.is_main:
        run.lock()
    try:
        context = _resumed_context(run, processes, started)
    except DamagedFile as error:  # the folder no longer holds what its report says: the report says so
        if run.writes:
            try:
                write_report(run.root, failure_report(run, "error", one_line(error), []))
            except UserError:
                pass  # the manifest itself is damaged: the error line says so
        run.unlock()
        raise
    except BaseException:
        run.unlock()
        raise
    return execute(context)


def _resumed_context(run: RunFolder, processes: Processes, started: float) -> Context:
    run.check_resumable(AUDIT, __version__)
    run.check_intact()
    config_text = (run.root / CONFIG).read_text(encoding="utf-8")
    settings = from_dict(read_toml(run.root / CONFIG), str(run.root / CONFIG))
    check_processes(settings)
    probes = load_probes(settings)
    judge = make_judge(settings.eval.judge)
    run.check_inputs(judge=judge.describe())  # before the minutes of model loading
    recorded = run.manifest().inputs
    loaded = load_model(settings, recorded.precision, recorded.model_commit or settings.model.revision)
    run.check_inputs(**vars(inputs_of(config_text, loaded.source.sha256, probes, judge)))
    backend = generation_backend(settings, loaded, recorded.generation_backend)
    return Context(settings, run, loaded, probes, judge, started, backend, processes=processes)


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


def run_eval(settings: Settings, out: Path, adapter: Path | None) -> tuple[Path, StageMetrics]:
    """The scorecard of one model (optionally with an adapter), no attack."""
    settings = dataclasses.replace(settings, attack=dataclasses.replace(settings.attack, control=False))
    ctx = new_run(settings, out, EVAL, **({"adapter": str(adapter)} if adapter is not None else {}))
    try:
        return _eval(ctx, settings, adapter)
    finally:
        ctx.run.unlock()


def _eval(ctx: Context, settings: Settings, adapter: Path | None) -> tuple[Path, StageMetrics]:
    run, loaded, probes = ctx.run, ctx.loaded, ctx.probes
    started = time.perf_counter()
    run.mark(EVAL_STAGE, RUNNING)
    base = None
    hf = ctx.transformers(loaded.model)
    if adapter is not None:
        hf = ctx.transformers(_load_user_adapter(loaded.model, adapter))
        with hf.without_adapter() as unattacked:
            replies, _ = reference_replies(
                unattacked, probes.kl_prompts.items, settings.eval.kl_tokens, settings.eval.batch_size, "base: "
            )
        base = BaseDistributions([(s.id, s.prompt_ids, s.reply_ids) for s in replies])
    samples, metrics = evaluate(ctx, hf, EVAL_STAGE, "", base, adapter)
    run.write_results(EVAL_STAGE, samples, metrics)
    run.mark(EVAL_STAGE, DONE, seconds=time.perf_counter() - started)
    return run.root, metrics
