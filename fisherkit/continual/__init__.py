"""Continual learning on top of the Fisher: EWC (separate, online; any structure), Synaptic
Intelligence and MAS, with Split/Permuted scenarios on real data and their metrics."""

from fisherkit.continual.datasets import Dataset, load_digits, load_fashion_mnist, load_idx_directory
from fisherkit.continual.ewc import EWC
from fisherkit.continual.experiment import METHODS, Method, accuracy_matrix, choose_strength, run_methods
from fisherkit.continual.mas import MAS
from fisherkit.continual.model import MaskedMLP
from fisherkit.continual.regularizer import Regularizer
from fisherkit.continual.scenarios import SETTINGS, Scenario, Task, permuted_scenario, split_scenario
from fisherkit.continual.si import SynapticIntelligence
from fisherkit.continual.training import Metrics, TrainConfig

__all__ = [
    "EWC",
    "MAS",
    "METHODS",
    "SETTINGS",
    "Dataset",
    "MaskedMLP",
    "Method",
    "Metrics",
    "Regularizer",
    "Scenario",
    "SynapticIntelligence",
    "Task",
    "TrainConfig",
    "accuracy_matrix",
    "choose_strength",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_directory",
    "permuted_scenario",
    "run_methods",
    "split_scenario",
]
