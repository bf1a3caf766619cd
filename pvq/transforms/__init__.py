"""Orthogonal rotations that make weights and activations incoherent (Hadamard family)."""

from .hadamard import (
    BlockHadamard,
    RandomizedHadamard,
    fwht,
    fwht_reference,
    hadamard_matrix,
    hadamard_orders,
    has_hadamard,
    rotate_weight,
    unrotate_weight,
)
from .rotation import LayerRotation

__all__ = [
    "BlockHadamard",
    "LayerRotation",
    "RandomizedHadamard",
    "fwht",
    "fwht_reference",
    "hadamard_matrix",
    "hadamard_orders",
    "has_hadamard",
    "rotate_weight",
    "unrotate_weight",
]
