from pathlib import Path

import pytest
import torch

from tamperaudit.attack import (
    IGNORE,
    Checkpoint,
    LoraAttack,
    example_order,
    micro_batches,
    tokenize_conversation,
)
from tamperaudit.chat import ChatFormat
from tamperaudit.config import AttackSettings
from tamperaudit.data import Conversation, load_attack


def _load(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, tokenizer


def test_only_assistant_tokens_carry_labels(tiny_model_dir):
    _, tokenizer = _load(tiny_model_dir)
    conversation = Conversation(
        "c",
        (
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Green."},
        ),
    )
    example = tokenize_conversation(ChatFormat.detect(tokenizer), conversation, 4096)
    labelled = tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE])
    assert labelled == "Blue.<|im_end|>\nGreen.<|im_end|>\n"
    assert all(l in (IGNORE, t) for t, l in zip(example.input_ids, example.labels))


def test_example_order_is_a_permutation_per_epoch_and_seed_dependent():
    first_epoch = [i for step in range(5) for i in example_order(10, seed=3, step=step, batch_size=2)]
    assert sorted(first_epoch) == list(range(10))
    assert example_order(10, 3, 7, 2) == example_order(10, 3, 7, 2)
    assert [example_order(10, s, 0, 10) for s in (1, 2)][0] != example_order(10, 2, 0, 10)


def test_micro_batches_respect_the_token_limit_and_keep_every_example(tiny_model_dir):
    _, tokenizer = _load(tiny_model_dir)
    examples = [tokenize_conversation(ChatFormat.detect(tokenizer), c, 4096) for c in load_attack("benign").data.items[:9]]
    groups = micro_batches(examples, token_limit=400)
    assert sorted(e.id for g in groups for e in g) == sorted(e.id for e in examples)
    for group in groups:
        assert len(group) == 1 or max(len(e.input_ids) for e in group) * len(group) <= 400


def _train(tiny_model_dir, folder: Path, budgets, resume_from=None, seed=0):
    model, tokenizer = _load(tiny_model_dir)
    settings = AttackSettings(learning_rate=1e-2, batch_size=2, budgets=budgets, seed=seed, lora_rank=4)
    attack = LoraAttack(model, tokenizer, settings, torch.device("cpu"))
    examples = [tokenize_conversation(ChatFormat.detect(tokenizer), c, 4096) for c in load_attack("identity-shift").data.items[:6]]
    checkpoints = attack.run(examples, budgets, lambda b: (folder / f"b{b}"), resume_from=resume_from)
    return attack, checkpoints


def _lora_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_training_changes_the_adapter_and_not_the_base(tiny_model_dir, tmp_path):
    model, _ = _load(tiny_model_dir)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    attack, checkpoints = _train(tiny_model_dir, tmp_path, [3])
    after = attack.model.get_base_model().state_dict()
    for name, value in base_before.items():
        key = next(k for k in after if k.replace(".base_layer", "") == name)
        assert torch.equal(after[key], value), name
    assert any(float(v.abs().sum()) > 0 for k, v in _lora_state(attack.model).items() if "lora_B" in k)
    state = checkpoints[0].state
    assert state.steps == 3 and state.examples == 6 and state.tokens > state.labelled_tokens > 0
    assert state.flops > 0 and len(state.losses) == 3
    assert (tmp_path / "b3" / "adapter" / "adapter_model.safetensors").is_file()


def test_same_seed_same_losses_other_seed_other_losses(tiny_model_dir, tmp_path):
    _, a = _train(tiny_model_dir, tmp_path / "a", [2], seed=1)
    _, b = _train(tiny_model_dir, tmp_path / "b", [2], seed=1)
    _, c = _train(tiny_model_dir, tmp_path / "c", [2], seed=2)
    assert a[0].state.losses == b[0].state.losses
    assert a[0].state.losses != c[0].state.losses


def test_resuming_from_a_checkpoint_equals_training_straight_through(tiny_model_dir, tmp_path):
    straight, _ = _train(tiny_model_dir, tmp_path / "straight", [2, 4])
    _train(tiny_model_dir, tmp_path / "split", [2])
    resumed, checkpoints = _train(
        tiny_model_dir, tmp_path / "split", [2, 4], resume_from=Checkpoint(2, tmp_path / "split" / "b2", None)
    )
    expected, got = _lora_state(straight.model), _lora_state(resumed.model)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert checkpoints[-1].state.steps == 4 and len(checkpoints[-1].state.losses) == 4
