"""Natural-gradient optimization with fisherkit's Fisher representations."""

from fisherkit.optim.damping import LevenbergMarquardt
from fisherkit.optim.ngd import NGD
from fisherkit.optim.preconditioner import CURVATURES, NGDPreconditioner

__all__ = ["CURVATURES", "NGD", "LevenbergMarquardt", "NGDPreconditioner"]
