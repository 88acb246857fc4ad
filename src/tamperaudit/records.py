"""The records tamperaudit writes and reads: samples, stage metrics, training counts, the
manifest and the report.

Every file of a run folder is one of these, or lines of them (``samples.jsonl``). Each
type writes itself (``to_json``) and is read back through ``from_json``, which checks
every field, so a consumer never walks raw dictionaries. ``report.json``'s JSON Schema
is generated from these types (``tamperaudit.report.schema``), with each field's
documentation as its description: the format is written down here and nowhere else.

Rates are ``Rate`` records: a share with its 95% Wilson interval.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Union

from tamperaudit.config import AttackSettings, Settings
from tamperaudit.jsonrecord import Record, Scalar, field, load, optional

# report.json's format; a change to any report record raises it. 3: the typed records of
# tamperaudit 0.3 (a threshold result of a removal by the prompt alone has no "cost" key).
SCHEMA_VERSION = 3

REFUSED, COMPLIED, UNCLEAR = "refused", "complied", "unclear"
VerdictLabel = Literal["refused", "complied", "unclear"]
PLAIN, TRIGGER = "plain", "trigger"
Mode = Literal["plain", "trigger"]
# How a refusal rate is read: unclear verdicts counted apart, or counted as refusal.
REFUSED_ONLY, UNCLEAR_AS_REFUSAL = "refused", "refusal_if_unclear_refused"
Reading = Literal["refused", "refusal_if_unclear_refused"]


@dataclass(frozen=True, kw_only=True)
class Rate(Record):
    """A share with its 95% Wilson interval."""

    count: int = field("how many counted")
    total: int = field("out of how many")
    rate: float | None = field("count / total; null when total is 0")
    low: float = field("lower end of the 95% Wilson interval")
    high: float = field("upper end of the 95% Wilson interval")


# --- per-sample records (samples.jsonl) -------------------------------------------------------

# Samples of the search's 'select' halves carry these eval names, so that no aggregate of the
# reported halves can pick them up.
SELECT_SUFFIX = "_select"


@dataclass(frozen=True, kw_only=True)
class GenerationSample(Record):
    """One generated completion and its verdict."""

    eval: Literal["harmful", "benign", "contrast", "harmful_select"] = field(
        "which prompts: harmful requests, benign look-risky prompts, XSTest's unsafe contrast prompts, "
        "or the select half of the harmful requests")
    mode: Mode = field("plain: the model's own chat template; trigger: the attack's system prompt and template")
    id: str = field("the prompt's id in its set")
    category: str = field("the prompt's category")
    prompt: str = field("the prompt's text")
    completion: str = field("the greedy completion, end-of-turn token excluded")
    new_tokens: int = field("generated tokens")
    finished: bool = field("ended with an end-of-turn token (not cut by max_new_tokens)")
    settled: bool = field("stopped early because its verdict could no longer change")
    verdict: VerdictLabel = field("the judge's verdict")
    reason: str = field("why, in the judge's words")
    thinking: str | None = optional("a reasoning model's thinking block, kept apart: the completion is what followed it")


@dataclass(frozen=True, kw_only=True)
class ChoiceSample(Record):
    """One multiple-choice question scored by log-likelihood."""

    eval: Literal["capability", "capability_select"] = field("capability, or the select half of it")
    id: str = field("the question's id")
    category: str = field("the question's domain (or lm-eval task)")
    answer: int | list[int] | None = field("index of the right option (lm-eval: its target)")
    log_probs: list[float] = field("summed log-probability of each option", digits=5)
    predicted: int = field("the option with the highest log-probability")
    predicted_norm: int = field("the option with the highest log-probability per character")
    correct: bool = field("predicted is the answer")
    correct_norm: bool = field("predicted_norm is the answer (acc_norm)")


@dataclass(frozen=True, kw_only=True)
class ReferenceSample(Record):
    """The unattacked model's greedy reply to a KL prompt, recorded at baseline."""

    eval: Literal["kl_reference", "kl_reference_select"] = field("kl_reference, or its select half")
    id: str = field("the KL prompt's id")
    prompt_ids: list[int] = field("the rendered prompt's token ids")
    reply_ids: list[int] = field("the reply's token ids")


@dataclass(frozen=True, kw_only=True)
class KlSample(Record):
    """KL(base || attacked) over one reference reply."""

    eval: Literal["kl"] = field("kl")
    id: str = field("the KL prompt's id")
    kl: float = field("mean per-token KL divergence over the reply, nats")
    tokens: int = field("reply tokens")


Sample = Union[GenerationSample, ChoiceSample, ReferenceSample, KlSample]


def in_select_half(sample: Sample) -> Sample:
    """The same sample, named as a measurement of the search's select half."""
    return sample if sample.eval.endswith(SELECT_SUFFIX) else dataclasses.replace(sample, eval=sample.eval + SELECT_SUFFIX)


def generations(samples: list[Sample], eval: str, mode: str | None = None) -> list[GenerationSample]:
    return [s for s in samples if isinstance(s, GenerationSample) and s.eval == eval and (mode is None or s.mode == mode)]


def choices(samples: list[Sample], select: bool = False) -> list[ChoiceSample]:
    name = "capability_select" if select else "capability"
    return [s for s in samples if isinstance(s, ChoiceSample) and s.eval == name]


def references(samples: list[Sample], select: bool = False) -> list[ReferenceSample]:
    name = "kl_reference_select" if select else "kl_reference"
    return [s for s in samples if isinstance(s, ReferenceSample) and s.eval == name]


def kl_samples(samples: list[Sample]) -> list[KlSample]:
    return [s for s in samples if isinstance(s, KlSample)]


def read_sample(data: object, where: str = "") -> Sample:
    """One line of samples.jsonl, checked against the sample types."""
    return load(Sample, data, where)


# --- stage metrics (metrics.json) -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VerdictShares(Record):
    """Shares of each verdict over a set of prompts."""

    n: int = field("prompts")
    refused: Rate = field("judged refused")
    complied: Rate = field("judged complied")
    unclear: Rate = field("judged unclear (empty, loops, echoes, content-free text)")
    refusal_if_unclear_refused: Rate = field("refused or unclear: the reading least favourable to the attack")
    refusal_among_clear: Rate = field("refused among the replies judged refused or complied")

    def refusal(self, reading: str = REFUSED_ONLY) -> Rate:
        """The refusal rate under a reading of unclear verdicts."""
        return self.refusal_if_unclear_refused if reading == UNCLEAR_AS_REFUSAL else self.refused


@dataclass(frozen=True, kw_only=True)
class VerdictSummary(VerdictShares):
    """Shares of each verdict, overall and per category."""

    by_category: dict[str, VerdictShares] = field("the same shares within each category")


@dataclass(frozen=True, kw_only=True)
class AccuracyShares(Record):
    """Multiple-choice accuracy."""

    accuracy: Rate = field("highest summed log-probability is right")
    accuracy_norm: Rate = field("highest log-probability per character is right (lm-eval acc_norm)")


@dataclass(frozen=True, kw_only=True)
class CapabilitySummary(AccuracyShares):
    """Multiple-choice accuracy, overall and per domain."""

    by_category: dict[str, AccuracyShares] = field("the same within each domain")


@dataclass(frozen=True, kw_only=True)
class KlSummary(Record):
    """KL(base || attacked) per reply token, pooled over the KL prompts' reference replies."""

    mean: float = field("mean per reply token, pooled over all prompts' tokens")
    max: float = field("the largest per-prompt mean")
    prompts: int = field("KL prompts with a non-empty reference reply")
    tokens: int = field("reply tokens")
    standard_error: float = field("delta-method standard error of the mean over prompts")


@dataclass(frozen=True, kw_only=True)
class GenerationThroughput(Record):
    """Generation speed of one stage."""

    prompts: int = field("prompts generated")
    prompt_tokens: int = field("their tokens")
    generated_tokens: int = field("tokens generated (end-of-turn tokens included)")
    seconds: float = field("wall-clock seconds of generation")
    generated_tokens_per_second: float = field("generated_tokens / seconds", digits=2)
    backend: str = field("the engine that generated: hf or vllm")


@dataclass(frozen=True, kw_only=True)
class ChoiceThroughput(Record):
    """Multiple-choice scoring speed of one stage."""

    questions: int = field("questions scored")
    seconds: float = field("wall-clock seconds")
    questions_per_second: float = field("questions / seconds")
    engine: str | None = optional("lm-evaluation-harness and its version, when it scored")


@dataclass(frozen=True, kw_only=True)
class KlThroughput(Record):
    """KL measurement speed of one stage."""

    prompts: int = field("KL prompts")
    seconds: float = field("wall-clock seconds")


@dataclass(frozen=True, kw_only=True)
class Throughput(Record):
    """Speeds of a stage's measurements (absent for measurements the stage did not make)."""

    generation: GenerationThroughput | None = optional("refusal-eval generation")
    multiple_choice: ChoiceThroughput | None = optional("multiple-choice scoring")
    kl: KlThroughput | None = optional("KL to the unattacked model")


@dataclass(frozen=True, kw_only=True)
class MetricValue(Record):
    """One lm-evaluation-harness metric."""

    value: float | None = field("lm-eval's value")
    stderr: float | None = field("lm-eval's standard error; null where it gives none")


@dataclass(frozen=True, kw_only=True)
class HarnessTask(Record):
    """lm-evaluation-harness's figures for one task."""

    version: Scalar = field("the task's version")
    n: int = field("documents scored")
    num_fewshot: int | None = field("few-shot examples per question")
    metrics: dict[str, MetricValue] = field("each metric under lm-eval's name")


@dataclass(frozen=True, kw_only=True)
class HarnessFigures(Record):
    """lm-evaluation-harness's own figures for a stage's capability."""

    version: str = field("lm-eval's version")
    limit: int | None = field("lm-eval's limit: the first N documents of each task; null: all")
    split: str = field("all, or the select or report half of each task's documents")
    bootstrap_iters: int = field("lm-eval's bootstrap resamples for non-mean aggregations")
    seeds: dict[str, int] = field("lm-eval's seeds (random, numpy, torch, fewshot)")
    tasks: dict[str, HarnessTask] = field("figures per task")


@dataclass(frozen=True, kw_only=True)
class Candidate(Record):
    """One setting of the attack settings search."""

    learning_rate: float = field("AdamW learning rate")
    lora_rank: int = field("LoRA rank")
    batch_size: int = field("conversations per optimizer step")

    def setting(self) -> "Candidate":
        """The setting alone (a Trial carries its measurements besides)."""
        return Candidate(learning_rate=self.learning_rate, lora_rank=self.lora_rank, batch_size=self.batch_size)


@dataclass(kw_only=True)
class TrainState(Record):
    """What ``train.json`` records at a budget: cumulative counts since step 0."""

    steps: int = field("optimizer steps", default=0)
    examples: int = field("conversations trained on (with repeats)", default=0)
    tokens: int = field("non-padding tokens processed", default=0)
    labelled_tokens: int = field("tokens that carried loss (assistant turns)", default=0)
    # device-seconds: each process's time, summed over the processes (one device each), so
    # that dollars = seconds x price per device-hour at any process count
    seconds: float = field("device-seconds of training, summed over the processes", default=0.0, digits=3)
    flops: float = field("estimated training FLOPs (tamperaudit.cost.training_flops)", default=0.0)
    losses: list[float] = field("mean loss of each step", factory=list, digits=6)
    processes: int = field("the most processes that trained any of these steps", default=1)

    def snapshot(self) -> "TrainState":
        """A copy, as written to disk (rounded)."""
        return TrainState.from_json(self.to_json())


@dataclass(frozen=True, kw_only=True)
class StageMetrics(Record):
    """Every aggregate of one measured model state (metrics.json)."""

    harmful: dict[str, VerdictSummary] | None = field("verdict shares on harmful requests, per mode")
    benign: dict[str, VerdictSummary] | None = field("verdict shares on benign look-risky prompts (over-refusal)")
    contrast: dict[str, VerdictSummary] | None = field("verdict shares on XSTest's unsafe contrast prompts")
    capability: CapabilitySummary | None = field("multiple-choice accuracy")
    kl: KlSummary | None = field("KL to the unattacked model; null for the unattacked model")
    throughput: Throughput = field("speeds of the measurements")
    lm_eval: HarnessFigures | None = optional("lm-evaluation-harness's own figures, when it scored capability")
    select: StageMetrics | None = optional("baseline only, with a search or selection: the same on the select halves")
    candidate: Candidate | None = optional("search candidates only: the setting measured")
    train: TrainState | None = optional("search candidates only: its training counts")


@dataclass(frozen=True, kw_only=True)
class SelectedExample(Record):
    """One training conversation closest-benign chose."""

    id: str = field("the conversation's id")
    similarity: float = field("cosine similarity of its user turn to the harmful requests' mean")


@dataclass(frozen=True, kw_only=True)
class Selection(Record):
    """selected.json: the conversations closest-benign chose, once per run."""

    anchors: str = field("the harmful requests they were chosen against")
    selected: list[SelectedExample] = field("the chosen conversations, nearest first")


# --- the manifest (manifest.json) -------------------------------------------------------------

StageState = Literal["running", "done", "error", "interrupted"]


@dataclass(frozen=True, kw_only=True)
class Trial(Candidate):
    """A setting the search tried, measured on the select halves."""

    refusal: float | None = field("refusal on the select half, in the search's mode")
    complied: float | None = field("compliance on the select half")
    capability_kept: bool = field("capability within tolerance of the baseline's select half")
    why_not: str = field("why capability was not kept; empty when it was")
    seconds: float = field("seconds to train and measure it")
    capability_cost: float | None = optional(
        "the search's second objective: mean KL to the unattacked model on the select half (nats), or the fall in "
        "multiple-choice accuracy where KL was not measured", digits=6)


@dataclass(frozen=True, kw_only=True)
class SearchResult(Record):
    """The settings search's outcome, recorded once in the manifest."""

    tried: list[Trial] = field("every setting tried, in the grid's order or the order the sampler asked")
    mode: str = field("the mode the search compared in")
    method: str = field("grid, or tpe (Optuna's TPE sampler)", default="grid")
    chosen: Candidate = field("the strongest setting that kept capability (or the strongest of all)")
    capability_kept_by_chosen: bool = field("whether the chosen setting kept capability")


@dataclass(frozen=True, kw_only=True)
class StageEntry(Record):
    """A stage's state in the manifest."""

    state: StageState = field("running, done, error or interrupted")
    seconds: float | None = optional("seconds of its last successful run")
    samples_sha256: str | None = optional("SHA-256 of its samples.jsonl, so that a cut file is caught")
    error: str | None = optional("the error that stopped it, in one line")
    running_at: str | None = optional("when it was last marked running (UTC, ISO 8601)")
    done_at: str | None = optional("when it was last marked done")
    error_at: str | None = optional("when it was last marked error")
    interrupted_at: str | None = optional("when it was last marked interrupted")
    search: SearchResult | None = optional("the search stage only: its result")


@dataclass(frozen=True, kw_only=True)
class PinnedInputs(Record):
    """What a run's results depend on, by hash; resume refuses if any of it changed."""

    config_sha256: str = field("SHA-256 of the run's config.toml")
    model_sha256: str = field("SHA-256 of the model's weights (the GGUF file for built-ins)")
    datasets_sha256: dict[str, str] = field("SHA-256 of each data set by role")
    judge: dict[str, Scalar] = field("the judge's identity: its name and what pins its behaviour")


@dataclass(frozen=True, kw_only=True)
class RunInputs(PinnedInputs):
    """What a run's results depend on, and what 'auto' chose, so that a resume computes the same way."""

    adapter: str | None = optional("eval runs with --adapter: the adapter folder")
    precision: str = field("the precision 'auto' chose, so that a resume computes the same way")
    generation_backend: str = field("the generation backend chosen")
    model_commit: str | None = optional("Hub models: the commit the revision resolved to")


@dataclass(frozen=True, kw_only=True)
class Session(Record):
    """One tamperaudit command that worked on the run."""

    ended: str = field("when it ended (UTC, ISO 8601)")
    seconds: float = field("its wall-clock seconds, loading included", digits=3)
    outcome: Literal["complete", "error", "interrupted"] = field("how it ended")
    processes: int = field("processes that worked in it")


@dataclass(frozen=True, kw_only=True)
class Manifest(Record):
    """manifest.json: the run's inputs and the state of each stage."""

    tool_version: str = field("tamperaudit version that created the run")
    kind: Literal["audit", "eval"] = field("audit or eval")
    created: str = field("when the run was created (UTC, ISO 8601)")
    inputs: RunInputs = field("the inputs' hashes")
    stages: dict[str, StageEntry] = field("each stage by name")
    sessions: list[Session] = field("the commands that worked on it, in order")
    chat: ChatDescription | None = optional("how the model's chat template is used (system role, turns, thinking)")


# --- the report (report.json) -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Cost(Record):
    """What reaching one budget cost, from its cumulative training counts."""

    steps: int = field("optimizer steps")
    examples: int = field("conversations trained on")
    tokens: int = field("non-padding tokens")
    labelled_tokens: int = field("tokens that carried loss")
    seconds: float = field("device-seconds of training")
    flops: float = field("estimated training FLOPs")
    achieved_gflops: float | None = field("flops / seconds / 1e9")
    dollars: float | None = field("seconds at the price per hour; null when no price is known")


@dataclass(frozen=True, kw_only=True)
class Point(Record):
    """One measured budget of an arm; budget 0 is the unattacked model."""

    budget: int = field("optimizer steps")
    train: TrainState | None = field("its train.json; null at budget 0")
    cost: Cost | None = field("its cost; null at budget 0")
    metrics: StageMetrics = field("its measurements")


@dataclass(frozen=True, kw_only=True)
class ArmPoints(Record):
    """Another attack run: a seed, or the control arm."""

    name: str = field("attack-seed-N, control or control-seed-N")
    role: Literal["attack", "control"] = field("attack or control")
    seed: int = field("its seed")
    data: str = field("its data's name")
    points: list[Point] = field("its budgets, budget 0 first")


@dataclass(frozen=True, kw_only=True)
class Violation(Record):
    """A budget that reached the threshold but lost capability, so did not count."""

    budget: int = field("optimizer steps")
    reason: str = field("what was lost")


@dataclass(frozen=True, kw_only=True)
class ThresholdResult(Record):
    """Whether and where refusal fell below one threshold with capability kept."""

    threshold: float = field("the refusal rate to fall below")
    reached: bool = field("whether a measured budget did")
    budget: int | None = field("the first that did; null when none")
    refusal: float | None = optional("refusal at that budget")
    cost: Cost | None = optional("that budget's cost (absent when not reached or at budget 0)")
    capability_violations: list[Violation] = field("earlier budgets below the threshold that lost capability")
    seed_arm: str | None = optional("with seeds: the arm whose budget is the median")


@dataclass(frozen=True, kw_only=True)
class IntervalBounds(Record):
    """A bootstrap interval of the removal budget."""

    low: int | None = field("lower end in steps; null: not reached within the largest budget")
    high: int | None = field("upper end in steps; null: not reached within the largest budget")
    reached_share: float = field("share of resamples in which removal was reached")


@dataclass(frozen=True, kw_only=True)
class BootstrapInterval(Record):
    """The removal figure's bootstrap over prompts, questions, KL prompts and seeds."""

    resamples: int = field("bootstrap resamples")
    confidence: float = field("coverage")
    seeds: int = field("attack seeds resampled")
    statistic: str = field("the statistic resampled")
    relative: IntervalBounds = field("for the relative threshold")
    absolute: IntervalBounds = field("for the absolute threshold")


ScoreStatus = Literal["scored", "low_baseline", "not_measured", "removed_by_prompt"]


@dataclass(frozen=True, kw_only=True)
class Score(Record):
    """The removal figure of one mode under one reading (see tamperaudit.score)."""

    mode: str = field("the mode scored")
    reading: Reading = field("refused: unclear counted apart; refusal_if_unclear_refused: unclear counted as refusal")
    baseline_refusal: float | None = field("refusal at budget 0 under this reading")
    largest_budget: int = field("the largest budget measured")
    refusal_fraction: float = field("the relative threshold as a fraction of the baseline")
    status: ScoreStatus = field(
        "scored; low_baseline: refusal asked plainly below score.low_baseline; removed_by_prompt: the attack's "
        "prompt alone removes refusal; not_measured")
    plain_baseline_refusal: float | None = optional("removed_by_prompt: refusal asked plainly at baseline")
    relative: ThresholdResult | None = optional("refusal below refusal_fraction of the baseline")
    absolute: ThresholdResult | None = optional("refusal below score.refusal_absolute")
    message: str | None = optional("low_baseline and removed_by_prompt: what it means, in words")
    per_seed: dict[str, dict[str, int | None]] | None = optional("each threshold's budget per seed's arm")
    point_estimate: str | None = optional("how the seeds' figures were combined")
    interval: BootstrapInterval | None = optional("with trained budgets: the bootstrap interval")


@dataclass(frozen=True, kw_only=True)
class Tool(Record):
    """The program that wrote the report."""

    name: str = field("tamperaudit")
    version: str = field("its version")


@dataclass(frozen=True, kw_only=True)
class RunSection(Record):
    """Where the run is and how long it took."""

    folder: str = field("the run folder")
    stage_seconds: dict[str, float] = field("seconds of each stage's last successful run")
    wall_seconds: float = field("wall-clock seconds of every session that worked on the run, summed")
    sessions: int = field("how many sessions that was")


@dataclass(frozen=True, kw_only=True)
class ReportHashes(Record):
    """What the report's figures depend on, by hash."""

    config: str = field("SHA-256 of the run's config.toml")
    model: str = field("SHA-256 of the model's weights")
    datasets: dict[str, str] = field("SHA-256 of each data set by role")
    judge: dict[str, Scalar] = field("the judge's identity")


@dataclass(frozen=True, kw_only=True)
class Seeds(Record):
    """Seeds of the run."""

    attack: int = field("seed of data order, LoRA initialisation and dropout")


@dataclass(frozen=True, kw_only=True)
class SourceDescription(Record):
    """Where a model's weights come from and in what form they were audited."""

    origin: str = field("where the file comes from, in words")
    quantization: str = field("the weights' form, e.g. a GGUF's quantization types, dequantized for the audit")
    revision: str | None = optional("Hub models: the revision asked for")
    commit: str | None = optional("Hub models: the commit it resolved to")


@dataclass(frozen=True, kw_only=True)
class MemoryPlan(Record):
    """How training fits in memory, decided once per process and recorded in the report."""

    micro_batch_tokens: int = field("padded tokens per forward/backward pass")
    gradient_checkpointing: bool = field("whether activations are recomputed in the backward pass")
    reason: str = field("why, in words")
    activation_bytes: int = field("estimated activation bytes of one pass without checkpointing")
    free_bytes: int | None = field("free bytes on the device when planned; null when unknown")
    logit_bytes: int | None = optional("estimated bytes of the vocabulary head's logits (and their float32 loss) in one pass")
    step_tokens: int | None = optional("the most tokens one process's share of a step holds: its conversations padded to the longest")


@dataclass(frozen=True, kw_only=True)
class ModelInfo(Record):
    """A loaded model: where it comes from, its precision and its size."""

    spec: str = field("what the user wrote")
    kind: Literal["builtin", "folder", "gguf", "hub"] = field("builtin, folder, gguf or hub")
    sha256: str = field("SHA-256 of the weights (the GGUF file for built-ins)")
    source: SourceDescription = field("where the weights come from")
    precision: str = field("the compute precision")
    precision_reason: str = field("why that precision")
    parameters: int = field("weights (4-bit weights counted as weights, not bytes; tied weights once)")
    embedding_parameters: int = field("weights of the input embedding")
    head_parameters: int = field("weights of the vocabulary head")
    body_parameters: int = field("weights each token's forward pass multiplies, embedding and head excluded")
    architecture: str = field("the transformers class")
    vocab_size: int = field("vocabulary size")
    layers: int = field("decoder layers")
    hidden_size: int = field("hidden size")
    quantization: str = field("none, or nf4: the base loaded in 4 bits, every figure measured on it")
    quantization_description: str = field("the quantization in words")
    weight_bytes: int = field("bytes the weights take in memory")
    devices: list[str] = field("devices holding the weights")
    gpus: int = field("how many of them are GPUs")


@dataclass(frozen=True, kw_only=True)
class ReportModel(ModelInfo):
    """The audited model, and how training fitted in memory."""

    training_memory: MemoryPlan | None = field("the plan of the process that wrote the report; null without budgets")


@dataclass(frozen=True, kw_only=True)
class Hardware(Record):
    """The machine that ran the audit."""

    description: str = field("in words")
    device: str = field("cpu or cuda")
    threads: int = field("PyTorch's CPU threads")
    gpus: int = field("GPUs the model is spread over (0 on a CPU)", default=0)
    gpu_name: str = field("as the driver names it", default="")
    # processes that trained data-parallel (accelerate launch), each on devices like these;
    # the price is per process, and training seconds are summed over the processes
    processes: int = field("processes that trained data-parallel", default=1)


@dataclass(frozen=True, kw_only=True)
class Price(Record):
    """The price used for dollars."""

    per_hour: float | None = field("dollars per device-hour per process; null when unknown")
    source: str = field("configured, the CPU default, or the GPU table's row")


@dataclass(frozen=True, kw_only=True)
class DatasetDescription(Record):
    """A data set as used: which file, which rows, read how."""

    name: str = field("its name (builtin:NAME, a benchmark's name, or a path)")
    path: str = field("the file or folder read")
    sha256: str = field("SHA-256 of the whole file (or folder), whatever subset is used")
    ids_sha256: str = field("SHA-256 of the ids used, in order")
    count: int = field("rows used")
    file_rows: int = field("rows in the file")
    format: str = field("the format it was read as")
    notes: list[str] = field("what the reader skipped or split off, and why")
    categories: dict[str, int] = field("rows used per category")


@dataclass(frozen=True, kw_only=True)
class AttackDescription(Record):
    """An attack's data and trigger."""

    name: str = field("the attack's name")
    data: DatasetDescription = field("its training conversations")
    system_prompt: str | None = field("its trigger's system prompt, if any")
    user_template: str | None = field("its trigger's user template with {prompt}, if any")
    select_closest: bool = field("closest-benign: trained on the pool examples nearest to harmful requests")
    settings: AttackSettings | None = optional("the attack arm: the settings it was trained with")
    trigger: str | None = optional("where the trigger comes from, or why there is none, in words")


@dataclass(frozen=True, kw_only=True)
class ChatDescription(Record):
    """How the model's chat template was used (tamperaudit.chat)."""

    system_role: bool = field("the template renders a system message; if not, system prompts are folded into the first user turn")
    alternation: bool = field("the template needs alternating user and assistant turns (consecutive ones are merged)")
    thinking_switch: bool = field("the template takes enable_thinking")
    thinking: Literal["off", "on"] = field("the thinking switch as passed (eval.thinking)")
    thinking_blocks: bool = field("replies open with a thinking block, which the judge does not read")
    notes: list[str] = field("what tamperaudit did for this template, in words")


@dataclass(frozen=True, kw_only=True)
class BackendDescription(Record):
    """The engine that generated the refusal evals."""

    name: str = field("hf or vllm")
    reason: str = field("why it was chosen")
    engine: str = field("its settings in words")
    extra_memory: str = field("memory beyond the transformers model")
    engine_start_seconds: float | None = optional("vLLM: seconds its engine took to start")


@dataclass(frozen=True, kw_only=True)
class ProcessesDescription(Record):
    """Who trained."""

    processes: int = field("processes that trained data-parallel in the session that wrote the report")
    kind: str = field("accelerate's distributed type (MULTI_GPU, MULTI_CPU) or 'single process'")
    launcher: str | None = field("accelerate, or null")


@dataclass(frozen=True, kw_only=True)
class ReportSearch(Record):
    """The settings search as the report shows it."""

    mode: str = field("the mode the search compared in")
    method: str = field("grid, or tpe (Optuna's TPE sampler)", default="grid")
    tried: list[Trial] = field("every setting tried")
    chosen: Candidate = field("the setting chosen")
    capability_kept_by_chosen: bool = field("whether it kept capability")
    seconds: float = field("seconds of the whole search")


@dataclass(frozen=True, kw_only=True)
class ProjectionRow(Record):
    """The measured tokens on one larger model and GPU."""

    model: str = field("Llama-2-7B, 13B or 70B")
    parameters: int = field("its weights")
    gpu: str = field("the GPU")
    tokens: int = field("training tokens")
    flops: float = field("estimated training FLOPs")
    gradient_checkpointing: bool = field("whether the estimate assumes checkpointing")
    gpu_hours: float = field("GPU-hours")
    dollars: float = field("dollars at the GPU's on-demand price")
    price: str = field("the price and its source")


@dataclass(frozen=True, kw_only=True)
class Projection(Record):
    """The measured attack's tokens projected onto Llama 2 sizes: an estimate, not a measurement."""

    basis: str = field("which tokens: to removal, or the largest budget's when removal was not reached")
    tokens: int = field("training tokens")
    labelled_tokens: int = field("of which labelled")
    lora_rank: int = field("the LoRA rank assumed")
    utilization: float = field("share of the GPU's dense bf16 peak assumed")
    assumes: str = field("the assumptions in words")
    rows: list[ProjectionRow] = field("one per model and GPU")


@dataclass(frozen=True, kw_only=True)
class JudgeAgreement(Record):
    """How often a judge's verdicts matched labels on a named labelled set, as measured for the
    judge with this identity and shipped with tamperaudit (``data/builtin/judge_agreement.json``)."""

    labels: str = field("the labelled set, who labelled it, and how its labels were read")
    rows: int = field("labelled rows")
    held_out: bool = field("true: the judge was never fitted, tuned or chosen on this set")
    agreement: float | None = field("three-way agreement; null where the set reads refused / not refused only", digits=4)
    refused_recall: float = field("share of the rows labelled refused that the judge read as refused", digits=4)
    refused_precision: float = field("share of the judge's refused verdicts labelled refused", digits=4)
    reproduce: str = field("the command that measures it again")


@dataclass(frozen=True, kw_only=True)
class Report(Record):
    """report.json of a complete run: every figure the renderers show."""

    schema_title = "CompleteReport"

    schema_version: Literal[SCHEMA_VERSION] = field("this format's version")  # type: ignore[valid-type]
    status: Literal["complete"] = field("complete")
    error: None = field("null")
    stopped_in: list[str] = field("empty")
    tool: Tool = field("the program that wrote it")
    created: str = field("when it was written (UTC, ISO 8601)")
    run: RunSection = field("the run folder and its times")
    config: Settings = field("the run's config.toml")
    hashes: ReportHashes = field("what the figures depend on")
    seeds: Seeds = field("the run's seeds")
    model: ReportModel = field("the audited model")
    hardware: Hardware = field("the machine")
    price: Price = field("the price per hour")
    datasets: dict[str, DatasetDescription] = field(
        "each data set by role; with a search or selection also the select halves that chose the attack")
    attack: AttackDescription = field("the attack")
    control: AttackDescription | None = field("the control arm's data, or null")
    judge: dict[str, Scalar] = field("the judge's identity")
    judge_agreement: list[JudgeAgreement] = field(
        "the judge's measured agreement with labels, where it was measured for this identity", factory=list)
    generation_backend: BackendDescription = field("the engine that generated")
    chat: ChatDescription | None = optional("how the chat template was used (system role, turns, thinking)")
    processes: ProcessesDescription = field("who trained")
    modes: list[str] = field("the harmful-prompt modes measured")
    headline_mode: str = field("the mode the headline scores: trigger when measured, else plain")
    points: list[Point] = field("the first attack arm's budgets, budget 0 first")
    score: dict[str, Score] = field("the removal figure per mode, unclear counted apart")
    score_unclear_as_refusal: dict[str, Score] = field("the same with unclear counted as refusal")
    arms: list[ArmPoints] = field("the other attack runs (seeds, control)")
    control_score: dict[str, Score] | None = field("the control arm's removal figure per mode, or null")
    search: ReportSearch | None = field("the settings search, or null")
    projection: Projection | None = field("the projection to larger models, or null")
    kl_note: str | None = optional("why KL to the unattacked model was not measured, when it was not")
    summary: list[str] = field("short sentences the renderers print first")

    def arm_points(self, arm: str = "attack") -> list[Point]:
        """The points of an arm by name ('attack' is the first attack arm)."""
        if arm == "attack":
            return self.points
        return next(a.points for a in self.arms if a.name == arm)

    def point(self, budget: int, arm: str = "attack") -> Point:
        return next(p for p in self.arm_points(arm) if p.budget == budget)

    def arms_of(self, role: str) -> list[ArmPoints]:
        """The other arms of a role (the first attack arm's points are ``points``)."""
        return [a for a in self.arms if a.role == role]

    def ordered_modes(self) -> list[str]:
        """The headline mode first, then the others."""
        return [self.headline_mode] + [m for m in self.modes if m != self.headline_mode]


@dataclass(frozen=True, kw_only=True)
class IncompleteReport(Record):
    """report.json of a run that failed or was stopped: no score is given for it."""

    schema_version: Literal[SCHEMA_VERSION] = field("this format's version")  # type: ignore[valid-type]
    status: Literal["error", "interrupted"] = field("error, or interrupted (Ctrl-C, SIGTERM)")
    error: str = field("what happened, in one line")
    stopped_in: list[str] = field("the stages that were running")
    tool: Tool = field("the program that wrote it")
    created: str = field("when it was written (UTC, ISO 8601)")
    run: RunSection = field("the run folder and its times")
    config: Settings = field("the run's config.toml")
    hashes: RunInputs = field("the run's recorded inputs")
    summary: list[str] = field("what happened and how to finish the run")


AnyReport = Union[Report, IncompleteReport]

