"""The argument checks of the optimizers: the package's one set (`functional_nn._checks`), under
the names optim's modules import."""

from .._checks import flags, integer, non_negative, number

__all__ = ["flags", "integer", "non_negative", "number"]
