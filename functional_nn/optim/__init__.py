"""Optimizers as pure `(init, update)` pairs over pytrees, with torch.optim's numerics.

No `sparse_adam`: torch.optim.SparseAdam needs sparse gradients and moves the moments of only the
entries a gradient holds (lazy Adam). Gradients from torch.func are dense, and a dense gradient
cannot tell an absent entry from one present with value 0 (an embedding row seen with zero
gradient is present in torch's coalesced sparse grad), so no dense transform equals it; treating
"nonzero" as "present" would differ exactly there. `adam` on the dense gradient is the
functional equivalent of an embedding trained densely.
"""

from . import schedules
from .adaptive import (
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByNadamState,
    ScaleByRadamState,
    ScaleByRmsState,
    ScaleByRssState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
)
from .aliases import adagrad, adam, adamax, adamw, nadam, radam, rmsprop, sgd
from .base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    apply_updates,
    chain,
)
from .classic import (
    PolyakAverageState,
    ScaleByAdadeltaState,
    ScaleByRpropState,
    adadelta,
    asgd,
    polyak_average,
    rprop,
    scale_by_adadelta,
    scale_by_rprop,
)
from .groups import (
    MaskedNode,
    MaskedState,
    MultiTransformState,
    masked,
    multi_transform,
    param_groups,
    param_names,
    set_to_zero,
)
from .lbfgs import LBFGSState, lbfgs
from .matrix import AdafactorState, ScaleByMuonState, adafactor, muon, scale_by_muon
from .plateau import ReduceOnPlateauState, reduce_on_plateau
from .transforms import (
    ScaleByLearningRateState,
    TraceState,
    add_decayed_weights,
    clip_by_global_norm,
    clip_by_value,
    current_lr,
    scale,
    scale_by_learning_rate,
    trace,
)
from .wrappers import (
    ApplyIfFiniteState,
    AveragedState,
    LookaheadState,
    MultiStepsState,
    apply_if_finite,
    averaged_params,
    ema,
    lookahead,
    multi_steps,
    swa,
)

__all__ = [
    "AdafactorState",
    "ApplyIfFiniteState",
    "AveragedState",
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "LBFGSState",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MultiStepsState",
    "MultiTransformState",
    "PolyakAverageState",
    "ReduceOnPlateauState",
    "ScaleByAdadeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByLearningRateState",
    "ScaleByMuonState",
    "ScaleByNadamState",
    "ScaleByRadamState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "TraceState",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "apply_if_finite",
    "apply_updates",
    "asgd",
    "averaged_params",
    "chain",
    "clip_by_global_norm",
    "clip_by_value",
    "current_lr",
    "ema",
    "lbfgs",
    "lookahead",
    "masked",
    "multi_steps",
    "multi_transform",
    "muon",
    "nadam",
    "param_groups",
    "param_names",
    "polyak_average",
    "radam",
    "reduce_on_plateau",
    "rmsprop",
    "rprop",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "schedules",
    "set_to_zero",
    "sgd",
    "swa",
    "trace",
]
