// The host entry points of the CUDA extensions (defined in the .cu files, bound in the *_bind.cpp files): each
// writes its result into an argument (the first; the decode: out) and returns a pvq::Status (host_status.h), never
// throwing.
#pragma once
#include <ATen/core/Tensor.h>
#include "host_status.h"

namespace pvq {

// hadamard_rows.cu: out [B, p] (x's dtype) = the transform of each row of x [B, p]; signs float32 [p]
Status hadamard_rows(at::Tensor& out, at::Tensor x, at::Tensor signs, int64_t log2p, double scale,
                     bool inverse);
// ... out [B, h p] with the dense factor float32 [h, h]; signs float32 [h p]; scale = 1 / sqrt(p)
Status hadamard_dense_rows(at::Tensor& out, at::Tensor x, at::Tensor signs, at::Tensor factor,
                           int64_t log2p, double scale, bool inverse);

// split8_gemv.cu: y [B, out] = x [B <= 8, in] @ Q'^T of a split-order D = 8 layer
Status split8_gemv(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                   at::Tensor buckets, at::Tensor pair, at::Tensor leaves, at::Tensor inv_norms,
                   at::Tensor x, int64_t out_features, int64_t code_bits, int64_t K, int64_t group, int64_t shift);

// leaf8_gemv.cu: y [B, out] = x [B <= 8, in] @ Q'^T of a leaf-pair D = 8 layer
Status leaf8_gemv(at::Tensor& y, at::Tensor words, int64_t row_words, at::Tensor scales,
                  at::Tensor levels, at::Tensor leaves, at::Tensor inv_norms, at::Tensor x,
                  int64_t out_features, int64_t field_bits, int64_t leaf_bits, int64_t group);

// leafrow8_gemv.cu (with its parts leafrow8_gemv.mma.cu and leafrow8_gemv.quad_mma.cu, one extension): y [B, out] =
// x [B, in] @ Q'^T of a row-interleaved D = 8 layer (fields of leaf pairs, or of whole points where whole_points),
// 1 to 8 rows by multiply-adds, 1 to 16 on tensor cores (x read from global memory or staged in shared memory); the
// whole-layer decode is Triton's (pvq/kernels/triton_rows.py: faster on the H200, session 18). Each launches
// programmatically (programmatic dependent launch, sm_90 and later) where `programmatic` (session 31)
Status leafrow8_gemv(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                     at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                     int64_t gain_bits, bool whole_points, bool programmatic);
Status leafrow8_gemv_mma(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                         at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                         int64_t gain_bits, bool whole_points, bool x_from_global, bool programmatic);
// ... of a layer in the quad order (LeafRowsRuntime.quad_swapped): one row by multiply-adds, 1 to 16 on tensor cores
Status leafrow8_gemv_quad_one(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                              at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                              int64_t gain_bits, bool whole_points, bool programmatic);
Status leafrow8_gemv_quad_mma(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                              at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                              int64_t gain_bits, bool whole_points, bool x_from_global, bool programmatic);

}  // namespace pvq
