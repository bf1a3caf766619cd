"""Layer Hessians for Hessian-aware quantization.

For a linear layer ``y = W x`` and the proxy loss ``E ||(W - Q) x||^2``, the
Hessian with respect to each row of ``W`` is ``H = E[x x^T]`` (``[in, in]``),
estimated from calibration inputs. The proxy loss of a quantized weight is
``tr((W - Q) H (W - Q)^T)``.

* :class:`HessianAccumulator` - running ``E[x x^T]`` in float64, weighted by
  token count, the same bits for any thread count (token chunks of
  :data:`HESSIAN_CHUNK_TOKENS`).
* :func:`damp` - add ``rel * mean(diag H)`` to the diagonal; inputs that never
  fire (``H_ii == 0``) get ``H_ii = 1`` (their weights are zeroed by the solver,
  as GPTQ does).
* :func:`inverse_cholesky_upper` - ``U`` upper triangular with ``H^-1 = U^T U``,
  raising :class:`SolverError` when ``H`` is not positive definite.
"""

from __future__ import annotations

import torch

from pvq.errors import SolverError

__all__ = [
    "HESSIAN_CHUNK_TOKENS",
    "HessianAccumulator",
    "SolverError",
    "damp",
    "dead_inputs",
    "inverse_cholesky_upper",
]


HESSIAN_CHUNK_TOKENS = 512
"""Tokens per ``x^T x`` product when accumulating a Hessian. A CPU BLAS splits a long inner
(token) dimension across threads and adds the parts in an order that depends on the thread
count (MKL in torch 2.13, float64, 2 threads against 1: from 1,024 tokens on at 16 to 128
inputs, from 2,048 at 256, from 4,096 at 384 and 512); with at most 512 tokens per product,
added one after another, the sum is the same for any thread count."""


class HessianAccumulator:
    """Running ``H = E[x x^T]`` over calibration tokens of a layer with ``in_features`` inputs.

    ``add(x)`` takes ``x: [..., in_features]`` (every leading index is one token);
    the mean is over all tokens seen, so batches of different sizes weigh by
    their token counts. Sums are kept in float64 on ``device``, added
    :data:`HESSIAN_CHUNK_TOKENS` tokens at a time in token order, so the result
    does not depend on the number of threads.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        if not isinstance(in_features, int) or in_features < 1:
            raise SolverError(f"in_features must be a positive integer, got {in_features!r}")
        self.in_features = in_features
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Accumulate the tokens of ``x: [..., in_features]``."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise SolverError(
                f"Hessian of a layer with {self.in_features} inputs got activations of shape "
                f"{tuple(x.shape)}; the last dim must be {self.in_features}"
            )
        self._check_not_taken()
        x = x.reshape(-1, self.in_features)
        if not torch.isfinite(x).all():
            raise SolverError(
                "calibration activations hold NaN or inf; check the model in float32 "
                "or use other calibration data"
            )
        for start in range(0, x.shape[0], HESSIAN_CHUNK_TOKENS):
            # converted a chunk at a time: no float64 copy of the whole batch (a 70B down_proj's
            # batch of 16k tokens would be 3.5 GiB); the same values, added in the same order
            part = x[start : start + HESSIAN_CHUNK_TOKENS].to(device=self.sum.device, dtype=torch.float64)
            self.sum.addmm_(part.T, part)
        self.tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """``E[x x^T]``: float64 ``[in, in]``."""
        self._check_readable()
        return self.sum / self.tokens

    def take(self) -> torch.Tensor:
        """``E[x x^T]`` (float64 ``[in, in]``, equal to :meth:`hessian`'s) computed in the sum's own
        memory, which the accumulator gives up: no second ``[in, in]`` matrix. Use it once, when no
        other layer reads this accumulator."""
        self._check_readable()
        h, self.sum = self.sum, None
        return h.div_(self.tokens)

    def _check_not_taken(self) -> None:
        if self.sum is None:
            raise SolverError("this accumulator's Hessian was taken (take()); start a new one")

    def _check_readable(self) -> None:
        self._check_not_taken()
        if self.tokens == 0:
            raise SolverError("no calibration tokens were added; call add() with activations first")

    def __repr__(self) -> str:
        return f"HessianAccumulator(in_features={self.in_features}, tokens={self.tokens})"


def _check_square(h: torch.Tensor) -> None:
    if h.dim() != 2 or h.shape[0] != h.shape[1]:
        raise SolverError(f"Hessian must be a square [in, in] matrix, got shape {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise SolverError("Hessian holds NaN or inf; recollect it from finite activations")


def dead_inputs(h: torch.Tensor) -> torch.Tensor:
    """Bool mask ``[in]`` of inputs whose activations were always zero (``H_ii == 0``)."""
    _check_square(h)
    return torch.diagonal(h) == 0


def damp(h: torch.Tensor, rel: float = 0.01) -> torch.Tensor:
    """Damped float64 copy of ``h``: dead inputs get ``H_ii = 1``, then ``rel * mean(diag)``
    is added to the diagonal (``mean`` over the live inputs' diagonal before damping)."""
    _check_square(h)
    if not (isinstance(rel, (int, float)) and rel >= 0):
        raise SolverError(f"relative damping must be a number >= 0, got {rel!r}")
    h = h.to(torch.float64).clone()
    diag = torch.diagonal(h)  # a view: edits go into h
    dead = diag == 0
    diag[dead] = 1.0
    live = diag[~dead]
    mean = float(live.mean()) if live.numel() else 1.0
    diag += rel * mean
    return h


def inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper-triangular ``U`` (float64) with ``h^-1 = U^T U``.

    Raises :class:`SolverError` if ``h`` is not positive definite (after the
    caller's damping). ``h`` is let go once factored: a caller that passes a
    temporary (``inverse_cholesky_upper(damp(h))``) has it freed before the
    inverse is formed, one ``[in, in]`` float64 matrix fewer at the peak.
    """
    _check_square(h)
    h = h.to(torch.float64)
    low, info = torch.linalg.cholesky_ex(h)
    n = h.shape[0]
    del h
    if int(info) != 0:
        raise SolverError(
            f"the damped Hessian is not positive definite (Cholesky failed at column "
            f"{int(info) - 1} of {n}); raise the damping (damp_rel) or collect more "
            "calibration tokens (at least as many as the layer has inputs)"
        )
    hinv = torch.cholesky_inverse(low)
    del low  # one [in, in] float64 matrix fewer at the peak (down_proj of a 70B: 6.1 GiB each)
    u, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0:
        raise SolverError(
            "the inverse of the damped Hessian is numerically not positive definite; "
            "raise the damping (damp_rel) or collect more calibration tokens"
        )
    return u
