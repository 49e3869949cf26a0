"""Forward capture: a context object owns every hook; nothing is stored on user modules."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils.hooks import RemovableHandle

from fisherkit.rules.base import LayerCall


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


class Capture:
    """Records each call of the given modules while active; all hooks go away on exit.

    Usage::

        with Capture(modules) as capture:
            output = model(x)
        capture.calls[module]  # list of LayerCall, one per call

    Args:
        modules: The modules to watch. A call whose output does not require grad (run under
            ``torch.no_grad``) is recorded without an output edge.
    """

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.modules = list(modules)
        self.calls: dict[nn.Module, list[LayerCall]] = {m: [] for m in self.modules}
        self._handles: list[RemovableHandle] = []

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

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}; fisherkit's layer rules "
                f"need modules whose output is one tensor."
            )
        call = LayerCall(
            args=tuple(_detached(a) for a in args),
            kwargs={k: _detached(v) for k, v in kwargs.items()},
            output_edge=get_gradient_edge(output) if output.requires_grad else None,
            output_shape=output.shape,
        )
        self.calls[module].append(call)
