"""functional_nn: neural networks in PyTorch the functional way.

Networks are pure functions over params pytrees, gradients come from `torch.func`, optimizers are
`(init, update)` pairs with torch.optim's numerics, and `fit` trains without mutating anything.
"""

from . import blocks, checkpoint, dropout, init, layers, losses, metrics, norm, optim
from .callbacks import EarlyStopping
from .grads import per_example_grads
from .interop import from_module, mlp_from_state_dict, mlp_to_state_dict, to_module
from .layers import (
    elu,
    gelu,
    hardswish,
    identity,
    leaky_relu,
    linear,
    log_softmax,
    logsigmoid,
    mish,
    relu,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from .losses import binary_cross_entropy_with_logits, cross_entropy, huber, l1, mse, sse
from .networks import Network, dense, eval_shape, mlp, serial
from .optim import (
    GradientTransformation,
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    apply_updates,
    asgd,
    chain,
    nadam,
    radam,
    rmsprop,
    rprop,
    sgd,
)
from .plot import plot
from .train import FitResult, fit, fit_ensemble

__version__ = "0.1.0"  # pyproject's version; tests/test_version.py keeps the two equal

__all__ = [
    "EarlyStopping",
    "FitResult",
    "GradientTransformation",
    "Network",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "apply_updates",
    "asgd",
    "binary_cross_entropy_with_logits",
    "blocks",
    "chain",
    "checkpoint",
    "cross_entropy",
    "dense",
    "dropout",
    "elu",
    "eval_shape",
    "fit",
    "fit_ensemble",
    "from_module",
    "gelu",
    "hardswish",
    "huber",
    "identity",
    "init",
    "l1",
    "layers",
    "leaky_relu",
    "linear",
    "log_softmax",
    "logsigmoid",
    "losses",
    "metrics",
    "mish",
    "mlp",
    "mlp_from_state_dict",
    "mlp_to_state_dict",
    "mse",
    "nadam",
    "norm",
    "optim",
    "per_example_grads",
    "plot",
    "radam",
    "relu",
    "rmsprop",
    "rprop",
    "selu",
    "serial",
    "sgd",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "sse",
    "tanh",
    "to_module",
]
