"""Several processes on one audit, through ``accelerate launch``: data-parallel training.

    accelerate launch --multi_gpu --num_processes N -m tamperaudit audit ...

Every process loads the model and runs the same stages in the same order. Training
is data-parallel: each optimizer step's ``attack.batch_size`` conversations are
split over the processes and accelerate's DistributedDataParallel wrapper reduces
the gradients, so a budget in steps means the same at any process count. Every
other stage (the evaluations, the data selection, the report) runs on the main
process while the others wait at a barrier, and only the main process writes to
the run folder. Evaluating on one process keeps each stage's ``samples.jsonl``
identical in content to a single-process run: splitting the prompts would change
which prompts share a generation batch, and with it the padding each row sees.
(The vLLM backend has not been tried under several processes.)

Sharded training (FSDP, DeepSpeed ZeRO-3) is refused for now, with the reason: under
sharding no single process holds the weights that main-process evaluation needs.

A single process (no launcher, or ``--num_processes 1``) never touches
torch.distributed: the classes below then do nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

from tamperaudit.errors import UserError
from tamperaudit.records import ProcessesDescription

T = TypeVar("T")

# How long the other processes may wait for the main process's evaluation of one stage.
# torch's default (10-30 minutes) is shorter than a large model's eval on the HF backend.
BARRIER_TIMEOUT = dt.timedelta(hours=12)

# What accelerate launch sets for a sharded config, whatever it then makes of it (on a CPU,
# accelerate 1.15 quietly replaces FSDP by plain data parallelism): refused before accelerate
# is initialised.
SHARDING_VARIABLES = {"FSDP": "ACCELERATE_USE_FSDP", "DEEPSPEED": "ACCELERATE_USE_DEEPSPEED", "MEGATRON_LM": "ACCELERATE_USE_MEGATRON_LM"}


def _sharded_message(kind: str) -> str:
    return (
        f"accelerate is configured for {kind}; tamperaudit trains data-parallel only (DDP: "
        "examples/accelerate/ddp.yaml), because its evaluations run on the main process, which needs the "
        "whole model. For a model too big for one GPU, train it in 4 bits (attack.quantization=nf4) or "
        "spread it over the GPUs of one process (model.device_map=auto)"
    )


@dataclass
class Processes:
    """The processes working on this run: how many, which one this is, and the collectives.

    ``accelerator`` is None in a single process, where every method is a no-op.
    """

    count: int = 1
    index: int = 0
    kind: str = "single process"  # or accelerate's distributed type, e.g. "MULTI_GPU", "MULTI_CPU"
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def sum(self, value: float) -> float:
        """The sum of ``value`` over the processes (float64 on the wire)."""
        if self.accelerator is None:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="sum").item())

    def smallest(self, value: float) -> float:
        """The least ``value`` over the processes (free memory, say)."""
        if self.accelerator is None:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.gather(tensor).min().item())

    def agree(self, value: T) -> T:
        """The main process's ``value`` on every process (a run folder's name, say)."""
        if self.accelerator is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def on_main(self, work: Callable[[], T]) -> T | None:
        """Run ``work`` on the main process only, then wait until it is done everywhere."""
        result = work() if self.is_main else None
        self.barrier()
        return result

    def describe(self) -> ProcessesDescription:
        return ProcessesDescription(processes=self.count, kind=self.kind, launcher="accelerate" if self.distributed else None)


def launched_processes() -> int:
    """How many processes the launcher started (torchrun and accelerate set WORLD_SIZE)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _one_of_several_asked() -> bool:
    """accelerate's simple launcher (``--cpu`` with ``--num_processes`` above 1) starts one
    process and leaves the rest to mpirun: it sets the rendezvous address but no WORLD_SIZE."""
    return (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
        and "MASTER_ADDR" in os.environ
        and "WORLD_SIZE" not in os.environ
    )


@functools.lru_cache(maxsize=1)
def current() -> Processes:
    """This process's place among the launched ones; accelerate is initialised once, if needed."""
    if _one_of_several_asked():
        raise UserError(
            "accelerate launch --cpu started one process, not the several asked for (it leaves them to "
            "mpirun); on CPUs launch with `accelerate launch --multi_gpu --num_processes N`, which starts N "
            "processes joined over gloo when there is no GPU"
        )
    sharded = [name for name, variable in SHARDING_VARIABLES.items() if os.environ.get(variable, "").lower() == "true"]
    if sharded:
        raise UserError(_sharded_message(sharded[0]))
    if launched_processes() <= 1:
        return Processes()
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Without a GPU, accelerate joins the processes over gloo only when told it runs on the CPU.
    # The weights' precision is model.precision's to choose (and the report's to record), so a
    # config's mixed_precision, which would autocast the training passes, is not applied.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision="no",
        kwargs_handlers=[InitProcessGroupKwargs(timeout=BARRIER_TIMEOUT)],
    )
    kind = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if accelerator.num_processes != launched_processes():
        raise UserError(
            f"the launcher started {launched_processes()} processes but accelerate joined "
            f"{accelerator.num_processes} ({kind}); each would run an audit of its own"
        )
    return Processes(accelerator.num_processes, accelerator.process_index, kind, accelerator)


def device() -> torch.device | None:
    """The device this process trains on when several were launched (None: choose as usual)."""
    processes = current()
    return processes.accelerator.device if processes.distributed else None
