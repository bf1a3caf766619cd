"""The two rotations of one linear layer: ``W' = U W V^T``.

A :class:`LayerRotation` is described by the layer's sizes and two seeds
(that is all a checkpoint stores); the randomized Hadamard transforms are
rebuilt from them on first use. It applies the rotations to the weight and
Hessian offline and to activations online, so a layer can run in rotated
coordinates: ``y = U^T (W' (V x))``. Either side may be absent (its seed
None, the identity): under the ``fused`` rotation plan a layer keeps only the
input side ``V`` (``W' = W V^T``, one online rotation of its input), and that
side may be block-diagonal (``in_block``: a :class:`~pvq.transforms.BlockHadamard`,
the same randomized Hadamard on each chunk of ``in_block`` inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pvq.errors import TransformError

from .hadamard import BlockHadamard, RandomizedHadamard, rotate_weight, unrotate_weight

__all__ = ["LayerRotation"]


@dataclass(frozen=True)
class LayerRotation:
    """``U`` (size ``out_features``, seed ``out_seed``) and ``V`` (``in_features``, ``in_seed``);
    a side whose seed is None is the identity (at least one side is present). ``in_block``: ``V``
    is block-diagonal, the randomized Hadamard of order ``in_block`` on each chunk of that many
    inputs (None: one transform of all ``in_features``)."""

    out_features: int
    in_features: int
    out_seed: int | None
    in_seed: int | None
    in_block: int | None = None
    _transforms: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("out_features", "in_features", "out_seed", "in_seed"):
            v = getattr(self, name)
            if v is None and name.endswith("seed"):
                continue
            if not isinstance(v, int) or isinstance(v, bool) or (name.endswith("features") and v < 1):
                raise TransformError(f"LayerRotation.{name} must be a {'positive ' if 'features' in name else ''}integer, got {v!r}")
        if self.out_seed is None and self.in_seed is None:
            raise TransformError("LayerRotation needs at least one side (out_seed or in_seed); use None for no rotation")
        if self.in_block is not None:
            b = self.in_block
            if not isinstance(b, int) or isinstance(b, bool) or b < 1 or self.in_features % b:
                raise TransformError(
                    f"LayerRotation.in_block must be a positive integer dividing in_features={self.in_features}, "
                    f"got {b!r}")
            if self.in_seed is None:
                raise TransformError("LayerRotation.in_block needs the input side (in_seed); drop in_block or give in_seed")

    @classmethod
    def from_seeds(cls, out_features: int, in_features: int, seeds: dict | None) -> LayerRotation | None:
        """From a checkpoint's ``{"out_seed", "in_seed"}`` and, where the input side is block-diagonal,
        ``"in_block"`` (None: no rotation; a seed None: that side absent)."""
        if seeds is None:
            return None
        try:
            block = seeds.get("in_block")
            return cls(int(out_features), int(in_features), *(None if seeds[k] is None else int(seeds[k])
                                                               for k in ("out_seed", "in_seed")),
                       None if block is None else int(block))
        except (KeyError, TypeError, AttributeError) as e:
            raise TransformError(f"rotation must be {{'out_seed': int | None, 'in_seed': int | None"
                                 f"[, 'in_block': int]}}, got {seeds!r}") from e

    def seeds(self) -> dict[str, int | None]:
        """What a checkpoint stores (``in_block`` only where set, so whole-input rotations keep the
        older form)."""
        out = {"out_seed": self.out_seed, "in_seed": self.in_seed}
        if self.in_block is not None:
            out["in_block"] = self.in_block
        return out

    @property
    def u(self) -> RandomizedHadamard | None:
        """The output side (None: identity)."""
        return self._pair()[0]

    @property
    def v(self) -> RandomizedHadamard | BlockHadamard | None:
        """The input side (None: identity; a :class:`BlockHadamard` where ``in_block`` is set)."""
        return self._pair()[1]

    @property
    def online_rotations(self) -> int:
        """Rotations of activations per forward: one per present side."""
        return (self.out_seed is not None) + (self.in_seed is not None)

    def _pair(self) -> tuple[RandomizedHadamard | None, RandomizedHadamard | BlockHadamard | None]:
        if not self._transforms:
            if self.in_seed is None:
                v = None
            elif self.in_block is None:
                v = RandomizedHadamard(self.in_features, self.in_seed)
            else:
                v = BlockHadamard(self.in_features, self.in_block, self.in_seed)
            self._transforms.extend([
                None if self.out_seed is None else RandomizedHadamard(self.out_features, self.out_seed), v,
            ])
        return self._transforms[0], self._transforms[1]

    # -- offline
    def rotate_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``U W V^T`` for ``w: [out, in]``."""
        return rotate_weight(w, self.u, self.v)

    def unrotate_weight(self, q: torch.Tensor) -> torch.Tensor:
        """``U^T Q' V`` for ``q: [out, in]`` in rotated coordinates."""
        return unrotate_weight(q, self.u, self.v)

    def rotate_hessian(self, h: torch.Tensor, rows_per_chunk: int | None = None) -> torch.Tensor:
        """``V H V^T`` for a symmetric ``h: [in, in]`` (the Hessian of the rotated inputs ``V x``).

        Computed ``rows_per_chunk`` rows (then columns) at a time (default: a sixteenth of ``in``, at
        least 256) into two ``[in, in]`` buffers, so the transform's temporaries are a chunk's, not a
        whole matrix's (a 70B down_proj's Hessian is 6.1 GiB in float64: about ``h`` and two such
        matrices are alive, where the whole-matrix transforms held five). The same operations on the
        same rows as the whole-matrix form ``(V (H V^T)^T)^T``: bit for bit on the CPU (test) and, for
        a 28672-input Hessian in chunks of 2048 rows, on an H200.
        """
        if self.v is None:
            return h
        n = h.shape[0]
        if rows_per_chunk is None:
            rows_per_chunk = max(256, -(-n // 16))
        if not isinstance(rows_per_chunk, int) or rows_per_chunk < 1:
            raise TransformError(f"rows_per_chunk must be a positive integer, got {rows_per_chunk!r}")
        m = torch.empty_like(h)
        for i in range(0, n, rows_per_chunk):
            m[i : i + rows_per_chunk] = self.v.forward(h[i : i + rows_per_chunk])  # H V^T
        out = torch.empty_like(h)
        for i in range(0, n, rows_per_chunk):  # rows i.. of (H V^T)^T V^T, stored as columns i.. of its transpose
            out[:, i : i + rows_per_chunk] = self.v.forward(m[:, i : i + rows_per_chunk].T.contiguous()).T
        return out

    # -- online
    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        """``V x`` for activations ``x: [..., in]``."""
        return x if self.v is None else self.v.forward(x)

    def unrotate_output(self, y: torch.Tensor) -> torch.Tensor:
        """``U^T y'`` for rotated outputs ``y': [..., out]``."""
        return y if self.u is None else self.u.inverse(y)
