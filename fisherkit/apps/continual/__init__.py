"""The continual-learning experiment harness: Split/Permuted scenarios on real data, the training
loop, the methods with their strength search, metrics, the ``cl`` command and the demo. The
regularizers themselves are the library's (``fisherkit.regularizers``)."""

from fisherkit.apps.continual.datasets import Dataset, load_digits, load_fashion_mnist, load_idx_directory
from fisherkit.apps.continual.experiment import METHODS, Method, accuracy_matrix, choose_strength, run_methods
from fisherkit.apps.continual.model import MaskedMLP
from fisherkit.apps.continual.scenarios import SETTINGS, Scenario, Task, permuted_scenario, split_scenario
from fisherkit.apps.continual.training import Metrics, TrainConfig

__all__ = [
    "METHODS",
    "SETTINGS",
    "Dataset",
    "MaskedMLP",
    "Method",
    "Metrics",
    "Scenario",
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
