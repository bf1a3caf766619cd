"""The online activation quantization on a device: a Triton kernel where one takes the quantizer, else the reference.

An :class:`ActProjector` quantizes rows ``x [n, in]`` -> :class:`~pvq.codecs.activation.ActPoints`
(points ``[n, in]`` int8/int16, gains ``[n, J]`` float32) for one quantizer on one device.
:func:`act_projector` builds it from :data:`ACT_KERNELS` (first match wins; one entry now:
``pvq-triton``, :mod:`pvq.kernels.triton_act`, the pvq quantizer's projection and gains in one
launch, two with quantized gains); quantizers no kernel takes run the reference,
:func:`act_projection_reference` (the quantizer's own ``quantize``). Kernels run on CUDA, and
on CPU under ``TRITON_INTERPRET=1`` only when asked for (``interpreter=True``: tests, the
``act-int-triton`` backend). Layers use it through
:func:`pvq.models.activations.input_points` (``quantize=`` the projector).

The kernel path checks shapes and dtypes but not finiteness (that check is a host sync): a
vector with NaN or inf gets a NaN gain where the reference raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pvq.codecs.activation import ActivationQuantizer, ActPoints, PyramidActivationQuantizer
from pvq.errors import QuantizeError

from .availability import triton_runs_on

__all__ = ["ACT_KERNELS", "ActKernel", "ActProjector", "act_projection_reference", "act_projection_triton",
           "act_projector", "pvq_triton_problem"]

PVQ_TRITON_MAX_DIM = 128
"""Largest vector size D the kernel takes (its tiles hold ``BLOCK_V x next_pow2(D)`` float64)."""


class ActProjector:
    """Rows ``x [n, in]`` -> :class:`ActPoints` for one quantizer on one device; ``name``: the
    kernel (an :data:`ACT_KERNELS` entry) or ``"reference"``; ``tables``: its device tensors."""

    def __init__(self, name: str, run: Callable[[torch.Tensor], ActPoints], tables: tuple[torch.Tensor, ...] = ()):
        self.name, self._run, self.tables = name, run, tables

    def __call__(self, x: torch.Tensor) -> ActPoints:
        return self._run(x)

    def __repr__(self) -> str:
        return f"ActProjector({self.name})"


@dataclass(frozen=True)
class ActKernel:
    """A kernel of the activation quantization: ``problem(quantizer)`` says why it cannot run one
    (None: it can), ``build(quantizer, device)`` makes the :class:`ActProjector`."""

    name: str
    problem: Callable[[ActivationQuantizer], str | None]
    build: Callable[[ActivationQuantizer, torch.device], ActProjector]


def act_projection_reference(quantizer: ActivationQuantizer, x: torch.Tensor) -> ActPoints:
    """The plain reference: ``quantizer.quantize(x)`` (PyTorch ops, :mod:`pvq.codecs.activation`)."""
    return quantizer.quantize(x)


# ---------------------------------------------------------------- pvq on Triton


def pvq_triton_problem(q: ActivationQuantizer) -> str | None:
    """Why the pvq kernel cannot run quantizer ``q`` (None: it can)."""
    if not isinstance(q, PyramidActivationQuantizer):
        return f"{q.name} activations are not pyramid projections"
    if q.dim > PVQ_TRITON_MAX_DIM:
        return f"D={q.dim} > {PVQ_TRITON_MAX_DIM}"
    if q.pulses > 32767:
        return f"K={q.pulses} does not fit int16 points"
    c = q.codec
    if c is not None:
        if c.search != "greedy" or c.gain_target != "projection":
            return f"the kernel runs the greedy search with projection gains, not {c.search}/{c.gain_target}"
        if c.gain.num_levels & (c.gain.num_levels - 1):
            return f"{c.gain.num_levels} gain levels are not a power of two"
    return None


def _pvq_triton(q: PyramidActivationQuantizer, device: torch.device) -> ActProjector:
    from .triton_act import act_project

    tables: tuple[torch.Tensor, ...] = ()
    if q.codec is not None:
        g = q.codec.gain
        th = torch.cat([g.thresholds.double(), torch.tensor([float("inf")], dtype=torch.float64)])
        tables = (th.to(device), g.levels.float().to(device))

    def run(x: torch.Tensor) -> ActPoints:
        q.check_rows(x, finite=False)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.double()  # the reference's math runs on x.double(): same values
        points, gains = act_project(x.contiguous(), q.dim, q.pulses, q.point_dtype, *tables)
        return ActPoints(points, gains)

    return ActProjector("pvq-triton", run, tables)


ACT_KERNELS: tuple[ActKernel, ...] = (ActKernel("pvq-triton", pvq_triton_problem, _pvq_triton),)


def _kernel_device(device: torch.device, interpreter: bool) -> bool:
    return triton_runs_on(device) and (device.type == "cuda" or interpreter)


def act_projector(quantizer: ActivationQuantizer, device: torch.device | str,
                  interpreter: bool = False) -> ActProjector:
    """The first kernel of :data:`ACT_KERNELS` that runs ``quantizer`` on ``device`` (CUDA; CPU under
    ``TRITON_INTERPRET=1`` when ``interpreter``), else the reference."""
    device = torch.device(device)
    if _kernel_device(device, interpreter):
        for k in ACT_KERNELS:
            if k.problem(quantizer) is None:
                return k.build(quantizer, device)
    return ActProjector("reference", quantizer.quantize)


def act_projection_triton(quantizer: ActivationQuantizer, x: torch.Tensor) -> ActPoints:
    """``quantizer``'s points of rows ``x`` through its Triton kernel (CUDA, or CPU under
    ``TRITON_INTERPRET=1``); a :class:`QuantizeError` where no kernel takes it (benchmarks, tests)."""
    if not _kernel_device(x.device, interpreter=True):
        raise QuantizeError(f"no Triton on {x.device} (CUDA, or CPU with TRITON_INTERPRET=1)")
    problems = [f"{k.name}: {p}" for k in ACT_KERNELS if (p := k.problem(quantizer)) is not None]
    if len(problems) == len(ACT_KERNELS):
        raise QuantizeError(f"no activation kernel runs {quantizer.describe()} ({'; '.join(problems)})")
    return act_projector(quantizer, x.device, interpreter=True)(x)
