"""Attack training: tamperaudit's LoRA trainer vs trl.SFTTrainer + PEFT.

Same data (the built-in identity-shift conversations, loss on the assistant
turn), same LoRA rank and target modules, same batch size, learning rate and
number of steps. TRL runs with its defaults otherwise; on a CPU those need
``use_cpu=True`` and then train in bfloat16 autocast with gradient
checkpointing, which a CPU without bfloat16 units runs very slowly, so TRL is
also run with ``bf16=False`` (what a user would switch to). Rate: non-padding
tokens per second of training. Loss curves are printed side by side, with the
spread between two seeds of tamperaudit's trainer as the noise level.

Needs TRL: pip install -e '.[bench]'.

    python benchmarks/bench_training.py [--steps 6] [--json out.json]
"""

from __future__ import annotations

import statistics
import tempfile

import torch
from common import arguments, fresh_model, load, matmul_peak_gflops, report, timed

from tamperaudit.attack import LoraAttack, example_order, tokenize_conversation, training_flops
from tamperaudit.config import AttackSettings
from tamperaudit.data import load_attack


def ours(loaded, examples, settings, steps):
    model = fresh_model(loaded)
    attack = LoraAttack(model, loaded.tokenizer, settings, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        from pathlib import Path

        checkpoint = attack.run(examples, [steps], lambda b: Path(folder))[-1]
    return checkpoint.state


def trl(loaded, conversations, settings, steps, bf16):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    # prompt/completion form, so TRL's loss, like ours, covers the assistant turn only
    rows = [{"prompt": list(c.messages[:-1]), "completion": [c.messages[-1]]} for c in conversations]
    with tempfile.TemporaryDirectory() as folder:
        args = SFTConfig(
            output_dir=folder, max_steps=steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=0, use_cpu=True,
            logging_steps=1, report_to="none", save_strategy="no", seed=settings.seed,
            **({} if bf16 else {"bf16": False}),
        )
        peft = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          target_modules=settings.target_modules, task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=fresh_model(loaded), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=loaded.tokenizer, peft_config=peft)
        batches = list(trainer.get_train_dataloader())[:steps]
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        _, seconds = timed(trainer.train)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return tokens, seconds, losses, args


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--trl-bf16-steps", type=int, default=1, help="steps for TRL's bf16 default (slow on CPUs without bf16)")
    args = parser.parse_args()
    steps = 2 if args.quick else args.steps
    loaded = load(args.model)
    settings = AttackSettings(batch_size=4, learning_rate=2e-4, seed=0)
    conversations = load_attack("identity-shift").data.items
    examples = [tokenize_conversation(loaded.tokenizer, c, settings.max_length) for c in conversations]
    peak = matmul_peak_gflops()

    state = ours(loaded, examples, settings, steps)
    other_seed = ours(loaded, examples, AttackSettings(batch_size=4, learning_rate=2e-4, seed=1), steps)
    fp32_tokens, fp32_seconds, fp32_losses, _ = trl(loaded, conversations, settings, steps, bf16=False)
    bf16_tokens, bf16_seconds, bf16_losses, trl_args = trl(loaded, conversations, settings, args.trl_bf16_steps, bf16=True)

    info = loaded.info

    def gflops(tokens, seconds, labelled):
        # TRL computes the head at every position; the estimate credits both paths the same work
        return training_flops(info["body_parameters"], info["head_parameters"], 0, tokens, labelled) / seconds / 1e9

    labelled_per_token = state.labelled_tokens / state.tokens
    rows = [
        {"name": f"trl.SFTTrainer defaults (bf16={trl_args.bf16}, grad. ckpt {trl_args.gradient_checkpointing})",
         "rate": bf16_tokens / bf16_seconds, "unit": "non-padding tokens/s", "seconds": bf16_seconds,
         "gflops": gflops(bf16_tokens, bf16_seconds, bf16_tokens * labelled_per_token), "steps": args.trl_bf16_steps},
        {"name": "trl.SFTTrainer, bf16=False", "rate": fp32_tokens / fp32_seconds, "unit": "non-padding tokens/s",
         "seconds": fp32_seconds, "gflops": gflops(fp32_tokens, fp32_seconds, fp32_tokens * labelled_per_token), "steps": steps},
        {"name": "tamperaudit LoraAttack", "rate": state.tokens / state.seconds, "unit": "non-padding tokens/s",
         "seconds": state.seconds, "gflops": gflops(state.tokens, state.seconds, state.labelled_tokens), "steps": steps},
    ]
    noise = abs(statistics.mean(state.losses) - statistics.mean(other_seed.losses))
    report(
        f"attack training, identity-shift data, LoRA r={settings.lora_rank}, batch {settings.batch_size}, {steps} steps",
        rows,
        peak,
        {
            "ratio tamperaudit / TRL defaults": f"{rows[2]['rate'] / rows[0]['rate']:.1f}x",
            "ratio tamperaudit / TRL bf16=False": f"{rows[2]['rate'] / rows[1]['rate']:.2f}x",
            "loss per step, tamperaudit seed 0": [round(x, 3) for x in state.losses],
            "loss per step, tamperaudit seed 1": [round(x, 3) for x in other_seed.losses],
            "loss per step, TRL bf16=False": [round(x, 3) for x in fp32_losses],
            "loss per step, TRL defaults": [round(x, 3) for x in bf16_losses],
            "mean loss tamperaudit / TRL bf16=False": f"{statistics.mean(state.losses):.3f} / {statistics.mean(fp32_losses):.3f} "
            f"(seed-to-seed difference of tamperaudit's mean: {noise:.3f})",
            "first-step data": f"tamperaudit examples {example_order(len(examples), 0, 0, 4)}; TRL samples its own order",
        },
        args.json,
    )


if __name__ == "__main__":
    main()
