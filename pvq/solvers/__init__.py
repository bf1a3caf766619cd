"""Hessian-aware quantization of one linear layer with any codec (GPTQ / block LDLQ)."""

from pvq.errors import SolverError

from .hessian import HessianAccumulator, damp, dead_inputs, inverse_cholesky_upper
from .importance import IMPORTANCES, importance
from .ldlq import LayerResult, proxy_loss, quantize_layer, quantize_layer_reference
from .linear import LinearResult, SolverConfig, quantize_linear

__all__ = [
    "IMPORTANCES",
    "HessianAccumulator",
    "LayerResult",
    "LinearResult",
    "SolverConfig",
    "SolverError",
    "damp",
    "dead_inputs",
    "importance",
    "inverse_cholesky_upper",
    "proxy_loss",
    "quantize_layer",
    "quantize_layer_reference",
    "quantize_linear",
]
