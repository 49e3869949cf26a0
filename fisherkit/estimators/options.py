"""The options every estimator shares, checked once and documented once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fisherkit.estimators.fisher_type import FISHER_TYPES
from fisherkit.likelihoods import Likelihood, get_likelihood

ENGINES = ("auto", "layerwise", "vmap")
DEFAULT_MEMORY_BUDGET = 2**30
Entry = int | str


class _Default:
    """The marker of an option left at its default (``target``: read by convention)."""

    def __repr__(self) -> str:
        return "default"


DEFAULT = _Default()
OutputSelector = Entry | Callable[[Any], torch.Tensor] | None


@dataclass(frozen=True)
class EstimationOptions:
    """How an estimator reads the data and what it estimates; every estimator takes these keywords.

    Scaling (every estimator): the per-sample mean F = (1/N) Σ_n E_y[g_n g_nᵀ] with
    g_n = ∇_θ log p(y | x_n), N the number of samples (rows; a sequence is one sample). With
    ``mc_samples=k`` the inner expectation is the mean of k draws. Multiply by N for the dataset
    Fisher. The model's loss function and its reduction play no part.

    Attributes:
        likelihood: ``"categorical"``, ``"gaussian"``, ``"bernoulli"`` or a ``Likelihood``.
        fisher_type: ``"mc"`` (true Fisher, sampled labels; default), ``"exact"`` (closed-form
            expectation over labels, one batched backward of the output-Fisher square root) or
            ``"empirical"`` (dataset labels; cheap but not a curvature estimate) or ``"predicted"``
            (the model's most probable label; not a curvature estimate either, offered to reproduce
            the EWC protocols that use it).
        mc_samples: Label draws per sample for ``"mc"``.
        engine: ``"auto"``, ``"layerwise"`` (hooks and layer rules) or ``"vmap"`` (torch.func).
        fallback: Serve modules without a registered rule by per-layer ``torch.func`` gradients
            (slow; a warning names them). ``None`` (default) does so with that warning; ``False``
            makes such modules an error; ``True`` uses the fallback without a warning.
        batch_size: Rows per batch when ``data`` is given as tensors.
        seed: Seeds a private generator for the MC draws (reproducible results).
        generator: A ``torch.Generator`` for the MC draws (instead of ``seed``).
        progress: Progress bar: ``None`` on a terminal only, ``True`` always, ``False`` never.
        memory_budget: Bytes the engines may use for batched gradients before chunking.
        inputs: Which entries of a batch are model inputs: indices of a tuple batch (passed
            positionally) or keys of a dict batch (passed as keywords). Default: entry 0 of a tuple,
            every key but the target of a dict.
        target: Which entry is the target: an index, a key, or ``None`` for none. By default entry
            1 of a tuple (when present), ``"labels"`` of a dict (when present).
        output: How predictions are read from the model's output: ``None`` takes a tensor as it is
            and the ``logits`` of a ``ModelOutput`` or dict; an index, a key or attribute name, or a
            function of the output. A tuple output needs one of these.
        causal: Logits at position t predict the target at t + 1 (Hugging Face causal LMs; labels
            unshifted). ``None``: true exactly for Hugging Face causal-LM classes.
        mask_key: The dict entry marking real positions (1) and padding (0) of sequence outputs;
            padding never contributes, with or without labels.
        parameters: Names (as ``model.named_parameters()`` gives them) of the parameters to
            estimate the Fisher of — a subnetwork, e.g. the last layer; ``None`` (default): every
            trainable parameter. Modules none of whose parameters are chosen need no rule.
    """

    likelihood: str | Likelihood = "categorical"
    fisher_type: str = "mc"
    mc_samples: int = 1
    engine: str = "auto"
    fallback: bool | None = None
    batch_size: int = 256
    seed: int | None = None
    generator: torch.Generator | None = None
    progress: bool | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    inputs: Sequence[Entry] | None = None
    target: Entry | None | _Default = DEFAULT
    output: OutputSelector = None
    causal: bool | None = None
    mask_key: str = "attention_mask"
    parameters: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.fisher_type not in FISHER_TYPES:
            raise ValueError(f"unknown fisher_type {self.fisher_type!r}; choose one of {FISHER_TYPES}.")
        check_positive_int("mc_samples", self.mc_samples)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("memory_budget", self.memory_budget)
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {ENGINES}.")
        if self.seed is not None and self.generator is not None:
            raise ValueError("pass either seed or generator, not both.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an integer; got {self.seed!r}.")
        if self.fallback not in (None, True, False):
            raise TypeError(f"fallback must be True, False or None; got {self.fallback!r}.")
        if self.inputs is not None and (isinstance(self.inputs, (str, int)) or not len(self.inputs)):
            raise TypeError(
                f"inputs must be a non-empty sequence of indices or keys, e.g. ('input_ids',); got {self.inputs!r}."
            )
        if self.parameters is not None:
            if isinstance(self.parameters, str) or not all(isinstance(n, str) for n in self.parameters):
                raise TypeError(
                    f"parameters must be a sequence of parameter names, e.g. ['head.weight']; got {self.parameters!r}."
                )
            object.__setattr__(self, "parameters", tuple(self.parameters))
        object.__setattr__(self, "likelihood", get_likelihood(self.likelihood))

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> EstimationOptions:
        """Options from estimator keywords; an unknown keyword is a ``TypeError`` that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"unknown estimator option(s) {unknown}; the options are {sorted(known)}.")
        return cls(**keywords)

    @property
    def resolved_likelihood(self) -> Likelihood:
        """The likelihood as an instance (names are resolved at construction)."""
        assert isinstance(self.likelihood, Likelihood)
        return self.likelihood


def check_positive_int(name: str, value: Any) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is an int ≥ 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
