"""A second device simulated on the CPU, for the paths of a model spread over several GPUs.

CI has no GPU, so a model whose last layers and vocabulary head sit on another GPU than its
embedding (``model.device_map=auto``) is simulated: tensors "on the second device" are
tracked by a ``TorchFunctionMode`` that reports their device as ``cpu:1``, keeps that mark
through every operation, moves them with ``.to``, and raises PyTorch's own error when an
operation mixes the two devices, as CUDA does (integer indices may come from the host, as
they may on CUDA; a boolean mask must sit with the tensor it selects from). The computation
itself runs on the CPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

SECOND = torch.device("cpu", 1)


class TwoDevices(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.placed: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> True when on the second device

    def on_second(self, tensor: torch.Tensor) -> torch.Tensor:
        self.placed[tensor] = True
        return tensor

    def _second(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value in self.placed

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - PyTorch's signature
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:
            return SECOND if self._second(args[0]) else func(*args, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        tensors = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
        second = [t for t in tensors if self._second(t)]
        first = [t for t in tensors if not self._second(t) and t.dim() > 0]
        if func is torch.Tensor.__getitem__:  # integer indices may come from the host, as on CUDA
            first = [t for t in first if t is args[0] or t.dtype == torch.bool]
        if second and first:
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, cpu:1 and cpu!")
        out = func(*args, **kwargs)
        created = kwargs.get("device")  # a factory (torch.zeros, torch.tensor) told where to put it
        if second or (isinstance(created, (str, torch.device)) and torch.device(created) == SECOND):
            for value in tree_flatten(out)[0]:
                if isinstance(value, torch.Tensor):
                    self.placed[value] = True
        return out


    def _move(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """``.to``/``.cpu``: the same tensor, marked for the device it was sent to."""
        source = args[0]
        devices = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
        others = [a for a in args[1:] if isinstance(a, torch.Tensor)]  # .to(other): other's device and dtype
        target = torch.device("cpu") if func is torch.Tensor.cpu else (
            torch.device(devices[0]) if devices else (SECOND if others and self._second(others[0]) else None))
        rest = [a for a in args[1:] if not isinstance(a, (str, torch.device))]
        out = func(source, *rest, **{k: v for k, v in kwargs.items() if k != "device"}) if func is torch.Tensor.to \
            else func(source)
        if target is None:  # a dtype change only: the device stays
            target = SECOND if self._second(source) else torch.device("cpu")
        if (target == SECOND) != self._second(source) and out is source:
            out = source.clone()
        if target == SECOND:
            self.placed[out] = True
        elif out in self.placed:
            del self.placed[out]
        return out


@contextlib.contextmanager
def spread(model: Any) -> Iterator[TwoDevices]:
    """``model`` as if its decoder's output and its vocabulary head sat on a second GPU (what
    accelerate does with a model spread over two): the decoder's outputs come back there and
    the head's weights live there."""
    mode = TwoDevices()
    decoder = model.get_decoder()
    head = model.get_output_embeddings()

    def to_second(module: Any, inputs: Any, output: Any) -> Any:
        for value in tree_flatten(output)[0]:
            if isinstance(value, torch.Tensor):
                mode.placed[value] = True
        return output

    hook = decoder.register_forward_hook(to_second)
    with mode:
        for parameter in head.parameters():
            mode.placed[parameter] = True
        try:
            yield mode
        finally:
            hook.remove()
