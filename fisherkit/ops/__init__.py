"""Numeric primitives with a torch reference and compiled backends, behind one dispatch point."""

from fisherkit.ops.dispatch import BACKENDS, choose_backend
from fisherkit.ops.extension import extension_status
from fisherkit.ops.sqgrad import sqgrad_accumulate, sqgrad_accumulate_reference

__all__ = ["BACKENDS", "choose_backend", "extension_status", "sqgrad_accumulate", "sqgrad_accumulate_reference"]
