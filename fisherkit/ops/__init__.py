"""Numeric primitives with a torch reference and compiled backends, behind one capability table
(``fisherkit.ops.dispatch``)."""

from fisherkit.ops.dispatch import BACKENDS, Implementation, implementation, implementations
from fisherkit.ops.extension import extension_status
from fisherkit.ops.kfac_factor import kfac_factor_update, kfac_factor_update_reference
from fisherkit.ops.sqgrad import sqgrad_accumulate, sqgrad_accumulate_reference
from fisherkit.ops.sqnorm import persample_sqnorm, persample_sqnorm_reference

__all__ = [
    "BACKENDS",
    "Implementation",
    "extension_status",
    "implementation",
    "implementations",
    "kfac_factor_update",
    "kfac_factor_update_reference",
    "persample_sqnorm",
    "persample_sqnorm_reference",
    "sqgrad_accumulate",
    "sqgrad_accumulate_reference",
]
