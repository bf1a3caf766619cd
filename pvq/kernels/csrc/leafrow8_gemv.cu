// Product y = x @ Q'^T of a D = 8 PVQ layer in the row-interleaved leaf-pair layout (pvq/kernels/leaf_rows.py)
// for one to eight rows of fp16 / bf16 input by half2 multiply-adds (leafrow8_gemv_kernel), up to sixteen on
// tensor cores (leafrow8_mma_kernel, below): lane l of a warp owns output row 32 rg + l. (The whole-layer decode that
// prefill multiplies is Triton's, pvq/kernels/triton_rows.py: a CUDA one here measured slower, session 18.)
//
// Layout: per row group rg (32 rows) and step s (16 vectors, one scale group) the 16 fields of F bits of a row
// fill W2 = F / 2 words, stored word-major across the group's 32 rows (a warp's load of one word is 128
// contiguous bytes), scales likewise. A field is gain | ga << LG | gb << (LG + A), ga and gb the rows of the two
// halves in the table of the points of P(4, k <= K) (4 x int8 a word, biased by 128 in shared memory). Whole points
// (PointFields, up to K = 5): F = 16, a field gain | index << 2 names one word of the table of every point of P(8, K),
// its eight coordinates biased by 8 in nibbles (one table read a vector instead of two; 1.06x the stored bytes at 2
// bits, where leaf pairs take 1.44x).
//
// Why: the vector-per-lane kernels (leaf8_gemv.cu, split8_gemv.cu) spend about a third of their instructions on
// run-time word addresses and shifts, per-vector scale loads and the per-row reduction over the warp. Here F is a
// template constant, so a step's 16 fields come from W2 coalesced loads with constant shifts; x / 16 sits in
// shared memory as half2 (one broadcast 16-byte read per vector and input row); each lane's sum is its row's, so
// no shuffles; the scale multiplies a step's sum once. One block of 32 warps per SM, persistent over a contiguous
// range of row groups; the 32 warps split a row group's steps (warp w: steps w, w + 32, ...), the next step's
// words loaded while this one decodes; the partial sums of a row group meet in shared memory, summed in a fixed
// order (deterministic). One input row: each output summed over the 32 warps by one warp's shuffles, from two
// partial-sum buffers where they fit, so a row group's sums are read while the warps go on to the next one (one
// barrier a row group; session 12: the sums had been one thread's 32 dependent shared-memory reads a row behind a
// second barrier, on the critical path of every row group: 11008x4096 at 3 bits 14.9 -> 13.7 us on an H200).
// Several input rows keep that thread-a-sum reduction: the shuffles measured slower there (4 rows: 22.2 -> 24.0 us,
// 8 rows: 36.9 -> 44.0 us on 11008x4096; the 8-row loop spilled 98 bytes against 28).
//
// Arithmetic as split8_gemv.cu (session 7): leaves made exact half2 by a byte permute, the vector's products and
// squared norm in HFMA2, its sum then float32, 1 / |y| from the special-function unit; the weights are
//
// The tensor-core kernels are in leafrow8_gemv.mma.cu and leafrow8_gemv.quad_mma.cu, what the three share in
// leafrow8_common.cuh: one extension (pvq/kernels/cuda_leaf.py), its sources compiled side by side.

#include "leafrow8_common.cuh"
#ifndef PVQ_KERNEL_ONLY
#include "aten_light.h"
#include "host_api.h"
#endif

namespace {

// kQuads (one row only): the quad order (leaf_rows.py, quad_swapped): lane 4 g + t sums, in four accumulators, rows
// 4 g .. 4 g + 3 at the vectors 4 u + t of a step (x read at the lane's own vector: four 16-byte words a warp);
// before the warps' sums meet, each quad hands its partial sums round (three shuffles) so that lane l holds row l's.
// It takes 64 registers (the cap at 32 warps) against the plain order's 48 to 58 and runs 3% to 12% slower on an
// H100; folding the scale into each vector's multiplier (57 registers for whole points) measured no faster, so the
// registers are not the cause (session 29: docs/bench/quads_fold_s29_h100.txt; history keeps that variant).
template <typename T, typename Fd, int B, bool kQuads = false>
__global__ void __launch_bounds__(kWarps * 32, 1)
leafrow8_gemv_kernel(const unsigned* __restrict__ words, const __half* __restrict__ scales,
                     const float* __restrict__ levels, const int* __restrict__ leaves, int n_leaves,
                     const T* __restrict__ x, T* __restrict__ y, int out_features, int steps, int row_groups,
                     int groups_per_block, int batch, int part_buffers) {
  constexpr int W2 = Fd::W2;
  constexpr int L = 1 << Fd::LG;
  // shared: x / 16 as [vector][row] uint4 (four half2), the leaves (biased), the levels, the partial sums
  extern __shared__ uint4 smem4[];
  const int vpr = steps * kStep;
  uint4* s_x = smem4;
  char* s_leaf = reinterpret_cast<char*>(s_x + static_cast<size_t>(vpr) * B);
  float* s_levels = reinterpret_cast<float*>(s_leaf + 4 * ((n_leaves + 3) & ~3));
  // one row: [part_buffers][kWarps][kRows + 1] (padded: the readers' stride is odd); several: [kWarps][kRows][B]
  constexpr int kPart = kRows + 1;
  float* s_part = s_levels + 16;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rg0 = blockIdx.x * groups_per_block;
  const int rg1 = min(row_groups, rg0 + groups_per_block);
  const bool works = warp < steps;
  static_assert(!kQuads || B == 1, "the quad order's multiply-add kernel takes one row");
  constexpr int NA = kQuads ? 4 : B;  // accumulators a lane: its rows (quads) or its row's input rows
  unsigned wn[W2] = {};
  __half sn = __float2half(0.f);
  uint2 sq = make_uint2(0u, 0u);  // quads: the scales of rows 4 g .. 4 g + 3
  auto load = [&](int rg, int s) {
    if constexpr (kQuads) load_quad_step<W2>(words, scales, rg, s, steps, lane, wn, sq);
    else load_step<W2>(words, scales, rg, s, steps, lane, wn, sn);
  };
  let_next_launch();
  stage_tables<L>(leaves, n_leaves, levels, s_leaf, s_levels);
  wait_for_inputs();
#pragma unroll 4
  for (int i = threadIdx.x; i < vpr * B; i += blockDim.x) {
    const int v = i / B, r = i % B;
    s_x[i] = r < batch ? load8_sixteenth<T>(x + static_cast<size_t>(r) * vpr * 8, v) : make_uint4(0u, 0u, 0u, 0u);
  }
  finish_tables<Fd::kBias>(n_leaves, s_leaf);
  __syncthreads();

  // 2 levels in registers (one select: 2 bits 13.1 -> 12.4 us on 11008x4096); 4 from shared memory (three selects
  // measured slower there: 13.6 -> 14.0 us; session 13)
  const LevelRegs<L == 2 ? 2 : 4> level_regs(levels);
  auto level_of = [&](unsigned f) {
    if constexpr (L == 2) return level_regs(f);
    else return s_levels[f & (L - 1u)];
  };
  if (works && rg0 < rg1) load(rg0, warp);  // (loaded before the tables' copy instead: slower, sessions 14 and 31)
  for (int rg = rg0; rg < rg1; ++rg) {
    float acc[NA];
#pragma unroll
    for (int r = 0; r < NA; ++r) acc[r] = 0.f;
    for (int s = warp; works && s < steps; s += kWarps) {
      unsigned w[W2];
#pragma unroll
      for (int k = 0; k < W2; ++k) w[k] = wn[k];
      float scale[kQuads ? 4 : 1];  // quads: rows 4 g + a; else the lane's row
      if constexpr (kQuads) {
        const float2 s01 = __half22float2(u32_as_half2(sq.x)), s23 = __half22float2(u32_as_half2(sq.y));
        scale[0] = s01.x, scale[1] = s01.y, scale[2] = s23.x, scale[3] = s23.y;
      } else {
        scale[0] = __half2float(sn);
      }
      const int ns = s + kWarps < steps ? s + kWarps : warp;
      const int nrg = s + kWarps < steps ? rg : rg + 1;
      if (nrg < rg1) load(nrg, ns);  // the next step's words, in flight while this one decodes
      // quads: lane 4 g + t reads vector 4 u + t where the plain order reads vector j = 4 u + a
      const uint4* xs = s_x + static_cast<size_t>(s) * kStep * B + (kQuads ? (lane & 3) : 0);
      float part[NA];
#pragma unroll
      for (int r = 0; r < NA; ++r) part[r] = 0.f;
      auto one = [&](auto jc) {
        constexpr int j = decltype(jc)::value;
        const unsigned f = Fd::template field<j>(w);
        const float level = level_of(f);
        __half2 a01, a23, b01, b23;
        const float mult = level * Fd::decode(f, s_leaf, a01, a23, b01, b23);
#pragma unroll
        for (int r = 0; r < B; ++r) {
          const uint4 xv = xs[(kQuads ? (j & ~3) : j) * B + r];
          __half2 d = __hmul2(a01, u32_as_half2(xv.x));
          d = __hfma2(a23, u32_as_half2(xv.y), d);
          d = __hfma2(b01, u32_as_half2(xv.z), d);
          d = __hfma2(b23, u32_as_half2(xv.w), d);
          constexpr int k = kQuads ? (j & 3) : 0;  // quads: the accumulator of row 4 g + (j & 3)
          part[k + r] = fmaf(__half2float(__hadd(__low2half(d), __high2half(d))), mult, part[k + r]);
        }
      };
      unrolled(one, std::make_integer_sequence<int, kStep>{});
#pragma unroll
      for (int r = 0; r < NA; ++r) acc[r] = fmaf(part[r], scale[kQuads ? r : 0], acc[r]);
    }
    if constexpr (kQuads) {  // the quad's sums of its four rows: lane 4 g + t keeps row 4 g + t's
      const bool up2 = lane & 2, up1 = lane & 1;
      const float k0 = (up2 ? acc[2] : acc[0]) + __shfl_xor_sync(0xFFFFFFFFu, up2 ? acc[0] : acc[2], 2);
      const float k1 = (up2 ? acc[3] : acc[1]) + __shfl_xor_sync(0xFFFFFFFFu, up2 ? acc[1] : acc[3], 2);
      acc[0] = (up1 ? k1 : k0) + __shfl_xor_sync(0xFFFFFFFFu, up1 ? k0 : k1, 1);
    }
    if constexpr (B == 1) {
      float* part = s_part + (part_buffers == 2 ? ((rg - rg0) & 1) * kWarps * kPart : 0);
      part[warp * kPart + lane] = acc[0];
      __syncthreads();
      // row t of the group: warp t sums lane k = warp k's partial
      float sum = part[lane * kPart + warp];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
      const int row = rg * kRows + warp;
      if (lane == 0 && row < out_features) y[row] = pvq::from_float<T>(sum * 16.f);
      if (part_buffers == 1) __syncthreads();  // the next group's sums go where these were read
    } else {
#pragma unroll
      for (int r = 0; r < B; ++r) s_part[(warp * kRows + lane) * B + r] = acc[r];
      __syncthreads();
      for (int t = threadIdx.x; t < kRows * B; t += blockDim.x) {
        float sum = 0.f;
        for (int k = 0; k < kWarps; ++k) sum += s_part[k * kRows * B + t];
        const int row = rg * kRows + t / B, r = t % B;
        if (row < out_features && r < batch) y[static_cast<size_t>(r) * out_features + row] = pvq::from_float<T>(sum * 16.f);
      }
      __syncthreads();
    }
  }
}

#ifdef PVQ_KERNEL_ONLY  // compile_cuda_report.py's instances
#define COMMA ,
#define PVQ_INSTANTIATE(T, FD, B) template __global__ void leafrow8_gemv_kernel<T, FD, B>(                 \
    const unsigned*, const __half*, const float*, const int*, int, const T*, T*, int, int, int, int, int, int);
PVQ_INSTANTIATE(__half, Fields<2 COMMA 30>, 1)
PVQ_INSTANTIATE(__half, Fields<1 COMMA 22>, 1)
PVQ_INSTANTIATE(__half, PointFields<1>, 1)
PVQ_INSTANTIATE(__half, Fields<2 COMMA 30>, 4)
PVQ_INSTANTIATE(__half, Fields<2 COMMA 30>, 8)
PVQ_INSTANTIATE(__half, PointFields<1>, 8)
PVQ_INSTANTIATE(__nv_bfloat16, Fields<2 COMMA 30>, 1)
#define PVQ_INSTANTIATE_Q(T, FD) template __global__ void leafrow8_gemv_kernel<T, FD, 1, true>(                 \
    const unsigned*, const __half*, const float*, const int*, int, const T*, T*, int, int, int, int, int, int);
PVQ_INSTANTIATE_Q(__half, Fields<2 COMMA 30>)
PVQ_INSTANTIATE_Q(__half, PointFields<1>)
#endif

}  // namespace

#ifndef PVQ_KERNEL_ONLY
namespace pvq {

// y [B, out] (x's dtype) = x [B, in] @ Q'^T for 1, 2 to 4 or 5 to 8 rows of fp16 / bf16 (in launches of 1, 4 or 8
// rows: pvq/kernels/cuda_leaf.py routes by the shared-memory sizes).
Status leafrow8_gemv(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                     at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                     int64_t gain_bits, bool whole_points, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, y, words, scales, levels, leaves, x, out_features, field_bits, gain_bits,
                      8));
  const int rows_b = l.batch == 1 ? 1 : (l.batch > 4 ? 8 : 4);
  // partial sums: one row, (kRows + 1) a warp, two buffers where they fit; several rows, kRows B a warp, one
  const size_t part_bytes = sizeof(float) * static_cast<size_t>(kWarps) * (rows_b == 1 ? kRows + 1 : kRows * rows_b);
  const size_t x_bytes = sizeof(uint4) * static_cast<size_t>(l.steps) * kStep * rows_b + sizeof(float) * 16;
  const size_t optin = l.props->sharedMemPerBlockOptin;
  const size_t base = x_bytes + 4 * ((l.n_leaves + 3) & ~3);
  const int part_buffers = rows_b == 1 && l.groups_per_block > 1 && base + 2 * part_bytes <= optin ? 2 : 1;
  const size_t smem = base + part_buffers * part_bytes;
  return by_dtype_and_fields(l.x, field_bits, gain_bits, whole_points, [&](auto t, auto tl, auto fd) -> Status {
    using T = typename decltype(t)::type;
    using TL = typename decltype(tl)::type;
    using Fd = typename decltype(fd)::type;
    auto go = [&](auto bb) {
      return launch_rows<T, TL>(leafrow8_gemv_kernel<T, Fd, decltype(bb)::value>, kWarps * 32,
                                l, smem, programmatic, words, scales, levels, leaves, y, out_features, part_buffers);
    };
    if (rows_b == 1) return go(Int<1>{});
    if (rows_b == 4) return go(Int<4>{});
    return go(Int<8>{});
  });
}

// y [1, out] = x [1, in] @ Q'^T of a layer in the quad order by multiply-adds (leafrow8_gemv_kernel<..., 1, true>)
Status leafrow8_gemv_quad_one(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                              at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                              int64_t gain_bits, bool whole_points, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, y, words, scales, levels, leaves, x, out_features, field_bits, gain_bits,
                      1));
  const size_t part_bytes = sizeof(float) * static_cast<size_t>(kWarps) * (kRows + 1);
  const size_t base = sizeof(uint4) * static_cast<size_t>(l.steps) * kStep + sizeof(float) * 16 +
                      4 * ((l.n_leaves + 3) & ~3);
  const size_t optin = l.props->sharedMemPerBlockOptin;
  const int part_buffers = l.groups_per_block > 1 && base + 2 * part_bytes <= optin ? 2 : 1;
  const size_t smem = base + part_buffers * part_bytes;
  PVQ_CHECK(smem <= optin, "x / 16 and the leaves (", smem, " bytes) do not fit shared memory");
  return by_dtype_and_fields(l.x, field_bits, gain_bits, whole_points, [&](auto t, auto tl, auto fd) -> Status {
    using T = typename decltype(t)::type;
    using TL = typename decltype(tl)::type;
    using Fd = typename decltype(fd)::type;
    return launch_rows<T, TL>(leafrow8_gemv_kernel<T, Fd, 1, true>, kWarps * 32, l, smem, programmatic, words, scales,
                              levels, leaves, y, out_features, part_buffers);
  });
}

}  // namespace pvq
#endif
