"""Continual-learning regularizers on top of the Fisher: EWC (separate, online; any structure, or a
Fisher you give it), Synaptic Intelligence and MAS."""

from fisherkit.regularizers.ewc import EWC
from fisherkit.regularizers.mas import MAS
from fisherkit.regularizers.regularizer import Regularizer
from fisherkit.regularizers.si import SynapticIntelligence

__all__ = ["EWC", "MAS", "Regularizer", "SynapticIntelligence"]
