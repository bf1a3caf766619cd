// The row-interleaved product of 1 to 16 rows on tensor cores from the quad order (leafrow8_quad_mma_kernel; what it
// shares with the other two sources: leafrow8_common.cuh; the layout: leafrow8_gemv.cu's head comment).

#include "leafrow8_common.cuh"
#ifndef PVQ_KERNEL_ONLY
#include "aten_light.h"
#include "host_api.h"
#endif

namespace {

// Two to sixteen input rows on tensor cores from the quad order (pvq/kernels/leaf_rows.py, quad_swapped; session 29):
// lane 4 g + t holds, in slot 4 u + a of a step, the field of row 4 g + a at vector 4 u + t. The four lanes of a quad
// then hold rows 4 g .. 4 g + 3 at four neighbouring vectors, which is the shape of mma.m16n8k16's operands with the
// k order chosen per chunk u of four vectors (32 inputs): k slots 2 t, 2 t + 1 | 2 t + 8, 2 t + 9 of the first mma
// are elements 0, 1 | 2, 3 of vector 4 u + t, those of the second its elements 4 .. 7. A lane's decoded halves are
// its A registers as they stand (m tile mt: m row g is row 4 g + 2 mt, m row g + 8 is row 4 g + 2 mt + 1), and its B
// registers are one 16-byte read of x / 16 (input row 8 nt + g, vector 4 u + t). leafrow8_mma_kernel instead
// stores each decoded vector to a per-warp stage and reads it back by ldmatrix (two writes and two reads of shared
// memory a vector, beside the table gathers the decode is bound by). x / 16 is staged whole as [vector][BM rows],
// row r of vector v at r ^ 2 (v & 3) (the lanes of a quarter warp read eight different banks' 16 bytes), or read
// from global memory (kGlobalX). The warps' partial sums are folded as leafrow8_mma_kernel folds them.
template <typename T, typename Fd, int BM, bool kGlobalX>
__global__ void __launch_bounds__(kMmaWarps * 32, 1)
leafrow8_quad_mma_kernel(const unsigned* __restrict__ words, const __half* __restrict__ scales,
                         const float* __restrict__ levels, const int* __restrict__ leaves, int n_leaves,
                         const T* __restrict__ x, T* __restrict__ y, int out_features, int steps, int row_groups,
                         int groups_per_block, int batch) {
  static_assert(BM == 8 || BM == 16, "input rows a launch: up to 8 or up to 16");
  constexpr int W2 = Fd::W2;
  constexpr int L = 1 << Fd::LG;
  constexpr int NT = BM / 8;
  constexpr int NC = 8 * NT;
  extern __shared__ uint4 smem4[];
  const int vpr = steps * kStep;
  uint4* s_x = smem4;  // [vector][BM] x / 16 (none: kGlobalX)
  float* buf = reinterpret_cast<float*>(kGlobalX ? smem4 : s_x + static_cast<size_t>(vpr) * BM);  // kStageBytes
  char* s_leaf = reinterpret_cast<char*>(buf) + kStageBytes;
  float* s_levels = reinterpret_cast<float*>(s_leaf + 4 * ((n_leaves + 3) & ~3));

  let_next_launch();
  stage_tables<L>(leaves, n_leaves, levels, s_leaf, s_levels);
  wait_for_inputs();
  if constexpr (!kGlobalX) {
#pragma unroll 4
    for (int i = threadIdx.x; i < vpr * BM; i += blockDim.x) {
      const int v = i / BM, r = i % BM;
      s_x[v * BM + (r ^ (2 * (v & 3)))] =
          r < batch ? load8_sixteenth<T>(x + static_cast<size_t>(r) * vpr * 8, v) : make_uint4(0u, 0u, 0u, 0u);
    }
  }
  finish_tables<Fd::kBias>(n_leaves, s_leaf);
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int rg0 = blockIdx.x * groups_per_block;
  const int rg1 = min(row_groups, rg0 + groups_per_block);
  const bool works = warp < steps;
  unsigned wn[W2] = {};
  uint2 sn = make_uint2(0u, 0u);
  auto load = [&](int rg, int s) { load_quad_step<W2>(words, scales, rg, s, steps, lane, wn, sn); };
  if (works && rg0 < rg1) load(rg0, warp);
  const LevelRegs<L> level_of(levels);
  for (int rg = rg0; rg < rg1; ++rg) {
    float acc[2][NT][4];
#pragma unroll
    for (int i = 0; i < NC; ++i) acc[i / (4 * NT)][(i / 4) % NT][i % 4] = 0.f;
    for (int s = warp; works && s < steps; s += kMmaWarps) {
      unsigned w[W2];
#pragma unroll
      for (int k = 0; k < W2; ++k) w[k] = wn[k];
      const float2 s01 = __half22float2(u32_as_half2(sn.x)), s23 = __half22float2(u32_as_half2(sn.y));
      const float sc[4] = {s01.x, s01.y, s23.x, s23.y};  // rows 4 g + a
      const int ns = s + kMmaWarps < steps ? s + kMmaWarps : warp;
      const int nrg = s + kMmaWarps < steps ? rg : rg + 1;
      if (nrg < rg1) load(nrg, ns);
      auto chunk = [&](auto uc) {  // vectors 4 u .. 4 u + 3 of the step (inputs 32 u .. 32 u + 31)
        constexpr int u = decltype(uc)::value;
        const int v = s * kStep + 4 * u + t;  // this lane's vector (v & 3 == t)
        uint4 xb[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int r = 8 * nt + g;
          if constexpr (kGlobalX) {
            xb[nt] = r < batch ? load8_sixteenth<T>(x + static_cast<size_t>(r) * vpr * 8, v) : make_uint4(0u, 0u, 0u, 0u);
          } else {
            xb[nt] = s_x[v * BM + (r ^ (2 * t))];
          }
        }
        uint4 wv[4];  // slot 4 u + a: row 4 g + a, vector 4 u + t, as eight fp16 weights (x 16: x is / 16)
        auto weights = [&](auto ac) {
          constexpr int a = decltype(ac)::value;
          const unsigned f = Fd::template field<4 * u + a>(w);
          __half2 a01, a23, b01, b23;
          const float mult = level_of(f) * sc[a] * Fd::decode(f, s_leaf, a01, a23, b01, b23);
          const __half2 m2 = __float2half2_rn(mult);
          wv[a] = make_uint4(half2_as_u32(__hmul2(a01, m2)), half2_as_u32(__hmul2(a23, m2)),
                             half2_as_u32(__hmul2(b01, m2)), half2_as_u32(__hmul2(b23, m2)));
        };
        unrolled(weights, std::make_integer_sequence<int, 4>{});
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const unsigned lo[4] = {wv[2 * mt].x, wv[2 * mt + 1].x, wv[2 * mt].y, wv[2 * mt + 1].y};
          const unsigned hi[4] = {wv[2 * mt].z, wv[2 * mt + 1].z, wv[2 * mt].w, wv[2 * mt + 1].w};
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            mma_16816(acc[mt][nt], lo, xb[nt].x, xb[nt].y);
            mma_16816(acc[mt][nt], hi, xb[nt].z, xb[nt].w);
          }
        }
      };
      unrolled(chunk, std::make_integer_sequence<int, kStep / 4>{});
    }
    fold_and_store<T, NT>(acc, buf, warp, lane, rg, y, out_features, batch,  // m row g: row 4 g + 2 mt
                          [](int l, int mt, int e) { return 4 * (l >> 2) + 2 * mt + (e >> 1); });
    __syncthreads();  // buf is the next row group's again
  }
}

#ifdef PVQ_KERNEL_ONLY  // compile_cuda_report.py's instances
#define COMMA ,
#define PVQ_INSTANTIATE_QUAD(T, FD, BM, G) template __global__ void leafrow8_quad_mma_kernel<T, FD, BM, G>( \
    const unsigned*, const __half*, const float*, const int*, int, const T*, T*, int, int, int, int, int);
PVQ_INSTANTIATE_QUAD(__half, Fields<2 COMMA 30>, 8, false)
PVQ_INSTANTIATE_QUAD(__half, Fields<2 COMMA 30>, 16, false)
PVQ_INSTANTIATE_QUAD(__half, Fields<2 COMMA 30>, 16, true)
PVQ_INSTANTIATE_QUAD(__half, PointFields<1>, 16, false)
PVQ_INSTANTIATE_QUAD(__half, PointFields<1>, 16, true)
#endif

}  // namespace

#ifndef PVQ_KERNEL_ONLY
namespace pvq {

// y [B, out] = x [B <= 16, in] @ Q'^T on tensor cores from the quad order (leafrow8_quad_mma_kernel), one launch: x
// read from global memory where x_from_global, else staged whole in shared memory (refused where it does not fit:
// the caller reads it from global memory then; pvq/kernels/cuda_leaf.py)
Status leafrow8_gemv_quad_mma(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                              at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                              int64_t gain_bits, bool whole_points, bool x_from_global, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, y, words, scales, levels, leaves, x, out_features, field_bits, gain_bits,
                      16));
  const int bm = l.batch <= 8 ? 8 : 16;
  const size_t fixed = kStageBytes + 4 * ((l.n_leaves + 3) & ~3) + sizeof(float) * 16;
  const size_t x_bytes = x_from_global ? 0 : sizeof(uint4) * static_cast<size_t>(l.steps) * kStep * bm;
  const size_t smem = fixed + x_bytes;
  PVQ_CHECK(smem <= l.props->sharedMemPerBlockOptin, "x / 16 of ", bm, " rows (", x_bytes, " bytes) does not fit "
            "shared memory beside the leaves: read x from global memory (x_from_global)");
  return by_dtype_and_fields(l.x, field_bits, gain_bits, whole_points, [&](auto t, auto tl, auto fd) -> Status {
    using T = typename decltype(t)::type;
    using TL = typename decltype(tl)::type;
    using Fd = typename decltype(fd)::type;
    auto go = [&](auto bb, auto xg) {
      return launch_rows<T, TL>(leafrow8_quad_mma_kernel<T, Fd, decltype(bb)::value, decltype(xg)::value>,
                                kMmaWarps * 32, l, smem, programmatic, words, scales, levels, leaves, y, out_features);
    };
    using G = std::true_type;
    using S = std::false_type;
    if (x_from_global) return bm == 8 ? go(Int<8>{}, G{}) : go(Int<16>{}, G{});
    return bm == 8 ? go(Int<8>{}, S{}) : go(Int<16>{}, S{});
  });
}

}  // namespace pvq
#endif
