"""Refusal-eval generation in float32 vs with int8 dynamic quantization of the linear layers.

A lever issue 16 asked to measure: would quantizing the weights to int8 for
generation only (activations quantized on the fly, ``torch.ao`` dynamic
quantization, the fbgemm/x86 kernels) make the refusal evals faster while
keeping their verdicts? Training would stay float32 and a LoRA adapter's own
layers are left in float32 on top (``--adapter``).

Paths, each over the same prompts as the audit's evals (harmful prompts plain
and inside the identity-shift trigger, benign prompts that look risky), greedy,
the audit's ``max_new_tokens``, batch size and early stops, judged by the
keyword judge:

- ``float32``: the audit's generation as it runs on a CPU without bfloat16 units;
- ``int8 per-tensor``: every linear layer (the vocabulary head included), one
  weight scale per layer (``default_dynamic_qconfig``);
- ``int8 per-channel``: the same with one weight scale per output row
  (``per_channel_dynamic_qconfig``);
- ``int8 head only``: the vocabulary head alone, per channel.

Every path runs once untimed on a few prompts first; the timed runs alternate
(A B C D, then D C B A with ``--repeats 2``) and each path's figure is its
fastest run, less the time it spent quantizing (printed apart: an audit
would quantize once per model). Printed: seconds, prompts/s, the speed-up against
float32, and how many completions and verdicts are identical to float32's
(the audit's target for a speed lever is at least 98% of verdicts).

    python benchmarks/bench_int8_generation.py [--harmful 33] [--benign 18] [--adapter DIR] [--json out.json]
"""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternating, arguments, load, matmul_peak_gflops, report  # noqa: E402

from tamperaudit import data  # noqa: E402
from tamperaudit.backends.hf import HfModel  # noqa: E402
from tamperaudit.evals.choose import make_judge  # noqa: E402
from tamperaudit.evals.refusal import PLAIN, TRIGGER, PromptEval, run_prompt_eval  # noqa: E402

VARIANTS = {  # name -> (qconfig, head only); float32 is None
    "float32": None,
    "int8 per-tensor": ("default_dynamic_qconfig", False),
    "int8 per-channel": ("per_channel_dynamic_qconfig", False),
    "int8 head only": ("per_channel_dynamic_qconfig", True),
}


def _is_lora_layer(path: str) -> bool:
    return any(part.startswith("lora_") for part in path.split("."))


@contextmanager
def int8_linears(model: Any, qconfig_name: str, head_only: bool) -> Iterator[int]:
    """Swap the model's float32 ``nn.Linear`` layers (not LoRA's) for dynamic int8 ones while
    the block runs, then put the originals back; yields how many were swapped."""
    import torch.ao.quantization as quantization
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    qconfig = getattr(quantization, qconfig_name)
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Linear]] = []
    for parent_path, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_path}.{name}" if parent_path else name
            if type(child) is not torch.nn.Linear or _is_lora_layer(path) or (head_only and name != "lm_head"):
                continue
            child.qconfig = qconfig
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice, once per layer
                quantized = DynamicInt8Linear.from_float(child)
            del child.qconfig
            setattr(parent, name, quantized)
            swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def main() -> None:
    parser = arguments(__doc__.split("\n")[0])
    parser.add_argument("--harmful", type=int, default=33, help="harmful prompts (--quick's 33 by default)")
    parser.add_argument("--benign", type=int, default=18, help="benign prompts (--quick's 18 by default)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder (--keep-adapters) to measure on top")
    args = parser.parse_args()
    if args.quick:
        args.harmful, args.benign, args.max_new_tokens = 4, 2, 8
    peaks = [matmul_peak_gflops()]
    loaded = load(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(args.adapter))
    model.eval()
    attack = data.load_attack("identity-shift")
    harmful = data.load_harmful(limit=args.harmful).items
    benign = data.load_benign(limit=args.benign).items
    judge = make_judge("keyword")
    evals = [("harmful", PLAIN, harmful), ("harmful", TRIGGER, harmful), ("benign", PLAIN, benign)]

    def run(limit: int = 0) -> list[tuple[str, str]]:
        """The audit's own generation evals: (completion, verdict) of every prompt."""
        out = []
        for name, mode, items in evals:
            spec = PromptEval(name, mode, items[:limit] if limit else items)
            samples, _ = run_prompt_eval(HfModel(model, tokenizer), spec, judge, attack, args.max_new_tokens, args.batch_size)
            out += [(s["completion"], s["verdict"]) for s in samples]
        return out

    def path(variant: str, limit: int = 0):
        def go():  # (samples, layers swapped, seconds spent quantizing them)
            if VARIANTS[variant] is None:
                return run(limit), 0, 0.0
            start = time.perf_counter()
            with int8_linears(model, *VARIANTS[variant]) as swapped:
                quantizing = time.perf_counter() - start
                return run(limit), swapped, quantizing
        return go

    for name in VARIANTS:  # untimed warm-up on two prompts of each eval
        path(name, limit=2)()
    runs = alternating({name: path(name) for name in VARIANTS}, args.repeats)
    peaks.append(matmul_peak_gflops())
    reference = runs["float32"][0][0][0]
    total = len(reference)
    rows, agreement = [], {}
    for name in VARIANTS:
        # generation alone: an audit would quantize once per model, not once per eval
        (samples, swapped, _), seconds = runs[name][0][0], min(t - r[2] for r, t in runs[name])
        quantizing = max(r[2] for r, _ in runs[name])
        same_text = sum(a[0] == b[0] for a, b in zip(samples, reference))
        same_verdict = sum(a[1] == b[1] for a, b in zip(samples, reference))
        rows.append({"name": f"{name} ({swapped} layers int8)" if swapped else name,
                     "rate": total / seconds, "unit": "prompts/s", "seconds": seconds})
        agreement[name] = f"{same_text}/{total} completions, {same_verdict}/{total} verdicts identical to float32" + (
            f"; quantizing the layers took {quantizing:.1f} s, not counted above" if swapped else "")
    report(f"Generation, {total} prompts ({args.harmful} harmful x plain and trigger, {args.benign} benign), "
           f"{args.max_new_tokens} new tokens, batch {args.batch_size}" + (f", adapter {args.adapter}" if args.adapter else ""),
           rows, peaks, agreement, args.json)


if __name__ == "__main__":
    main()
