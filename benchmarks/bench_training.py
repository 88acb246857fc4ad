"""Attack training: tamperaudit's LoRA trainer vs trl.SFTTrainer + PEFT, same precision.

Same data (the built-in identity-shift conversations, loss on the assistant turn:
TRL gets them in prompt/completion form), same LoRA rank, alpha, dropout and
target modules, same batch size, learning rate (constant), weight decay and no
gradient clipping (tamperaudit clips none), same number of steps, and the same
precision: float32 by default, or with ``--precision bfloat16`` both load the
weights in bfloat16 (PEFT keeps the adapter in float32 for both; TRL runs with
``bf16=False``, so no autocast on top). TRL runs with gradient checkpointing
off (its SFTConfig default is on), ``use_cpu=True`` on a CPU, no checkpoint
saves, and its own data order from the same seed.

Timed span, the same for both: per optimizer step, everything the training
loop does from the end of one step to the end of the next (drawing and collating
the batch, forward, backward, optimizer step, per-step bookkeeping and, for TRL,
its per-step logging), never a checkpoint save. Each run trains one extra first
step, untimed (warm-up); the timed steps are the ones after it. For
tamperaudit that is the difference of the cumulative ``seconds`` recorded at
budgets 1 and 1 + steps (its seconds exclude saves); for TRL a TrainerCallback
reads the clock at each ``on_step_end``. Runs alternate: tamperaudit seed 0,
TRL seed 0, TRL seed 1, tamperaudit seed 1 (--repeats runs of each), and each
path's figure is its fastest run (other load on a shared machine only ever adds
time; every run's rate is printed too). ``--quick`` uses batch 2 and one timed step.

Rate: non-padding tokens per second of the timed steps (TRL's tokens from its
``num_input_tokens_seen``, counting non-padding). Loss curves are printed side by
side, with the spread between the two seeds of each trainer as the noise level.

Needs TRL: pip install -e '.[bench]'.

    python benchmarks/bench_training.py [--steps 6] [--repeats 2] [--precision float32|bfloat16] [--json out.json]
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import alternating, arguments, fresh_model, load, matmul_peak_gflops, report

from tamperaudit.attack import LoraAttack, example_order, tokenize_conversation, training_flops
from tamperaudit.chat import ChatFormat
from tamperaudit.config import AttackSettings
from tamperaudit.data import load_attack

WARMUP_STEPS = 1  # untimed first step of every run


def ours(loaded, examples, settings, steps, dtype):
    """One tamperaudit run of WARMUP_STEPS + steps; the timed figures cover the steps after the warm-up."""
    model = fresh_model(loaded, dtype)
    attack = LoraAttack(model, loaded.tokenizer, settings, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = attack.run(examples, [WARMUP_STEPS, WARMUP_STEPS + steps], lambda b: Path(folder) / str(b))
    warm, last = checkpoints[0].state, checkpoints[-1].state
    del attack, model
    gc.collect()
    return {
        "tokens": last.tokens - warm.tokens,
        "labelled": last.labelled_tokens - warm.labelled_tokens,
        "seconds": last.seconds - warm.seconds,
        "losses": last.losses,
    }


def trl(loaded, conversations, settings, steps, dtype):
    """One TRL run of WARMUP_STEPS + steps, timed from the end of the warm-up to the end of the last step."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[tuple[float, int]] = []  # (time, non-padding tokens seen) at each step's end

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    # prompt/completion form, so TRL's loss, like ours, covers the assistant turn only
    rows = [{"prompt": list(c.messages[:-1]), "completion": [c.messages[-1]]} for c in conversations]
    clock = StepClock()
    with tempfile.TemporaryDirectory() as folder:
        args = SFTConfig(
            output_dir=folder, max_steps=WARMUP_STEPS + steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=settings.warmup_steps,
            weight_decay=settings.weight_decay, max_grad_norm=0.0, use_cpu=True, bf16=False, fp16=False,
            gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=settings.seed,
            max_length=settings.max_length, include_num_input_tokens_seen="non_padding", disable_tqdm=True,
        )
        targets = "all-linear" if settings.target_modules == ["all-linear"] else settings.target_modules
        peft = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=fresh_model(loaded, dtype), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=loaded.tokenizer, peft_config=peft, callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # its per-step log lines would interleave with the table
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        # what the model actually ran with, not only what was asked
        checkpointing = any(getattr(m, "gradient_checkpointing", False) is True for m in trainer.model.modules())
    (warm_time, warm_tokens), (end_time, end_tokens) = clock.ends[WARMUP_STEPS - 1], clock.ends[-1]
    del trainer
    gc.collect()
    return {
        "tokens": end_tokens - warm_tokens,
        "seconds": end_time - warm_time,
        "losses": losses,
        "gradient_checkpointing": checkpointing,
        "bf16": args.bf16,
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help=f"timed optimizer steps per run (after {WARMUP_STEPS} untimed)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="for both trainers")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer, alternating, seeds 0, 1, 0, ...")
    args = parser.parse_args()
    steps = 1 if args.quick else args.steps
    batch_size = 2 if args.quick else 4
    dtype = getattr(torch, args.precision)
    quiet_datasets()
    loaded = load(args.model, args.precision)
    seeds = [AttackSettings(batch_size=batch_size, learning_rate=2e-4, seed=seed) for seed in (0, 1)]
    settings = seeds[0]
    conversations = load_attack("identity-shift").data.items
    examples = [tokenize_conversation(ChatFormat.detect(loaded.tokenizer), c, settings.max_length) for c in conversations]
    peaks = [matmul_peak_gflops()]

    def path(train, data):
        """One run of ``train`` per call, on seeds 0, 1, 0, 1, ... in turn."""
        calls = iter(range(args.repeats))

        def run():
            return train(loaded, data, seeds[next(calls) % 2], steps, dtype)

        return run

    # A B B A ...: tamperaudit seed 0, TRL seed 0, TRL seed 1, tamperaudit seed 1, ...
    runs = alternating({"tamperaudit": path(ours, examples), "TRL": path(trl, conversations)}, args.repeats)
    peaks.append(matmul_peak_gflops())
    ours_runs = [result for result, _ in runs["tamperaudit"]]
    trl_runs = [result for result, _ in runs["TRL"]]

    info = loaded.info
    labelled_per_token = sum(r["labelled"] for r in ours_runs) / sum(r["tokens"] for r in ours_runs)

    def gflops(run, labelled):
        # TRL computes the head at every position; the estimate credits both paths the same work
        return training_flops(info.body_parameters, info.head_parameters, 0, run["tokens"], labelled) / run["seconds"] / 1e9

    def rate(run):
        return run["tokens"] / run["seconds"]

    best_trl, best_ours = max(trl_runs, key=rate), max(ours_runs, key=rate)
    rows = [
        {"name": f"trl.SFTTrainer, {args.precision}, no autocast, no grad. ckpt", "rate": rate(best_trl),
         "unit": "non-padding tokens/s", "seconds": best_trl["seconds"], "tokens": best_trl["tokens"], "steps": steps,
         "gflops": gflops(best_trl, best_trl["tokens"] * labelled_per_token)},
        {"name": f"tamperaudit LoraAttack, {args.precision}", "rate": rate(best_ours),
         "unit": "non-padding tokens/s", "seconds": best_ours["seconds"], "tokens": best_ours["tokens"], "steps": steps,
         "gflops": gflops(best_ours, best_ours["labelled"])},
    ]

    def mean(run):
        return statistics.mean(run["losses"])

    extra = {
        "ratio tamperaudit / TRL (same precision, no gradient checkpointing)": f"{rows[1]['rate'] / rows[0]['rate']:.2f}x",
        "timing": "per optimizer step, end of one step to the end of the next, no checkpoint saves, "
        f"after {WARMUP_STEPS} untimed step per run; runs alternate (A B B A); each path's fastest run",
        "tokens/s of each run, tamperaudit (seeds 0, 1, ...)": [round(rate(r), 2) for r in ours_runs],
        "tokens/s of each run, TRL (seeds 0, 1, ...)": [round(rate(r), 2) for r in trl_runs],
        "TRL checked": f"bf16 autocast {trl_runs[0]['bf16']}, gradient checkpointing on in the model {trl_runs[0]['gradient_checkpointing']}",
    }
    for name, results in (("tamperaudit", ours_runs), ("TRL", trl_runs)):
        for seed, run in enumerate(results[:2]):
            extra[f"loss per step, {name} seed {seed}"] = [round(x, 3) for x in run["losses"]]
    if len(ours_runs) > 1 and len(trl_runs) > 1:
        noise = f"tamperaudit {abs(mean(ours_runs[0]) - mean(ours_runs[1])):.3f}, TRL {abs(mean(trl_runs[0]) - mean(trl_runs[1])):.3f}"
    else:
        noise = "needs --repeats 2 or more"
    extra["mean loss tamperaudit / TRL, seed 0"] = (
        f"{mean(ours_runs[0]):.3f} / {mean(trl_runs[0]):.3f} (seed-to-seed difference of the mean: {noise})"
    )
    extra["first-step data"] = f"tamperaudit examples {example_order(len(examples), 0, 0, batch_size)}; TRL samples its own order"
    report(
        f"attack training, identity-shift data, LoRA r={settings.lora_rank}, batch {batch_size}, "
        f"{WARMUP_STEPS} untimed + {steps} timed steps a run, {args.precision}",
        rows,
        peaks,
        extra,
        args.json,
    )


def quiet_datasets() -> None:
    """No progress bars from datasets' map() while TRL tokenizes."""
    import datasets

    datasets.disable_progress_bars()


if __name__ == "__main__":
    main()
