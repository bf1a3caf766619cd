"""The two rotations of one linear layer: ``W' = U W V^T``.

A :class:`LayerRotation` is described by the layer's sizes and two seeds
(that is all a checkpoint stores); the randomized Hadamard transforms are
rebuilt from them on first use. It applies the rotations to the weight and
Hessian offline and to activations online, so a layer can run in rotated
coordinates: ``y = U^T (W' (V x))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pvq.errors import TransformError

from .hadamard import RandomizedHadamard, rotate_weight, unrotate_weight

__all__ = ["LayerRotation"]


@dataclass(frozen=True)
class LayerRotation:
    """``U`` (size ``out_features``, seed ``out_seed``) and ``V`` (``in_features``, ``in_seed``)."""

    out_features: int
    in_features: int
    out_seed: int
    in_seed: int
    _transforms: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("out_features", "in_features", "out_seed", "in_seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or (name.endswith("features") and v < 1):
                raise TransformError(f"LayerRotation.{name} must be a {'positive ' if 'features' in name else ''}integer, got {v!r}")

    @classmethod
    def from_seeds(cls, out_features: int, in_features: int, seeds: dict | None) -> LayerRotation | None:
        """From a checkpoint's ``{"out_seed", "in_seed"}`` (None: no rotation)."""
        if seeds is None:
            return None
        try:
            return cls(int(out_features), int(in_features), int(seeds["out_seed"]), int(seeds["in_seed"]))
        except (KeyError, TypeError) as e:
            raise TransformError(f"rotation must be {{'out_seed': int, 'in_seed': int}}, got {seeds!r}") from e

    def seeds(self) -> dict[str, int]:
        return {"out_seed": self.out_seed, "in_seed": self.in_seed}

    @property
    def u(self) -> RandomizedHadamard:
        return self._pair()[0]

    @property
    def v(self) -> RandomizedHadamard:
        return self._pair()[1]

    def _pair(self) -> tuple[RandomizedHadamard, RandomizedHadamard]:
        if not self._transforms:
            self._transforms.extend([
                RandomizedHadamard(self.out_features, self.out_seed),
                RandomizedHadamard(self.in_features, self.in_seed),
            ])
        return self._transforms[0], self._transforms[1]

    # -- offline
    def rotate_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``U W V^T`` for ``w: [out, in]``."""
        return rotate_weight(w, self.u, self.v)

    def unrotate_weight(self, q: torch.Tensor) -> torch.Tensor:
        """``U^T Q' V`` for ``q: [out, in]`` in rotated coordinates."""
        return unrotate_weight(q, self.u, self.v)

    def rotate_hessian(self, h: torch.Tensor) -> torch.Tensor:
        """``V H V^T`` for a symmetric ``h: [in, in]`` (the Hessian of the rotated inputs ``V x``)."""
        a = self.v.forward(h)  # H V^T
        return self.v.forward(a.T.contiguous()).T.contiguous()  # V (H V^T)

    # -- online
    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        """``V x`` for activations ``x: [..., in]``."""
        return self.v.forward(x)

    def unrotate_output(self, y: torch.Tensor) -> torch.Tensor:
        """``U^T y'`` for rotated outputs ``y': [..., out]``."""
        return self.u.inverse(y)
