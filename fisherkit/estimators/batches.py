"""Reading batches as users have them: tensors, ``(inputs, targets)`` tuples, and Hugging Face dicts.

A batch becomes a ``Batch``: the model call (positional and keyword inputs, and how predictions
are read from the model's output), the target, and the mask of output positions that count.
Ambiguous layouts are errors that say which option resolves them, never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from fisherkit.engines.base import ModelCall
from fisherkit.estimators.options import DEFAULT, EstimationOptions, OutputSelector


@dataclass
class Batch:
    """A batch as the estimators see it.

    Attributes:
        call: The model call.
        target: Targets (shifted for causal LMs), or None.
        mask: ``(B, *positions)`` booleans, True where an output position counts (padding is
            False), or None when every position counts.
    """

    call: ModelCall
    target: Tensor | None
    mask: Tensor | None


def is_causal_lm(model: nn.Module) -> bool:
    """True for Hugging Face causal-LM classes (their logits at t predict the token at t + 1)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    library = [c for c in type(model).__mro__ if c.__module__.startswith("transformers.")]
    if not library:  # a subclass of a Hugging Face class counts through its base
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return any(c.__name__ in names for c in library)


def predictions_selector(selector: OutputSelector, causal: bool) -> Callable[[Any], Tensor]:
    """The function from a model's raw output to its prediction tensor (see ``EstimationOptions.output``)."""

    def select(output: Any) -> Tensor:
        if callable(selector):
            picked = selector(output)
        elif isinstance(selector, (int, str)):
            picked = _pick(output, selector)
        elif isinstance(output, Tensor):
            picked = output
        elif isinstance(output, Mapping) and "logits" in output:
            picked = output["logits"]
        elif hasattr(output, "logits"):
            picked = output.logits
        elif isinstance(output, (tuple, list)):
            raise TypeError(
                f"the model returned a {type(output).__name__} of {len(output)} entries; say which holds "
                f"the predictions with output=<index> (e.g. output=0) or output=<function of the output>."
            )
        else:
            raise TypeError(
                f"the model returned {type(output).__name__}, not a tensor of predictions; pass output=<key, "
                f"attribute, index or function> to say where its logits or means are."
            )
        if not isinstance(picked, Tensor):
            raise TypeError(f"output={selector!r} selected {type(picked).__name__}, not a tensor of predictions.")
        if causal:
            if picked.dim() < 3:
                raise ValueError(
                    f"causal=True needs sequence outputs (B, T, C); got shape {tuple(picked.shape)}. Pass "
                    f"causal=False for a model that predicts one label per sample."
                )
            return picked[:, :-1]
        return picked

    return select


def _pick(output: Any, selector: int | str) -> Any:
    try:
        if isinstance(selector, str) and not isinstance(output, Mapping):
            return getattr(output, selector)
        return output[selector]
    except (KeyError, IndexError, AttributeError, TypeError) as error:
        raise TypeError(f"output={selector!r} selects nothing in the model's {type(output).__name__}.") from error


def _split_tensors(data: tuple[Tensor, ...], batch_size: int) -> Iterator[tuple[Tensor, ...]]:
    if len(data) > 2 or len({t.shape[0] for t in data}) != 1:
        raise ValueError(
            "data given as a tuple of tensors must be (inputs,) or (inputs, targets) with equal "
            f"first dimensions; got shapes {[tuple(t.shape) for t in data]}."
        )
    for start in range(0, data[0].shape[0], batch_size):
        yield tuple(t[start : start + batch_size] for t in data)


def raw_batches(data: Any, batch_size: int) -> Iterator[Any]:
    """The batches of ``data`` as given: a tensor or a tuple of tensors is split into rows."""
    if isinstance(data, Tensor):
        data = (data,)
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        yield from _split_tensors(data, batch_size)
        return
    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor, a tuple (inputs, targets), or an iterable of batches (a DataLoader, a "
            f"list of dicts or tuples); got {type(data).__name__}."
        )
    yield from data


class BatchReader:
    """Turns raw batches into ``Batch``es by the options' layout.

    Args:
        options: ``inputs``, ``target``, ``output``, ``causal``, ``mask_key`` are read.
        model: Decides ``causal=None`` (Hugging Face causal-LM classes).
    """

    def __init__(self, options: EstimationOptions, model: nn.Module) -> None:
        self.options = options
        self.causal = is_causal_lm(model) if options.causal is None else bool(options.causal)
        self.select = predictions_selector(options.output, self.causal)

    def read(self, raw: Any) -> Batch:
        """One batch; raises ``ValueError``/``TypeError`` naming the entry and the option that fixes a layout."""
        if isinstance(raw, Tensor):
            self._check_no_target_in_tensor()
            args, target, mask = (raw,), None, None
            kwargs: dict[str, Any] = {}
        elif isinstance(raw, Mapping):
            args, kwargs, target, mask = self._read_mapping(raw)
        elif isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw):
            args, kwargs, target, mask = self._read_sequence(raw)
        else:
            raise TypeError(
                f"a batch must be a tensor of inputs, a sequence (inputs, targets) or a dict of named inputs; "
                f"got {type(raw).__name__}."
            )
        tensors = [v for v in tree_leaves((args, kwargs)) if isinstance(v, Tensor)]
        if not tensors:
            raise ValueError("a batch holds no input tensor; the model needs at least one.")
        call = ModelCall(tuple(args), kwargs, self.select, int(tensors[0].shape[0]))
        if self.causal:
            target = None if target is None else target[:, 1:]
            mask = None if mask is None else mask[:, 1:]
        return Batch(call, target, None if mask is None else mask.bool())

    def _check_no_target_in_tensor(self) -> None:
        if self.options.target not in (DEFAULT, None):
            raise ValueError(f"target={self.options.target!r} names an entry, but the batch is a single tensor.")

    def _read_mapping(self, raw: Mapping) -> tuple[tuple, dict, Tensor | None, Tensor | None]:
        options = self.options
        key = options.target
        if key is DEFAULT:
            key = "labels" if "labels" in raw else None
        if key is not None and key not in raw:
            raise ValueError(f"target={key!r} is not a key of the batch; its keys are {sorted(raw)}.")
        names = list(options.inputs) if options.inputs is not None else [k for k in raw if k != key]
        missing = [k for k in names if k not in raw]
        if missing:
            raise ValueError(f"inputs {missing} are not keys of the batch; its keys are {sorted(raw)}.")
        mask = raw.get(options.mask_key)
        target = None if key is None else raw[key]
        return (), {k: raw[k] for k in names}, target, mask if isinstance(mask, Tensor) else None

    def _read_sequence(self, raw: Sequence) -> tuple[tuple, dict, Tensor | None, Tensor | None]:
        options = self.options
        index = options.target
        if index is DEFAULT:
            index = 1 if len(raw) > 1 else None
            if index is not None and options.inputs is None:
                _refuse_mask_as_target(raw)
        if index is not None and not (isinstance(index, int) and -len(raw) <= index < len(raw)):
            raise ValueError(f"target={index!r} is not an index of the batch of {len(raw)} entries.")
        if options.inputs is None:
            first = raw[0]
            args = tuple(first) if isinstance(first, (list, tuple)) else (first,)
        else:
            bad = [i for i in options.inputs if not (isinstance(i, int) and -len(raw) <= i < len(raw))]
            if bad:
                raise ValueError(f"inputs {bad} are not indices of the batch of {len(raw)} entries.")
            args = tuple(raw[cast(int, i)] for i in options.inputs)  # checked above: indices
        target = None if index is None else raw[int(index)]
        return args, {}, target, None


def _refuse_mask_as_target(raw: Sequence) -> None:
    """Refuses ``[input_ids, attention_mask]``: read as (inputs, targets), the mask would be labels."""
    inputs, second = raw[0], raw[1]
    if not (isinstance(inputs, Tensor) and isinstance(second, Tensor)):
        return
    integer = not inputs.dtype.is_floating_point and not second.dtype.is_floating_point
    if integer and inputs.dim() >= 2 and second.shape == inputs.shape and bool(((second == 0) | (second == 1)).all()):
        raise ValueError(
            "the batch's second entry has the inputs' shape and only 0/1 values: it looks like an attention "
            "mask, which the (inputs, targets) convention would read as labels. Pass inputs=(0, 1), target=None "
            "to give both to the model (or use dict batches), or target=1 if it really holds labels."
        )


def check_device(batch: Batch, device: torch.device) -> None:
    """Raises ``ValueError`` when a batch tensor lives elsewhere than the model's parameters."""
    tensors = batch.call.tensors() + [t for t in (batch.target, batch.mask) if t is not None]
    for tensor in tensors:
        if tensor.device != device:
            raise ValueError(
                f"a batch tensor is on {tensor.device} but the model's parameters are on {device}; "
                f"move the data (or the model) so that both are on one device."
            )
