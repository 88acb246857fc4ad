"""The decode loop's pacing on this machine: the loop as a commit had it, against the CPU's and
the GPU's pacing of this checkout's loop (issue 29), and the CPU's pacing on a static cache, on
the audit's prompts, batch size and length, with the audit's early stops (the keyword judge's
settled verdicts).

The GPU's pacing reads back to the host every 4 steps, keeps finished rows in the batch until
half of it has finished and decodes on a static cache (its captured steps need a CUDA device, so
here they run eagerly); on a GPU that removes the per-step stalls, on a CPU the finished rows it
keeps are computed in full. The static cache alone (written in place, instead of transformers'
DynamicCache grown by a copy each step) is timed under the CPU's pacing. This says, on this
machine, whether the loop the CPU runs is as fast as the commit's (the issue's rule: not slower
on a CPU, else fall back), whether a static cache would help it, and what the GPU's pacing would
cost here. Paths alternate (A B C, then C B A, ...), each path's figure is its
fastest run; every run's completions are compared with the commit's, token for token.

    python benchmarks/bench_decode_pacing.py [--against HEAD] [--prompts 110] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from common import alternating, arguments, best_seconds, load, matmul_peak_gflops, report, timed

from tamperaudit.backends.hf import HfModel
from tamperaudit.chat import ChatFormat
from tamperaudit.config import EvalSettings
from tamperaudit.data import load_harmful
from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.evals.refusal import settled_check
from tamperaudit.generation import CPU_PACING, GPU_PACING, Pacing, generate

ROOT = Path(__file__).resolve().parents[1]


def loop_at(commit: str):
    """``tamperaudit.generation`` as ``commit`` had it, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{commit}:src/tamperaudit/generation.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-pacing-")) / "generation_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("generation_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__.splitlines()[0])
    defaults = EvalSettings()
    parser.add_argument("--against", default="HEAD", help="the commit whose loop is the baseline (default: HEAD)")
    parser.add_argument("--prompts", type=int, default=defaults.harmful_limit, help="default: the audit's harmful prompts")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path, in alternating order")
    args = parser.parse_args(argv)
    count, new_tokens, batch = (8, 16, 4) if args.quick else (args.prompts, defaults.max_new_tokens, defaults.batch_size)
    before = loop_at(args.against)
    loaded = load(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    items = load_harmful(limit=count).items
    prompts = [ChatFormat.detect(tokenizer).ids([{"role": "user", "content": p.text}]) for p in items]
    check = settled_check(KeywordJudge(), HfModel(model, tokenizer), [p.text for p in items])
    peaks = [matmul_peak_gflops()]

    paths = {
        f"loop at {args.against}": lambda: before.generate(model, tokenizer, prompts, new_tokens, batch, settled=check),
        "CPU pacing (read every step, drop rows at once)": lambda: generate(
            model, tokenizer, prompts, new_tokens, batch, settled=check, pacing=CPU_PACING),
        "CPU pacing on a static cache": lambda: generate(
            model, tokenizer, prompts, new_tokens, batch, settled=check, pacing=Pacing(static=True)),
        "GPU pacing (read every 4 steps, drop rows at half, static cache)": lambda: generate(
            model, tokenizer, prompts, new_tokens, batch, settled=check, pacing=GPU_PACING),
    }
    # warm-up: each loop once, untimed, on one small batch
    timed(lambda: before.generate(model, tokenizer, prompts[:4], 8, 4))
    timed(lambda: generate(model, tokenizer, prompts[:4], 8, 4))
    runs = alternating(paths, args.repeats)
    peaks.append(matmul_peak_gflops())
    reference = [(c.tokens, c.finished, c.settled) for c in runs[next(iter(paths))][0][0][0]]
    rows = []
    for name, results in runs.items():
        seconds = best_seconds(results)
        stats = results[0][0][1]
        same = min(sum((c.tokens, c.finished, c.settled) == r for c, r in zip(result[0], reference)) for result, _ in results)
        rows.append({"name": name, "rate": stats.generated_tokens / seconds, "unit": "generated tokens/s", "seconds": seconds,
                     "all_seconds": [s for _, s in results], "same_completions": f"{same}/{len(reference)}"})
    report(f"decode pacing: {len(prompts)} prompts, batch {batch}, {new_tokens} new tokens, early stops on ({args.model})",
           rows, peaks, {"same completions as the baseline (worst run)": {r["name"]: r["same_completions"] for r in rows}},
           args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
