"""The errors fisherkit raises for models and estimates it cannot serve correctly."""


class UnsupportedModelError(ValueError):
    """The model, as configured, cannot be served by the requested engine or structure."""


class NonFiniteFisherError(ValueError):
    """A Fisher statistic is NaN or Inf (the message names the parameter or layer)."""
