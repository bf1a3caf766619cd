"""Hessian-aware quantization of one linear layer with any codec (GPTQ / block LDLQ)."""

from .hessian import HessianAccumulator, SolverError, damp, dead_inputs, inverse_cholesky_upper
from .ldlq import LayerResult, proxy_loss, quantize_layer, quantize_layer_reference

__all__ = [
    "HessianAccumulator",
    "LayerResult",
    "SolverError",
    "damp",
    "dead_inputs",
    "inverse_cholesky_upper",
    "proxy_loss",
    "quantize_layer",
    "quantize_layer_reference",
]
