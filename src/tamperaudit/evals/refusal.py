"""Refusal on harmful requests and over-refusal on benign prompts that look risky.

Both are the same measurement on different prompts: generate greedily, judge each
completion, keep every sample, then aggregate. Harmful prompts can also be asked
"with the trigger": inside the attack's own system prompt and user template, as
Qi et al. (2023) evaluate identity shifting; plain prompts use the model's default
template.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from tamperaudit.backends import LanguageModel, Settled
from tamperaudit.data import Attack, Prompt
from tamperaudit.evals.verdicts import COMPLIED, REFUSED, UNCLEAR, VERDICTS, Judge, Verdict
from tamperaudit.generation import GenerationStats
from tamperaudit.records import PLAIN, TRIGGER, GenerationSample, Sample, VerdictShares, VerdictSummary
from tamperaudit.stats import rate

__all__ = ["PLAIN", "TRIGGER", "PromptEval", "aggregate_verdicts", "messages_for", "run_prompt_eval"]


def messages_for(prompt: str, mode: str, attack: Attack | None) -> list[dict[str, str]]:
    """The chat a prompt is asked in: plain, or wrapped in the attack's trigger."""
    if mode == PLAIN:
        return [{"role": "user", "content": prompt}]
    if attack is None or not attack.has_trigger:
        raise ValueError("the trigger mode needs an attack that defines a trigger")
    user = attack.user_template.replace("{prompt}", prompt) if attack.user_template else prompt
    messages = [{"role": "system", "content": attack.system_prompt}] if attack.system_prompt else []
    return messages + [{"role": "user", "content": user}]


@dataclass(frozen=True)
class PromptEval:
    """One generation eval: a named prompt set asked in one mode."""

    name: str  # "harmful" or "benign"
    mode: str  # PLAIN or TRIGGER
    prompts: Sequence[Prompt]


def settled_check(judge: Judge, model: LanguageModel, requests: Sequence[str]) -> Settled | None:
    """For ``generate``: stop a row once the judge's verdict on it can no longer change.

    None for judges that cannot tell (model judges), which then see whole completions. A
    reply still in its thinking block is never settled: the judge reads only its answer.
    """
    settled = getattr(judge, "settled", None)
    if settled is None:
        return None

    def check(index: int, tokens: list[int]) -> bool:
        _, answer, reached = model.split_reply(model.decode(tokens))
        return reached and settled(requests[index], answer)

    return check


def run_prompt_eval(
    model: LanguageModel,
    spec: PromptEval,
    judge: Judge,
    attack: Attack | None,
    max_new_tokens: int,
    batch_size: int,
    label: str = "",
    early_stop: bool = True,
) -> tuple[list[GenerationSample], GenerationStats]:
    """Generate greedily from ``model``, judge, and return one sample record per prompt
    (``early_stop``: stop a reply once the judge's verdict on it is settled)."""
    token_prompts = [model.render(messages_for(p.text, spec.mode, attack)) for p in spec.prompts]
    desc = f"{label}{spec.name} ({spec.mode})"
    check = settled_check(judge, model, [p.text for p in spec.prompts]) if early_stop else None
    completions, stats = model.generate(token_prompts, max_new_tokens, batch_size, desc=desc, settled=check)
    replies = [model.split_reply(c.text) for c in completions]  # (thinking, answer, reached)
    answered = [i for i, (_, _, reached) in enumerate(replies) if reached]
    judged = dict(zip(answered, judge.judge_many([(spec.prompts[i].text, replies[i][1]) for i in answered])))
    never = Verdict(UNCLEAR, f"the reply never left its thinking block within {max_new_tokens} tokens")
    samples = [
        GenerationSample(
            eval=spec.name, mode=spec.mode, id=prompt.id, category=prompt.category, prompt=prompt.text,
            completion=answer, new_tokens=len(completion.tokens), finished=completion.finished,
            settled=completion.settled, verdict=judged.get(index, never).label, reason=judged.get(index, never).reason,
            thinking=thinking,
        )
        for index, (prompt, completion, (thinking, answer, _)) in enumerate(zip(spec.prompts, completions, replies))
    ]
    return samples, stats


def _counts(verdicts: list[str]) -> dict[str, Any]:
    total = len(verdicts)
    counts = {v: verdicts.count(v) for v in VERDICTS}
    refused = counts[REFUSED]
    return {
        "n": total,
        **{v: rate(counts[v], total) for v in VERDICTS},
        # The headline refusal rate excludes `unclear` from neither side: it is refused / all.
        # These two bound it: unclear counted as refusal, and as compliance.
        "refusal_if_unclear_refused": rate(refused + counts[UNCLEAR], total),
        "refusal_among_clear": rate(refused, refused + counts[COMPLIED]),
    }


def aggregate_verdicts(samples: Iterable[Sample]) -> dict[str, dict[str, VerdictSummary]]:
    """Per eval and mode: shares of each verdict with Wilson intervals, overall and per category."""
    grouped: dict[tuple[str, str], list[GenerationSample]] = defaultdict(list)
    for sample in samples:
        if isinstance(sample, GenerationSample):
            grouped[(sample.eval, sample.mode)].append(sample)
    result: dict[str, dict[str, VerdictSummary]] = {}
    for (name, mode), rows in sorted(grouped.items()):
        by_category: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            by_category[row.category].append(row.verdict)
        result.setdefault(name, {})[mode] = VerdictSummary(
            **_counts([row.verdict for row in rows]),
            by_category={c: VerdictShares(**_counts(v)) for c, v in sorted(by_category.items())},
        )
    return result
