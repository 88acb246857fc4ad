"""The paths GPU users take (issue 30), exercised on the CPU: a model spread over two devices
(simulated, tests/devices.py), the choice of generation engine and precision from what the GPU
can do (simulated by patching what torch reports), model judges on the GPU, memory plans made
from the run's own step sizes, and out-of-memory errors that name the right settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devices import spread
from tamperaudit.attack import labelled_loss_sum
from tamperaudit.backends import ChoiceRequest
from tamperaudit.backends.hf import HfModel


def _model(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_a_spread_model_scores_choices_and_trains_where_its_hidden_states_are(tiny_model_dir):
    model, tokenizer = _model(tiny_model_dir)
    hf = HfModel(model, tokenizer)
    requests = [ChoiceRequest("Question: which colour is the sky?\nAnswer:", ("blue", "red", "a green apple")),
                ChoiceRequest("Question: 2+2?\nAnswer:", ("4", "five"))]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, 10]])
    mask = torch.ones_like(ids)
    alone = (hf.choice_log_probs(requests, 2), float(labelled_loss_sum(model, ids, labels, mask)))
    with spread(model):
        scores = hf.choice_log_probs(requests, 2)
        loss = labelled_loss_sum(model, ids, labels, mask)
        loss.backward()  # gradients flow back across the two devices
        prompt = hf.render([{"role": "user", "content": "Name a colour."}])
        completions, _ = hf.generate([prompt], 4, 1)
        reference = [prompt + list(completions[0].tokens)]
        log_probs = hf.next_token_log_probs(reference, [len(prompt)])
    assert [pytest.approx(row, abs=1e-5) for row in alone[0]] == scores
    assert float(loss) == pytest.approx(alone[1], abs=1e-5)
    assert log_probs[0].shape[0] == len(completions[0].tokens)


def test_the_spread_simulation_catches_what_a_second_gpu_would(tiny_model_dir):
    """The simulated second device is not a test that cannot fail: the selection the old code
    made (a mask from the first device applied to the last device's hidden states) raises."""
    model, _ = _model(tiny_model_dir)
    with spread(model), pytest.raises(RuntimeError, match="same device"):
        hidden = model.get_decoder()(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state
        hidden[torch.tensor([[True, False, True]])]


# --- the generation engine: vLLM only where it fits, with the model's own context, HF when it cannot start ---


def _loaded_on_a_gpu(config, weight_bytes: int):
    """What generation_backend reads of a loaded model, as if it sat on a GPU."""
    from types import SimpleNamespace

    return SimpleNamespace(device=torch.device("cuda"), model=SimpleNamespace(config=config),
                           info=SimpleNamespace(weight_bytes=weight_bytes), precision=SimpleNamespace(dtype=torch.bfloat16, name="bfloat16"),
                           source=SimpleNamespace(folder="/models/x"))


@pytest.mark.parametrize("gpu_gib, expected", [(40, "hf"), (80, "vllm")])
def test_auto_takes_vllm_only_where_the_memory_plan_says_it_fits(monkeypatch, gpu_gib, expected):
    from transformers import LlamaConfig

    from tamperaudit import pipeline
    from tamperaudit.backends import choose
    from tamperaudit.config import Settings

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=2048)  # Llama-2-7B, a 2k context
    weights = int(13.5 * 1024**3)
    free = gpu_gib * 1024**3 - weights - 2 * 1024**3  # the transformers copy is loaded
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, gpu_gib * 1024**3))
    monkeypatch.setattr(choose, "vllm_installed", lambda: True)
    backend = pipeline.generation_backend(Settings(), _loaded_on_a_gpu(config, weights), "auto")
    assert backend.name == expected
    if expected == "hf":
        assert "would not fit beside the transformers model" in backend.reason and "GiB" in backend.reason
    else:
        assert backend.max_model_len == 2048  # the model's own context, not 4096
        assert 0 < backend.memory_fraction < (free / (gpu_gib * 1024**3))  # within what is free


def test_a_vllm_engine_that_cannot_start_gives_way_to_the_hf_loop_when_auto_chose_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import sys
    import types

    from tamperaudit.backends.vllm import VllmBackend
    from tamperaudit.errors import UserError

    def refuses(**options):
        raise ValueError("Free memory on device (12.1/39.4 GiB) on startup is less than desired GPU memory utilization")

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=refuses, __version__="0-test"))
    model, tokenizer = _model(tiny_model_dir)
    hf = HfModel(model, tokenizer)
    prompt = hf.render([{"role": "user", "content": "Name a colour."}])
    auto = VllmBackend("auto: fits", tmp_path, "float32", 16, 1, 4, 256, 0.3, "cuda", fallback=True)
    completions, _ = auto.model(hf, None).generate([prompt], 4, 4)
    assert completions[0].tokens == hf.generate([prompt], 4, 4)[0][0].tokens  # the HF loop generated
    assert auto.model(hf, None).engine == "hf" and auto.describe().name == "hf"
    assert "could not start" in auto.describe().reason
    assert capsys.readouterr().err.count("vLLM could not start") == 1
    asked = VllmBackend("asked for", tmp_path, "float32", 16, 1, 4, 256, 0.3, "cuda", fallback=False)
    with pytest.raises(UserError, match="could not start .*use eval.backend=hf"):
        asked.model(hf, None).generate([prompt], 4, 4)


# --- precision from what the GPU can do -------------------------------------------------------


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_auto_precision_on_a_gpu_follows_its_compute_capability(monkeypatch, capability, expected):
    from tamperaudit.models import choose_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # it counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    choice = choose_precision("auto", torch.device("cuda"))
    assert choice.dtype == expected and f"{capability[0]}.{capability[1]}" in choice.reason
    assert choose_precision("float16", torch.device("cpu")).dtype == torch.float16


# --- local judge models: on the GPU, in its precision, loaded only where they judge -------------


def test_a_local_judge_model_loads_at_its_first_verdict_on_the_gpu_in_the_models_precision(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tamperaudit.evals import model_judges
    from tamperaudit.evals.choose import make_judge

    path = tmp_path / "judge.toml"
    path.write_text(f'kind = "generate"\nmodel = "{tiny_model_dir}"\ntemplate = "{{prompt}} {{completion}}"\n'
                    'max_new_tokens = 2\n[answers]\nrefused = "."\n')
    loads = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(kwargs.get("dtype"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counted))
    judge = make_judge(str(path))
    assert loads == []  # a process that never judges (another rank) never holds the model
    judge.judge_many([("q", "a")])
    judge.judge_many([("q", "b")])
    assert loads == [torch.float32] and judge.describe()["precision"] == "float32"
    judge.release()
    judge.judge_many([("q", "c")])
    assert len(loads) == 2  # loaded again after it was released for training
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    device, dtype, _ = model_judges.judge_placement(model_judges.JudgeConfig.load(path))
    assert device.type == "cuda" and dtype == torch.bfloat16
    path.write_text(path.read_text().replace("max_new_tokens", 'precision = "float32"\nmax_new_tokens'))
    assert model_judges.judge_placement(model_judges.JudgeConfig.load(path))[1] == torch.float32


# --- the training memory plan: the run's own step sizes, the logits counted -------------------------


def test_the_memory_plan_counts_the_steps_tokens_and_the_logits(monkeypatch):
    from transformers import LlamaConfig

    from tamperaudit import attack as attack_module
    from tamperaudit.attack import plan_memory
    from tamperaudit.config import AttackSettings

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256)  # Llama-3-8B
    monkeypatch.setattr(attack_module, "free_memory", lambda device: 62 * 1024**3)  # an 80 GB GPU with 8B loaded
    identity_shift = plan_memory(AttackSettings(), config, torch.bfloat16, torch.device("cuda"), step_tokens=4 * 600)
    assert not identity_shift.gradient_checkpointing and identity_shift.micro_batch_tokens == 2400
    assert identity_shift.logit_bytes == 2400 * 128256 * 10 and identity_shift.step_tokens == 2400
    unknown = plan_memory(AttackSettings(), config, torch.bfloat16, torch.device("cuda"))
    assert unknown.micro_batch_tokens == 8192 and unknown.logit_bytes > 9 * 1024**3  # ~10 GiB of logits at 8k tokens


def test_every_process_plans_against_the_least_free_memory_of_any(tiny_model_dir, monkeypatch):
    """Under accelerate the main process also holds the judge, the KL references and any vLLM
    engine: the plan uses the least free memory over the processes (simulated here)."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer

    from tamperaudit import pipeline
    from tamperaudit.config import Settings
    from tamperaudit.data import load_attack

    monkeypatch.setattr(pipeline, "free_memory", lambda device: 8 * 1024**3)
    processes = SimpleNamespace(distributed=True, count=2, smallest=lambda value: value / 4)
    loaded = SimpleNamespace(model=SimpleNamespace(config=AutoConfig.from_pretrained(tiny_model_dir)),
                             tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
                             precision=SimpleNamespace(dtype=torch.float32), device=torch.device("cpu"))
    attack = load_attack("identity-shift")
    ctx = pipeline.Context(Settings(), None, loaded, SimpleNamespace(attack=attack, control=None), None, 0.0, None,
                           processes=processes)
    plan = ctx.memory_plan(Settings().attack)
    assert plan.free_bytes == 2 * 1024**3
    longest = max(len(pipeline.tokenize_conversation(ctx.chat, c, 10**9).input_ids) for c in attack.data.items)
    assert plan.step_tokens == 2 * longest  # batch 4 over 2 processes, each padded to the longest


# --- an out-of-memory error while moving the weights to the GPU ---------------------------------------


def test_out_of_memory_while_moving_the_model_names_nf4_and_device_map(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    from conftest import TINY_SETTINGS
    from tamperaudit.cli import main

    original = AutoModelForCausalLM.from_pretrained.__func__

    def loaded_then_full(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)

        def to(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 26.00 GiB")

        model.to = to
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(loaded_then_full))
    argv = ["audit", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--budgets", "0,1", "--quiet", *TINY_SETTINGS]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "attack.quantization=nf4" in err and "model.device_map=auto" in err


# --- small ones ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, gpu", [("NVIDIA H200", "H200 141GB"), ("NVIDIA GH200 480GB", None), ("NVIDIA B200", "B200 180GB"),
                                       ("NVIDIA GB200", None), ("NVIDIA H100 80GB HBM3", "H100 SXM 80GB")])
def test_grace_superchips_are_not_priced_as_their_gpus(name, gpu):
    from tamperaudit.cost import gpu_price

    row = gpu_price(name)
    assert (row.gpu if row else None) == gpu


def test_the_gpu_checks_tiny_audit_pins_the_hf_loop():
    """With vLLM installed, the check's audit of the tiny model (head size 8, which vLLM's kernels
    cannot run) must not start an engine."""
    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py").read_text()
    assert '"eval.backend=hf"' in text


def test_max_memory_is_read_as_accelerates_and_refused_without_a_device_map():
    from tamperaudit.config import parse_max_memory, resolve
    from tamperaudit.errors import UserError

    assert parse_max_memory("0=60GiB, 1=75GiB,cpu=200GiB") == {0: "60GiB", 1: "75GiB", "cpu": "200GiB"}
    with pytest.raises(UserError, match="DEVICE=AMOUNT"):
        parse_max_memory("gpu0=60")
    with pytest.raises(UserError, match="only applies with model.device_map"):
        resolve(None, {}, {"model": {"max_memory": "0=1GiB"}})


def test_the_gpus_paced_decode_loop_runs_on_a_spread_model(tiny_model_dir):
    """Issue 29's loop (host reads every 4 steps, rows dropped at half the batch, masks built
    by the loop, a static cache with each layer's keys and values on that layer's device; not
    captured, a graph being one device's) keeps every tensor where a spread model needs it, and
    decodes the same tokens."""
    from tamperaudit.generation import GPU_PACING, generate

    model, tokenizer = _model(tiny_model_dir)
    hf = HfModel(model, tokenizer)
    prompts = [hf.render([{"role": "user", "content": text}]) for text in ("Name a colour.", "Hi", "Count to three, slowly.")]
    alone, _ = generate(model, tokenizer, prompts, 9, 3)
    with spread(model):
        paced, stats = generate(model, tokenizer, prompts, 9, 3, pacing=GPU_PACING)
    assert [c.tokens for c in paced] == [c.tokens for c in alone]
    assert stats.decode == "static cache"
