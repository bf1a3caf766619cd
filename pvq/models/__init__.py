"""Hugging Face plumbing: methods, calibration data, the layer-by-layer driver,
the quantized linear module and checkpoints (layer 4).

``transformers`` is imported only where needed (checkpoint loading and the
quantizer registration in :mod:`pvq.models.hf_quantizer`).
"""

from .calibration import CalibrationError, calibration_batches, load_text, tokenize_text
from .checkpoint import load_quantized, quantization_config_dict, quantized_modules, save_quantized
from .driver import LayerStats, QuantizeReport, check_calibration, quantize_model
from .methods import (
    METHODS,
    LayerPlan,
    MethodSpec,
    QuantizeConfig,
    QuantizeError,
    QuantizePlan,
    decoder_layers,
    get_method,
    register_method,
)
from .qlinear import QuantizedLinear

__all__ = [
    "METHODS",
    "CalibrationError",
    "LayerPlan",
    "LayerStats",
    "MethodSpec",
    "QuantizeConfig",
    "QuantizeError",
    "QuantizePlan",
    "QuantizeReport",
    "QuantizedLinear",
    "calibration_batches",
    "check_calibration",
    "decoder_layers",
    "get_method",
    "load_quantized",
    "load_text",
    "quantization_config_dict",
    "quantize_model",
    "quantized_modules",
    "register_method",
    "save_quantized",
    "tokenize_text",
]
