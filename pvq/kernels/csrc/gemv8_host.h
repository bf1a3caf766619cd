// Host pieces of the column-split D = 8 products (split8_gemv.cu, leaf8_gemv.cu): the checks of x, how warps
// cover a row, and the choice of kernel instance (vectors a lane NV, rows decoded a step RU, input rows B).
#pragma once
#include <algorithm>
#include <ATen/core/Tensor.h>
#include <type_traits>
#include "host_status.h"

namespace pvq {
namespace gemv8 {

constexpr int kMaxRows = 8;  // input rows one launch decodes for: 4 or 8 (fewer are padded with zeros)

inline int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

// x [B, in]: 1 to kMaxRows rows, contiguous on CUDA; several rows only of fp16 or bf16 inputs of at most 16384
// (8192 for 5 to 8 rows); in a multiple of 8
inline Status check_x(const at::Tensor& x) {
  PVQ_CHECK(x.is_cuda() && x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= kMaxRows && x.is_contiguous(),
            "x must be [B <= ", kMaxRows, ", in] contiguous on CUDA");
  const int64_t batch = x.size(0);
  PVQ_CHECK(batch == 1 || (x.scalar_type() != at::kFloat && x.size(1) <= (batch > 4 ? 8192 : 16384)),
            "several rows: fp16 or bf16 inputs of at most 16384 (8192 for 5 to 8 rows), got ",
            c10::toString(x.scalar_type()), " [", batch, ", ", x.size(1), "]");
  PVQ_CHECK(x.size(1) % 8 == 0, "in_features must be a multiple of 8");
  return {};
}

// The kernel's B for ``batch`` input rows: 1, 4 or 8
inline int kernel_rows(int batch) { return batch == 1 ? 1 : (batch > 4 ? 8 : 4); }

// log2(group) for a power of two, else -1 (the kernels then divide)
inline int group_log2(int64_t group) {
  if (group & (group - 1)) return -1;
  int g = 0;
  while ((1LL << g) < group) ++g;
  return g;
}

// A row of vpr vectors is covered by ``warps`` (S) warps of ``nv`` vectors a lane (nv as small as 16 warps allow,
// up to 3; past 12288 inputs up to 32 warps of up to 4; several input rows: up to 32 warps of one or two vectors,
// x's registers times the rows); a block holds ``groups`` (G = 32 / S) such row groups
struct WarpPlan {
  int nv, warps, groups, threads;
};

inline WarpPlan warp_plan(int vpr, int batch) {
  int nv = ceil_div(vpr, 32 * 16);
  if (nv > 3 || batch > 1) nv = ceil_div(vpr, 32 * 32);
  const int warps = ceil_div(vpr, 32 * nv);
  const int groups = std::max(1, 32 / warps);
  return {nv, warps, groups, 32 * warps * groups};
}

}  // namespace gemv8
}  // namespace pvq

// LAUNCH(T, TL, LP, NV, RU, B) for the instance that takes ``batch`` rows (kernel rows ``rows_b``) with ``nv``
// vectors a lane: one row decodes RU = 4, 2, 1, 1 rows a step for NV = 1..4; several input rows (4 or 8; never
// instantiated for float32) one or two vectors a lane
#define PVQ_GEMV8_BY_NV(LAUNCH, T, TL, LP, nv, rows_b, batch)                                                    \
  if ((batch) > 1) {                                                                                             \
    constexpr int kB4 = std::is_same<T, float>::value ? 1 : 4;                                                   \
    constexpr int kB8 = std::is_same<T, float>::value ? 1 : 8;                                                   \
    if ((rows_b) == 8) LAUNCH(T, TL, LP, 1, 1, kB8);                                                             \
    else if ((nv) == 1) LAUNCH(T, TL, LP, 1, 2, kB4);                                                            \
    else LAUNCH(T, TL, LP, 2, 1, kB4);                                                                           \
  } else {                                                                                                       \
    switch (nv) {                                                                                                \
      case 1: LAUNCH(T, TL, LP, 1, 4, 1); break;                                                                 \
      case 2: LAUNCH(T, TL, LP, 2, 2, 1); break;                                                                 \
      case 3: LAUNCH(T, TL, LP, 3, 1, 1); break;                                                                 \
      default: LAUNCH(T, TL, LP, 4, 1, 1); break;                                                                \
    }                                                                                                            \
  }
