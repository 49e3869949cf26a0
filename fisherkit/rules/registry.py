"""The rule registry: a decorator keyed by module type, looked up along the class MRO."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from fisherkit.rules.base import LayerRule

AnyRule = LayerRule[Any, Any]
"""A rule of any module type (the registry holds rules for many)."""
_RULES: dict[type[nn.Module], AnyRule] = {}


def register_rule(*module_types: type[nn.Module]) -> Callable[[type[AnyRule]], type[AnyRule]]:
    """Class decorator registering a ``LayerRule`` for module types (and their subclasses).

    A later registration for the same type replaces the earlier one, so users can override the
    built-in rules::

        @fisherkit.register_rule(MyLayer)
        class MyLayerRule(fisherkit.LayerRule[MyLayer]):
            def per_sample_grads(self, module, call, grad_output, names): ...
    """
    if not module_types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in module_types):
        raise TypeError(f"register_rule takes nn.Module subclasses; got {module_types!r}")

    def decorate(rule_class: type[AnyRule]) -> type[AnyRule]:
        if not (isinstance(rule_class, type) and issubclass(rule_class, LayerRule)):
            raise TypeError(f"@register_rule decorates LayerRule subclasses; got {rule_class!r}")
        for module_type in module_types:
            _RULES[module_type] = rule_class()
        return rule_class

    return decorate


def find_rule(module: nn.Module) -> AnyRule | None:
    """The rule registered for the nearest class in ``type(module).__mro__``, or ``None``.

    Rules for Hugging Face layers (``fisherkit.rules.huggingface``) are registered on the first
    lookup after ``transformers`` has been imported.
    """
    if "transformers" in sys.modules and "fisherkit.rules.huggingface" not in sys.modules:
        importlib.import_module("fisherkit.rules.huggingface")
    for cls in type(module).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return None
