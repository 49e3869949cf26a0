"""Which rule serves each parameterized module of a model, and which parameters are estimated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from fisherkit.errors import UnsupportedModelError
from fisherkit.rules import TorchFuncRule, find_rule
from fisherkit.rules.registry import AnyRule
from fisherkit.rules.scale import ElementwiseScaleRule, is_scale_candidate

__all__ = ["Plan", "PlanEntry", "UnsupportedModelError", "build_plan", "explain"]


@dataclass
class PlanEntry:
    """One module owning trainable parameters directly.

    Attributes:
        path: Module name in ``model.named_modules()`` (``""`` for the root).
        module: The module.
        rule: Its rule, or ``None`` when no rule is registered and the fallback is off.
        local_names: Direct parameter names this module's rule computes (``"weight"``, ``"bias"``).
        tied_names: Those of ``local_names`` that other modules use too (tied weights): their
            per-sample gradients are summed over the modules before squaring.
        canonical: Full name in ``model.named_parameters()`` of each local name whose parameter is
            listed there under another module's path (a tied weight is listed once).
    """

    path: str
    module: nn.Module
    rule: AnyRule | None
    local_names: list[str]
    tied_names: list[str] = field(default_factory=list)
    canonical: dict[str, str] = field(default_factory=dict)

    def full_name(self, local: str) -> str:
        """The parameter's name in ``model.named_parameters()``."""
        if local in self.canonical:
            return self.canonical[local]
        return f"{self.path}.{local}" if self.path else local

    @property
    def layer_rule(self) -> AnyRule:
        """The rule, for engines that run after ``Plan.require_layerwise`` (which refuses entries
        without one)."""
        if self.rule is None:
            raise UnsupportedModelError(_no_rule_message([self]))
        return self.rule

    @property
    def own_names(self) -> list[str]:
        """The local names no other module shares."""
        return [n for n in self.local_names if n not in self.tied_names]

    @property
    def rule_name(self) -> str:
        if self.rule is None:
            return "none (unsupported)"
        name = type(self.rule).__name__
        if isinstance(self.rule, ElementwiseScaleRule):
            return f"{name} (x̂ ⊙ weight, checked per call; else fallback)"
        return f"{name} (fallback, slow)" if isinstance(self.rule, TorchFuncRule) else name


@dataclass
class Plan:
    """The model's parameterized modules, their rules, frozen and tied parameters.

    Attributes:
        entries: One per module with trainable direct parameters, in ``named_modules`` order.
        names: Every trainable parameter name, in ``named_parameters`` order.
        frozen: Parameters with ``requires_grad=False`` (left out of the Fisher).
        tied: Names of parameters used by more than one module's rule (tied weights, e.g. an
            embedding and the LM head that reuses it).
    """

    entries: list[PlanEntry]
    names: list[str]
    frozen: list[str]
    tied: list[str] = field(default_factory=list)

    @property
    def unsupported(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.rule is None]

    @property
    def fallback(self) -> list[PlanEntry]:
        """Entries without a registered rule, served by the per-layer ``torch.func`` fallback."""
        return [e for e in self.entries if type(e.rule) is TorchFuncRule]

    def require_layerwise(self) -> None:
        """Raises ``UnsupportedModelError`` unless every trainable parameter has a usable rule."""
        if self.unsupported:
            raise UnsupportedModelError(_no_rule_message(self.unsupported))


def _no_rule_message(entries: list[PlanEntry]) -> str:
    described = ", ".join(f"{e.path or '<root>'} ({type(e.module).__name__})" for e in entries)
    return (
        f"no layer rule for module(s) with trainable parameters: {described}. Register one "
        f"with @fisherkit.register_rule, pass fallback=True to use per-layer torch.func "
        f"gradients for them, or use engine='vmap'."
    )


def _dropout_rate(module: nn.Module) -> float:
    """The rate of a dropout module, or the largest ``*dropout*`` rate attribute of a module that
    applies dropout functionally (Hugging Face attention modules); 0 when it has none."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return float(module.p)
    rates = [v for k, v in vars(module).items() if "dropout" in k.lower() and isinstance(v, float)]
    return max(rates, default=0.0)


def check_deterministic_eval(model: nn.Module) -> None:
    """Raises ``ValueError`` naming the modules when the model is not one fixed function of each
    sample: BatchNorm on batch statistics couples samples, dropout in train mode randomizes the network.

    Raises:
        ValueError: Train-mode BatchNorm (or without running statistics), or a module in train
            mode with a positive dropout rate.
    """
    coupling = [
        path or "<root>"
        for path, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None)
    ]
    if coupling:
        raise ValueError(
            f"BatchNorm module(s) {coupling} use batch statistics (train mode or no running stats), "
            f"which couples samples: per-sample gradients and the Fisher are undefined. Call "
            f"model.eval() before estimating the Fisher."
        )
    random = [
        path or "<root>" for path, module in model.named_modules() if module.training and _dropout_rate(module) > 0
    ]
    if random:
        raise ValueError(
            f"module(s) {random} apply dropout in train mode: the Fisher would be that of a randomly thinned "
            f"network, different at every batch. Call model.eval() before estimating the Fisher."
        )


def build_plan(
    model: nn.Module, fallback: bool | None = False, only: Sequence[str] | None = None, layer_rules: bool = True
) -> Plan:
    """Finds a rule for every module that owns trainable parameters.

    Args:
        model: The model.
        fallback: Serve modules without a registered rule by ``TorchFuncRule``: ``None`` (with a
            warning, given by the estimators) or ``True``; ``False`` leaves them unsupported. Modules
            matched by behaviour (``ElementwiseScaleRule``) follow the same choice when their check fails.
        only: Names of the trainable parameters to plan for (a subnetwork); None: all of them.
        layer_rules: False for estimators that differentiate the whole model and never a layer
            (``FisherOperator``): no rule is looked up or checked, every entry's ``rule`` is None.

    Raises:
        ValueError: A module's own ``check`` refuses its configuration, the model is not a fixed
            per-sample function (``check_deterministic_eval``), or ``only`` names a parameter the
            model does not train.
    """
    check_deterministic_eval(model)
    canonical = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    if only is not None:
        unknown = sorted(set(only) - set(canonical.values()))
        if unknown:
            raise ValueError(
                f"parameters {unknown} are not trainable parameters of the model; choose among "
                f"model.named_parameters() with requires_grad=True."
            )
        canonical = {key: n for key, n in canonical.items() if n in only}
    entries = []
    for path, module in model.named_modules():
        local = [n for n, p in module.named_parameters(recurse=False) if id(p) in canonical]
        if not local:
            continue
        entries.append(PlanEntry(path, module, _checked_rule(path, module, fallback) if layer_rules else None, local))
    _absorb_directly_read_submodules(entries)
    _assign_shared_with_descendants(entries)
    owners: dict[int, list[PlanEntry]] = {}
    for entry in entries:
        for local_name in entry.local_names:
            parameter = entry.module.get_parameter(local_name)
            owners.setdefault(id(parameter), []).append(entry)
            own_name = f"{entry.path}.{local_name}" if entry.path else local_name
            if canonical[id(parameter)] != own_name:
                entry.canonical[local_name] = canonical[id(parameter)]
    tied = []
    for key, sharing in owners.items():
        if len(sharing) > 1:
            tied.append(canonical[key])
            for entry in sharing:
                entry.tied_names += [n for n in entry.local_names if id(entry.module.get_parameter(n)) == key]
    names = list(canonical.values())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    return Plan([e for e in entries if e.local_names], names, frozen, tied)


def _checked_rule(path: str, module: nn.Module, fallback: bool | None) -> AnyRule | None:
    """The module's registered rule, else the behaviour-matched or fallback rule ``fallback``
    allows, after the rule's ``check`` of the module."""
    rule = find_rule(module)
    if rule is None and is_scale_candidate(module):
        rule = ElementwiseScaleRule(f"{path or '<root>'} ({type(module).__name__})", fallback)
    elif rule is None and fallback is not False:
        rule = TorchFuncRule()
    if rule is not None:
        rule.check(module)
    return rule


READS_SUBMODULE_PARAMETERS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
"""Modules whose forward reads their submodules' parameters without calling the submodules
(``nn.MultiheadAttention`` and its ``out_proj``)."""


def _absorb_directly_read_submodules(entries: list[PlanEntry]) -> None:
    """A fallback module in ``READS_SUBMODULE_PARAMETERS`` takes over its submodules' parameters
    (dotted names): their own rules would never see a call."""
    for owner in [e for e in entries if isinstance(e.rule, TorchFuncRule)]:
        if not isinstance(owner.module, READS_SUBMODULE_PARAMETERS):
            continue
        prefix = f"{owner.path}." if owner.path else ""
        for entry in [e for e in entries if e is not owner and e.path.startswith(prefix)]:
            relative = entry.path[len(prefix) :]
            owner.local_names += [f"{relative}.{n}" for n in entry.local_names]
            entry.local_names = []


def _assign_shared_with_descendants(entries: list[PlanEntry]) -> None:
    """A parameter that a fallback module and one of its submodules both own is used inside the
    fallback module's forward, so counting it at both would count that use twice (Hugging Face's
    ``decoder.bias = self.bias``). It goes to the submodule when that has a layer rule (fast; the
    parameter-use check refuses the model should the ancestor also use it directly), else it stays
    with the ancestor, whose ``torch.func`` gradient covers the submodule's use."""
    for ancestor in entries:
        if not isinstance(ancestor.rule, TorchFuncRule):
            continue
        prefix = f"{ancestor.path}." if ancestor.path else ""
        descendants = [e for e in entries if e is not ancestor and e.path.startswith(prefix)]
        for local in list(ancestor.local_names):
            key = id(ancestor.module.get_parameter(local))
            sharing = [e for e in descendants if any(id(e.module.get_parameter(n)) == key for n in e.local_names)]
            if any(not isinstance(e.rule, TorchFuncRule) for e in sharing):
                ancestor.local_names.remove(local)
                continue
            for entry in sharing:
                entry.local_names = [n for n in entry.local_names if id(entry.module.get_parameter(n)) != key]


class Explanation(str):
    """A multi-line report that a REPL shows as the table itself rather than a quoted string."""

    def __repr__(self) -> str:
        return str(self)


def explain(model: nn.Module, fallback: bool | None = None) -> Explanation:
    """A table of the rule each parameterized module gets, and what is left out.

    Args:
        model: The model.
        fallback: As in the estimators: ``None`` (default) and ``True`` show the fallback where it
            would serve; ``False`` shows such modules as unsupported.

    Returns:
        The table, a ``str`` that displays as the table in a REPL and prints as one.
    """
    plan = build_plan(model, fallback=fallback)
    rows = [("module", "type", "rule", "parameters")]
    rows += [(e.path or "<root>", type(e.module).__name__, e.rule_name, ", ".join(e.local_names)) for e in plan.entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if plan.frozen:
        lines.append(f"left out (requires_grad=False): {', '.join(plan.frozen)}")
    if plan.tied:
        lines.append(f"tied (per-sample gradients summed over the modules sharing them): {', '.join(plan.tied)}")
    return Explanation("\n".join(lines))
