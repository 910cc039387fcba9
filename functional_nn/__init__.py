"""functional_nn: neural networks in PyTorch the functional way.

Networks are pure functions over params pytrees, gradients come from `torch.func`, optimizers are
`(init, update)` pairs with torch.optim's numerics, and `fit` trains without mutating anything.
"""

from . import init, layers, losses, optim
from .layers import linear, relu
from .losses import mse, sse
from .networks import Network, mlp
from .optim import (
    GradientTransformation,
    adagrad,
    adam,
    adamax,
    adamw,
    apply_updates,
    chain,
    nadam,
    radam,
    rmsprop,
    sgd,
)
from .train import FitResult, fit

__all__ = [
    "FitResult",
    "GradientTransformation",
    "Network",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "apply_updates",
    "chain",
    "fit",
    "init",
    "layers",
    "linear",
    "losses",
    "mlp",
    "mse",
    "nadam",
    "optim",
    "radam",
    "relu",
    "rmsprop",
    "sgd",
    "sse",
]
