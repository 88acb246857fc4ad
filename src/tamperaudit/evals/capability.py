"""Capability: multiple-choice accuracy by log-likelihood, and KL divergence to the base model.

Multiple choice: each choice is scored by the log-probability of its text after
"Question: ...\\nAnswer:", as lm-evaluation-harness does for ARC-style tasks.
``accuracy`` takes the highest summed log-probability; ``accuracy_norm`` divides by
the choice's length in characters first (lm-evaluation-harness ``acc_norm``), which
removes the bias toward short choices. The context of each question is run once
and its key/value cache shared by the choices; the vocabulary head runs only at
positions that score a choice token.

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
from tamperaudit.data import Prompt, Question
from tamperaudit.generation import with_cache
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

def _head_log_probs(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)


@torch.inference_mode()
def _score_batch(model: Any, contexts: list[list[int]], choices: list[list[list[int]]], pad_id: int) -> list[list[float]]:
    """Summed log-probability of every choice of every question in the batch."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    decoder = model.get_decoder()
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, context in enumerate(contexts):  # left padding: contexts end together
        ids[row, width - len(context) :] = torch.tensor(context)
        mask[row, width - len(context) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, **with_cache(model, cache)).last_hidden_state
    first = _head_log_probs(model, hidden[:, -1])  # predicts each choice's first token

    counts = [len(c) for c in choices]
    # Host-side indices: they index tensors on any device, which a model spread over
    # several GPUs needs (its cache layers and head sit on different GPUs).
    owner = torch.tensor([q for q, n in enumerate(counts) for _ in range(n)])
    flat = [choice for group in choices for choice in group]
    cache.batch_select_indices(owner)  # each choice gets its question's context (indices repeat)
    choice_width = max(len(c) for c in flat)
    choice_ids = torch.full((len(flat), choice_width), pad_id, dtype=torch.long, device=device)
    choice_mask = torch.zeros((len(flat), choice_width), dtype=torch.long, device=device)
    for row, choice in enumerate(flat):  # right padding after the shared context
        choice_ids[row, : len(choice)] = torch.tensor(choice)
        choice_mask[row, : len(choice)] = 1
    full_mask = torch.cat([mask[owner], choice_mask], dim=-1)
    choice_positions = positions[owner, -1:] + 1 + torch.arange(choice_width, device=device)
    scores = [0.0] * len(flat)
    if choice_width > 1:  # positions 0..n-2 of a choice predict its tokens 1..n-1
        hidden = decoder(
            input_ids=choice_ids[:, :-1],
            attention_mask=full_mask[:, :-1],
            position_ids=choice_positions[:, :-1],
            **with_cache(model, cache),
        ).last_hidden_state
        targets = choice_ids[:, 1:]
        valid = choice_mask[:, 1:].bool()
        log_probs = _head_log_probs(model, hidden[valid])
        picked = log_probs.gather(-1, targets[valid].to(log_probs.device).unsqueeze(-1)).squeeze(-1)
        rows = valid.nonzero()[:, 0].to(log_probs.device)
        sums = torch.zeros(len(flat), device=log_probs.device).index_add_(0, rows, picked)
        scores = sums.tolist()
    first_tokens = torch.tensor([c[0] for c in flat], device=first.device)
    first_scores = first[owner].gather(-1, first_tokens.unsqueeze(-1)).squeeze(-1).tolist()
    totals = [a + b for a, b in zip(first_scores, scores)]
    grouped, start = [], 0
    for n in counts:
        grouped.append(totals[start : start + n])
        start += n
    return grouped


def _units(tokenizer: Any, question: Question) -> list[tuple[list[int], list[list[int]], list[int]]]:
    """(context ids, continuation ids of each option with that context, option indices)."""
    grouped: dict[str, list[int]] = {}
    for index, (context, _) in enumerate(question.options):
        grouped.setdefault(context, []).append(index)
    units = []
    for context, indices in grouped.items():
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        continuations = [tokenizer(" " + question.options[i][1], add_special_tokens=False)["input_ids"] for i in indices]
        units.append((context_ids, continuations, indices))
    return units


def score_questions(
    model: Any, tokenizer: Any, questions: Sequence[Question], batch_size: int = 8, label: str = ""
) -> tuple[list[ChoiceSample], ChoiceThroughput]:
    """One sample per question: summed log-probabilities, predictions and correctness."""
    units = [(q_index, unit) for q_index, q in enumerate(questions) for unit in _units(tokenizer, q)]
    order = sorted(range(len(units)), key=lambda i: len(units[i][1][0]))
    log_probs: list[list[float]] = [[0.0] * len(q.options) for q in questions]
    start = time.perf_counter()
    with progress.bar(total=len(questions), desc=f"{label}multiple choice", unit="question") as bar:
        for begin in range(0, len(order), batch_size):
            batch = [units[i] for i in order[begin : begin + batch_size]]
            results = _score_batch(model, [u[0] for _, u in batch], [u[1] for _, u in batch], tokenizer.pad_token_id)
            for (q_index, (_, _, indices)), scores in zip(batch, results):
                for option, score in zip(indices, scores):
                    log_probs[q_index][option] = score
            bar.update(len(batch) * len(questions) / len(units))
            faults.checkpoint("multiple-choice")
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


@torch.inference_mode()
def _reply_log_probs(model: Any, sequences: list[list[int]], starts: list[int], pad_id: int) -> list[torch.Tensor]:
    """Log-probabilities predicting each reply token (positions start-1 .. end-2) of each sequence."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    return [_head_log_probs(model, hidden[row, start - 1 : len(seq) - 1]) for row, (seq, start) in enumerate(zip(sequences, starts))]


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

    def get(self, model: Any, pad_id: int) -> list[torch.Tensor]:
        if self._log_probs is None:
            self._log_probs = []
            with model.disable_adapter():
                for batch in self.batches():
                    self._log_probs += _reply_log_probs(
                        model, [p + r for _, p, r in batch], [len(p) for _, p, _ in batch], pad_id
                    )
        return self._log_probs


def kl_to_base(
    model: Any, base: BaseDistributions, pad_id: int, label: str = ""
) -> tuple[list[KlSample], KlThroughput]:
    """Mean per-token KL(base || attacked) over the base model's own replies to benign prompts."""
    samples = []
    start = time.perf_counter()
    base_log_probs = iter(base.get(model, pad_id))
    with progress.bar(total=len(base.references), desc=f"{label}KL to base", unit="prompt") as bar:
        for batch in base.batches():
            attacked = _reply_log_probs(model, [p + r for _, p, r in batch], [len(p) for _, p, _ in batch], pad_id)
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
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], tokens: int, batch_size: int, label: str = ""
) -> tuple[list[ReferenceSample], Any]:
    """The unattacked model's greedy replies to the KL prompts, stored at baseline."""
    from tamperaudit.generation import generate, render_chat

    prompt_ids = [render_chat(tokenizer, [{"role": "user", "content": p.text}]) for p in prompts]
    completions, stats = generate(model, tokenizer, prompt_ids, tokens, batch_size, desc=f"{label}KL references")
    faults.checkpoint("kl-references")
    samples = [
        ReferenceSample(eval="kl_reference", id=p.id, prompt_ids=ids, reply_ids=list(c.tokens))
        for p, ids, c in zip(prompts, prompt_ids, completions)
    ]
    return samples, stats
