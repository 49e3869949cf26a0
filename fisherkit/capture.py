"""Forward capture: a context object owns every hook; nothing is stored on user modules."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
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
        modules: The modules to watch.
        clone_outputs: Hand the rest of the network a copy of each output, so that an in-place
            operation downstream (``ReLU(inplace=True)``) cannot overwrite the recorded output.
    """

    def __init__(self, modules: Iterable[nn.Module], clone_outputs: bool = False) -> None:
        self.modules = list(modules)
        self.clone_outputs = clone_outputs
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

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}; fisherkit's layer rules "
                f"need modules whose output is one tensor."
            )
        call = LayerCall(
            args=tuple(_detached(a) for a in args),
            kwargs={k: _detached(v) for k, v in kwargs.items()},
            output=output,
            version=output._version,
        )
        self.calls[module].append(call)
        return output.clone() if self.clone_outputs else None

    def outputs_modified(self) -> bool:
        """True when an in-place operation changed a recorded output after its layer returned it."""
        return any(call.output._version != call.version for calls in self.calls.values() for call in calls)
