"""The integer product of quantized activations and quantized weights.

Both operands are integer points with one gain per slice of ``s`` consecutive inputs
(:class:`pvq.codecs.activation.ActPoints` for activations; PVQ weight vectors for weights)::

    y[t, o] = sum_j  gx[t, j] * gw[o, j] * (x_pts[t, js:(j+1)s] . w_pts[o, js:(j+1)s])

The inner products run on int8 points (every |entry| <= 127) with int32 accumulation; the
gains are applied per slice in float32. Three implementations:

* :func:`int_dots_reference` / :func:`int_product_reference` - plain PyTorch in int64 (exact
  dots) and float64 (the scaling): the reference the others are tested against;
* :func:`int_product_intmm` - one ``torch._int_mm`` (int8 x int8 -> int32) per slice, on CPU
  and CUDA (CUDA's wants ``s``, ``out`` multiples of 8 and more than 16 rows: padded here);
* :func:`int_product_triton` - one Triton launch (:mod:`pvq.kernels.triton_int`): per tile of
  tokens x outputs, a loop over the slices of ``tl.dot`` on int8 tiles (int32), scaled and
  summed in float32 registers; for one token, int32 dots on the CUDA cores instead of MMA
  tiles. On CPU it runs under ``TRITON_INTERPRET=1`` (tests).

Slices: the product needs the gains of both operands constant on each slice, so the slice is
the smaller of the two operands' gain widths and the larger must be a multiple of it
(:func:`common_slice`; activations of rtn have one gain per token and pair with anything).
"""

from __future__ import annotations

import torch

from pvq.errors import QuantizeError

__all__ = [
    "IntOperand",
    "common_slice",
    "int_dots_reference",
    "int_product",
    "int_product_intmm",
    "int_product_reference",
    "int_product_triton",
]

INT8_MAX = 127


class IntOperand:
    """Points ``[rows, in]`` (int8/int16) and gains ``[rows, J]`` (float32) of one operand."""

    def __init__(self, points: torch.Tensor, gains: torch.Tensor):
        if points.dim() != 2 or gains.dim() != 2 or points.shape[0] != gains.shape[0]:
            raise QuantizeError(f"points [rows, in] and gains [rows, J] expected, got {tuple(points.shape)}, "
                                f"{tuple(gains.shape)}")
        if points.shape[1] % gains.shape[1]:
            raise QuantizeError(f"{gains.shape[1]} gain slices do not tile {points.shape[1]} inputs")
        self.points, self.gains = points, gains

    @property
    def width(self) -> int:
        return self.points.shape[1] // self.gains.shape[1]

    def gains_at(self, s: int) -> torch.Tensor:
        """Gains per slice of width ``s`` (``s`` divides this operand's width): ``[rows, in / s]``."""
        return self.gains.repeat_interleave(self.width // s, dim=1)


def common_slice(a: int, b: int, what: str = "") -> int:
    """The slice width for operands whose gains cover ``a`` and ``b`` inputs (one a multiple of
    the other), or a :class:`QuantizeError` saying what to change."""
    small, large = min(a, b), max(a, b)
    if large % small:
        raise QuantizeError(
            f"the integer product needs the activation vectors and the weight vectors aligned: gains over {a} "
            f"and {b} inputs do not nest{what}; use the weights' D for the activations (--act-dim {b})"
        )
    return small


def _check(x: IntOperand, w: IntOperand) -> int:
    if x.points.shape[1] != w.points.shape[1]:
        raise QuantizeError(f"activations have {x.points.shape[1]} inputs, weights {w.points.shape[1]}")
    return common_slice(x.width, w.width)


# ---------------------------------------------------------------- reference


def int_dots_reference(x_points: torch.Tensor, w_points: torch.Tensor, s: int) -> torch.Tensor:
    """Exact per-slice inner products ``[T, O, in / s]`` (int64) of integer points."""
    t, n = x_points.shape
    o = w_points.shape[0]
    xs = x_points.to(torch.int64).reshape(t, n // s, s)
    ws = w_points.to(torch.int64).reshape(o, n // s, s)
    return torch.einsum("tjs,ojs->toj", xs, ws)


def int_product_reference(x: IntOperand, w: IntOperand) -> torch.Tensor:
    """``y [T, O]`` float32: exact int64 dots, scaled and summed in float64, rounded once."""
    s = _check(x, w)
    dots = int_dots_reference(x.points, w.points, s).double()
    g = x.gains_at(s).double().unsqueeze(1) * w.gains_at(s).double().unsqueeze(0)  # [T, O, J]
    return (dots * g).sum(2).float()


# ---------------------------------------------------------------- torch._int_mm


def _pad_to(t: torch.Tensor, dim: int, multiple: int, at_least: int = 0) -> torch.Tensor:
    size = t.shape[dim]
    want = max(at_least, -(-size // multiple) * multiple)
    if want == size:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, want - size]
    return torch.nn.functional.pad(t, pad)


def intmm_weights(w: IntOperand, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight points as ``[J, O', s']`` int8 slices (zero-padded for CUDA's ``_int_mm``; each slice is
    passed transposed, the column-major right operand cuBLASLt's int8 kernels take) and gains ``[J, O]``."""
    o, n = w.points.shape
    j = n // s
    wp = w.points.to(torch.int8).reshape(o, j, s).transpose(0, 1)  # [J, O, s]
    if w.points.is_cuda:
        wp = _pad_to(_pad_to(wp, 1, 8), 2, 8)
    return wp.contiguous(), w.gains_at(s).float().T.contiguous()


def int_product_intmm(x: IntOperand, w: IntOperand, weights: tuple | None = None) -> torch.Tensor:
    """``y [T, O]`` float32: one ``torch._int_mm`` per slice (int32), gains applied in float32.
    ``weights``: :func:`intmm_weights` of ``w`` prepared once (else built here)."""
    s = _check(x, w)
    t, n = x.points.shape
    o = w.points.shape[0]
    j = n // s
    wp, wg = weights if weights is not None else intmm_weights(w, s)
    xp = x.points.to(torch.int8).reshape(t, j, s).transpose(0, 1)  # [J, T, s]
    if xp.is_cuda:
        xp = _pad_to(_pad_to(xp, 2, 8), 1, 8, at_least=17)
    xp = xp.contiguous()
    xg = x.gains_at(s).float()
    acc = torch.zeros(xp.shape[1], wp.shape[1], dtype=torch.float32, device=xp.device)
    for i in range(j):
        d = torch._int_mm(xp[i], wp[i].t())[:t, :o]
        acc[:t, :o] += d.float() * (xg[:, i : i + 1] * wg[i].unsqueeze(0))
    return acc[:t, :o]


# ---------------------------------------------------------------- Triton


def int_product_triton(x: IntOperand, w: IntOperand, config: dict | None = None) -> torch.Tensor:
    """``y [T, O]`` float32 from one Triton kernel (see the module docstring); ``config``: tiles and
    split of the slices (:func:`pvq.kernels.triton_int.int_product_config`)."""
    from .triton_int import int_product_kernel

    s = _check(x, w)
    return int_product_kernel(x.points.to(torch.int8).contiguous(), x.gains_at(s).float().contiguous(),
                              w.points.to(torch.int8).contiguous(), w.gains_at(s).float().contiguous(), s, config)


IMPLEMENTATIONS = {"reference": int_product_reference, "intmm": int_product_intmm, "triton": int_product_triton}


def int_product(x: IntOperand, w: IntOperand, impl: str = "intmm") -> torch.Tensor:
    """The integer product through implementation ``impl`` (``reference``, ``intmm``, ``triton``)."""
    if impl not in IMPLEMENTATIONS:
        raise QuantizeError(f"unknown integer product {impl!r}; choose one of {sorted(IMPLEMENTATIONS)}")
    if impl != "reference":
        for name, op in (("activation", x), ("weight", w)):
            p = op.points
            if p.dtype != torch.int8 and p.numel() and (int(p.max()) > INT8_MAX or int(p.min()) < -INT8_MAX - 1):
                raise QuantizeError(f"{name} points exceed int8 [-128, 127]; {impl} needs int8: use 'reference'")
    return IMPLEMENTATIONS[impl](x, w)
