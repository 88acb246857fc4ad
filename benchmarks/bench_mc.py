"""Multiple-choice scoring: tamperaudit's scorer vs a plain float32 scorer.

Baseline: the choices of 4 questions batched together, each as the full
context + choice sequence, full-vocabulary logits at every position, then the
log-probabilities of the choice tokens. tamperaudit runs each context once and
shares its cache with the choices, and applies the vocabulary head only where a
choice token is scored. Same questions, same scores (checked), questions/s.

    python benchmarks/bench_mc.py [--questions 120] [--json out.json]
"""

from __future__ import annotations

import torch
from common import arguments, load, matmul_peak_gflops, report, timed

from tamperaudit.data import load_capability
from tamperaudit.evals.capability import score_questions


def plain_scorer(model, tokenizer, questions, per_batch=4):
    """Log-probability of every option, the straightforward way; returns (scores, tokens, head positions)."""
    scores, tokens, head_positions = [], 0, 0
    with torch.inference_mode():
        for begin in range(0, len(questions), per_batch):
            rows, spans = [], []
            for q in questions[begin : begin + per_batch]:
                for context, choice in q.options:
                    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
                    choice_ids = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
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
            for q in questions[begin : begin + per_batch]:
                scores.append(flat[at : at + len(q.options)])
                at += len(q.options)
    return scores, tokens, head_positions


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8, help="contexts per batch in tamperaudit's scorer")
    args = parser.parse_args()
    loaded = load(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    questions = load_capability(limit=24 if args.quick else args.questions).items
    peak = matmul_peak_gflops()

    (plain, tokens, heads), plain_seconds = timed(lambda: plain_scorer(model, tokenizer, questions))
    (samples, _), our_seconds = timed(lambda: score_questions(model, tokenizer, questions, batch_size=args.batch_size))

    def accuracy(all_scores):
        norm = [[s / max(1, len(c)) for s, (_, c) in zip(scores, q.options)] for scores, q in zip(all_scores, questions)]
        return sum(max(range(len(n)), key=n.__getitem__) == q.answer for n, q in zip(norm, questions)) / len(questions)

    ours = [s["log_probs"] for s in samples]
    largest_gap = max(abs(a - b) for x, y in zip(plain, ours) for a, b in zip(x, y))
    same_choice = sum(s["predicted_norm"] == max(range(len(p)), key=lambda i: p[i] / max(1, len(q.options[i][1]))) for s, p, q in zip(samples, plain, questions))
    body, head = loaded.info["body_parameters"], loaded.info["head_parameters"]
    plain_flops = 2.0 * body * tokens + 2.0 * head * heads
    # tamperaudit: each distinct context once, each choice's tokens but its last; the head at each scored token
    contexts = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for q in questions for c in {c for c, _ in q.options})
    choices = [len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for q in questions for _, c in q.options]
    our_flops = 2.0 * body * (contexts + sum(n - 1 for n in choices)) + 2.0 * head * sum(choices)
    report(
        f"multiple-choice scoring, {len(questions)} built-in questions, {loaded.precision.name}",
        [
            {"name": "plain fp32 scorer, choices of 4 questions a batch", "rate": len(questions) / plain_seconds, "unit": "questions/s", "seconds": plain_seconds, "gflops": plain_flops / plain_seconds / 1e9},
            {"name": "tamperaudit: shared contexts, head at scored tokens", "rate": len(questions) / our_seconds, "unit": "questions/s", "seconds": our_seconds, "gflops": our_flops / our_seconds / 1e9},
        ],
        peak,
        {
            "accuracy (length-normalised), plain / tamperaudit": f"{accuracy(plain):.3f} / {accuracy(ours):.3f}",
            "same predicted choice": f"{same_choice}/{len(questions)}",
            "largest log-probability difference": f"{largest_gap:.2e}",
        },
        args.json,
    )


if __name__ == "__main__":
    main()
