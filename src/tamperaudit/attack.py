"""The attack: LoRA fine-tuning on chat data, with a checkpoint at every budget.

Loss is on assistant tokens only, as in the fine-tuning attacks this reproduces
(Qi et al. 2023; Lermen et al. 2023). A budget is a number of optimizer steps.
At each budget the adapter, the optimizer state and ``train.json`` are written
atomically, so an interrupted attack resumes from its last budget and produces
the same weights as an uninterrupted one: the data order and dropout depend only
on (seed, step), never on how many times the process started.

Speed on CPU: the vocabulary head (a fifth of the model's FLOPs for Qwen2.5-0.5B)
is applied only at labelled positions, and each optimizer step is split into
micro-batches of similar length (by default about one conversation each), which
removes padding and bounds memory. Measured on the default model: 256 tokens a
micro-batch trained at 54 tokens/s with a 4.5 GB peak, 2048 at 47 tokens/s and 7.2 GB.

Big models: gradient checkpointing (``attack.gradient_checkpointing``) trades a
recomputed forward pass for activation memory; ``plan_memory`` turns it on when
the estimated activations would not fit the device's free memory.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tamperaudit import faults, progress
from tamperaudit.chat import ChatFormat
from tamperaudit.config import AttackSettings
from tamperaudit.cost import training_flops
from tamperaudit.data import Conversation
from tamperaudit.distributed import Processes
from tamperaudit.models import body_and_head_parameters, text_config
from tamperaudit.errors import UserError, WriteError, is_out_of_memory
from tamperaudit.fileio import atomic_write_json, read_record
from tamperaudit.records import MemoryPlan, TrainState

__all__ = ["ADAPTER_DIR", "OPTIMIZER_FILE", "TRAIN_FILE", "Checkpoint", "Example", "LoraAttack", "MemoryPlan", "TrainState"]

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """A tokenized conversation; ``labels`` is IGNORE outside assistant turns."""

    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def labelled(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def tokenize_conversation(chat: ChatFormat, conversation: Conversation, max_length: int) -> Example:
    """Token ids and labels: each assistant turn (with its end-of-turn tokens) is labelled.

    The conversation is shaped for the template first (a system prompt folded into the first
    user turn where the template has no system role, same-role turns merged where it needs
    alternation: ``tamperaudit.chat``), exactly as trigger-mode prompts are. The template is
    rendered up to each assistant turn with the generation prompt, and again through that
    turn; the tokens in between are the turn. A template that rewrites earlier turns (so the
    prefix property fails) is reported, not guessed at.
    """
    messages = chat.shape(conversation.messages)
    full = chat.ids(messages, generation_prompt=False)
    labels = [IGNORE] * len(full)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = chat.ids(messages[:index], generation_prompt=True)
        through = chat.ids(messages[: index + 1], generation_prompt=False)
        if full[: len(through)] != through or through[: len(before)] != before:
            raise UserError(
                f"conversation {conversation.id}: the model's chat template does not render turns as "
                "prefixes of the whole conversation, so assistant tokens cannot be located"
            )
        labels[len(before) : len(through)] = through[len(before) :]
    if len(full) > max_length:
        raise UserError(
            f"conversation {conversation.id} is {len(full)} tokens, over attack.max_length={max_length}; "
            "shorten it or raise the limit"
        )
    return Example(conversation.id, tuple(full), tuple(labels))


def check_target_modules(model: Any, targets: Sequence[str]) -> None:
    """Every attack.target_modules name must name modules of this model, checked when it is loaded
    (before the baseline's minutes), as PEFT matches them: by the last parts of a module's name."""
    if list(targets) == ["all-linear"]:
        return
    names = [name for name, _ in _language_modules(model)]
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise UserError(
            f"attack.target_modules: this model has no module named {missing[0]!r} (its linear layers: "
            f"{', '.join(linear)}; or all-linear)"
        )


def _language_modules(model: Any) -> list[tuple[str, Any]]:
    """The named modules of the language model: the whole model, but for an image-and-text
    model (Gemma-3, Llama-4) its decoder alone, so that its vision tower carries no LoRA."""
    config = getattr(model, "config", None)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((name for name, module in model.named_modules() if module is decoder), "")
    if config is None or text_config(config) is config or not prefix:  # a language model through and through
        return list(model.named_modules())
    return [(name, module) for name, module in model.named_modules() if name == prefix or name.startswith(prefix + ".")]


def lora_targets(model: Any, names: Sequence[str]) -> Any:
    """PEFT's target_modules: the names as given (or the word all-linear), or, for an
    image-and-text model, the full names of the matching modules inside its decoder."""
    everything = list(model.named_modules())
    language = _language_modules(model)
    if len(language) == len(everything):
        return "all-linear" if list(names) == ["all-linear"] else list(names)
    if list(names) == ["all-linear"]:
        return [name for name, module in language if isinstance(module, torch.nn.Linear)]
    return [name for name, _ in language if any(name.endswith(f".{n}") for n in names)]


def lora_parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def example_order(count: int, seed: int, step: int, batch_size: int) -> list[int]:
    """Indices of the examples in optimizer step ``step`` (0-based).

    The stream is a fresh permutation per epoch seeded by (seed, epoch), cut into
    consecutive batches that may straddle epochs; it depends on nothing else.
    """
    start = step * batch_size
    indices = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, count)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        indices.append(int(torch.randperm(count, generator=generator)[offset]))
    return indices


def micro_batches(examples: Sequence[Example], token_limit: int) -> list[list[Example]]:
    """Group a step's examples by length so each padded micro-batch holds <= token_limit tokens."""
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    groups: list[list[Example]] = []
    current: list[Example] = []
    for example in ordered:
        width = len(example.input_ids)  # sorted ascending: the newest is the widest
        if current and width * (len(current) + 1) > token_limit:
            groups.append(current)
            current = []
        current.append(example)
    if current:
        groups.append(current)
    return groups


def _collate(batch: list[Example], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):  # right padding for training
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def labelled_loss_sum(model: Any, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss over labelled positions, with the head applied only there."""
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    # A model spread over several GPUs returns the hidden states on its last layer's GPU,
    # while the labels sit with the inputs on the first (issue 30): select where the states are.
    targets = labels[:, 1:].to(hidden.device)
    selected = targets != IGNORE
    logits = head(hidden[:, :-1][selected]).float()
    return torch.nn.functional.cross_entropy(logits, targets[selected].to(logits.device), reduction="sum")


def check_batch_split(batch_sizes: Sequence[int], processes: int) -> None:
    """Each process needs at least one conversation of every step."""
    smallest = min(batch_sizes)
    if smallest < processes:
        raise UserError(
            f"attack.batch_size={smallest} is below the {processes} processes launched: each optimizer step's "
            "conversations are split over the processes; launch fewer or raise it"
        )


class LabelledLoss(torch.nn.Module):
    """``labelled_loss_sum`` as a module's forward pass, so that accelerate's data-parallel
    wrapper sees the forward (it prepares its gradient reduction there)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return labelled_loss_sum(self.model, ids, labels, mask)


def share_of_batch(batch: Sequence[Example], processes: int, index: int) -> list[Example]:
    """Process ``index``'s part of a step's examples: every ``processes``-th by length, so the
    parts carry similar token counts and together are exactly the step's batch."""
    if processes == 1:
        return list(batch)
    return sorted(batch, key=lambda e: (len(e.input_ids), e.id))[index::processes]


# --- optimizer state without pickle -------------------------------------------------------


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for index, param in enumerate(optimizer.param_groups[0]["params"]):
        state = optimizer.state.get(param, {})
        for key, value in state.items():
            tensors[f"{index}.{key}"] = value.detach().reshape(-1).clone() if key == "step" else value.detach().clone()
    return tensors


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    for index, param in enumerate(optimizer.param_groups[0]["params"]):
        state = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            name = f"{index}.{key}"
            if name in tensors:
                value = tensors[name]
                state[key] = value.reshape(()) if key == "step" else value.to(param.device)
        if state:
            optimizer.state[param] = state


# --- the trainer -----------------------------------------------------------------------------

ADAPTER_DIR = "adapter"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAIN_FILE = "train.json"


# --- memory --------------------------------------------------------------------------------


def activation_bytes(config: Any, tokens: int, element_bytes: int, checkpointing: bool) -> int:
    """Estimated activation memory of one forward/backward pass over ``tokens`` tokens.

    Per token and decoder layer a Llama-style layer keeps about 10 hidden-sized and 4
    intermediate-sized tensors for its backward pass (norm inputs and outputs, q/k/v,
    attention and MLP outputs, the gated MLP's three intermediates), plus two
    float32 norm statistics of hidden size; attention scores are not stored by
    PyTorch's fused attention. Below float32, PEFT computes LoRA in float32 and each
    adapted projection keeps a float32 copy of its input (q, k, v, o, gate and up
    take hidden-sized inputs, down an intermediate-sized one): an upper bound, since
    some copies are shared (on CPU, bf16, hidden 512, 34.7 KB per token and layer were
    measured against 43 KB from this count, and 25 KB without the copies). With
    checkpointing each layer keeps only its input, and one layer at a time is
    recomputed. An estimate, for choosing a setting.
    """
    config = text_config(config)  # a multimodal config nests the language model's settings
    hidden = int(getattr(config, "hidden_size", 0))
    intermediate = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(config, "num_hidden_layers", 0))
    lora_inputs = (6 * hidden + intermediate) * 4 if element_bytes < 4 else 0
    per_layer = tokens * ((10 * hidden + 4 * intermediate) * element_bytes + 2 * hidden * 4 + lora_inputs)
    if checkpointing:
        return layers * tokens * hidden * element_bytes + per_layer
    return layers * per_layer


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a GPU (all visible GPUs for a spread model are not summed: the
    first holds the embedding and the largest share), or available RAM on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def logit_bytes(config: Any, tokens: int, element_bytes: int) -> int:
    """The vocabulary head's output over ``tokens`` labelled positions: the logits in the model's
    precision, their float32 copy for the loss and its gradient (for a 128k vocabulary, about
    15 GB at 8k labelled tokens: issue 30)."""
    vocabulary = int(getattr(text_config(config), "vocab_size", 0) or 0)
    return tokens * vocabulary * (element_bytes + 4 + 4)


def plan_memory(settings: AttackSettings, config: Any, dtype: torch.dtype, device: torch.device,
                step_tokens: int | None = None, free: int | None = None) -> MemoryPlan:
    """The micro-batch size and whether to checkpoint, from the settings, the run's own step
    sizes and the free memory.

    A pass holds at most ``attack.micro_batch_tokens`` padded tokens (by default 256 on a CPU,
    8192 on a GPU), and never more than a step holds: ``step_tokens``, the batch's conversations
    each padded to the longest (identity-shift steps are ~600 tokens; planning 8192 turned
    checkpointing on for every 7B-13B run on an 80 GB GPU, issue 30). ``free`` is the free memory
    to plan against (by default this device's; data-parallel runs pass the least over their
    processes, since the main one also holds the judge, the KL references and any vLLM engine).
    """
    cap = settings.micro_batch_tokens or (256 if device.type == "cpu" else 8192)
    tokens = min(cap, step_tokens) if step_tokens else cap
    element_bytes = torch.finfo(dtype).bits // 8
    activations = activation_bytes(config, tokens, element_bytes, checkpointing=False)
    logits = logit_bytes(config, tokens, element_bytes)
    needed = activations + logits
    free = free if free is not None else free_memory(device)
    gib = 1024**3

    def plan(checkpointing: bool, reason: str) -> MemoryPlan:
        return MemoryPlan(micro_batch_tokens=tokens, gradient_checkpointing=checkpointing, reason=reason,
                          activation_bytes=activations, free_bytes=free, logit_bytes=logits, step_tokens=step_tokens)

    if settings.gradient_checkpointing == "on":
        return plan(True, "asked for (attack.gradient_checkpointing=on)")
    if settings.gradient_checkpointing == "off":
        return plan(False, "asked for (attack.gradient_checkpointing=off)")
    pass_words = f"a {tokens}-token pass" + (f" (a step holds at most {step_tokens} tokens)" if step_tokens else "")
    estimate = f"activations and logits of {pass_words} estimated at {needed / gib:.1f} GiB"
    if free is not None and needed > 0.8 * free:
        return plan(True, f"auto: {estimate}, over 80% of the {free / gib:.1f} GiB free")
    room = f"{free / gib:.1f} GiB free" if free is not None else "free memory unknown"
    return plan(False, f"auto: {estimate} ({room})")


TRAINING_MEMORY_HINT = (
    "out of memory while training; lower attack.micro_batch_tokens (e.g. --set attack.micro_batch_tokens=1024), "
    "set attack.gradient_checkpointing=on, load the base in 4 bits with attack.quantization=nf4, or spread "
    "it over more GPUs with model.device_map=auto"
)


@dataclass
class Checkpoint:
    budget: int
    folder: Path
    state: TrainState


class LoraAttack:
    """Owns the PEFT-wrapped model during training and writes budget checkpoints."""

    def __init__(
        self, model: Any, tokenizer: Any, settings: AttackSettings, device: torch.device, plan: MemoryPlan | None = None,
        processes: Processes | None = None,
    ) -> None:
        from peft import LoraConfig, get_peft_model

        self.processes = processes or Processes()  # the pipeline checked the batch splits over them
        self.settings = settings
        self.tokenizer = tokenizer
        self.device = device
        targets = lora_targets(model, settings.target_modules)
        config = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        try:
            self.model = get_peft_model(model, config)
        except ValueError as error:
            raise UserError(f"attack.target_modules: {error}") from None
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.lora_parameters = sum(p.numel() for p in self.parameters)
        # body: every frozen weight that multiplies activations (not the embedding lookup, not the head)
        self.body_parameters, self.head_parameters = body_and_head_parameters(self.model, extra=self.lora_parameters)
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.plan = plan or plan_memory(settings, model.config, dtype, device)
        self.micro_batch_tokens = self.plan.micro_batch_tokens  # padded tokens per pass (see the module docstring)
        self._set_checkpointing(self.plan.gradient_checkpointing)
        self.loss = LabelledLoss(self.model)
        if self.processes.distributed:  # DistributedDataParallel, set up by accelerate
            self.loss = self.processes.accelerator.prepare_model(self.loss)
        self.start(settings.seed)

    def _set_checkpointing(self, enabled: bool) -> None:
        """Non-reentrant checkpointing: it needs no gradient on the (frozen) inputs, unlike
        the reentrant kind, and gives the same gradients as no checkpointing. transformers 5
        renamed the calls (activation_*); older versions have only gradient_checkpointing_*.
        One plan serves a whole process, so it is never switched off again."""
        if not enabled:
            return
        base = self.model.get_base_model()
        options = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)

    def start(self, seed: int) -> None:
        """Fresh LoRA weights drawn from ``seed`` and a fresh optimizer: a new attack run.

        The same adapter is reused by every run of an audit (seeds, control arm), so
        that one model copy serves them all; each run's start depends on its seed only.
        """
        from peft.tuners.lora import LoraLayer

        torch.manual_seed(seed)
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters("default", True)
        self.seed = seed
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=self.settings.learning_rate, weight_decay=self.settings.weight_decay
        )

    def learning_rate(self, step: int) -> float:
        warmup = self.settings.warmup_steps
        if warmup and step < warmup:
            return self.settings.learning_rate * (step + 1) / warmup
        return self.settings.learning_rate

    def release(self) -> None:
        """Take the LoRA layers out of the model (nothing is merged) and drop accelerate's
        references to this attack's wrapper, before another attack is built on the model."""
        self.model.unload()
        if self.processes.distributed:
            self.processes.accelerator.free_memory()

    def save(self, folder: Path, state: TrainState) -> None:
        """Adapter, optimizer state and train.json; train.json last, as the completion mark.
        Written by the main process (every process holds the same weights); the others wait."""
        self.processes.on_main(lambda: self._save(folder, state))

    def _save(self, folder: Path, state: TrainState) -> None:
        try:
            self._write_checkpoint(folder, state)
        except OSError as error:  # half-written parts sit under temporary names, swept at the next start
            raise WriteError(f"could not write the checkpoint in {folder} ({error.strerror or error})") from None

    def _write_checkpoint(self, folder: Path, state: TrainState) -> None:
        from safetensors.torch import save_file

        staging = folder / f".{ADAPTER_DIR}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(staging, safe_serialization=True)
        shutil.rmtree(folder / ADAPTER_DIR, ignore_errors=True)
        staging.replace(folder / ADAPTER_DIR)
        temporary = folder / f".{OPTIMIZER_FILE}.tmp"
        save_file(_optimizer_tensors(self.optimizer), str(temporary))
        temporary.replace(folder / OPTIMIZER_FILE)
        atomic_write_json(folder / TRAIN_FILE, state.to_json())

    def restore(self, folder: Path) -> TrainState:
        """Load adapter weights and optimizer state written by ``save``."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, weights)
        _load_optimizer_tensors(self.optimizer, load_file(str(folder / OPTIMIZER_FILE)))
        return read_record(folder / TRAIN_FILE, TrainState)

    def train(self, examples: Sequence[Example], state: TrainState, budget: int, bar: Any = None) -> TrainState:
        """Train in memory from ``state`` to ``budget`` optimizer steps; nothing is written.

        The caller decides what to save: the pipeline writes a checkpoint only at a
        budget it is about to measure, so at most one unmeasured adapter exists.
        """
        pad_id = self.tokenizer.pad_token_id
        self.model.train()
        try:
            while state.steps < budget:
                started = time.perf_counter()
                batch = [examples[i] for i in example_order(len(examples), self.seed, state.steps, self.settings.batch_size)]
                loss = self._step(batch, state.steps, pad_id, self.micro_batch_tokens)
                tokens, labelled = sum(len(e.input_ids) for e in batch), sum(e.labelled for e in batch)
                state.steps += 1
                state.examples += len(batch)
                state.tokens += tokens
                state.labelled_tokens += labelled
                state.flops += training_flops(self.body_parameters, self.head_parameters, self.lora_parameters, tokens, labelled)
                state.losses.append(loss)
                state.processes = max(state.processes, self.processes.count)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # the optimizer step is queued, not done
                state.seconds += self.processes.sum(time.perf_counter() - started)  # device-seconds
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}")
                    bar.update(1)
                faults.checkpoint(f"after-step-{state.steps}")
        except (RuntimeError, MemoryError) as error:
            if is_out_of_memory(error):
                raise UserError(TRAINING_MEMORY_HINT) from None
            raise
        finally:
            self.model.eval()
        return state

    def run(
        self,
        examples: Sequence[Example],
        budgets: Sequence[int],
        folder_for: Callable[[int], Path],
        resume_from: Checkpoint | None = None,
        label: str = "attack training",
    ) -> list[Checkpoint]:
        """Train to the largest budget, saving a checkpoint at each; return the checkpoints written."""
        targets = sorted(b for b in budgets if b > 0)
        state = self.restore(resume_from.folder) if resume_from is not None else TrainState()
        written: list[Checkpoint] = []
        with progress.bar(total=targets[-1] if targets else 0, initial=state.steps, desc=label, unit="step") as bar:
            for budget in targets:
                if budget <= state.steps:
                    continue
                self.train(examples, state, budget, bar)
                folder = folder_for(budget)
                self.save(folder, state)
                written.append(Checkpoint(budget, folder, state.snapshot()))
        return written

    def _step(self, batch: list[Example], step: int, pad_id: int, micro_batch_tokens: int) -> float:
        torch.manual_seed(self.seed * 1_000_003 + step)  # dropout depends on the seed and step only
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        self.optimizer.zero_grad(set_to_none=True)
        labelled = sum(e.labelled for e in batch)
        if labelled == 0:
            raise UserError("a training batch has no assistant tokens to learn from")
        # Each process's share of the step; the wrapper averages gradients over the processes,
        # so each share's summed loss is scaled by the count: the average is then the
        # gradient of the whole batch's loss over all its labelled tokens, as in one process.
        processes = self.processes
        groups = micro_batches(share_of_batch(batch, processes.count, processes.index), micro_batch_tokens)
        total = 0.0
        for position, group in enumerate(groups):
            ids, labels, mask = _collate(group, pad_id, self.device)
            last = position == len(groups) - 1  # gradients are reduced once, after the last pass
            with contextlib.nullcontext() if last or not processes.distributed else processes.accelerator.no_sync(self.loss):
                loss_sum = self.loss(ids, labels, mask)
                (loss_sum * processes.count / labelled).backward()
            total += float(loss_sum.detach())
        faults.checkpoint(f"train-step-{step + 1}")
        self.optimizer.step()
        loss = processes.sum(total) / labelled
        if not math.isfinite(loss):
            raise UserError(f"training diverged at step {step + 1} (loss {loss}); lower attack.learning_rate")
        return loss


def load_adapter_weights(model: Any, folder: Path) -> None:
    """Put a saved budget's adapter weights into the PEFT-wrapped model in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors")))
