"""Runtime backends that run activation-quantized PVQ layers as integer products.

``y = U^T (sum_j gx_j gw_j (x_pts_j . w_pts_j)) + b``: the input is rotated with the weights'
randomized Hadamard and quantized to integer points per token (the layer's activation
quantizer), the weight's PVQ points are unranked once at ``prepare`` (int8, with one float32
multiplier ``level * scale / |y|`` per vector), and :mod:`pvq.kernels.int_product` computes
the product. Two backends:

* ``act-int`` - ``torch._int_mm`` per slice; on CPU and CUDA (chosen automatically on CPU; on
  CUDA only by name: one launch per slice of D inputs, 34-600x an fp16 matmul on an H100);
* ``act-int-triton`` - the Triton kernel; on CUDA (chosen automatically there), and on CPU
  under ``TRITON_INTERPRET=1`` (tests, by name).

Both quantize the input through :func:`~pvq.kernels.act_projection.act_projector`: the Triton
projection on CUDA where it takes the quantizer (``act-int-triton`` also under the CPU
interpreter), else the quantizer's PyTorch reference.

Measured on an H100 (docs/act_quant_speed_h100.md): the Triton product's ``dot`` kernel is
2-4x slower than an fp16 matmul of the same shape at 1 and 16 tokens, 3-4x at 512 (at one
token, with 16 x 128 tiles, 1.1-1.7x in session 5; the ``gemv`` kernel was slower); ``act-dense`` (fake-quantized
activations times the decoded fp16 weight) is faster but multiplies in the model's dtype:
in an fp16 model its perplexity moved by 0.3% against the integer paths, which agree with
each other and with the CPU. Name it where speed matters more
(``set_backend(model, "act-dense")``, ``pvq eval --backend act-dense``).

They support layers whose weight codec is PVQ with K <= 127 (int8 points), whose activation
points fit int8 (pvq with K_a <= 127, rtn up to 8 bits), quantized in the weights' rotated
coordinates (``act rotate`` on, or a layer without rotation), and whose activation and weight
vectors nest (see :func:`~pvq.kernels.int_product.common_slice`). Other activation-quantized
layers run through ``act-dense`` (the float reference in :mod:`pvq.models.activations`).
"""

from __future__ import annotations

import torch

from pvq.codecs.pyramid import PyramidCodec
from pvq.errors import QuantizeError
from pvq.models.activations import input_points
from pvq.models.backends import Backend, register_backend

from .act_projection import act_projector
from .int_product import INT8_MAX, IntOperand, common_slice, int_product_intmm, int_product_triton, intmm_weights
from .availability import triton_runs_on

__all__ = ["IntProductBackend", "IntProductTritonBackend", "int_weight_operand", "int_product_problem"]


def int_product_problem(layer) -> str | None:
    """Why ``layer`` cannot run as an integer product (None: it can)."""
    act = getattr(layer, "act_quant", None)
    if act is None:
        return "the layer does not quantize its activations"
    codec = layer.codec
    if not isinstance(codec, PyramidCodec):
        return f"its weights are {codec.name}, not PVQ points"
    if codec.pulses > INT8_MAX:
        return f"its weight points need K={codec.pulses} > 127 (not int8)"
    if layer.act_quantizer.point_dtype != torch.int8:
        return f"its activation points reach {layer.act_quantizer.max_abs} (not int8)"
    if not act.rotate and layer.rotation is not None:
        return "its activations are quantized before the rotation (not in the weights' coordinates)"
    try:
        common_slice(layer.act_quantizer.slice, codec.dim)
    except QuantizeError as e:
        return str(e)
    return None


def int_weight_operand(layer, device: torch.device) -> IntOperand:
    """The layer's weight as int8 PVQ points ``[out, in]`` and float32 multipliers ``[out, in / D]``."""
    y, m = layer.codec.decode_points(layer.codes(), layer.per_vector_scales())
    o, n, d = layer.out_features, layer.in_features, layer.codec.dim
    return IntOperand(y.to(torch.int8).reshape(o, n).to(device), m.float().reshape(o, n // d).to(device))


class _IntBackend(Backend):
    quantizes_activations = True

    def supports(self, layer, device):
        return device.type in ("cpu", "cuda") and int_product_problem(layer) is None

    def is_current(self, runtime, device, dtype):
        probe = runtime.get("device")
        return probe is not None and probe.device == device and probe.dtype == dtype

    def _product(self, runtime, x: IntOperand) -> torch.Tensor:
        raise NotImplementedError

    def linear(self, layer, runtime, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        a = input_points(layer, flat, runtime["act"])
        y = self._product(runtime, IntOperand(a.points, a.gains))
        y = layer.unrotate_output(y.to(x.dtype))
        if layer.bias is not None:
            y = y + layer.bias.to(y.dtype)
        return y.reshape(*shape[:-1], layer.out_features)


class IntProductBackend(_IntBackend):
    """Integer product through ``torch._int_mm`` per slice (CPU and CUDA)."""

    name = "act-int"
    priority = 10

    def automatic_on(self, device):
        return device.type == "cpu"  # on CUDA one launch per slice: by name there (module docstring)

    def prepare(self, layer, device, dtype):
        w = int_weight_operand(layer, device)
        s = common_slice(layer.act_quantizer.slice, layer.codec.dim)
        wp, wg = intmm_weights(w, s)
        return {"weight": w, "intmm": (wp, wg), "act": act_projector(layer.act_quantizer, device),
                "device": torch.empty(0, device=device, dtype=dtype)}

    def _product(self, runtime, x):
        return int_product_intmm(x, runtime["weight"], runtime["intmm"])


class IntProductTritonBackend(_IntBackend):
    """Integer product through the Triton kernel (CUDA; CPU only by name under the interpreter)."""

    name = "act-int-triton"
    priority = 20

    def supports(self, layer, device):
        return triton_runs_on(device) and super().supports(layer, device)

    def automatic_on(self, device):
        return device.type == "cuda"  # on CPU the interpreter is a test device, not a runtime

    def prepare(self, layer, device, dtype):
        return {"weight": int_weight_operand(layer, device),
                "act": act_projector(layer.act_quantizer, device, interpreter=True),
                "device": torch.empty(0, device=device, dtype=dtype)}

    def _product(self, runtime, x):
        return int_product_triton(x, runtime["weight"])


register_backend(IntProductBackend())
register_backend(IntProductTritonBackend())
