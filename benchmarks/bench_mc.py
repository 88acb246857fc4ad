"""Multiple-choice scoring: tamperaudit's scorer vs a plain batched float32 scorer.

Baseline: what a careful user would write (the lm-evaluation-harness way):
questions sorted by length, the choices of --batch-size questions batched
together (the same number of questions a batch as tamperaudit's contexts a
batch), each choice as the full context + choice sequence, right-padded with an
attention mask, full-vocabulary logits at every position, then the
log-probabilities of the choice tokens. tamperaudit runs each context once and
shares its cache with the choices, and applies the vocabulary head only where a
choice token is scored. Same questions, same scores (checked), questions/s.

Both paths first run once untimed on a few questions (warm-up); the timed runs
then alternate (baseline, tamperaudit, tamperaudit, baseline, ...; --repeats of
each) and each path's figure is its fastest run (other load on a shared machine
only ever adds time; every run's seconds are printed too).

    python benchmarks/bench_mc.py [--questions 120] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import torch
from common import alternating, arguments, best_seconds, load, matmul_peak_gflops, report, timed

from tamperaudit.data import load_capability
from tamperaudit.backends.hf import HfModel
from tamperaudit.evals.capability import score_questions


def plain_scorer(model, tokenizer, questions, per_batch):
    """Log-probability of every option, the straightforward way; returns (scores, tokens, head positions)."""
    encoded = [
        [(tokenizer(context, add_special_tokens=False)["input_ids"], tokenizer(" " + choice, add_special_tokens=False)["input_ids"])
         for context, choice in q.options]
        for q in questions
    ]
    order = sorted(range(len(questions)), key=lambda i: max(len(c) + len(x) for c, x in encoded[i]))
    scores: list = [None] * len(questions)
    tokens = head_positions = 0
    with torch.inference_mode():
        for begin in range(0, len(order), per_batch):
            batch = order[begin : begin + per_batch]
            rows, spans = [], []
            for q in batch:
                for context_ids, choice_ids in encoded[q]:
                    rows.append(context_ids + choice_ids)
                    spans.append((len(context_ids), len(choice_ids)))
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            tokens += ids.numel()
            head_positions += ids.numel()
            flat = []
            for i, (start, length) in enumerate(spans):
                positions = torch.arange(start - 1, start + length - 1)
                flat.append(float(log_probs[i, positions, ids[i, start : start + length]].sum()))
            at = 0
            for q in batch:
                scores[q] = flat[at : at + len(questions[q].options)]
                at += len(questions[q].options)
    return scores, tokens, head_positions


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8, help="contexts a batch in tamperaudit's scorer (its default), questions a batch in the baseline")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path, in alternating order")
    args = parser.parse_args()
    loaded = load(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    questions = load_capability(limit=24 if args.quick else args.questions).items
    peaks = [matmul_peak_gflops()]

    few = questions[: min(4, len(questions))]
    timed(lambda: plain_scorer(model, tokenizer, few, args.batch_size))  # warm-up, untimed
    timed(lambda: score_questions(HfModel(model, tokenizer), few, batch_size=args.batch_size))
    runs = alternating(
        {
            "baseline": lambda: plain_scorer(model, tokenizer, questions, args.batch_size),
            "tamperaudit": lambda: score_questions(HfModel(model, tokenizer), questions, batch_size=args.batch_size),
        },
        args.repeats,
    )
    peaks.append(matmul_peak_gflops())
    (plain, tokens, heads), plain_seconds = runs["baseline"][0][0], best_seconds(runs["baseline"])
    (samples, _), our_seconds = runs["tamperaudit"][0][0], best_seconds(runs["tamperaudit"])

    def accuracy(all_scores):
        norm = [[s / max(1, len(c)) for s, (_, c) in zip(scores, q.options)] for scores, q in zip(all_scores, questions)]
        return sum(max(range(len(n)), key=n.__getitem__) == q.answer for n, q in zip(norm, questions)) / len(questions)

    ours = [s["log_probs"] for s in samples]
    largest_gap = max(abs(a - b) for x, y in zip(plain, ours) for a, b in zip(x, y))
    same_choice = sum(s["predicted_norm"] == max(range(len(p)), key=lambda i: p[i] / max(1, len(q.options[i][1]))) for s, p, q in zip(samples, plain, questions))
    body, head = loaded.info.body_parameters, loaded.info.head_parameters
    plain_flops = 2.0 * body * tokens + 2.0 * head * heads
    # tamperaudit: each distinct context once, each choice's tokens but its last; the head at each scored token
    contexts = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for q in questions for c in {c for c, _ in q.options})
    choices = [len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for q in questions for _, c in q.options]
    our_flops = 2.0 * body * (contexts + sum(n - 1 for n in choices)) + 2.0 * head * sum(choices)
    report(
        f"multiple-choice scoring, {len(questions)} built-in questions, {loaded.precision.name}",
        [
            {"name": f"plain fp32 scorer, choices of {args.batch_size} questions a batch", "rate": len(questions) / plain_seconds, "unit": "questions/s", "seconds": plain_seconds, "gflops": plain_flops / plain_seconds / 1e9},
            {"name": "tamperaudit: shared contexts, head at scored tokens", "rate": len(questions) / our_seconds, "unit": "questions/s", "seconds": our_seconds, "gflops": our_flops / our_seconds / 1e9},
        ],
        peaks,
        {
            "ratio tamperaudit / baseline (questions/s)": f"{plain_seconds / our_seconds:.2f}x",
            "timing": f"fastest of {args.repeats} timed runs per path, alternating order, after one untimed warm-up each",
            "seconds of each timed run": {name: [round(s, 2) for _, s in results] for name, results in runs.items()},
            "accuracy (length-normalised), plain / tamperaudit": f"{accuracy(plain):.3f} / {accuracy(ours):.3f}",
            "same predicted choice": f"{same_choice}/{len(questions)}",
            "largest log-probability difference": f"{largest_gap:.2e}",
        },
        args.json,
    )


if __name__ == "__main__":
    main()
