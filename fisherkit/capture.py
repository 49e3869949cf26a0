"""Forward capture: a context object owns every hook; nothing is stored on user modules."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils._pytree import tree_leaves
from torch.utils.hooks import RemovableHandle

from fisherkit.rules.base import LayerCall


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


class Capture:
    """Records each call of the given modules made by the thread that entered it, while active; all
    hooks go away on exit (another thread may run the same model meanwhile).

    Usage::

        with Capture(modules) as capture:
            output = model(x)
        capture.calls[module]  # list of LayerCall, one per call

    A call whose output has batch size 1 while the batch has B > 1 rows is a use broadcast over the
    batch (position ids ``(1, T)`` shared by every sample, a learned query): the hook hands the
    model ``output.expand(B, ...)`` instead — a view that broadcasting code cannot tell apart — and
    records that view's edge with the inputs expanded alike, so each sample gets its own output
    gradient and the rule sees B samples rather than one batch sum.

    Args:
        modules: The modules to watch. A call whose output does not require grad (run under
            ``torch.no_grad``) is recorded without an output edge.
        batch_size: B, the batch's number of samples.
        several_outputs: Modules that may return several tensors (a tuple or nested tuples, as
            ``nn.LSTM`` and ``nn.MultiheadAttention`` do): one edge per tensor is recorded. Others
            must return one tensor.
    """

    def __init__(
        self, modules: Iterable[nn.Module], batch_size: int, several_outputs: Collection[nn.Module] = ()
    ) -> None:
        self.modules = list(modules)
        self.batch_size = batch_size
        self.several_outputs = {id(m) for m in several_outputs}
        self.calls: dict[nn.Module, list[LayerCall]] = {m: [] for m in self.modules}
        self._handles: list[RemovableHandle] = []
        self._thread = threading.get_ident()

    def __enter__(self) -> Capture:
        try:
            for module in self.modules:
                self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Tensor | None:
        if threading.get_ident() != self._thread:  # another thread's forward of the same model
            return None
        if not isinstance(output, Tensor):
            if id(module) not in self.several_outputs:
                raise TypeError(
                    f"{type(module).__name__} returned {type(output).__name__}; fisherkit's layer rules "
                    f"need modules whose output is one tensor (the torch.func fallback serves others)."
                )
            tensors = [leaf for leaf in tree_leaves(output) if isinstance(leaf, Tensor) and leaf.is_floating_point()]
            self.calls[module].append(
                LayerCall(
                    args=tuple(_detached(a) for a in args),
                    kwargs={k: _detached(v) for k, v in kwargs.items()},
                    output_edges=tuple(get_gradient_edge(t) if t.requires_grad else None for t in tensors),
                    output_shapes=tuple(t.shape for t in tensors),
                    batch_size=self.batch_size,
                )
            )
            return None
        broadcast = self.batch_size > 1 and output.dim() > 0 and output.shape[0] == 1
        if broadcast:
            output = output.expand(self.batch_size, *output.shape[1:])
            args = tuple(self._expanded(a) for a in args)
            kwargs = {k: self._expanded(v) for k, v in kwargs.items()}
        call = LayerCall(
            args=tuple(_detached(a) for a in args),
            kwargs={k: _detached(v) for k, v in kwargs.items()},
            output_edges=(get_gradient_edge(output) if output.requires_grad else None,),
            output_shapes=(output.shape,),
            batch_size=self.batch_size,
        )
        self.calls[module].append(call)
        return output if broadcast else None

    def _expanded(self, value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1:
            return value.expand(self.batch_size, *value.shape[1:])
        return value
