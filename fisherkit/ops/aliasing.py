"""Refusing in-place outputs that share memory with an op's inputs (the result would be garbage)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def refuse_aliasing(op: str, outputs: Mapping[str, Tensor | None], inputs: Mapping[str, Tensor | None]) -> None:
    """Raises ``ValueError`` when an output tensor shares storage with an input or another output.

    Args:
        op: The op's name, for the message.
        outputs: {argument name: tensor written in place (or None)}.
        inputs: {argument name: tensor read (or None)}.
    """
    written = [(n, t) for n, t in outputs.items() if t is not None]
    read = [(n, t) for n, t in inputs.items() if t is not None]
    for index, (name, out) in enumerate(written):
        for other, tensor in written[index + 1 :] + read:
            if (
                out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
                and out.numel()
                and tensor.numel()
            ):
                raise ValueError(
                    f"{op}: {name} shares memory with {other}; it is written in place while {other} is read. "
                    f"Pass a separate tensor as {name} (e.g. {name}.clone() or torch.zeros_like)."
                )
