"""functional_nn: neural networks in PyTorch the functional way.

Networks are pure functions over params pytrees, gradients come from `torch.func`, optimizers are
`(init, update)` pairs with torch.optim's numerics, and `fit` trains without mutating anything.
"""

from . import checkpoint, init, layers, losses, optim
from .callbacks import EarlyStopping
from .layers import linear, relu
from .losses import mse, sse
from .networks import Network, mlp
from .optim import GradientTransformation, adam, apply_updates, chain, sgd
from .train import FitResult, fit, fit_ensemble

__all__ = [
    "EarlyStopping",
    "FitResult",
    "GradientTransformation",
    "Network",
    "adam",
    "apply_updates",
    "chain",
    "checkpoint",
    "fit",
    "fit_ensemble",
    "init",
    "layers",
    "linear",
    "losses",
    "mlp",
    "mse",
    "optim",
    "relu",
    "sgd",
    "sse",
]
