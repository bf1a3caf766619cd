// Product y = x @ Q'^T of a split-order PVQ layer for one to eight input rows, D = 8, N(8, K) < 2^22,
// codes <= 32 bits, with every decode table in shared memory and the input in registers.
//
// Why CUDA: on an H100 the Triton kernels are bound by their table gathers through L1 (Nsight: two
// thirds of the 24 M sectors a 11008 x 4096 product reads are "excessive", one sector per thread
// for each P(4, k) leaf), and Triton 3.6 has no indexed gather from shared memory.
//
// Layout (session 6): one block per SM (up to 1024 threads), persistent over a contiguous range of
// rows. A block is G row groups of S warps; warp s of a group owns the input slice of vectors
// (s NV + i) 32 + lane, i < NV, for the whole kernel, so its piece of x sits in registers (no load of
// x in the loop); for each row of its group it decodes its NV vectors (consecutive codes across
// lanes: coalesced), sums x . y * mult, reduces over the warp and leaves the partial in shared
// memory; the block adds the S partials of each row at the end (no atomics, no zeroing). RU rows are
// decoded per step with their code words loaded one step ahead. Several input rows (B = 4 or 8,
// session 7): each vector is decoded once and multiplied by every row's registers; the RU x B sums of
// a step are reduced over the warp together.
//
// Arithmetic (session 7): 16-bit inputs multiply in half2 - x / 16 in registers, the int8 leaves
// (stored biased by 128) made exact half2 by a byte permute, the vector's products and its squared
// norm in HFMA2, its sum then float32 (rows summed in float32; the 16 back at the end), 1 / |y| from
// the special-function unit; float32 inputs convert int8 leaf coordinates without I2F (the bits
// 0x4B000000 | (c + 128) minus 2^23 + 128) and sum in float32, bit for bit the reference. The split's
// division is one multiply-high (M = ceil(2^31 / d) on 2 rest), and the tables are addressed in bytes
// (the block lays the pair table out as such): bucket -> split entry -> the two leaf addresses in
// five integer instructions. Tables (pvq/kernels/cuda_split.py, from pvq/kernels/split_lean.py):
// buckets uint32 {S_8(K, j0 + 1) << 5 | j0} by index >> shift; pair int4 {S_8(K, j), d = N(4, K - j),
// M, leaf_off[j] | leaf_off[K - j] << 16}; leaves int32 (4 x int8, P(4, k) for k <= K); inverse norms
// float [K^2 + 1] (float32 path); gain levels float [L]. The weights are
// y * ((level * scale) * inverse_norm[|y|^2]) in float32, as the reference (pvq/kernels/split_runtime.py).

#include "gemv8_common.cuh"
#include <type_traits>
#ifndef PVQ_KERNEL_ONLY  // nvcc -DPVQ_KERNEL_ONLY -arch=sm_90 --resource-usage: the kernels alone, without torch
#include "aten_light.h"
#include "gemv8_host.h"
#include "host_api.h"
#endif

namespace {

using namespace pvq8;  // load8, leaf_dot, leaf_halves, rsqrt_approx, reduce_rows (gemv8_common.cuh)

// Decode tables in shared memory, addressed in bytes from its start (the leaf table is first). The
// kernel is bound by shared-memory wavefronts (a warp's random 4-byte gather over 32 banks takes
// about 3.5; 8- and 16-byte ones more), so each vector reads: its bucket (4 bytes), its split entry
// (16 bytes, one of K + 1), the first leaf's offset (4 bytes, one of K + 1), two leaves (4 bytes
// each) and its gain level (one of L). split[j] = {-2 S_8(K, j), M = ceil(2^31 / d), -4 d,
// 4 (leaf_off[K - j] - S_8(K, j))} and leaf_a[j] = 4 leaf_off[j], d = N(4, K - j), built by the block
// from the pair table.
struct Tables {
  const char* base;  // the shared memory window
  const unsigned* buckets;
  int split;         // byte address of split[0]
  const int* leaf_a;
  const float* inv_norms;
  const float* levels;
};

template <typename W>
__device__ __forceinline__ const W& at(const Tables& tb, int byte) {
  return *reinterpret_cast<const W*>(tb.base + byte);
}

// The two leaf words (points of P(4, j), P(4, K - j)) of the vector with index r. rest = r - S_8(K, j)
// = qa d + rb; qa = floor(2 rest M / 2^32), exact for every dividend of K <= 13 (checked exhaustively in
// tests/kernels/test_split_cuda.py); 4 (leaf_off[K - j] + rb) as 4 r + 4 (leaf_off[K - j] - S) - 4 d qa.
__device__ __forceinline__ int2 split_leaves(int r, const Tables& tb, int shift) {
  const unsigned b = tb.buckets[r >> shift];
  const int j = static_cast<int>(b & 31u) + (static_cast<unsigned>(r) >= (b >> 5) ? 1 : 0);
  const int4 e = at<int4>(tb, tb.split + 16 * j);
  const unsigned rest2 = static_cast<unsigned>(r * 2 + e.x);
  const int qa = static_cast<int>(__umulhi(rest2, static_cast<unsigned>(e.y)));
  return {at<int>(tb, qa * 4 + tb.leaf_a[j]), at<int>(tb, qa * e.z + (r * 4 + e.w))};
}

// log2 of the gain level count (a code is index * L + gain)
template <int L>
__device__ __forceinline__ constexpr int log2_levels() {
  static_assert(L == 2 || L == 4 || L == 8 || L == 16, "gain levels: 2, 4, 8 or 16");
  return L == 2 ? 1 : (L == 4 ? 2 : (L == 8 ? 3 : 4));
}

// y . x of one vector's code in float32: the multiplier times the dot product of its point with x
template <int L>
__device__ __forceinline__ float vector_dot(unsigned code, const float* xv, float scale, const Tables& tb, int shift) {
  constexpr int kLog2L = log2_levels<L>();
  const int gain = static_cast<int>(code & (L - 1));
  const int2 w = split_leaves(static_cast<int>(code >> kLog2L), tb, shift);
  const int n2 = __dp4a(w.y, w.y, __dp4a(w.x, w.x, 0));
  const float mult = (tb.levels[gain] * scale) * tb.inv_norms[n2];
  return (leaf_dot(w.x, xv) + leaf_dot(w.y, xv + 4)) * mult;
}

// The same in half2 arithmetic for 16-bit inputs, for B input rows at once (xh[b]: row b's x / 16 as
// four half2; the leaf words biased by 128; the vector decoded once): |y . x| / 16 <= K max|x| / 16 <
// 65504 for K <= 16, so no partial sum overflows; the squared norm |y|^2 <= 256 is exact in half, its
// inverse square root from the special-function unit. Adds each row's y . x * mult to acc[b].
template <int L, int B>
__device__ __forceinline__ void vector_dots(unsigned code, const __half2 (*xh)[4], float scale, const Tables& tb,
                                            int shift, float* acc) {
  constexpr int kLog2L = log2_levels<L>();
  const int gain = static_cast<int>(code & (L - 1));
  const int2 w = split_leaves(static_cast<int>(code >> kLog2L), tb, shift);
  __half2 a01, a23, b01, b23;
  leaf_halves(static_cast<unsigned>(w.x), a01, a23);
  leaf_halves(static_cast<unsigned>(w.y), b01, b23);
  __half2 n = __hmul2(a01, a01);
  n = __hfma2(a23, a23, n);
  n = __hfma2(b01, b01, n);
  n = __hfma2(b23, b23, n);
  const float mult = tb.levels[gain] * scale * rsqrt_approx(__half2float(__hadd(__low2half(n), __high2half(n))));
#pragma unroll
  for (int r = 0; r < B; ++r) {
    __half2 d = __hmul2(a01, xh[r][0]);
    d = __hfma2(a23, xh[r][1], d);
    d = __hfma2(b01, xh[r][2], d);
    d = __hfma2(b23, xh[r][3], d);
    acc[r] += __half2float(__hadd(__low2half(d), __high2half(d))) * mult;
  }
}

template <typename T, int L, int NV, int RU, int B>
__global__ void __launch_bounds__(1024, 1)
split8_gemv_kernel(const unsigned* __restrict__ words, unsigned n_words, const __half* __restrict__ scales,
                   const float* __restrict__ levels, const unsigned* __restrict__ buckets, int n_buckets,
                   const int4* __restrict__ pair, const int* __restrict__ leaves, int n_leaves,
                   const float* __restrict__ inv_norms, int n_norms, const T* __restrict__ x, T* __restrict__ y,
                   int out_features, int vpr, int code_bits, int K, int group, int group_log2, int shift,
                   int warps_per_group, int rows_per_block, int batch) {
  // 16-bit inputs: products and sums in half2 (x / 16, exact), the vector's sum then float32
  constexpr bool kHalf = !std::is_same<T, float>::value;
  static_assert(kHalf || B == 1, "float32 inputs: one row");
  extern __shared__ int smem[];
  int* s_leaves = smem;
  int4* s_split = reinterpret_cast<int4*>(s_leaves + ((n_leaves + 3) & ~3));  // [K + 1]
  int* s_leaf_a = reinterpret_cast<int*>(s_split + (K + 1));                  // [K + 1]
  unsigned* s_buckets = reinterpret_cast<unsigned*>(s_leaf_a + ((K + 4) & ~3));
  float* s_inv = reinterpret_cast<float*>(s_buckets + n_buckets);
  float* s_levels = s_inv + n_norms;
  float* s_partial = s_levels + L;  // [warps_per_group][rows_per_block][B]
  // the leaf table (48 KB at 3 bits) in 16-byte copies: the block's prologue, once per SM; biased by
  // 128 for the half2 arithmetic
  const int n4 = n_leaves >> 2;
  const unsigned bias = kHalf ? 0x80808080u : 0u;
#pragma unroll 4
  for (int i = threadIdx.x; i < n4; i += blockDim.x) {
    int4 w = __ldg(reinterpret_cast<const int4*>(leaves) + i);
    w.x ^= bias, w.y ^= bias, w.z ^= bias, w.w ^= bias;
    reinterpret_cast<int4*>(s_leaves)[i] = w;
  }
  for (int i = (n4 << 2) + threadIdx.x; i < n_leaves; i += blockDim.x) s_leaves[i] = leaves[i] ^ bias;
  for (int j = threadIdx.x; j <= K; j += blockDim.x) {
    const int4 e = pair[j];  // {S, d, M, leaf_off[j] | leaf_off[K - j] << 16}
    s_split[j] = make_int4(-2 * e.x, e.z, -4 * e.y, 4 * (static_cast<int>(static_cast<unsigned>(e.w) >> 16) - e.x));
    s_leaf_a[j] = 4 * (e.w & 0xFFFF);
  }
  for (int i = threadIdx.x; i < n_buckets; i += blockDim.x) s_buckets[i] = buckets[i];
  for (int i = threadIdx.x; i < n_norms; i += blockDim.x) s_inv[i] = inv_norms[i];
  for (int i = threadIdx.x; i < L; i += blockDim.x) s_levels[i] = levels[i];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int slice = warp % warps_per_group;
  const int row_group = warp / warps_per_group;
  const int row_groups = (blockDim.x >> 5) / warps_per_group;
  const int row0 = blockIdx.x * rows_per_block;
  const int rows = min(rows_per_block, out_features - row0);
  const int groups_per_row = vpr / group;
  const unsigned mask = code_bits == 32 ? 0xFFFFFFFFu : ((1u << code_bits) - 1u);

  // a lane's vectors; past the row: the row's last vector's address with x = 0 (adds 0, no branch)
  int v[NV];
  int g[NV];
  using XReg = std::conditional_t<kHalf, __half2, float>;
  XReg xv[NV][B][kHalf ? 4 : 8];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int vi = (slice * NV + i) * 32 + lane;
    v[i] = min(vi, vpr - 1);
    g[i] = group_log2 >= 0 ? (v[i] >> group_log2) : v[i] / group;
#pragma unroll
    for (int r = 0; r < B; ++r) {
      float xf[8];
      load8<T>(x + static_cast<size_t>(min(r, batch - 1)) * vpr * 8, v[i], vi < vpr && r < batch, xf);
#pragma unroll
      for (int t = 0; t < (kHalf ? 4 : 8); ++t) {
        if constexpr (kHalf) xv[i][r][t] = __floats2half2_rn(xf[2 * t] * 0.0625f, xf[2 * t + 1] * 0.0625f);
        else xv[i][r][t] = xf[t];
      }
    }
  }
  const Tables tb{reinterpret_cast<const char*>(smem), s_buckets,
                  static_cast<int>(reinterpret_cast<const char*>(s_split) - reinterpret_cast<const char*>(smem)),
                  s_leaf_a, s_inv, s_levels};
  __syncthreads();

  // rows row0 + row_group + row_groups * (RU * step + u); bit addresses in 32 bits (the launcher checks)
  const int stride = row_groups;
  const unsigned row_bits = static_cast<unsigned>(vpr) * code_bits;
  unsigned v_bits[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) v_bits[i] = static_cast<unsigned>(v[i]) * code_bits;
  // zeros until the first fetch: a row past the block's keeps the words it had (a valid code; its sum is
  // not stored); the word after a code is read only where it exists (else the code ends in lo)
  unsigned lo[RU][NV] = {}, hi[RU][NV] = {}, sh[RU][NV] = {};
  __half sc[RU][NV] = {};
  auto fetch = [&](int first) {
    const unsigned step_bits = static_cast<unsigned>(row0 + first) * row_bits;
    const int step_scales = (row0 + first) * groups_per_row;
#pragma unroll
    for (int u = 0; u < RU; ++u) {
      if (first + u * stride < rows) {
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          const unsigned bit = step_bits + static_cast<unsigned>(u * stride) * row_bits + v_bits[i];
          const unsigned q = bit >> 5;
          sh[u][i] = bit & 31u;
          lo[u][i] = __ldg(words + q);
          if (q + 1 < n_words) hi[u][i] = __ldg(words + q + 1);
          sc[u][i] = scales[step_scales + u * stride * groups_per_row + g[i]];
        }
      }
    }
  };
  int first = row_group;
  if (first < rows) fetch(first);
  while (first < rows) {
    unsigned code[RU][NV];
    float scale[RU][NV];
#pragma unroll
    for (int u = 0; u < RU; ++u)
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        scale[u][i] = __half2float(sc[u][i]);
        code[u][i] = __funnelshift_r(lo[u][i], hi[u][i], sh[u][i]) & mask;
      }
    const int next = first + RU * stride;
    if (next < rows) fetch(next);  // the next step's code words, in flight while this step decodes
    float acc[RU * B];  // row u, input row r at u B + r
#pragma unroll
    for (int k = 0; k < RU * B; ++k) acc[k] = 0.f;
#pragma unroll
    for (int u = 0; u < RU; ++u) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        if constexpr (kHalf) vector_dots<L, B>(code[u][i], xv[i], scale[u][i], tb, shift, acc + u * B);
        else acc[u] += vector_dot<L>(code[u][i], xv[i][0], scale[u][i], tb, shift);
      }
    }
    const float sum = reduce_rows<RU * B>(acc, lane);
    constexpr int kRowLanes = 32 / (RU * B);  // lanes 0, 32 / (RU B), ... hold sums 0, 1, ... of the step
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
// every instantiation the launcher makes, for --resource-usage
#define PVQ_INSTANTIATE(T, L, NV, RU, B) template __global__ void split8_gemv_kernel<T, L, NV, RU, B>(   \
    const unsigned*, unsigned, const __half*, const float*, const unsigned*, int, const int4*, const int*, int, \
    const float*, int, const T*, T*, int, int, int, int, int, int, int, int, int, int);
PVQ_INSTANTIATE(__half, 8, 1, 4, 1)
PVQ_INSTANTIATE(__half, 8, 2, 2, 1)
PVQ_INSTANTIATE(__half, 8, 3, 1, 1)
PVQ_INSTANTIATE(__half, 8, 4, 1, 1)
PVQ_INSTANTIATE(__half, 4, 1, 2, 4)
PVQ_INSTANTIATE(__half, 4, 2, 1, 4)
PVQ_INSTANTIATE(__half, 4, 1, 1, 8)
PVQ_INSTANTIATE(float, 16, 3, 1, 1)
#endif

}  // namespace

#ifndef PVQ_KERNEL_ONLY

// y [B, out] (x's dtype, rounded once from the float32 sums) = x [B, in] @ Q'^T, B = 1, or 2 to 4 rows of
// 16-bit inputs of at most 16384, or 5 to 8 of at most 8192 (decoded once, multiplied by each row; the
// limits pvq/kernels/cuda_split.py routes by). Tables as in the header comment; all tensors on one device.
namespace pvq {

Status split8_gemv(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                   at::Tensor buckets, at::Tensor pair, at::Tensor leaves, at::Tensor inv_norms,
                   at::Tensor x, int64_t out_features, int64_t code_bits, int64_t K, int64_t group, int64_t shift) {
  PVQ_TRY(gemv8::check_x(x));
  const int batch = static_cast<int>(x.size(0));
  const int rows_b = gemv8::kernel_rows(batch);  // the kernel's B
  PVQ_CHECK(words.numel() < (1LL << 27), "codes of at most 2^32 bits (bit addresses are 32-bit)");
  PVQ_CHECK(buckets.scalar_type() == at::kInt && pair.scalar_type() == at::kInt && pair.size(-1) == 4,
            "buckets int32 (S << 5 | j0) and pair int32 [K + 1, 4] (pvq/kernels/cuda_split.py)");
  const int vpr = static_cast<int>(x.size(1) / 8);
  PVQ_CHECK(vpr % group == 0, "vectors per row must be a multiple of the group size");
  PVQ_CHECK(vpr <= 32 * 32 * 4, "in_features above 32768 are not taken by this kernel, got ", x.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  y = at::empty({batch, out_features}, x.options());
  const int n_leaves = static_cast<int>(leaves.numel());
  const int n_buckets = static_cast<int>(buckets.numel());
  const int n_norms = static_cast<int>(inv_norms.numel());
  const int L = static_cast<int>(levels.numel());
  const int group_log2 = gemv8::group_log2(group);
  const gemv8::WarpPlan plan = gemv8::warp_plan(vpr, batch);
  const int S = plan.warps, G = plan.groups, threads = plan.threads;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int grid = std::max(1, std::min(sms, gemv8::ceil_div(out_features, G)));
  const int rows_per_block = gemv8::ceil_div(out_features, grid);
  const size_t smem = sizeof(int) * (((n_leaves + 3) & ~3) + 4 * (K + 1) + ((K + 4) & ~3) + n_buckets + n_norms + L) +
                      sizeof(float) * static_cast<size_t>(S) * rows_per_block * rows_b;
  auto stream = c10::cuda::getCurrentCUDAStream();
#define PVQ_LAUNCH(T, TL, LL, NVV, RUU, BB)                                                                      \
  do {                                                                                                           \
    auto kern = split8_gemv_kernel<T, LL, NVV, RUU, BB>;                                                         \
    PVQ_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))); \
    kern<<<grid, threads, smem, stream>>>(                                                                       \
        reinterpret_cast<const unsigned*>(words.data_ptr<int32_t>()), static_cast<unsigned>(words.numel()),                            \
        reinterpret_cast<const __half*>(scales.data_ptr<at::Half>()), levels.data_ptr<float>(),                  \
        reinterpret_cast<const unsigned*>(buckets.data_ptr<int32_t>()), n_buckets,                              \
        reinterpret_cast<const int4*>(pair.data_ptr<int32_t>()), leaves.data_ptr<int32_t>(), n_leaves,           \
        inv_norms.data_ptr<float>(), n_norms, reinterpret_cast<const T*>(x.data_ptr<TL>()),                      \
        reinterpret_cast<T*>(y.data_ptr<TL>()), static_cast<int>(out_features), vpr, static_cast<int>(code_bits),                  \
        static_cast<int>(K), static_cast<int>(group), group_log2, static_cast<int>(shift), S, rows_per_block,   \
        batch);                                                                                                  \
    PVQ_LAUNCH_CHECK();                                                                                          \
  } while (0)
#define PVQ_BY_LEVELS(T, TL)                                                                                     \
  switch (L) {                                                                                                   \
    case 2: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 2, plan.nv, rows_b, batch); break;                                 \
    case 4: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 4, plan.nv, rows_b, batch); break;                                 \
    case 8: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 8, plan.nv, rows_b, batch); break;                                 \
    case 16: PVQ_GEMV8_BY_NV(PVQ_LAUNCH, T, TL, 16, plan.nv, rows_b, batch); break;                               \
    default: PVQ_CHECK(false, "gain levels L must be 2, 4, 8 or 16, got ", L);                                 \
  }
  PVQ_BY_DTYPE(x, PVQ_BY_LEVELS);
  return {};
}

}  // namespace pvq
#endif
