"""GPU check: the tiny-model audit end to end, LoRA training and generation speed at 7B/13B shapes.

Random weights only (models are built from configs, nothing is downloaded or
saved except the tiny audit model in a temporary folder, deleted afterwards).
Rows, each in its own try/except so that one failure (an out-of-memory error,
say) is reported in its row and the other rows still run:

- **audit**: a tiny random Qwen2 chat model (byte-level BPE tokenizer, ChatML
  template) is audited with ``tamperaudit.cli.main`` and tiny settings (budgets
  0,2, control arm on), in bfloat16 on a GPU (float32 on a CPU), in a temporary
  folder with its own ``TAMPERAUDIT_CACHE``. The row records the exit code, the
  wall seconds, that ``report.json`` says ``complete``, and the attack's training
  rate from the report.
- **audit spread**: the same audit with ``model.device_map=auto`` and a
  ``model.max_memory`` that leaves the GPU too little for the whole model, so that
  accelerate puts its last layers and head on the CPU: a model spread over two
  devices on a machine with one GPU (on a CPU, nothing to spread: the row checks the
  path runs). The row records where the weights went.
- **judge**: the tiny model as a local ``generate`` judge, judging 64 pairs: where
  its model sits and in which precision (the GPU, bfloat16 or float16, where there is one).
- **train**: tamperaudit's own trainer (``LoraAttack.train``, LoRA rank 16 on
  every projection) on Llama-shaped models with 7B and 13B shapes, random
  weights created on the device in bfloat16, gradient checkpointing off and on.
  Each step is 8 sequences of 512 random tokens, loss on the second half of
  each; micro-batches are what ``plan_memory`` gives (8192 padded tokens on a
  GPU, so one pass a step). One untimed warm-up step, then ``--steps`` timed
  steps; tokens/s and FLOPs are ``TrainState``'s own counts over the timed
  steps (``state.tokens / state.seconds``, ``state.flops``: the
  ``training_flops`` estimate, recomputation under checkpointing not counted,
  as MFU conventionally does). The wall time of the timed steps with a device
  synchronize at both ends is recorded beside it.
- **generate**: ``tamperaudit.generation.generate`` (the audit's batched greedy
  loop) on the 7B shape at the audit's defaults ``eval.batch_size`` prompts a
  batch and ``eval.max_new_tokens`` new tokens, prompts of about 60 random
  token ids sharing a 20-token prefix (as the chat template's system block is
  shared). The stand-in tokenizer's end-of-turn id is -1 and the model's
  generation config has none, so no row stops early: every row generates
  ``max_new_tokens`` tokens (the JSON records generated and expected counts;
  ``--tiny`` generates 16, not the audit's 64). It is warmed up by one whole
  untimed call at the timed shape (a GPU's first call at a new batch size costs
  seconds), and the row records the loop's pacing (how often it reads the host).
  FLOPs are estimated as 2 x weights per computed position (the shared prefix
  once, padded suffixes, fed-back tokens; the head at generated positions
  only); decoding is memory-bound, so its MFU is low by nature.
  On a GPU the loop reads the host every 4 steps (each read overlapping the
  next 4 steps) and replays its decode steps as CUDA graphs on a static cache
  (``GPU_PACING``); the notes say how many graphs the timed call captured, or
  why capture failed (its steps then ran eagerly).
- **generate 7B per-step**: the same call under the pacing the loop had before
  issue 29 (a host read every step, rows dropped as they end, transformers'
  DynamicCache), for the ratio the loop gained, in the same run.
- **generate 7B HF dynamic / static**: the peer, in the same run: transformers'
  ``generate`` on the same shape, prompts (left-padded) and length, with its
  dynamic and its static key/value cache, each warmed up by one whole call.
  The notes give the audit loop's tokens/s over each other generation row, and
  in how many rows the generated tokens are the same (each row's tokens are
  kept in the JSON as a short digest).
- **GPU busy** (generation rows, on a GPU): one more call of the row's generation
  under the profiler, its kernel time over the synchronized wall; 100% is a GPU
  that never waits on the host. The notes give the kernels the profiler saw:
  kernels replayed from a CUDA graph count only where CUPTI traces graph nodes.
- **audit quick 7B**: ``audit --quick`` through ``main()`` on a model with
  Qwen2.5-7B's layers behind the tiny vocabulary (random weights made on the GPU
  and saved to the temporary folder; with ``--tiny``, the tiny model), and each
  stage's seconds from the run's manifest, so the slowest stage shows.

MFU is achieved FLOPs over the peak measured in the same run: the best of
repeated 8192 x 8192 bfloat16 matmuls (float32 at 512 on a CPU), measured before
and after the rows; the larger is used. Peak memory is
``torch.cuda.max_memory_allocated`` since the row started (model build
included), null on a CPU. Models are freed between rows.

Without a GPU, ``--tiny`` is needed (reduced shapes: hidden 64-80, 2-3 layers,
vocabulary 512, float32, about half a minute on 2 CPU cores); without it the
check says a GPU is needed and exits 2. Exit 0 when every row succeeded, 1 when
a row failed or was skipped for time (``--deadline``).

    python benchmarks/gpu_check.py [--json out.json] [--steps 3] [--skip-audit]
    python benchmarks/gpu_check.py --tiny --device cpu --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WARMUP_STEPS = 1
GIB = 1024**3

# Llama-2 7B and 13B shapes (multi-head attention, vocabulary 32000).
FULL_SHAPES = {
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000),
    "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, vocab_size=32000),
}
TINY_SHAPES = {
    "7B": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512),
    "13B": dict(hidden_size=80, intermediate_size=160, num_hidden_layers=3, num_attention_heads=5, vocab_size=512),
}

AUDIT_BUDGETS = "0,2"
# Qwen2.5-7B's layers (the shape issue 29's audit --quick row was first timed at).
QWEN_7B_BODY = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4)



def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when there is one, else cpu")
    parser.add_argument("--tiny", action="store_true", help="reduced shapes, for a CPU (about half a minute)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--skip-audit", action="store_true", help="leave out the tiny-model audit row")
    parser.add_argument("--steps", type=int, help="timed training steps a row, after 1 untimed (default 3; 2 with --tiny)")
    parser.add_argument(
        "--deadline", type=float, default=450.0,
        help="seconds since start after which rows not yet started are skipped (default 450)",
    )
    return parser.parse_args(argv)


# --- models and inputs -----------------------------------------------------------------------


class TokenIds:
    """The tokenizer attributes LoraAttack and generate read, for inputs that are token ids already.

    ``eos_token_id`` -1 is no token: no generated row ever stops at it.
    """

    pad_token_id = 0
    eos_token_id = -1

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return ""


def llama_config(shape: dict[str, int]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**shape, num_key_value_heads=shape["num_attention_heads"], max_position_embeddings=4096)


def parameter_estimate(shape: dict[str, int]) -> int:
    h, i, layers, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    return 2 * v * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h


def describe_shape(label: str, shape: dict[str, int], tiny: bool) -> str:
    size = parameter_estimate(shape)
    count = f"{size / 1e9:.2f}B" if size >= 1e8 else f"{size / 1e3:.0f}K"
    return (
        f"Llama {label}{' (tiny)' if tiny else ''}: {count} params, h{shape['hidden_size']} "
        f"i{shape['intermediate_size']} L{shape['num_hidden_layers']} V{shape['vocab_size']}"
    )


def build_llama(shape: dict[str, int], dtype: Any, device: Any, seed: int) -> Any:
    """Random weights created on the device, in ``dtype`` directly (no float32 copy, no CPU detour)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(llama_config(shape))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def random_examples(vocab: int, count: int, length: int, seed: int) -> list[Any]:
    """Sequences of random token ids, the loss on the second half of each."""
    import torch

    from tamperaudit.attack import IGNORE, Example

    generator = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(count):
        ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
        half = length // 2
        examples.append(Example(f"random-{index}", tuple(ids), tuple([IGNORE] * half + ids[half:])))
    return examples


def random_prompts(vocab: int, count: int, seed: int, prefix: int = 20, low: int = 30, high: int = 50) -> list[list[int]]:
    """Prompts of ``prefix`` shared ids and ``low``..``high`` own ids each (about 60 in all)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shared = torch.randint(1, vocab, (prefix,), generator=generator).tolist()
    prompts = []
    for _ in range(count):
        length = int(torch.randint(low, high + 1, (1,), generator=generator))
        prompts.append(shared + torch.randint(1, vocab, (length,), generator=generator).tolist())
    return prompts


# --- measuring -----------------------------------------------------------------------------------


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / GIB


def free_all(device: Any) -> float | None:
    """Collect garbage and return cached blocks; GiB still allocated afterwards (a leak shows here)."""
    import torch

    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device) / GIB


def matmul_peak_tflops(dtype: Any, device: Any, size: int, seconds: float) -> float:
    """Best sustained TFLOPS of a square matmul: the fastest of repeated timed groups after a warm-up."""
    import torch

    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    group = 10 if device.type == "cuda" else 1
    for _ in range(3):
        torch.matmul(a, b, out=out)
    synchronize(device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(group):
            torch.matmul(a, b, out=out)
        synchronize(device)
        best = max(best, 2 * size**3 * group / (time.perf_counter() - start) / 1e12)
    del a, b, out
    return best


# --- rows -----------------------------------------------------------------------------------------


def audit_row(
    device: Any, dtype_name: str, peak: Callable[[], float], extra: tuple[str, ...] = (), shape: dict[str, int] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """The tiny-model audit through the command line's main(), in a temporary folder and cache
    (``extra``: more --set arguments, such as a spread over devices). ``shape``: the model's
    body at these sizes (random weights made on the device), behind the tiny vocabulary;
    ``quick``: ``audit --quick`` at its own sizes instead of the tiny settings."""
    from tamperaudit.cli import main
    from tamperaudit.records import IncompleteReport, Report
    from tamperaudit.report.schema import read_report
    from tamperaudit.runfolder import RunFolder
    from tamperaudit.testing import TINY_AUDIT_SETTINGS, build_tiny_model

    import torch

    with tempfile.TemporaryDirectory(prefix="tamperaudit-gpu-check-") as scratch:
        root = Path(scratch)
        built = time.perf_counter()
        model_dir = build_tiny_model(root / "model", shape=shape, dtype=getattr(torch, dtype_name), device=device)
        built = time.perf_counter() - built
        free_all(device)
        out = root / "run"
        sizes = ["--quick"] if quick else ["--budgets", AUDIT_BUDGETS, *TINY_AUDIT_SETTINGS]
        argv = [
            "audit", "--model", str(model_dir), "--out", str(out), "--quiet", *sizes, "--set", f"model.precision={dtype_name}",
            # the tiny model's head size (8) is one vLLM's kernels cannot run: never start an engine for it
            "--set", "eval.backend=hf", *extra,
        ]
        # Only this run's settings: no TAMPERAUDIT_* from the environment, its own cache folder.
        saved = {key: value for key, value in os.environ.items() if key.startswith("TAMPERAUDIT_")}
        for key in saved:
            del os.environ[key]
        os.environ["TAMPERAUDIT_CACHE"] = str(root / "cache")
        printed, errors = io.StringIO(), io.StringIO()  # its summary lines; its one-line error, if any
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
                code = main(argv)
        finally:
            seconds = time.perf_counter() - started
            os.environ.pop("TAMPERAUDIT_CACHE", None)
            os.environ.update(saved)
        report = read_report(out / "report.json") if (out / "report.json").is_file() else None
        stages = {name: entry.seconds for name, entry in RunFolder(out, writes=False).manifest().stages.items()} if (out / "manifest.json").is_file() else {}
    if code != 0 or not isinstance(report, Report):
        said = [line for line in errors.getvalue().splitlines() if line.startswith("tamperaudit:")][-1:]
        status = report.status if report is not None else None
        error = report.error if isinstance(report, IncompleteReport) else " ".join(said)
        raise RuntimeError(f"audit exit code {code}, report status {status!r}: {error}")
    train = report.points[-1].train
    row: dict[str, Any] = {
        "exit_code": code,
        "report_status": report.status,
        "seconds": seconds,
        "timed_seconds": train.seconds if train else None,
        "audit_device": report.hardware.device,
        "audit_gpu": report.hardware.gpu_name,
        "precision": report.model.precision,
        "training_plan": report.model.training_memory.to_json() if report.model.training_memory else None,
        "devices": report.model.devices,
        "attack_training": train.to_json() if train else {},
        "stage_seconds": stages,
        "model_build_seconds": built,
    }
    if train and train.seconds:
        row["tokens_per_second"] = train.tokens / train.seconds
        row["tflops"] = train.flops / train.seconds / 1e12
        row["mfu"] = row["tflops"] / peak()
    return row


# Spread the tiny model over the GPU and the CPU (accelerate's device_map with a GPU budget too
# small for all of it): a model spread over two devices, on a machine with one GPU.
SPREAD_GPU_BUDGET = "0=60KiB,cpu=8GiB"


def judge_row(device: Any) -> dict[str, Any]:
    """A local model judge (the tiny model as a 'generate' judge) judging a batch: where its
    model sits and in which precision (the GPU, in bfloat16 or float16, where there is one)."""
    from tamperaudit.evals.choose import make_judge
    from tamperaudit.testing import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="tamperaudit-gpu-check-judge-") as scratch:
        root = Path(scratch)
        model_dir = build_tiny_model(root / "judge-model")
        config = root / "judge.toml"
        config.write_text(f'kind = "generate"\nname = "tiny"\nmodel = "{model_dir}"\ntemplate = "{{prompt}} {{completion}}"\n'
                          'max_new_tokens = 4\nbatch_size = 32\n[answers]\nrefused = "."\n', encoding="utf-8")
        judge = make_judge(str(config))
        pairs = [(f"request {i}", f"reply {i}") for i in range(64)]
        started = time.perf_counter()
        verdicts = judge.judge_many(pairs)
        synchronize(device)
        seconds = time.perf_counter() - started
        parameter = next(judge.model.parameters())
        return {"judged": len(verdicts), "timed_seconds": seconds, "tokens_per_second": len(verdicts) / seconds,
                "judge_device": str(parameter.device), "judge_dtype": str(parameter.dtype).removeprefix("torch."),
                "placement": judge.placement}


def train_row(
    shape: dict[str, int], checkpointing: str, dtype: Any, device: Any, sequences: int, length: int, steps: int,
    peak: Callable[[], float],
) -> dict[str, Any]:
    """tamperaudit's LoRA trainer on a random model: one untimed step, then ``steps`` timed ones."""
    from tamperaudit.attack import LoraAttack, TrainState
    from tamperaudit.config import AttackSettings

    model = build_llama(shape, dtype, device, seed=0)  # the same weights for checkpointing on and off
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    settings = AttackSettings(gradient_checkpointing=checkpointing, batch_size=sequences, lora_rank=16, max_length=length)
    attack = LoraAttack(model, TokenIds(), settings, device)
    examples = random_examples(shape["vocab_size"], sequences, length, seed=1)
    state = TrainState()
    attack.train(examples, state, WARMUP_STEPS)
    warm_tokens, warm_seconds, warm_flops = state.tokens, state.seconds, state.flops
    synchronize(device)
    started = time.perf_counter()
    attack.train(examples, state, WARMUP_STEPS + steps)
    synchronize(device)
    wall = time.perf_counter() - started
    tokens, seconds, flops = state.tokens - warm_tokens, state.seconds - warm_seconds, state.flops - warm_flops
    tflops = flops / seconds / 1e12
    checkpointed = any(getattr(m, "gradient_checkpointing", False) is True for m in attack.model.modules())
    return {
        "tokens_per_second": tokens / seconds,
        "tflops": tflops,
        "mfu": tflops / peak(),
        "timed_seconds": seconds,
        "synchronized_seconds": wall,
        "tokens_per_second_synchronized": tokens / wall,
        "timed_steps": steps,
        "timed_tokens": tokens,
        "flops": flops,
        "losses": state.losses,
        "weights_gib": weights,
        "lora_parameters": attack.lora_parameters,
        "plan": attack.plan.to_json(),
        "checkpointing_in_model": checkpointed,
    }


def gpu_busy_share(device: Any, run: Callable[[], Any]) -> tuple[float, int] | None:
    """The share of one call of ``run``'s wall time that the GPU spent in kernels (the
    profiler's kernel time over the synchronized wall): 1.0 is a GPU never waiting on the host;
    and the kernels the profiler saw (kernels replayed from a CUDA graph are seen only where
    CUPTI traces graph nodes: a count near the number of steps says it did not). None on a CPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return None
    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        started = time.perf_counter()
        run()
        synchronize(device)
        wall = time.perf_counter() - started
    kernels = [e for e in profiler.key_averages() if e.device_type == DeviceType.CUDA]
    busy_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) for e in kernels)
    return busy_us / 1e6 / wall, sum(e.count for e in kernels)


def _busy(device: Any, run: Callable[[], Any]) -> dict[str, Any]:
    """The row's GPU-busy share from a second, profiled call (the timed one runs without the profiler)."""
    try:
        busy = gpu_busy_share(device, run)
        return {"gpu_busy": None} if busy is None else {"gpu_busy": busy[0], "kernels_seen": busy[1]}
    except Exception as error:  # the profiler is a measurement aid: its failure must not fail the row
        return {"gpu_busy": None, "gpu_busy_error": one_line(error)}


def _generation_inputs(shape: dict[str, int], dtype: Any, device: Any, new_tokens: int | None) -> tuple[Any, Any, list[list[int]], int, int]:
    from tamperaudit.config import EvalSettings

    defaults = EvalSettings()
    model = build_llama(shape, dtype, device, seed=0)
    model.generation_config.eos_token_id = None  # random weights: no stop token at all, every row runs full length
    prompts = random_prompts(shape["vocab_size"], defaults.batch_size, seed=2)
    return model, TokenIds(), prompts, defaults.batch_size, new_tokens or defaults.max_new_tokens


def token_digests(rows: list[list[int]]) -> list[str]:
    """A short digest of each row's generated tokens, to compare rows across generation rows."""
    return [hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:12] for tokens in rows]


def generate_row(
    shape: dict[str, int], dtype: Any, device: Any, peak: Callable[[], float], new_tokens: int | None = None,
    pacing: Any = None,
) -> dict[str, Any]:
    """The audit's batched greedy generation at its default batch size and length, no early stops,
    warmed up at the shape it is timed at (on a GPU, its steps captured as CUDA graphs there);
    ``pacing``: the loop's, where not the device's default."""
    from tamperaudit.generation import CudaGraphs, common_prefix_length, generate, pacing_for
    from tamperaudit.models import body_and_head_parameters

    model, tokenizer, prompts, batch, new_tokens = _generation_inputs(shape, dtype, device, new_tokens)
    pacing = pacing or pacing_for(device)
    graphs = CudaGraphs(device) if device.type == "cuda" and pacing.graphs else None
    run = lambda: generate(model, tokenizer, prompts, new_tokens, batch, pacing=pacing, graphs=graphs)  # noqa: E731
    run()  # warm-up at the timed shape, untimed
    synchronize(device)
    captured_before = graphs.captured if graphs else 0
    completions, stats = run()
    captured = graphs.captured - captured_before if graphs else 0
    body, head = body_and_head_parameters(model)
    # positions the loop computes: the shared prefix once, the left-padded suffixes, then each fed-back token
    prefix = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
    positions = prefix + batch * (max(len(p) for p in prompts) - prefix) + max(0, stats.generated_tokens - batch)
    flops = 2.0 * body * positions + 2.0 * head * stats.generated_tokens
    tflops = flops / stats.seconds / 1e12
    return {
        "tokens_per_second": stats.generated_tokens / stats.seconds,
        "tflops": tflops,
        "mfu": tflops / peak(),
        "timed_seconds": stats.seconds,
        "prompts": stats.prompts,
        "batch_size": batch,
        "prompt_tokens": stats.prompt_tokens,
        "shared_prefix_tokens": prefix,
        "computed_positions": positions,
        "max_new_tokens": new_tokens,
        "generated_tokens": stats.generated_tokens,
        "expected_tokens": batch * new_tokens,
        "rows_stopped_early": sum(1 for c in completions if c.finished or c.settled),
        "flops": flops,
        "pacing": str(pacing),
        "decode": stats.decode,
        "graphs_captured": captured,  # in the timed call (each call captures its own)
        "graph_failure": graphs.failure if graphs else "",
        "token_digests": token_digests([list(c.tokens) for c in completions]),
        **_busy(device, run),
    }


def hf_generate_row(shape: dict[str, int], dtype: Any, device: Any, cache: str, new_tokens: int | None = None) -> dict[str, Any]:
    """The peer: transformers' own ``generate`` on the same model shape, prompts (left-padded as
    it needs them) and length, with its dynamic or its static key/value cache, warmed up at
    the timed shape."""
    import torch

    model, _, prompts, batch, new_tokens = _generation_inputs(shape, dtype, device, new_tokens)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    options: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if cache == "static":
        options["cache_implementation"] = "static"

    def run() -> Any:
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, **options)

    run()  # warm-up at the timed shape (with the static cache, this is where it compiles)
    synchronize(device)
    started = time.perf_counter()
    out = run()
    synchronize(device)
    seconds = time.perf_counter() - started
    generated = int(out.shape[0] * (out.shape[1] - width))
    return {"tokens_per_second": generated / seconds, "timed_seconds": seconds, "generated_tokens": generated,
            "token_digests": token_digests(out[:, width:].tolist()),
            "expected_tokens": batch * new_tokens, "prompts": batch, "batch_size": batch, "max_new_tokens": new_tokens,
            "prompt_tokens": sum(len(p) for p in prompts), "rows_stopped_early": 0, **_busy(device, run)}


# --- output ----------------------------------------------------------------------------------------


def one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def cell(value: Any, form: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, form)


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | shape | setting | tokens/s | TFLOPS | MFU | GPU busy | peak GiB | seconds (timed / row) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(
                f"| {row['name']} | {row['shape']} | {row['setting']} | {row['status'].upper()}: {row.get('error', '')} "
                f"| - | - | - | {cell(row.get('peak_gib'), '.1f')} | - / {cell(row.get('seconds'), '.1f')} |"
            )
            continue
        mfu = row.get("mfu")
        lines.append(
            f"| {row['name']} | {row['shape']} | {row['setting']} | {cell(row.get('tokens_per_second'), ',.0f')} "
            f"| {cell(row.get('tflops'), '.3g')} | {cell(None if mfu is None else 100 * mfu, '.1f')}% "
            f"| {percent(row.get('gpu_busy'))} | {cell(row.get('peak_gib'), '.1f')} | {cell(row.get('timed_seconds'), '.2f')} / {cell(row.get('seconds'), '.1f')} |"
        )
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        if row["status"] != "ok":
            continue
        if "plan" in row:
            plan = row["plan"]
            estimate = plan["activation_bytes"] / GIB
            lines.append(
                f"- {row['name']} {row['setting']}: plan {plan['micro_batch_tokens']}-token micro-batches, "
                f"checkpointing {'on' if plan['gradient_checkpointing'] else 'off'} (in the model: "
                f"{row['checkpointing_in_model']}); weights {row['weights_gib']:.1f} GiB, plan's activation "
                f"estimate without checkpointing {estimate:.1f} GiB; synchronized wall {row['synchronized_seconds']:.2f} s "
                f"for {row['timed_steps']} steps ({row['tokens_per_second_synchronized']:,.0f} tokens/s); "
                f"losses {', '.join(f'{x:.3f}' for x in row['losses'])}"
            )
        if "loss_gap_to_other_checkpointing" in row:
            lines.append(f"  loss gap to the same shape with checkpointing the other way: {row['loss_gap_to_other_checkpointing']:.2e}")
        if "generated_tokens" in row:
            lines.append(
                f"- {row['name']}: {row['prompts']} prompts ({row['prompt_tokens']} prompt tokens), batch {row['batch_size']}, "
                f"{row['generated_tokens']} tokens generated of {row['expected_tokens']} expected "
                f"({row['rows_stopped_early']} rows stopped early)"
            )
        if row.get("stage_seconds") and row["name"].startswith("audit quick"):
            stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in row["stage_seconds"].items() if seconds is not None)
            lines.append(f"- {row['name']}: model built and saved in {row['model_build_seconds']:.1f} s; stages: {stages}")
        if "judge_device" in row:
            lines.append(f"- {row['name']}: {row['judged']} verdicts, the judge's model on {row['judge_device']} in "
                         f"{row['judge_dtype']} ({row['placement']})")
        if "report_status" in row:
            lines.append(
                f"- {row['name']}: exit code {row['exit_code']}, report.json status {row['report_status']}, "
                f"on {' '.join(x for x in (row['audit_device'], row['audit_gpu']) if x)} in {row['precision']}, weights on "
                f"{', '.join(row['devices'])}; rates are the attack's training steps from report.json"
            )
        if row.get("decode"):
            failure = f"; capture failed, steps ran eagerly: {row['graph_failure']}" if row["graph_failure"] else ""
            seen = f"; the profiler saw {row['kernels_seen']:,} kernels" if row.get("kernels_seen") is not None else ""
            lines.append(f"- {row['name']}: {row['pacing']}, decode steps on a {row['decode']} "
                         f"({row['graphs_captured']} CUDA graphs captured in the timed call{failure}){seen}")
    ours = next((r for r in rows if r["name"] == "generate 7B" and r["status"] == "ok"), None)
    for peer in rows:
        if ours and peer is not ours and peer["name"].startswith("generate 7B") and peer["status"] == "ok":
            same = sum(a == b for a, b in zip(ours["token_digests"], peer["token_digests"]))
            lines.append(f"- generate 7B against {peer['name'].removeprefix('generate 7B ')}: "
                         f"{ours['tokens_per_second'] / peer['tokens_per_second']:.2f}x its tokens/s (same run, shape, prompts "
                         f"and length); the same tokens in {same}/{len(ours['token_digests'])} rows")
    return lines


def hardware_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "CPU"


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: the audit (which picks its own device) stays on the CPU too
    import torch
    import transformers
    import peft

    from tamperaudit import progress
    from tamperaudit.generation import CPU_PACING

    began = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but no GPU is visible to PyTorch", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.tiny:
        print(
            "gpu_check: the full check needs a GPU (7B and 13B shapes in bfloat16); "
            "on a CPU run the reduced form: python benchmarks/gpu_check.py --tiny --device cpu",
            file=sys.stderr,
        )
        return 2
    progress.set_quiet(True)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if device.type == "cuda":
        dtype, dtype_name, matmul_size, peak_seconds = torch.bfloat16, "bfloat16", 8192, 2.0
    else:
        dtype, dtype_name, matmul_size, peak_seconds = torch.float32, "float32", 512, 0.5
    shapes = TINY_SHAPES if args.tiny else FULL_SHAPES
    sequences, length = (4, 64) if args.tiny else (8, 512)
    steps = args.steps or (2 if args.tiny else 3)

    peaks = [matmul_peak_tflops(dtype, device, matmul_size, peak_seconds)]
    free_all(device)

    def peak() -> float:
        return max(peaks)

    header = [
        f"device: {hardware_name(device)}",
        f"torch {torch.__version__}, CUDA {torch.version.cuda or '-'}, transformers {transformers.__version__}, peft {peft.__version__}",
        f"measured {dtype_name} matmul peak ({matmul_size}x{matmul_size}, best of repeated runs): {peaks[0]:.1f} TFLOPS",
        f"training: {sequences} sequences x {length} random tokens a step (loss on the second half), LoRA r=16 on all "
        f"projections, {WARMUP_STEPS} untimed + {steps} timed steps; {'tiny shapes' if args.tiny else 'full shapes'}, {dtype_name}",
    ]
    for line in header:
        print(line, flush=True)

    plans: list[tuple[str, str, str, Callable[[], dict[str, Any]]]] = []
    if not args.skip_audit:
        plans.append(("audit", "Qwen2 tiny chat model: h32 i64 L2 V600", f"{dtype_name}, budgets {AUDIT_BUDGETS}, control on",
                      lambda: audit_row(device, dtype_name, peak)))
        spread = f"model.max_memory={SPREAD_GPU_BUDGET}" if device.type == "cuda" else "model.max_memory=cpu=8GiB"
        plans.append(("audit spread", "Qwen2 tiny chat model: h32 i64 L2 V600",
                      f"{dtype_name}, model.device_map=auto, {spread.split('=', 1)[1]}",
                      lambda: audit_row(device, dtype_name, peak, ("--set", "model.device_map=auto", "--set", spread,
                                                                     "--no-control"))))
    plans.append(("judge", "Qwen2 tiny chat model as a generate judge", "64 pairs, batch 32, precision auto",
                  lambda: judge_row(device)))
    for label in ("7B", "13B"):
        for checkpointing in ("off", "on"):
            plans.append((
                f"train {label}", describe_shape(label, shapes[label], args.tiny),
                f"{dtype_name}, grad ckpt {checkpointing}, {sequences}x{length}",
                lambda shape=shapes[label], c=checkpointing: train_row(shape, c, dtype, device, sequences, length, steps, peak),
            ))
    # --tiny: the audit's batch size, but 16 new tokens instead of its 64 (seconds on a 2-core CPU)
    new_tokens = 16 if args.tiny else None
    generation = f"{dtype_name}, greedy, audit batch, {new_tokens or 'audit'} new tokens"
    plans.append(("generate 7B", describe_shape("7B", shapes["7B"], args.tiny), generation,
                  lambda: generate_row(shapes["7B"], dtype, device, peak, new_tokens)))
    # the loop as it was before issue 29: a host read every step, rows dropped at once, transformers' DynamicCache
    plans.append(("generate 7B per-step", describe_shape("7B", shapes["7B"], args.tiny),
                  f"{generation}, a host read every step, dynamic cache",
                  lambda: generate_row(shapes["7B"], dtype, device, peak, new_tokens, pacing=CPU_PACING)))
    for cache in ("dynamic", "static"):
        plans.append((f"generate 7B HF {cache}", describe_shape("7B", shapes["7B"], args.tiny),
                      f"{generation}, transformers' generate, {cache} cache",
                      lambda cache=cache: hf_generate_row(shapes["7B"], dtype, device, cache, new_tokens)))
    if not args.skip_audit:
        # --tiny: the tiny model at --quick's sizes; on a GPU, a Qwen2.5-7B-shaped body behind the tiny vocabulary
        quick_shape = None if args.tiny else QWEN_7B_BODY
        plans.append(("audit quick 7B", "Qwen2 tiny chat model" if args.tiny else "Qwen2.5-7B body, vocabulary 600",
                      f"{dtype_name}, audit --quick, stage by stage",
                      lambda: audit_row(device, dtype_name, peak, shape=quick_shape, quick=True)))

    rows: list[dict[str, Any]] = []
    for name, shape, setting, measure in plans:
        row: dict[str, Any] = {"name": name, "shape": shape, "setting": setting}
        elapsed = time.perf_counter() - began
        if elapsed > args.deadline:
            row.update(status="skipped", error=f"not started: {elapsed:.0f} s past start, over --deadline {args.deadline:.0f}")
            rows.append(row)
            continue
        print(f"running: {name}, {setting} ...", file=sys.stderr, flush=True)
        reset_peak(device)
        started = time.perf_counter()
        try:
            row.update(measure())
            row["status"] = "ok"
        except Exception as error:  # one row's failure (an OOM, say) must not stop the others
            row.update(status="failed", error=one_line(error))
        row["seconds"] = time.perf_counter() - started
        row["peak_gib"] = peak_gib(device)
        if device.type == "cuda":
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
        row["allocated_after_gib"] = free_all(device)
        rows.append(row)

    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok" and "losses" in row:
            by_name.setdefault(row["name"], []).append(row)
    for pair in by_name.values():
        if len(pair) == 2:
            gap = max(abs(a - b) for a, b in zip(pair[0]["losses"], pair[1]["losses"]))
            for row in pair:
                row["loss_gap_to_other_checkpointing"] = gap

    peaks.append(matmul_peak_tflops(dtype, device, matmul_size, peak_seconds))
    free_all(device)
    total = time.perf_counter() - began
    print(f"matmul peak after the rows: {peaks[1]:.1f} TFLOPS (MFU uses the larger, {peak():.1f})")
    print()
    print(table(rows))
    print()
    for line in notes(rows):
        print(line)
    print(f"total: {total:.0f} s")

    if args.json:
        result = {
            "device": hardware_name(device),
            "device_type": device.type,
            "dtype": dtype_name,
            "tiny": args.tiny,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "peak_tflops": peaks,
            "peak_tflops_used": peak(),
            "matmul_size": matmul_size,
            "training": {"sequences": sequences, "length": length, "warmup_steps": WARMUP_STEPS, "timed_steps": steps},
            "total_seconds": total,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
