"""Layer rules: per-layer math, registered by module type and looked up along the class MRO."""

from fisherkit.rules import conv, conv_transpose, embedding, linear, norm  # noqa: F401  (registers the built-in rules)
from fisherkit.rules.base import LayerCall, LayerRule
from fisherkit.rules.fallback import TorchFuncRule
from fisherkit.rules.registry import find_rule, register_rule

__all__ = ["LayerCall", "LayerRule", "TorchFuncRule", "find_rule", "register_rule"]
