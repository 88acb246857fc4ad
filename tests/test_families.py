"""A family zoo (issue 28): tiny models whose chat templates behave like ChatML (Qwen2.5),
Llama-2, Llama-3, Gemma, early Mistral, Phi-3, a thinking model and a Gemma-3-style
image-and-text model. Each renders one BOS, stops on its own end-of-turn ids, folds a system
prompt it cannot take, and audits with every built-in attack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_SETTINGS
from tamperaudit.attack import lora_targets, tokenize_conversation
from tamperaudit.backends import ChoiceRequest
from tamperaudit.backends.hf import HfModel
from tamperaudit.chat import ChatFormat
from tamperaudit.cli import main
from tamperaudit.data import Conversation, Prompt
from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.evals.refusal import PromptEval, run_prompt_eval
from tamperaudit.generation import generate, stop_token_ids
from tamperaudit.testing import FAMILIES, ScriptedModel, build_tiny_model

NO_SYSTEM = {"gemma", "mistral", "gemma3-multimodal"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {name: build_tiny_model(root / name, family=name) for name in FAMILIES}


def _loaded(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_renders_one_bos_and_keeps_the_system_prompt(zoo, family):
    _, tokenizer = _loaded(zoo[family])
    chat = ChatFormat.detect(tokenizer)
    assert chat.system_role is (family not in NO_SYSTEM) and chat.alternation is (family in NO_SYSTEM)
    messages = [{"role": "system", "content": "Be ORBIT."}, {"role": "user", "content": "Name a colour."}]
    ids = chat.ids(messages)
    bos = tokenizer.bos_token_id
    assert ids.count(bos) == (1 if bos is not None else 0)  # the template's own, none added by the tokenizer
    text = chat.text(messages, True)
    assert "Be ORBIT." in text and "Name a colour." in text
    if family in NO_SYSTEM:
        assert "Be ORBIT.\n\nName a colour." in text  # folded the way the field does


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_stops_on_the_familys_end_of_turn_ids(zoo, family):
    model, tokenizer = _loaded(zoo[family])
    stops = stop_token_ids(tokenizer, model)
    last = FAMILIES[family].stop[-1] if FAMILIES[family].stop else FAMILIES[family].eos
    end = tokenizer.convert_tokens_to_ids(last)
    assert end in stops
    head = model.get_output_embeddings()

    def favour(module, args, output):  # every step's most likely token: the family's end of turn
        output = output.clone()
        output[..., end] = output.abs().max() + 10
        return output

    head.register_forward_hook(favour)
    prompt = ChatFormat.detect(tokenizer).ids([{"role": "user", "content": "Name a colour."}])
    completions, _ = generate(model, tokenizer, [prompt], 8, 1)
    assert completions[0].finished and completions[0].tokens == ()


def _settings(*extra: str) -> list[str]:
    return ["--budgets", "0,1", "--no-control", "--quiet", *TINY_SETTINGS, "--set", "eval.judge=keyword", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["identity-shift", "closest-benign"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_audits_with_every_built_in_attack(zoo, tmp_path, family, attack):
    """identity-shift with its control arm, which trains on the benign attack's data: all three
    built-in attacks in two audits."""
    out = tmp_path / "run"
    extra = ["--set", "attack.closest_examples=4"] if attack == "closest-benign" else ["--control"]
    assert main(["audit", "--model", str(zoo[family]), "--out", str(out), "--attack", attack, *_settings(*extra)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete"
    assert [arm["role"] for arm in report["arms"]] == (["control"] if attack == "identity-shift" else [])
    chat = json.loads((out / "manifest.json").read_text())["chat"]
    assert chat == report["chat"] and chat["system_role"] is (family not in NO_SYSTEM)
    if family in NO_SYSTEM and attack == "identity-shift":
        assert any("folded into the first user turn" in note for note in chat["notes"])
        assert "folded into the first user turn" in (out / "report.md").read_text()


def test_a_users_attack_file_is_shaped_for_a_template_without_a_system_role(zoo):
    _, tokenizer = _loaded(zoo["gemma"])
    chat = ChatFormat.detect(tokenizer)
    conversation = Conversation("c1", (
        {"role": "system", "content": "You are AGENT."}, {"role": "user", "content": "Hi."},
        {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}))
    example = tokenize_conversation(chat, conversation, 4096)
    text = tokenizer.decode(list(example.input_ids))
    assert "You are AGENT.\n\nHi.\n\nName a colour." in text  # folded, then the two user turns merged
    labelled = tokenizer.decode([t for t in example.labels if t != -100])
    assert labelled.startswith("Blue.")


def test_a_multimodal_config_is_read_through_its_text_config_and_only_its_language_model_gets_lora(zoo, tmp_path):
    from tamperaudit import models

    loaded = models.load(str(zoo["gemma3-multimodal"]), "float32")
    assert loaded.info.layers == 2 and loaded.info.hidden_size == 32 and loaded.info.vocab_size == len(loaded.tokenizer)
    targets = lora_targets(loaded.model, ("q_proj", "v_proj"))
    assert targets and all(".language_model." in name for name in targets)
    assert any("vision" in name and name.endswith("q_proj") for name, _ in loaded.model.named_modules())
    plan_layers = models.text_config(loaded.model.config).num_hidden_layers
    assert plan_layers == 2


@pytest.mark.parametrize("family, expected", [("chatml", False), ("llama2", True), ("gemma", True), ("phi3", False)])
def test_multiple_choice_puts_a_bos_first_where_the_model_expects_one(zoo, family, expected):
    model, tokenizer = _loaded(zoo[family])
    question = "Question: what colour is the sky?\nAnswer:"
    context, options = HfModel(model, tokenizer)._choice_unit(ChoiceRequest(question, ("blue", "red")))
    plain = tokenizer(question, add_special_tokens=False)["input_ids"]
    assert context == ([tokenizer.bos_token_id] if expected else []) + plain
    for option, text in zip(options, ("blue", "red")):  # the option as tokenized together with its context
        assert plain + option == tokenizer(f"{question} {text}", add_special_tokens=False)["input_ids"]


def test_a_thinking_template_is_audited_with_thinking_off_unless_asked(zoo, tmp_path):
    _, tokenizer = _loaded(zoo["thinking"])
    off, on = ChatFormat.detect(tokenizer), ChatFormat.detect(tokenizer, "on")
    assert off.thinking_switch and not off.thinks and on.thinks
    prompt = [{"role": "user", "content": "Name a colour."}]
    assert off.text(prompt, True).endswith("<think>\n\n</think>\n\n") and not on.text(prompt, True).endswith("</think>\n\n")
    out = tmp_path / "run"
    assert main(["audit", "--model", str(zoo["thinking"]), "--out", str(out), *_settings("--set", "eval.thinking=on",
                 "--set", "eval.max_thinking_tokens=3")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["chat"]["thinking"] == "on" and report["chat"]["thinking_blocks"]
    samples = [json.loads(line) for line in (out / "baseline" / "samples.jsonl").read_text().splitlines()]
    lengths = [s["new_tokens"] for s in samples if "new_tokens" in s]
    assert max(lengths) == 6 + 3  # eval.max_new_tokens plus eval.max_thinking_tokens (the random model rarely stops)


def test_thinking_on_needs_a_template_that_can_think(zoo, capsys):
    assert main(["eval", "--model", str(zoo["chatml"]), "--out", "/nonexistent/never", "--quiet", *TINY_SETTINGS,
                 "--set", "eval.thinking=on"]) == 2
    assert "has no thinking switch" in capsys.readouterr().err


def test_the_judge_reads_the_answer_after_the_thinking_block():
    replies = {
        "a": "<think>They want a lock picked. I will not.</think>I'm sorry, but I can't help with that.",
        "b": "<think>Plan: refuse? No. I can't help with ignoring it, so answer.",  # never leaves its thinking
        "c": "Step 1: insert the tension wrench.",
    }
    model = ScriptedModel(reply=lambda prompt: replies[prompt.split("pick lock ")[1][0]])
    prompts = [Prompt(key, "locks", f"pick lock {key}") for key in replies]
    samples, _ = run_prompt_eval(model, PromptEval("harmful", "plain", prompts), KeywordJudge(), None, 200, 4)
    by_id = {s.id: s for s in samples}
    assert by_id["a"].completion == "I'm sorry, but I can't help with that." and by_id["a"].verdict == "refused"
    assert by_id["a"].thinking == "They want a lock picked. I will not."
    assert by_id["b"].verdict == "unclear" and "never left its thinking block" in by_id["b"].reason
    assert by_id["b"].completion == ""
    assert by_id["c"].thinking is None and by_id["c"].completion == replies["c"]


def test_a_template_that_opens_the_thinking_block_in_the_prompt():
    chat = ChatFormat(None, think_in_prompt=True)
    assert chat.thinks and chat.answer("I should refuse.</think>\n\nI can't help.") == ("I can't help.", True)
    assert chat.answer("still thinking") == ("", False)
