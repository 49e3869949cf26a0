"""Engines: how a batch's per-sample gradients are seen (layer rules or whole-model vmap), through one
protocol, ``Engine.visit`` with a ``Visitor``."""

from fisherkit.engines.base import ModelCall
from fisherkit.engines.engine import Engine
from fisherkit.engines.layerwise import LayerwiseEngine
from fisherkit.engines.visitors import Visitor
from fisherkit.engines.vmap import VmapEngine

__all__ = ["Engine", "LayerwiseEngine", "ModelCall", "Visitor", "VmapEngine"]
