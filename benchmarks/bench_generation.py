"""Refusal-eval generation: tamperaudit's batched greedy loop vs a naive loop.

Baseline: what a user would write first, ``model.generate`` one prompt at a time,
greedy, float32. Both paths get the same chat-templated prompts and the same
token limit; the script checks that they give the same tokens and the same
verdicts, and prints generated tokens/s and the ratio. A third run is the audit's
own path, which also stops each row once the keyword judge's verdict on it can no
longer change; its rate is the naive loop's tokens over its own time (the same
verdicts, delivered that much faster), and its verdicts are checked too.

    python benchmarks/bench_generation.py [--prompts 48] [--json out.json]
"""

from __future__ import annotations

import torch
from common import arguments, load, matmul_peak_gflops, report, timed

from tamperaudit.config import EvalSettings
from tamperaudit.models import choose_precision
from tamperaudit.data import load_harmful
from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.evals.refusal import settled_check
from tamperaudit.generation import common_prefix_length, generate, render_chat, stop_token_ids


def naive(model, tokenizer, prompts, max_new_tokens):
    stop = sorted(stop_token_ids(tokenizer, model))
    out = []
    with torch.inference_mode():
        for ids in prompts:
            tokens = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
            )[0, len(ids):].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in stop), len(tokens))
            out.append(tokens[:cut])
    return out


def forward_flops(info, tokens, head_positions):
    return 2.0 * info["body_parameters"] * tokens + 2.0 * info["head_parameters"] * head_positions


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    defaults = EvalSettings()
    parser.add_argument("--prompts", type=int, default=defaults.harmful_limit, help="default: the audit's harmful prompts")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    args = parser.parse_args()
    count = 8 if args.quick else args.prompts
    loaded = load(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    items = load_harmful(limit=count).items
    prompts = [render_chat(tokenizer, [{"role": "user", "content": p.text}]) for p in items]
    peak = matmul_peak_gflops()

    reference, naive_seconds = timed(lambda: naive(model, tokenizer, prompts, args.max_new_tokens))
    (ours, stats), our_seconds = timed(lambda: generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size))
    judge = KeywordJudge()
    check = settled_check(judge, tokenizer, [p.text for p in items])
    (early, early_stats), early_seconds = timed(
        lambda: generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, settled=check)
    )
    naive_tokens = sum(len(r) + (len(r) < args.max_new_tokens) for r in reference)
    our_tokens = stats.generated_tokens

    same_tokens = sum(list(c.tokens) == r for c, r in zip(ours, reference))
    naive_verdicts = [judge.judge(p.text, tokenizer.decode(r, skip_special_tokens=True)).label for p, r in zip(items, reference)]
    our_verdicts = [judge.judge(p.text, c.text).label for p, c in zip(items, ours)]
    same_verdicts = sum(a == b for a, b in zip(naive_verdicts, our_verdicts))
    early_verdicts = [judge.judge(p.text, c.text).label for p, c in zip(items, early)]
    same_early = sum(a == b for a, b in zip(naive_verdicts, early_verdicts))

    auto = choose_precision("auto", torch.device("cpu"))
    if auto.dtype == torch.bfloat16:
        model.to(torch.bfloat16)
        half, _ = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, settled=check)
        model.to(torch.float32)
        half_verdicts = [judge.judge(p.text, c.text).label for p, c in zip(items, half)]
        same_half = sum(a == b for a, b in zip(naive_verdicts, half_verdicts))
        bf16_check = f"{same_half}/{len(prompts)} ({100 * same_half / len(prompts):.1f}%; {auto.reason})"
    else:
        bf16_check = f"not run: auto precision keeps float32 here ({auto.reason})"

    prompt_tokens = sum(len(p) for p in prompts)
    prefix = common_prefix_length(prompts)
    batches = -(-len(prompts) // args.batch_size)
    naive_flops = forward_flops(loaded.info, prompt_tokens + naive_tokens, len(prompts) + naive_tokens)
    shared = prompt_tokens - prefix * (len(prompts) - batches)
    our_flops = forward_flops(loaded.info, shared + our_tokens, len(prompts) + our_tokens)
    early_tokens = early_stats.generated_tokens
    early_flops = forward_flops(loaded.info, shared + early_tokens, len(prompts) + early_tokens)
    report(
        f"generation, {len(prompts)} harmful prompts, greedy, {args.max_new_tokens} new tokens, {loaded.precision.name}",
        [
            {"name": "naive: generate(), one prompt at a time, fp32", "rate": naive_tokens / naive_seconds, "unit": "generated tokens/s", "seconds": naive_seconds, "gflops": naive_flops / naive_seconds / 1e9},
            {"name": f"tamperaudit: batches of {args.batch_size}, shared prefix, rows retire", "rate": our_tokens / our_seconds, "unit": "generated tokens/s", "seconds": our_seconds, "gflops": our_flops / our_seconds / 1e9},
            {"name": "tamperaudit eval: + rows stop once settled", "rate": naive_tokens / early_seconds, "unit": "naive's tokens/s", "seconds": early_seconds, "gflops": early_flops / early_seconds / 1e9},
        ],
        peak,
        {
            "identical greedy tokens": f"{same_tokens}/{len(prompts)}",
            "identical verdicts": f"{same_verdicts}/{len(prompts)}",
            "identical verdicts with early stops": f"{same_early}/{len(prompts)} ({early_tokens} of {our_tokens} tokens generated)",
            "identical verdicts in bfloat16 (audit path) vs float32": bf16_check,
            "precision": f"{loaded.precision.name} ({loaded.precision.reason})",
        },
        args.json,
    )


if __name__ == "__main__":
    main()
