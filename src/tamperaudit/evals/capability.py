"""Capability: multiple-choice accuracy by log-likelihood, and KL divergence to the base model.

Multiple choice: each choice is scored by the log-probability of its text after
"Question: ...\\nAnswer:", as lm-evaluation-harness does for ARC-style tasks (the model
interface's ``choice_log_probs``; the HF engine runs each context once and shares its
key/value cache with the choices). ``accuracy`` takes the highest summed log-probability;
``accuracy_norm`` divides by the choice's length in characters first (lm-evaluation-harness
``acc_norm``), which removes the bias toward short choices.

KL: on benign prompts, the unattacked model's own greedy reply (recorded at
baseline) is fed to both the attacked model and the same weights with the adapter
disabled; the mean per-token KL(base || attacked) of next-token distributions over
that reply measures how far the attack moved ordinary behaviour.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, Iterable, Sequence

import torch

from tamperaudit import faults, progress
from tamperaudit.backends import ChoiceRequest, LanguageModel
from tamperaudit.data import Prompt, Question
from tamperaudit.generation import GenerationStats
from tamperaudit.records import (
    AccuracyShares,
    CapabilitySummary,
    ChoiceSample,
    ChoiceThroughput,
    KlSample,
    KlSummary,
    KlThroughput,
    ReferenceSample,
    Sample,
)
from tamperaudit.stats import rate

def _requests(question: Question) -> list[tuple[ChoiceRequest, list[int]]]:
    """The question's options grouped by their context: (request, indices of its options)."""
    grouped: dict[str, list[int]] = {}
    for index, (context, _) in enumerate(question.options):
        grouped.setdefault(context, []).append(index)
    return [(ChoiceRequest(context, tuple(question.options[i][1] for i in indices)), indices)
            for context, indices in grouped.items()]


def score_questions(
    model: LanguageModel, questions: Sequence[Question], batch_size: int = 8, label: str = ""
) -> tuple[list[ChoiceSample], ChoiceThroughput]:
    """One sample per question: summed log-probabilities, predictions and correctness."""
    units = [(q_index, request, indices) for q_index, q in enumerate(questions) for request, indices in _requests(q)]
    log_probs: list[list[float]] = [[0.0] * len(q.options) for q in questions]
    start = time.perf_counter()
    with progress.bar(total=len(questions), desc=f"{label}multiple choice", unit="question") as bar:

        def scored(count: int) -> None:
            bar.update(count * len(questions) / len(units))
            faults.checkpoint("multiple-choice")

        results = model.choice_log_probs([request for _, request, _ in units], batch_size, scored)
    for (q_index, _, indices), scores in zip(units, results):
        for option, score in zip(indices, scores):
            log_probs[q_index][option] = score
    seconds = time.perf_counter() - start
    samples = []
    for q, scores in zip(questions, log_probs):
        normalized = [lp / max(1, len(continuation)) for lp, (_, continuation) in zip(scores, q.options)]
        predicted = max(range(len(scores)), key=scores.__getitem__)
        predicted_norm = max(range(len(normalized)), key=normalized.__getitem__)
        samples.append(
            ChoiceSample(
                eval="capability", id=q.id, category=q.category, answer=q.answer, log_probs=[round(x, 5) for x in scores],
                predicted=predicted, predicted_norm=predicted_norm, correct=predicted == q.answer,
                correct_norm=predicted_norm == q.answer,
            )
        )
    throughput = ChoiceThroughput(
        questions=len(questions), seconds=round(seconds, 3),
        questions_per_second=round(len(questions) / seconds, 3) if seconds else 0.0,
    )
    return samples, throughput


def _accuracy(group: list[ChoiceSample]) -> dict[str, Any]:
    return {
        "accuracy": rate(sum(r.correct for r in group), len(group)),
        "accuracy_norm": rate(sum(r.correct_norm for r in group), len(group)),
    }


def aggregate_capability(samples: Iterable[Sample]) -> CapabilitySummary | None:
    rows = [s for s in samples if isinstance(s, ChoiceSample) and s.eval == "capability"]
    if not rows:
        return None
    by_category: dict[str, list[ChoiceSample]] = defaultdict(list)
    for row in rows:
        by_category[row.category].append(row)
    return CapabilitySummary(
        **_accuracy(rows), by_category={c: AccuracyShares(**_accuracy(g)) for c, g in sorted(by_category.items())}
    )


# --- KL divergence to the unattacked model -------------------------------------------------------


class BaseDistributions:
    """The unattacked model's next-token log-probabilities over the KL references.

    They are the same at every budget, so they are computed once per process (with
    the adapter disabled: no second copy of the weights) and kept in memory:
    prompts x reply tokens x vocabulary floats, about 0.6 GB for the defaults.
    """

    def __init__(self, references: Sequence[tuple[str, list[int], list[int]]], batch_size: int = 8) -> None:
        self.references = [r for r in references if r[2]]
        self.batch_size = batch_size
        self._log_probs: list[torch.Tensor] | None = None

    def batches(self) -> list[list[tuple[str, list[int], list[int]]]]:
        return [self.references[i : i + self.batch_size] for i in range(0, len(self.references), self.batch_size)]

    def get(self, model: LanguageModel) -> list[torch.Tensor]:
        if self._log_probs is None:
            self._log_probs = []
            with model.without_adapter() as unattacked:
                for batch in self.batches():
                    self._log_probs += unattacked.next_token_log_probs([p + r for _, p, r in batch],
                                                                        [len(p) for _, p, _ in batch])
        return self._log_probs


def kl_to_base(model: LanguageModel, base: BaseDistributions, label: str = "") -> tuple[list[KlSample], KlThroughput]:
    """Mean per-token KL(base || attacked) over the base model's own replies to benign prompts."""
    samples = []
    start = time.perf_counter()
    base_log_probs = iter(base.get(model))
    with progress.bar(total=len(base.references), desc=f"{label}KL to base", unit="prompt") as bar:
        for batch in base.batches():
            attacked = model.next_token_log_probs([p + r for _, p, r in batch], [len(p) for _, p, _ in batch])
            for (item_id, _, reply), lp_attacked in zip(batch, attacked):
                lp_base = next(base_log_probs)
                per_token = (lp_base.exp() * (lp_base - lp_attacked)).sum(-1)
                samples.append(KlSample(eval="kl", id=item_id, kl=float(per_token.mean()), tokens=len(reply)))
            bar.update(len(batch))
            faults.checkpoint("kl")
    seconds = time.perf_counter() - start
    return samples, KlThroughput(prompts=len(base.references), seconds=round(seconds, 3))


def aggregate_kl(samples: Iterable[Sample]) -> KlSummary | None:
    """Mean KL per reply token, pooled over all prompts' tokens (each prompt weighs by its
    reply length), with the standard error of that ratio over prompts; ``max`` is the
    largest per-prompt mean."""
    rows = [(s.kl, s.tokens) for s in samples if isinstance(s, KlSample)]
    rows = [(kl, tokens) for kl, tokens in rows if tokens > 0]
    if not rows:
        return None
    total = sum(tokens for _, tokens in rows)
    mean = sum(kl * tokens for kl, tokens in rows) / total
    n = len(rows)
    # delta-method standard error of a weighted mean (a ratio estimator) over prompts
    spread = math.sqrt(n / (n - 1) * sum((tokens * (kl - mean)) ** 2 for kl, tokens in rows)) / total if n > 1 else 0.0
    return KlSummary(mean=mean, max=max(kl for kl, _ in rows), prompts=n, tokens=total, standard_error=spread)


def reference_replies(
    model: LanguageModel, prompts: Sequence[Prompt], tokens: int, batch_size: int, label: str = ""
) -> tuple[list[ReferenceSample], GenerationStats]:
    """The unattacked model's greedy replies to the KL prompts, stored at baseline."""
    prompt_ids = [model.render([{"role": "user", "content": p.text}]) for p in prompts]
    completions, stats = model.generate(prompt_ids, tokens, batch_size, desc=f"{label}KL references")
    faults.checkpoint("kl-references")
    samples = [
        ReferenceSample(eval="kl_reference", id=p.id, prompt_ids=ids, reply_ids=list(c.tokens))
        for p, ids, c in zip(prompts, prompt_ids, completions)
    ]
    return samples, stats
