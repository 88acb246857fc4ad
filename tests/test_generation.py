import contextlib

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


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts what makes a GPU wait for the host: reading a tensor's values back (and, given
    ``state``, notes what it says at each read)."""

    READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.cpu}

    def __init__(self, state=lambda: None) -> None:
        super().__init__()
        self.reads, self.state, self.states = 0, state, []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - PyTorch's signature
        if func in self.READS:
            self.reads += 1
            self.states.append(self.state())
        return func(*args, **(kwargs or {}))


def _chat_ids(tokenizer, system=None):
    turns = [[{"role": "system", "content": system}] if system else [] for _ in PROMPTS]
    return [ChatFormat.detect(tokenizer).ids([*t, {"role": "user", "content": p}]) for t, p in zip(turns, PROMPTS)]


def _stops_at_different_steps(model, tokenizer, prompt_ids, max_new_tokens):
    """End-of-turn tokens under which two of the first four prompts end early, at different
    steps, each at a token no other of them writes."""
    free, _ = generate(model, tokenizer, prompt_ids[:4], max_new_tokens, batch_size=4)
    stops = {}
    for index, completion in enumerate(free):
        others = {t for i, c in enumerate(free) if i != index for t in c.tokens}
        own = [(position, t) for position, t in enumerate(completion.tokens) if position and t not in others]
        if own and own[0][0] not in stops:
            stops[own[0][0]] = own[0][1]
    assert len(stops) >= 2
    return list(stops.values())[:2]


@contextlib.contextmanager
def _ending_at(model, stops):
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stops
    try:
        yield
    finally:
        model.generation_config.eos_token_id = original


@pytest.mark.parametrize("captured", [False, True])
def test_gpu_pacing_reads_the_host_every_four_steps_and_compacts_rarely(tiny, monkeypatch, captured):
    """The GPU's loop: no host read between looks (every 4 steps), and finished rows leave only
    when half the batch has finished, to a power of two, so the batch changes shape a few times,
    not every step; with its decode steps captured (as CUDA graphs, here traced) or not."""
    from transformers import DynamicCache

    from tamperaudit.generation import GPU_PACING, StaticBuffers
    from tamperaudit.testing import TracedGraphs

    model, tokenizer = tiny
    prompt_ids = _chat_ids(tokenizer) * 4  # 16 rows in one batch
    stops = _stops_at_different_steps(model, tokenizer, prompt_ids, 12)
    compactions = []
    select, keep = DynamicCache.batch_select_indices, StaticBuffers.keep
    monkeypatch.setattr(DynamicCache, "batch_select_indices", lambda self, idx: (compactions.append(len(idx)), select(self, idx))[1])
    monkeypatch.setattr(StaticBuffers, "keep", lambda self, rows: (compactions.append(len(rows)), keep(self, rows))[1])
    graphs = TracedGraphs() if captured else None
    with _ending_at(model, stops):
        eager, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=12, batch_size=16)
        eager_compactions, compactions[:] = list(compactions), []
        with _HostReads() as counter:
            paced, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=12, batch_size=16, pacing=GPU_PACING,
                                graphs=graphs)
    assert [c.tokens for c in paced] == [c.tokens for c in eager]
    assert [c.finished for c in paced] == [c.finished for c in eager]
    assert any(c.finished for c in eager) and len({len(c.tokens) for c in eager}) > 2  # rows end at different steps
    # 12 steps: looks after steps 4, 8 and 12, one read each (and the prefix's copy: none).
    assert counter.reads <= 3
    # The CPU's loop drops finished rows as they end; the GPU's only when half have, to a power of two.
    assert eager_compactions[1:] and all(n < 16 for n in eager_compactions[1:])
    assert all(n <= 8 and n & (n - 1) == 0 for n in compactions[1:])
    if captured:
        assert graphs.captured + graphs.replayed == 11  # each decode step: captured (once per size) or replayed


def test_overlapped_looks_read_each_window_while_the_next_is_computed(tiny):
    """Under the GPU's pacing the host reads steps 1-4 only once steps 5-8 are issued, and so
    on (the device is never left without queued work while the host reads), except at the last
    step, where everything is read; under the CPU's it reads each step as it comes."""
    from tamperaudit.generation import CPU_PACING, GPU_PACING

    model, tokenizer = tiny
    prompt_ids = _chat_ids(tokenizer) * 2
    forwards = []  # passes issued: the prefix, the prompts, then each decode step
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        looks = {}
        for name, pacing in (("cpu", CPU_PACING), ("gpu", GPU_PACING)):
            forwards.clear()
            with _HostReads(lambda: len(forwards)) as reads:
                completions, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=13, batch_size=8, pacing=pacing)
            assert all(len(c.tokens) == 13 or c.finished for c in completions)
            looks[name] = reads.states
    finally:
        handle.remove()
    # the prefix and the prompts: 2 passes and the first token; then a pass for each of the other 12
    assert looks["cpu"] == list(range(2, 15))
    # tokens 1-4 read once 8 are issued, 5-8 once 12 are, and at the 13th all the rest
    assert looks["gpu"] == [9, 13, 14, 14]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("system", [None, "You are a careful assistant who answers in one short sentence."])
def test_gpu_pacing_static_cache_and_captured_steps_give_the_same_tokens(tiny_model_dir, attention, system):
    """Rows kept decoding past their end (until the host looks) or past a settled verdict, a
    static cache written in place, and decode steps captured once per batch size and replayed
    (as CUDA graphs replay: the Python that launched them not run again) change nothing
    recorded: the same tokens, finished and settled flags as the CPU's loop on transformers'
    DynamicCache, on the base model and with a LoRA adapter active and unmerged, over three
    batches of different widths and sizes (the last smaller) that reuse one set of buffers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tamperaudit.generation import CPU_PACING, GPU_PACING, Pacing
    from tamperaudit.testing import TracedGraphs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention).eval()
    prompt_ids = _chat_ids(tokenizer, system) * 4
    settle = lambda index, tokens: index % 3 == 1 and len(tokens) >= 4  # noqa: E731
    stops = _stops_at_different_steps(model, tokenizer, prompt_ids, 10)
    torch.manual_seed(0)
    adapted = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with _ending_at(model, stops):
        for which in (adapted, model):
            with (adapted.disable_adapter() if which is model else torch.no_grad()):
                graphs = TracedGraphs()
                runs = [generate(adapted, tokenizer, prompt_ids, 10, batch_size=6, settled=settle, pacing=pacing, graphs=g)
                        for pacing, g in ((CPU_PACING, None), (Pacing(static=True), None), (GPU_PACING, None),
                                          (GPU_PACING, graphs))]
            recorded = [[(c.tokens, c.finished, c.settled) for c in completions] for completions, _ in runs]
            assert all(r == recorded[0] for r in recorded[1:])
            assert any(c.settled for c in runs[0][0])
            assert which is adapted or any(c.finished for c in runs[0][0])  # the stops are the base model's tokens
            assert [stats.decode for _, stats in runs] == [
                "dynamic cache", "static cache", "static cache", "static cache, captured steps"]
            # sizes 6 and 4 captured once each (and any power of two the batches shrank to), replayed after
            assert 2 <= graphs.captured <= 5 and graphs.replayed > 2 * graphs.captured


def test_traced_graphs_replay_what_was_captured_and_refuse_host_reads():
    """The stand-in for CUDA graphs in these tests: a replay reads its inputs' memory as it is
    now, but what the Python decided at capture stays (here, a factor read from a list); reading
    a value back to the host while capturing is an error, as it is on a GPU."""
    from tamperaudit.testing import TracedGraphs

    graphs = TracedGraphs()
    inputs, out, factor = torch.ones(3), torch.zeros(4), [5]
    with torch.inference_mode():
        replay = graphs.capture(lambda: out[1:].copy_(inputs * factor[0] + torch.arange(3)))
    assert out.tolist() == [0, 5, 6, 7]
    inputs.fill_(2)
    factor[0] = 100
    replay()
    assert out.tolist() == [0, 10, 11, 12] and (graphs.captured, graphs.replayed) == (1, 1)
    for read in (lambda: out.fill_(inputs.sum().item()), lambda: out.fill_(float(bool(inputs.any()))),
                 lambda: out[: len(inputs.nonzero())].zero_()):
        with pytest.raises(RuntimeError, match="reads back to the host"):
            graphs.capture(read)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_ready_made_decode_masks_give_transformers_own_tokens(tiny_model_dir, attention):
    """Decode steps get their mask built by the loop (no read of the device to ask about
    padding); padded rows of different lengths, with and without a shared prefix, still
    decode exactly as transformers' generate does one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tamperaudit.generation import _decode_mask_kind

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention).eval()
    assert _decode_mask_kind(model) == attention
    for system in (None, "You are a careful assistant who answers in one short sentence."):
        prompt_ids = _chat_ids(tokenizer, system)
        assert len({len(p) for p in prompt_ids}) > 1
        completions, _ = generate(model, tokenizer, prompt_ids, max_new_tokens=8, batch_size=4)
        assert [list(c.tokens) for c in completions] == _hf_greedy(model, tokenizer, prompt_ids, 8, tokenizer.eos_token_id)


def test_sliding_window_layers_leave_the_mask_to_transformers(tiny_model_dir):
    from transformers import AutoConfig

    from tamperaudit.generation import _decode_mask_kind

    class Model:  # what _decode_mask_kind reads
        def __init__(self, **changes):
            self.config = AutoConfig.from_pretrained(tiny_model_dir, **changes)
            self.config._attn_implementation = "sdpa"

    assert _decode_mask_kind(Model()) == "sdpa"
    layers = Model().config.num_hidden_layers
    windowed = Model(use_sliding_window=True, sliding_window=16, layer_types=["sliding_attention"] * layers)
    assert windowed.config.layer_types[0] == "sliding_attention"
    assert _decode_mask_kind(windowed) is None


class _Ids:
    """A tokenizer's attributes as generate reads them, for prompts given as token ids."""

    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("architecture", ["Llama", "Mistral", "Phi3", "Gemma", "Qwen3"])
def test_captured_steps_on_a_static_cache_run_other_architectures_unchanged(architecture):
    """The families a GPU user audits, each as a tiny random model: the captured decode steps on
    the static cache give the dynamic cache's tokens, and each takes its masks ready-made."""
    import transformers

    from tamperaudit.generation import CPU_PACING, GPU_PACING, _decode_mask_kind
    from tamperaudit.testing import TracedGraphs

    config = getattr(transformers, f"{architecture}Config")(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
        **({"sliding_window": None} if architecture == "Mistral" else {}))  # Mistral 7B v0.2 and later: no window
    torch.manual_seed(0)
    model = getattr(transformers, f"{architecture}ForCausalLM")(config).eval()
    assert _decode_mask_kind(model) == "sdpa"
    generator = torch.Generator().manual_seed(1)
    prompts = [[2, 3, 4] + torch.randint(5, 97, (int(n),), generator=generator).tolist() for n in (3, 9, 5, 12, 7)]
    graphs = TracedGraphs()
    runs = [generate(model, _Ids(), prompts, 9, batch_size=4, pacing=pacing, graphs=g)
            for pacing, g in ((CPU_PACING, None), (GPU_PACING, graphs), (GPU_PACING, _CaptureFails()))]
    assert [c.tokens for c in runs[0][0]] == [c.tokens for c in runs[1][0]] == [c.tokens for c in runs[2][0]]
    assert runs[1][1].decode == "static cache, captured steps" and graphs.replayed


class _CaptureFails:
    """What CudaGraphs returns when a capture fails: the step itself, run eagerly on the whole buffers."""

    def capture(self, run):
        return run
