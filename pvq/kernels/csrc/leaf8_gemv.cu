// Product y = x @ Q'^T of a D = 8 PVQ layer in the leaf-pair layout (pvq/kernels/leaf_layout.py) for one
// to eight input rows, with the P(4, k) leaf table in shared memory and the input in registers.
//
// The layout: per vector one field of F = LG + 2 A bits, gain | ga << LG | gb << (LG + A), ga and gb the
// rows of the vector's two halves in the table of the points of P(4, k <= K) (4 x int8 a word); the
// fields of a row back to back, each row padded to whole int32 words (row_words), one word more at
// the end. Against the split-order kernel (split8_gemv.cu) a vector needs no bucket, no split entry and
// no division: two masks give both leaves' byte addresses, so a vector costs two random 4-byte
// shared-memory gathers and one gain-level read (about 8 wavefronts a warp's 32 vectors against 17).
//
// Work layout (as split8_gemv.cu, session 6): one block per SM, persistent over a contiguous range of
// rows; G row groups of S warps; warp s of a group owns the vectors (s NV + i) 32 + lane, i < NV, whose
// x sits in registers for the whole kernel; RU rows a step with the next step's words loaded ahead;
// each lane's word offset and shift within a row are constants (rows are whole words); several input
// rows (B = 4 or 8) share each vector's decode. Arithmetic (as split8_gemv.cu, session 7): 16-bit
// inputs in half2 (x / 16; leaves biased by 128 in shared memory, exact half2 by a byte permute; the
// vector's sum then float32), float32 inputs in float32 with the reference's multiplier
// (level * scale) * inverse_norm[|y|^2].

#include "gemv8_common.cuh"
#include <algorithm>
#include <type_traits>
#ifndef PVQ_KERNEL_ONLY  // nvcc -DPVQ_KERNEL_ONLY -arch=sm_90 --resource-usage: the kernels alone, without torch
#include "aten_light.h"
#include "gemv8_host.h"
#include "host_api.h"
#endif

namespace {

using namespace pvq8;

// byte address of the first leaf: ga << 2 (ga at bits [LG, LG + A) of the field)
template <int LG>
__device__ __forceinline__ int leaf_a_byte(unsigned f, unsigned amask4) {
  if constexpr (LG >= 2) return static_cast<int>((f >> (LG - 2)) & amask4);
  else return static_cast<int>((f << (2 - LG)) & amask4);
}

constexpr int kLevelSlots = 16;  // gain levels first in shared memory: fixed addresses

struct LeafTables {
  const char* leaves;      // shared: the leaf words, byte-addressed
  const float* levels;     // shared [L]
  const float* inv_norms;  // shared [K^2 + 1] (float32 path)
  unsigned amask4;         // (2^A - 1) << 2
  int b_shift;             // LG + A - 2: the second leaf's byte address is (f >> b_shift) & amask4
};

template <int LG>
__device__ __forceinline__ void leaf_words(unsigned f, const LeafTables& tb, unsigned& wa, unsigned& wb) {
  wa = *reinterpret_cast<const unsigned*>(tb.leaves + leaf_a_byte<LG>(f, tb.amask4));
  wb = *reinterpret_cast<const unsigned*>(tb.leaves + ((f >> tb.b_shift) & tb.amask4));
}

// 16-bit inputs, B rows at once (xh[r]: row r's x / 16 as four half2; leaves biased by 128): adds each
// row's y . x * (level * scale / |y|) to acc[r]
template <int LG, int B>
__device__ __forceinline__ void leaf_dots(unsigned f, const __half2 (*xh)[4], float scale, const LeafTables& tb,
                                          float* acc) {
  unsigned wa, wb;
  leaf_words<LG>(f, tb, wa, wb);
  // (gemv8_common.cuh's leaf_pair computes the same; called here it reschedules 8 of this file's 10 kernel
  // instances, one with other opcodes: kept as it is until a GPU times the difference; sessions 13 and 15)
  __half2 a01, a23, b01, b23;
  leaf_halves(wa, a01, a23);
  leaf_halves(wb, b01, b23);
  __half2 n = __hmul2(a01, a01);
  n = __hfma2(a23, a23, n);
  n = __hfma2(b01, b01, n);
  n = __hfma2(b23, b23, n);
  const float mult = tb.levels[f & ((1u << LG) - 1u)] * scale *
                     rsqrt_approx(__half2float(__hadd(__low2half(n), __high2half(n))));
#pragma unroll
  for (int r = 0; r < B; ++r) {
    __half2 d = __hmul2(a01, xh[r][0]);
    d = __hfma2(a23, xh[r][1], d);
    d = __hfma2(b01, xh[r][2], d);
    d = __hfma2(b23, xh[r][3], d);
    acc[r] += __half2float(__hadd(__low2half(d), __high2half(d))) * mult;
  }
}

// float32 inputs, one row: y . x times the reference's multiplier
template <int LG>
__device__ __forceinline__ float leaf_dot_f32(unsigned f, const float* xv, float scale, const LeafTables& tb) {
  unsigned wa, wb;
  leaf_words<LG>(f, tb, wa, wb);
  const int n2 = __dp4a(static_cast<int>(wb), static_cast<int>(wb), __dp4a(static_cast<int>(wa), static_cast<int>(wa), 0));
  const float mult = (tb.levels[f & ((1u << LG) - 1u)] * scale) * tb.inv_norms[n2];
  return (leaf_dot(static_cast<int>(wa), xv) + leaf_dot(static_cast<int>(wb), xv + 4)) * mult;
}

template <typename T, int LG, int NV, int RU, int B>
__global__ void __launch_bounds__(1024, 1)
leaf8_gemv_kernel(const unsigned* __restrict__ words, int row_words, const __half* __restrict__ scales,
                  const float* __restrict__ levels, const int* __restrict__ leaves, int n_leaves,
                  const float* __restrict__ inv_norms, int n_norms, const T* __restrict__ x, T* __restrict__ y,
                  int out_features, int vpr, int field_bits, int leaf_bits, int group, int group_log2,
                  int warps_per_group, int rows_per_block, int batch) {
  constexpr bool kHalf = !std::is_same<T, float>::value;
  static_assert(kHalf || B == 1, "float32 inputs: one row");
  constexpr int L = 1 << LG;
  // shared: the gain levels at a fixed place (16 floats), the leaves, the inverse norms, the partial sums
  extern __shared__ int smem[];
  float* s_levels = reinterpret_cast<float*>(smem);
  int* s_leaves = smem + kLevelSlots;
  float* s_inv = reinterpret_cast<float*>(s_leaves + ((n_leaves + 3) & ~3));
  float* s_partial = s_inv + n_norms;  // [warps_per_group][rows_per_block][B]
  // the leaf table (48 KB at 3 bits) in 16-byte copies, biased by 128 for the half2 arithmetic
  const int n4 = n_leaves >> 2;
  const unsigned bias = kHalf ? 0x80808080u : 0u;
#pragma unroll 4
  for (int i = threadIdx.x; i < n4; i += blockDim.x) {
    int4 w = __ldg(reinterpret_cast<const int4*>(leaves) + i);
    w.x ^= bias, w.y ^= bias, w.z ^= bias, w.w ^= bias;
    reinterpret_cast<int4*>(s_leaves)[i] = w;
  }
  for (int i = (n4 << 2) + threadIdx.x; i < n_leaves; i += blockDim.x) s_leaves[i] = leaves[i] ^ bias;
  for (int i = threadIdx.x; i < L; i += blockDim.x) s_levels[i] = levels[i];
  if (!kHalf)
    for (int i = threadIdx.x; i < n_norms; i += blockDim.x) s_inv[i] = inv_norms[i];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int slice = warp % warps_per_group;
  const int row_group = warp / warps_per_group;
  const int row_groups = (blockDim.x >> 5) / warps_per_group;
  const int row0 = blockIdx.x * rows_per_block;
  const int rows = min(rows_per_block, out_features - row0);
  const int groups_per_row = vpr / group;

  // a lane's vectors; past the row: the row's last vector with x = 0 (adds 0, no branch); its word
  // offset and shift within every row
  int g[NV];
  unsigned bits[NV];  // v F: word bits >> 5, shift bits & 31 (the funnel shift takes the low five bits)
  using XReg = std::conditional_t<kHalf, __half2, float>;
  XReg xv[NV][B][kHalf ? 4 : 8];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int vi = (slice * NV + i) * 32 + lane;
    const int v = min(vi, vpr - 1);
    g[i] = group_log2 >= 0 ? (v >> group_log2) : v / group;
    bits[i] = static_cast<unsigned>(v) * static_cast<unsigned>(field_bits);
#pragma unroll
    for (int r = 0; r < B; ++r) {
      float xf[8];
      load8<T>(x + static_cast<size_t>(min(r, batch - 1)) * vpr * 8, v, vi < vpr && r < batch, xf);
#pragma unroll
      for (int t = 0; t < (kHalf ? 4 : 8); ++t) {
        if constexpr (kHalf) xv[i][r][t] = __floats2half2_rn(xf[2 * t] * 0.0625f, xf[2 * t + 1] * 0.0625f);
        else xv[i][r][t] = xf[t];
      }
    }
  }
  const LeafTables tb{reinterpret_cast<const char*>(s_leaves), s_levels, s_inv,
                      ((1u << leaf_bits) - 1u) << 2, LG + leaf_bits - 2};
  __syncthreads();

  const int stride = row_groups;
  // zeros until the first fetch (field 0: leaf rows 0, valid); a row past the block's keeps the words it
  // had (valid fields; its sum is not stored)
  unsigned lo[RU][NV] = {}, hi[RU][NV] = {};
  __half sc[RU][NV] = {};
  auto fetch = [&](int first) {
#pragma unroll
    for (int u = 0; u < RU; ++u) {
      const int row = row0 + first + u * stride;
      if (first + u * stride < rows) {
        const unsigned w0 = static_cast<unsigned>(row) * static_cast<unsigned>(row_words);  // < 2^31 (launcher)
        const unsigned s0 = static_cast<unsigned>(row) * static_cast<unsigned>(groups_per_row);
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          lo[u][i] = __ldg(words + (w0 + (bits[i] >> 5)));
          hi[u][i] = __ldg(words + (w0 + (bits[i] >> 5) + 1));  // the layout ends with one word more
          sc[u][i] = scales[s0 + g[i]];
        }
      }
    }
  };
  int first = row_group;
  if (first < rows) fetch(first);
  while (first < rows) {
    unsigned field[RU][NV];
    float scale[RU][NV];
#pragma unroll
    for (int u = 0; u < RU; ++u)
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        scale[u][i] = __half2float(sc[u][i]);
        field[u][i] = __funnelshift_r(lo[u][i], hi[u][i], bits[i]);  // bits above F: masked by the readers
      }
    const int next = first + RU * stride;
    if (next < rows) fetch(next);  // the next step's words, in flight while this step decodes
    float acc[RU * B];
#pragma unroll
    for (int k = 0; k < RU * B; ++k) acc[k] = 0.f;
#pragma unroll
    for (int u = 0; u < RU; ++u) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        if constexpr (kHalf) leaf_dots<LG, B>(field[u][i], xv[i], scale[u][i], tb, acc + u * B);
        else acc[u] += leaf_dot_f32<LG>(field[u][i], xv[i][0], scale[u][i], tb);
      }
    }
    const float sum = reduce_rows<RU * B>(acc, lane);
    constexpr int kRowLanes = 32 / (RU * B);
    const int k = lane / kRowLanes;
    const int local = first + (k / B) * stride;
    if (lane % kRowLanes == 0 && local < rows) s_partial[(slice * rows_per_block + local) * B + k % B] = sum;
    first = next;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < rows * B; t += blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < warps_per_group; ++s) sum += s_partial[s * rows_per_block * B + t];
    const int r = t % B;
    if (r < batch) y[static_cast<size_t>(r) * out_features + row0 + t / B] = pvq::from_float<T>(kHalf ? sum * 16.f : sum);
  }
}

#ifdef PVQ_KERNEL_ONLY
#define PVQ_INSTANTIATE(T, LG, NV, RU, B) template __global__ void leaf8_gemv_kernel<T, LG, NV, RU, B>(        \
    const unsigned*, int, const __half*, const float*, const int*, int, const float*, int, const T*, T*, int, int, \
    int, int, int, int, int, int, int);
PVQ_INSTANTIATE(__half, 2, 1, 4, 1)
PVQ_INSTANTIATE(__half, 2, 2, 2, 1)
PVQ_INSTANTIATE(__half, 2, 3, 1, 1)
PVQ_INSTANTIATE(__half, 2, 4, 1, 1)
PVQ_INSTANTIATE(__half, 1, 1, 4, 1)
PVQ_INSTANTIATE(__half, 1, 3, 1, 1)
PVQ_INSTANTIATE(__half, 2, 1, 2, 4)
PVQ_INSTANTIATE(__half, 2, 2, 1, 4)
PVQ_INSTANTIATE(__half, 2, 1, 1, 8)
PVQ_INSTANTIATE(float, 2, 3, 1, 1)
#endif

}  // namespace

#ifndef PVQ_KERNEL_ONLY

// y [B, out] (x's dtype) = x [B, in] @ Q'^T for B = 1 (any dtype), 2 to 4 rows of 16-bit inputs of at most
// 16384, 5 to 8 of at most 8192 (the limits pvq/kernels/cuda_leaf.py routes by).
namespace pvq {

Status leaf8_gemv(at::Tensor& y, at::Tensor words, int64_t row_words, at::Tensor scales,
                  at::Tensor levels, at::Tensor leaves, at::Tensor inv_norms, at::Tensor x,
                  int64_t out_features, int64_t field_bits, int64_t leaf_bits, int64_t group) {
  PVQ_TRY(gemv8::check_x(x));
  const int batch = static_cast<int>(x.size(0));
  const int rows_b = gemv8::kernel_rows(batch);
  PVQ_CHECK(field_bits >= 2 && field_bits <= 32 && leaf_bits >= 2, "fields of 2 to 32 bits");
  const int vpr = static_cast<int>(x.size(1) / 8);
  PVQ_CHECK(vpr % group == 0, "vectors per row must be a multiple of the group size");
  PVQ_CHECK(vpr <= 32 * 32 * 4, "in_features above 32768 are not taken by this kernel");
  PVQ_CHECK(row_words * 32 >= static_cast<int64_t>(vpr) * field_bits &&
            words.numel() == out_features * row_words + 1, "words: [out * row_words + 1]");
  const c10::cuda::CUDAGuard guard(x.device());
  y = at::empty({batch, out_features}, x.options());
  const int n_leaves = static_cast<int>(leaves.numel());
  const int n_norms = static_cast<int>(inv_norms.numel());
  const int L = static_cast<int>(levels.numel());
  const int group_log2 = gemv8::group_log2(group);
  const gemv8::WarpPlan plan = gemv8::warp_plan(vpr, batch);
  const int S = plan.warps, G = plan.groups, threads = plan.threads;
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const int sms = props->multiProcessorCount;
  // one block an SM, unless its rows' partial sums would not fit in shared memory (e.g. 28672 rows of 8192
  // at 8 input rows: 218 rows a block need 223 KB besides the tables); then more blocks of fewer rows
  const size_t table_bytes = sizeof(int) * (kLevelSlots + ((n_leaves + 3) & ~3) + n_norms);
  const size_t row_bytes = sizeof(float) * static_cast<size_t>(S) * rows_b;
  PVQ_CHECK(props->sharedMemPerBlockOptin >= table_bytes + row_bytes * G, "the leaf tables do not fit in shared memory");
  const int rows_cap = static_cast<int>((props->sharedMemPerBlockOptin - table_bytes) / row_bytes);
  const int grid = std::max({1, std::min(sms, gemv8::ceil_div(out_features, G)), gemv8::ceil_div(out_features, rows_cap)});
  const int rows_per_block = gemv8::ceil_div(out_features, grid);
  const size_t smem = table_bytes + row_bytes * rows_per_block;
  auto stream = c10::cuda::getCurrentCUDAStream();
#define PVQ_LAUNCH(T, TL, LGG, NVV, RUU, BB)                                                                     \
  do {                                                                                                           \
    auto kern = leaf8_gemv_kernel<T, LGG, NVV, RUU, BB>;                                                         \
    PVQ_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))); \
    kern<<<grid, threads, smem, stream>>>(                                                                       \
        reinterpret_cast<const unsigned*>(words.data_ptr<int32_t>()), static_cast<int>(row_words),              \
        reinterpret_cast<const __half*>(scales.data_ptr<at::Half>()), levels.data_ptr<float>(),                  \
        leaves.data_ptr<int32_t>(), n_leaves, inv_norms.data_ptr<float>(), n_norms,                              \
        reinterpret_cast<const T*>(x.data_ptr<TL>()), reinterpret_cast<T*>(y.data_ptr<TL>()),                    \
        static_cast<int>(out_features), vpr, static_cast<int>(field_bits), static_cast<int>(leaf_bits),          \
        static_cast<int>(group), group_log2, S, rows_per_block, batch);                                          \
    PVQ_LAUNCH_CHECK();                                                                                          \
  } while (0)
#define PVQ_BY_LEVELS(T, TL)                                                                                     \
  switch (L) {                                                                                                   \
    case 2: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 1, plan.nv, rows_b, batch); break;                                 \
    case 4: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 2, plan.nv, rows_b, batch); break;                                 \
    case 8: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 3, plan.nv, rows_b, batch); break;                                 \
    case 16: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 4, plan.nv, rows_b, batch); break;                                \
    default: PVQ_CHECK(false, "gain levels L must be 2, 4, 8 or 16, got ", L);                                 \
  }
  PVQ_BY_DTYPE(x, PVQ_BY_LEVELS);
  return {};
}

}  // namespace pvq
#endif
