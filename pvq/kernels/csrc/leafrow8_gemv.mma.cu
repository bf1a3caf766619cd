// The row-interleaved product of 2 to 16 rows on tensor cores, plain order (leafrow8_mma_kernel; its description and
// what it shares with the other two sources: leafrow8_common.cuh; the layout: leafrow8_gemv.cu's head comment).

#include "leafrow8_common.cuh"
#ifndef PVQ_KERNEL_ONLY
#include "aten_light.h"
#include "host_api.h"
#endif

namespace {

template <typename T, typename Fd, int BM, XFrom XF>
__global__ void __launch_bounds__(kMmaWarps * 32, 1)
leafrow8_mma_kernel(const unsigned* __restrict__ words, const __half* __restrict__ scales,
                    const float* __restrict__ levels, const int* __restrict__ leaves, int n_leaves,
                    const T* __restrict__ x, T* __restrict__ y, int out_features, int steps, int row_groups,
                    int groups_per_block, int batch, int x_steps) {
  static_assert(BM == 8 || BM == 16, "input rows a launch: up to 8 or up to 16");
  constexpr int W2 = Fd::W2;
  constexpr int L = 1 << Fd::LG;
  constexpr int NT = BM / 8;   // n8 tiles of input rows
  constexpr int NC = 8 * NT;   // accumulator values a lane keeps per row group: 2 m tiles x NT x 4
  extern __shared__ uint4 smem4[];
  const int vpr = steps * kStep;
  constexpr bool kGlobalX = XF == XFrom::kGlobal;
  uint4* s_x = smem4;  // [vector][batch] x / 16 as 8 halves, steps c0 .. c0 + x_steps - 1 (none: kGlobal)
  // [warp][2 vectors][32 rows], partial sums
  uint4* s_stage = kGlobalX ? smem4 : s_x + static_cast<size_t>(x_steps) * kStep * batch;
  char* s_leaf = reinterpret_cast<char*>(s_stage + kStageBytes / 16);
  float* s_levels = reinterpret_cast<float*>(s_leaf + 4 * ((n_leaves + 3) & ~3));
  // x / 16 of steps c0 .. c0 + x_steps - 1 into shared memory (all of x where it fits: x_steps == steps, copied
  // once; else chunks of a multiple of kMmaWarps steps, copied for each row group: each warp keeps its steps)
  // (kSharedChunks: instances that may stage x in chunks; at 16 rows the chunk loop's registers cost spills, so 16
  // rows of x that fits whole take an instance without it: 11008x4096 at 3 bits 33.3 against 31.6 us; session 14)
  if constexpr (XF != XFrom::kSharedChunks) x_steps = steps;
  const bool chunked = XF == XFrom::kSharedChunks && x_steps < steps;
  auto stage_x = [&](int c0) {
    const int n = (min(steps, c0 + x_steps) - c0) * kStep * batch;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int v = c0 * kStep + i / batch, r = i % batch;
      s_x[i] = load8_sixteenth<T>(x + static_cast<size_t>(r) * vpr * 8, v);
    }
  };

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rg0 = blockIdx.x * groups_per_block;
  const int rg1 = min(row_groups, rg0 + groups_per_block);
  const bool works = warp < steps;
  unsigned wn[W2] = {};
  __half sn = __float2half(0.f);
  auto load = [&](int rg, int s) { load_step<W2>(words, scales, rg, s, steps, lane, wn, sn); };
  let_next_launch();
  stage_tables<L>(leaves, n_leaves, levels, s_leaf, s_levels);
  wait_for_inputs();
  if (!kGlobalX && !chunked) stage_x(0);
  finish_tables<Fd::kBias>(n_leaves, s_leaf);
  __syncthreads();
  if (works && rg0 < rg1) load(rg0, warp);  // (loaded before the tables' copy instead: slower, sessions 14 and 31)

  const int g = lane >> 2, c = lane & 3;
  uint4* stage = s_stage + warp * 2 * kRows;
  // ldmatrix addresses: lanes 8 m .. 8 m + 7 give the rows of matrix m = (rows 8 (m % 2) .., vector m / 2): the
  // fragments a0 .. a3 of an m16 x k16 tile
  const int lm = lane >> 3, lr = lane & 7;
  const uint4* ld0 = stage + (lm >> 1) * kRows + (lm & 1) * 8 + lr;  // m tile 0: rows 0..15
  const uint4* ld1 = ld0 + 16;                                        // m tile 1: rows 16..31
  const LevelRegs<L> level_of(levels);
  float* buf = reinterpret_cast<float*>(s_stage);
  for (int rg = rg0; rg < rg1; ++rg) {
    float acc[2][NT][4];
#pragma unroll
    for (int i = 0; i < NC; ++i) acc[i / (4 * NT)][(i / 4) % NT][i % 4] = 0.f;
    for (int c0 = 0; c0 < steps; c0 += x_steps) {
      if (chunked) {  // every warp is past the previous chunk (and row group's fold) before x is rewritten
        __syncthreads();
        stage_x(c0);
        __syncthreads();
      }
      const int s_end = min(steps, c0 + x_steps);
      const uint4* x_chunk = s_x - static_cast<ptrdiff_t>(c0) * kStep * batch;  // x_chunk[s * 16 B]: step s
      for (int s = c0 + warp; works && s < s_end; s += kMmaWarps) {
        unsigned w[W2];
#pragma unroll
        for (int k = 0; k < W2; ++k) w[k] = wn[k];
        const float scale = __half2float(sn);
        const int ns = s + kMmaWarps < steps ? s + kMmaWarps : warp;
        const int nrg = s + kMmaWarps < steps ? rg : rg + 1;
        if (nrg < rg1) load(nrg, ns);
        const uint4* xs = x_chunk + static_cast<size_t>(s) * kStep * batch;  // (kGlobal: unused)
        // vector j of this lane's row as eight fp16 weights (x 16 of the true ones' scale: x is / 16)
        auto weights = [&](auto jc) {
          constexpr int j = decltype(jc)::value;
          const unsigned f = Fd::template field<j>(w);
          const float level = level_of(f);
          __half2 a01, a23, b01, b23;
          const float mult = level * scale * Fd::decode(f, s_leaf, a01, a23, b01, b23);
          const __half2 m2 = __float2half2_rn(mult);
          uint4 v;
          v.x = half2_as_u32(__hmul2(a01, m2));
          v.y = half2_as_u32(__hmul2(a23, m2));
          v.z = half2_as_u32(__hmul2(b01, m2));
          v.w = half2_as_u32(__hmul2(b23, m2));
          stage[(j & 1) * kRows + lane] = v;
        };
        auto tile = [&](auto tc) {  // inputs 16 t .. 16 t + 15 of the step: vectors 2 t, 2 t + 1
          constexpr int t = decltype(tc)::value;
          // kGlobal: the B operands' raw x words (input row 8 nt + g, inputs 16 t + 2 c, + 1 and 16 t + 8 + 2 c, + 1
          // of the step), loaded before the decode that hides their latency (16 rows: after it; registers)
          unsigned raw0[NT], raw1[NT];
          auto load_b = [&]() {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const int r = 8 * nt + g;
              const unsigned* xr =
                  reinterpret_cast<const unsigned*>(x + (static_cast<size_t>(r) * vpr + s * kStep + 2 * t) * 8) + c;
              raw0[nt] = r < batch ? __ldg(xr) : 0u;
              raw1[nt] = r < batch ? __ldg(xr + 4) : 0u;
            }
          };
          if constexpr (kGlobalX && NT == 1) load_b();
          weights(std::integral_constant<int, 2 * t>{});
          weights(std::integral_constant<int, 2 * t + 1>{});
          if constexpr (kGlobalX && NT == 2) load_b();
          __syncwarp();
          unsigned a0[4], a1[4];
          ldmatrix_x4(a0, ld0);
          ldmatrix_x4(a1, ld1);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            unsigned b0, b1;
            if constexpr (kGlobalX) {
              b0 = sixteenth_pair<T>(raw0[nt]);
              b1 = sixteenth_pair<T>(raw1[nt]);
            } else {
              const unsigned* x0 = reinterpret_cast<const unsigned*>(xs + (2 * t) * batch);
              const unsigned* x1 = reinterpret_cast<const unsigned*>(xs + (2 * t + 1) * batch);
              const int r = 8 * nt + g;
              b0 = r < batch ? x0[4 * r + c] : 0u;
              b1 = r < batch ? x1[4 * r + c] : 0u;
            }
            mma_16816(acc[0][nt], a0, b0, b1);
            mma_16816(acc[1][nt], a1, b0, b1);
          }
          __syncwarp();  // the stage is rewritten by the next tile
        };
        unrolled(tile, std::make_integer_sequence<int, kStep / 2>{});
      }
    }
    fold_and_store<T, NT>(acc, buf, warp, lane, rg, y, out_features, batch,
                          [](int l, int mt, int e) { return 16 * mt + (l >> 2) + 8 * (e >> 1); });
    __syncthreads();  // the stage is the next row group's again
  }
}

#ifdef PVQ_KERNEL_ONLY  // compile_cuda_report.py's instances
#define COMMA ,
#define PVQ_INSTANTIATE_MMA(T, FD, BM, X) template __global__ void leafrow8_mma_kernel<T, FD, BM, XFrom::X>( \
    const unsigned*, const __half*, const float*, const int*, int, const T*, T*, int, int, int, int, int, int);
PVQ_INSTANTIATE_MMA(__half, Fields<2 COMMA 30>, 8, kSharedChunks)
PVQ_INSTANTIATE_MMA(__half, Fields<2 COMMA 30>, 8, kGlobal)
PVQ_INSTANTIATE_MMA(__half, Fields<2 COMMA 30>, 16, kShared)
PVQ_INSTANTIATE_MMA(__half, Fields<2 COMMA 30>, 16, kSharedChunks)
PVQ_INSTANTIATE_MMA(__half, Fields<2 COMMA 30>, 16, kGlobal)
PVQ_INSTANTIATE_MMA(__half, Fields<1 COMMA 22>, 8, kSharedChunks)
PVQ_INSTANTIATE_MMA(__half, PointFields<1>, 8, kSharedChunks)
PVQ_INSTANTIATE_MMA(__half, PointFields<1>, 16, kGlobal)
#endif

}  // namespace

#ifndef PVQ_KERNEL_ONLY
namespace pvq {

// y [B, out] = x [B <= 16, in] @ Q'^T on tensor cores (leafrow8_mma_kernel), one launch: x read from global memory
// where x_from_global, else staged in shared memory (in chunks of steps where all of it does not fit; the caller
// splits rows whose 32 steps do not fit: pvq/kernels/cuda_leaf.py, which also chooses x's source)
Status leafrow8_gemv_mma(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                         at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                         int64_t gain_bits, bool whole_points, bool x_from_global, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, y, words, scales, levels, leaves, x, out_features, field_bits, gain_bits,
                      16));
  // x / 16 in shared memory: all of it where it fits beside the stages and the leaves, else the most steps
  // (a multiple of kMmaWarps: each warp keeps its steps) that fit, copied a chunk at a time
  const size_t fixed = kStageBytes + 4 * ((l.n_leaves + 3) & ~3) + sizeof(float) * 16;
  const size_t step_bytes = sizeof(uint4) * kStep * l.batch;
  const size_t room = l.props->sharedMemPerBlockOptin > fixed ? l.props->sharedMemPerBlockOptin - fixed : 0;
  const int x_steps = x_from_global || room >= step_bytes * l.steps
                          ? l.steps : static_cast<int>(room / step_bytes) / kMmaWarps * kMmaWarps;
  PVQ_CHECK(x_steps > 0, "x / 16 of ", kMmaWarps, " steps of ", l.batch, " rows (", step_bytes * kMmaWarps,
            " bytes) does not fit shared memory beside the leaves: take fewer rows a launch");
  const size_t smem = fixed + (x_from_global ? 0 : step_bytes * x_steps);
  return by_dtype_and_fields(l.x, field_bits, gain_bits, whole_points, [&](auto t, auto tl, auto fd) -> Status {
    using T = typename decltype(t)::type;
    using TL = typename decltype(tl)::type;
    using Fd = typename decltype(fd)::type;
    auto go = [&](auto bb, auto xf) {
      return launch_rows<T, TL>(leafrow8_mma_kernel<T, Fd, decltype(bb)::value, decltype(xf)::value>,
                                kMmaWarps * 32, l, smem, programmatic, words, scales, levels, leaves, y, out_features,
                                x_steps);
    };
    using XK = std::integral_constant<XFrom, XFrom::kGlobal>;
    using XC = std::integral_constant<XFrom, XFrom::kSharedChunks>;
    using XS = std::integral_constant<XFrom, XFrom::kShared>;
    if (x_from_global) return l.batch <= 8 ? go(Int<8>{}, XK{}) : go(Int<16>{}, XK{});
    if (l.batch <= 8) return go(Int<8>{}, XC{});
    return x_steps < l.steps ? go(Int<16>{}, XC{}) : go(Int<16>{}, XS{});
  });
}

}  // namespace pvq
#endif
