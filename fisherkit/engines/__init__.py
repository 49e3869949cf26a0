"""Engines: how squared per-sample gradients are computed (layer rules or whole-model vmap)."""

from fisherkit.engines.base import Engine, ModelCall
from fisherkit.engines.layerwise import LayerwiseEngine
from fisherkit.engines.vmap import VmapEngine

__all__ = ["Engine", "LayerwiseEngine", "VmapEngine", "ModelCall"]
