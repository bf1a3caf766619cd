"""A QuantizedLinear of random Gaussian weights coded without a Hessian: the kernel tests' layers."""

import torch

from pvq.models import QuantizedLinear
from pvq.solvers import quantize_layer


def random_layer(codec, out_f: int, in_f: int, seed: int) -> QuantizedLinear:
    """``[out_f, in_f]`` weights from a seeded generator, coded by ``codec`` (identity Hessian, no feedback)."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g))
    res = quantize_layer(lin.weight.detach(), torch.eye(in_f, dtype=torch.float64), codec, error_feedback=False)
    return QuantizedLinear.from_stored(lin, codec, res.stored().tensors)
