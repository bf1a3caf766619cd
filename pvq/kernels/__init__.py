"""GPU kernels (layer 5): runtime layouts, Triton kernels with their PyTorch references, and the
runtime backends that run quantized layers through them.

Importing this package registers its backends with :mod:`pvq.models.backends`; it imports and
runs without Triton or a GPU (the backends then report that they support nothing).
"""

from .act_projection import ACT_KERNELS, ActKernel, ActProjector, act_projection_reference, act_projector
from .availability import triton_available, triton_runs_on
from .backend import (
    FUSED_MAX_ROWS,
    KERNEL_FAMILIES,
    ROTATION_KERNELS,
    KernelFamily,
    RotationKernel,
    TritonBackend,
    kernel_family,
)
from .int_backend import IntProductBackend, IntProductTritonBackend
from .int_product import IntOperand, int_product, int_product_intmm, int_product_reference, int_product_triton
from .runtime import (
    PyramidRuntime,
    TableRuntime,
    pyramid_decode_reference,
    pyramid_matmul_reference,
    pyramid_runtime,
    table_decode_reference,
    table_matmul_reference,
    table_runtime,
)
from .search import register_search_kernels
from .split_runtime import (
    SplitRuntime,
    split_decode_reference,
    split_matmul_reference,
    split_points_reference,
    split_runtime,
    split_runtime_supports,
)

register_search_kernels()  # the solver's greedy fill on CUDA tensors through Triton, where it runs

__all__ = [
    "register_search_kernels",
    "ACT_KERNELS",
    "ActKernel",
    "ActProjector",
    "act_projection_reference",
    "act_projector",
    "KERNEL_FAMILIES",
    "KernelFamily",
    "ROTATION_KERNELS",
    "RotationKernel",
    "kernel_family",
    "SplitRuntime",
    "split_decode_reference",
    "split_matmul_reference",
    "split_points_reference",
    "split_runtime",
    "split_runtime_supports",
    "FUSED_MAX_ROWS",
    "IntOperand",
    "IntProductBackend",
    "IntProductTritonBackend",
    "int_product",
    "int_product_intmm",
    "int_product_reference",
    "int_product_triton",
    "TritonBackend",
    "triton_available",
    "triton_runs_on",
    "PyramidRuntime",
    "TableRuntime",
    "pyramid_decode_reference",
    "pyramid_matmul_reference",
    "pyramid_runtime",
    "table_decode_reference",
    "table_matmul_reference",
    "table_runtime",
]
