import os
import sys

import pytest
import torch

if not torch.cuda.is_available():  # Triton's CPU interpreter; must precede the first import of triton, which
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the frameworks the integration tests import may do

sys.path.insert(0, os.path.dirname(__file__))

from fisherkit.estimators.structures import STRUCTURES  # noqa: E402
from fisherkit.rules import registry  # noqa: E402


def _restore(table: dict, saved: dict, builtin_prefix: str) -> None:
    """Puts back what ``table`` held, keeping entries fisherkit itself added meanwhile (rules it
    registers lazily, such as the Hugging Face ones on first use)."""
    for key in [k for k in table if k not in saved]:
        if not type(table[key]).__module__.startswith(builtin_prefix):
            del table[key]
    table.update(saved)


@pytest.fixture(autouse=True)
def restored_threads():
    """The command line sets torch's thread count for its process; tests that run it in-process
    leave the next test the count it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolated_registries():
    """Rules and structures a test registers are gone after it: no test sees another's."""
    rules, structures = dict(registry._RULES), dict(STRUCTURES)
    yield
    _restore(registry._RULES, rules, "fisherkit.rules")
    for name in [n for n in STRUCTURES if n not in structures]:
        del STRUCTURES[name]
    STRUCTURES.update(structures)
