import pytest
import torch

from tamperaudit.chat import ChatFormat
from tamperaudit.generation import generate


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


PROMPTS = ["Tell me a story.", "What is two plus two?", "Write a short poem about the sea and the sky at night.", "Hi"]


def _hf_greedy(model, tokenizer, prompt_ids, max_new_tokens, eos):
    """Reference: transformers' generate, one prompt at a time, cut at the first stop token."""
    out = []
    for ids in prompt_ids:
        tokens = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        )[0, len(ids):].tolist()
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        out.append(tokens)
    return out


def test_batched_greedy_matches_one_at_a_time_generate(tiny):
    model, tokenizer = tiny
    prompt_ids = [ChatFormat.detect(tokenizer).ids([{"role": "user", "content": p}]) for p in PROMPTS]
    completions, stats = generate(model, tokenizer, prompt_ids, max_new_tokens=8, batch_size=3)
    reference = _hf_greedy(model, tokenizer, prompt_ids, 8, tokenizer.eos_token_id)
    assert [list(c.tokens) for c in completions] == reference
    assert stats.prompts == 4 and stats.generated_tokens >= sum(len(r) for r in reference)


def test_rows_stop_at_their_own_end_token_and_others_continue(tiny):
    model, tokenizer = tiny
    prompt_ids = [ChatFormat.detect(tokenizer).ids([{"role": "user", "content": p}]) for p in PROMPTS]
    free, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=8, batch_size=4)
    # Make the token that the first prompt emits third its end-of-turn token.
    stop = free[0].tokens[2]
    original = tokenizer.eos_token_id
    model.generation_config.eos_token_id = stop
    try:
        stopped, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=8, batch_size=4)
    finally:
        model.generation_config.eos_token_id = original
    reference = _hf_greedy(model, tokenizer, prompt_ids, 8, stop)
    assert stopped[0].finished and len(stopped[0].tokens) == 2
    assert [list(c.tokens) for c in stopped] == reference


def test_order_of_results_follows_input_not_length_sorting(tiny):
    model, tokenizer = tiny
    prompt_ids = [ChatFormat.detect(tokenizer).ids([{"role": "user", "content": p}]) for p in PROMPTS]
    forward, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=5, batch_size=1)
    backward, _ = generate(model, tokenizer, prompt_ids[::-1], max_new_tokens=5, batch_size=1)
    assert [c.tokens for c in forward] == [c.tokens for c in backward][::-1]


def test_a_long_shared_system_prompt_is_computed_once_and_changes_nothing(tiny):
    from tamperaudit.generation import common_prefix_length

    model, tokenizer = tiny
    system = {"role": "system", "content": "You are a careful assistant who answers in one short sentence."}
    prompt_ids = [ChatFormat.detect(tokenizer).ids([system, {"role": "user", "content": p}]) for p in PROMPTS]
    assert common_prefix_length(prompt_ids) > 10
    completions, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=6, batch_size=4)
    assert [list(c.tokens) for c in completions] == _hf_greedy(model, tokenizer, prompt_ids, 6, tokenizer.eos_token_id)


def test_common_prefix_length():
    from tamperaudit.generation import common_prefix_length

    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5], [6]]) == 0
    assert common_prefix_length([]) == 0


def test_settled_rows_stop_early_and_the_others_are_unchanged(tiny):
    model, tokenizer = tiny
    prompt_ids = [ChatFormat.detect(tokenizer).ids([{"role": "user", "content": p}]) for p in PROMPTS]
    free, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=12, batch_size=4)
    stopped, stats = generate(model, tokenizer, prompt_ids, max_new_tokens=12, batch_size=4, settled=lambda index, tokens: index == 1)
    assert stopped[1].settled and len(stopped[1].tokens) == 4  # asked after every 4 steps
    assert list(stopped[1].tokens) == list(free[1].tokens[:4])
    for index in (0, 2, 3):
        assert not stopped[index].settled and stopped[index].tokens == free[index].tokens


def test_the_loaded_models_head_gets_a_contiguous_input(tiny_model_dir):
    """transformers hands the head a strided slice of the hidden states; with frozen
    weights on CPU that view made oneDNN ask for a buffer the size of the whole sequence's
    logits (30 GB on the default model) and left the process on a slow fallback. The
    loaded model copies the slice first."""
    from tamperaudit import models

    model = models.load(str(tiny_model_dir), "float32").model
    for param in model.parameters():
        param.requires_grad_(False)  # as PEFT leaves the base weights
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_hook(lambda module, args, output: seen.append((args[0].shape[1], args[0].is_contiguous())))
    decoder_out = []
    model.get_decoder().register_forward_hook(lambda module, args, output: decoder_out.append(output.last_hidden_state))
    with torch.inference_mode():
        model(input_ids=torch.tensor([[5, 6, 7, 8, 9]] * 3), logits_to_keep=1)
    assert not decoder_out[0][:, -1:, :].is_contiguous()  # what transformers slices: a strided view
    assert seen == [(1, True)]
