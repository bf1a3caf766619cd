"""Hugging Face plumbing: methods, calibration data, the layer-by-layer driver,
the quantized linear module, its runtime backends and checkpoints (layer 4).
"""

from pvq.errors import CalibrationError, CheckpointError, QuantizeError

from .backends import BACKENDS, Backend, register_backend, select_backend
from .calibration import calibration_batches, check_calibration, load_text, tokenize_text
from .checkpoint import load_quantized, save_quantized
from .devices import resolve_device
from .driver import LayerStats, QuantizeReport, quantize_model
from .experts import QuantizedExperts
from .format import online_rotations_per_block, quantization_config_dict, quantized_modules, read_quantization_config
from .lora import BlockHook, LoraRecovery
from .merging import MergeReport, has_merged_linears, merge_shared_input_linears, route_gated_mlps
from .methods import METHODS, MethodSpec, QuantizeConfig, decoder_layers, get_method, register_method
from .plan import LayerPlan, QuantizePlan
from .rotation_plan import ROTATION_PLANS, fold_rotations
from .activations import ActivationQuant, ActQuantLinear
from .qlinear import (
    QuantizedEmbedding,
    QuantizedLinear,
    bits_per_activation,
    keep_stored_on_host,
    prepare_for_compile,
    runtime_tensor_list,
    set_activation_quant,
    set_backend,
)
from .structure import FAMILY_RULES, decoder_blocks

__all__ = [
    "ActivationQuant",
    "ActQuantLinear",
    "BACKENDS",
    "FAMILY_RULES",
    "METHODS",
    "Backend",
    "BlockHook",
    "CalibrationError",
    "CheckpointError",
    "LayerPlan",
    "LayerStats",
    "LoraRecovery",
    "MergeReport",
    "MethodSpec",
    "QuantizeConfig",
    "QuantizeError",
    "QuantizedEmbedding",
    "QuantizePlan",
    "QuantizeReport",
    "QuantizedExperts",
    "QuantizedLinear",
    "ROTATION_PLANS",
    "calibration_batches",
    "check_calibration",
    "decoder_blocks",
    "decoder_layers",
    "fold_rotations",
    "get_method",
    "has_merged_linears",
    "keep_stored_on_host",
    "load_quantized",
    "load_text",
    "merge_shared_input_linears",
    "online_rotations_per_block",
    "prepare_for_compile",
    "quantization_config_dict",
    "quantize_model",
    "quantized_modules",
    "read_quantization_config",
    "register_backend",
    "register_method",
    "resolve_device",
    "route_gated_mlps",
    "runtime_tensor_list",
    "save_quantized",
    "select_backend",
    "set_activation_quant",
    "set_backend",
    "bits_per_activation",
    "tokenize_text",
]
