"""Natural-gradient optimization with fisherkit's Fisher representations."""

from fisherkit.optim.damping import LevenbergMarquardt
from fisherkit.optim.ngd import NGD
from fisherkit.optim.preconditioner import NGDPreconditioner

__all__ = ["NGD", "LevenbergMarquardt", "NGDPreconditioner"]
