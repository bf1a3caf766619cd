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
// y * level * scale / |y| (float32 sums, the 16 of x / 16 back at the end).

#include "gemv8_common.cuh"
#include <type_traits>

#include <utility>
#ifndef PVQ_KERNEL_ONLY
#include "aten_light.h"
#include "host_api.h"
#endif

namespace {

using namespace pvq8;

constexpr int kRows = 32;   // output rows a warp owns
constexpr int kStep = 16;   // vectors a step
constexpr int kWarps = 32;  // warps a block
static_assert(kWarps == kRows, "one input row: warp t sums row t of a group");

// Programmatic dependent launch (Hopper; session 31). Launched with cudaLaunchAttributeProgrammaticStreamSerialization
// (the host's `programmatic`: pvq/kernels/cuda_leaf.py, inside a step compiled with inductor's PDL), a kernel may start
// while the previous one on the stream finishes. A block lets the next kernel's launch begin at once (let_next_launch)
// and reads nothing the previous kernel writes before wait_for_inputs, which returns once that kernel has finished and
// its writes are visible: the tables (constant) are staged before it, x read and y written after it. Both are no-ops
// in a launch without the attribute and below sm_90. (Loading the first step's words before the wait as well, an
// experiment of sessions 30 and 31, measured slower and was removed: docs/kernels.md, session 31.)
__device__ __forceinline__ void let_next_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ unsigned half2_as_u32(__half2 h) {
  unsigned u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

// The field formats (a kernel's Fd): the field of vector j of a step, the table's bias (finish_tables), and a field's
// point as four exact half2 with its inverse norm. (Session 23's tables expanded at staging, a norm or the scaled
// halves beside each entry, measured slower on an H100 in session 24 and left: docs/kernels.md, session 24.)
template <int LG_, int F_>
struct Fields {  // leaf pairs
  static constexpr int LG = LG_, F = F_;
  static constexpr unsigned kBias = 0x80808080u;     // the table's int8 coordinates biased by 128 in shared memory
  static constexpr int A = (F - LG - (LG & 1)) / 2;  // leaf-row bits (F = LG + 2 A, rounded up to even)
  static constexpr int W2 = F / 2;                   // words a step of 16 fields
  static constexpr unsigned kMask4 = ((1u << A) - 1u) << 2;
  static_assert(LG + 2 * A <= F && F <= 32 && F % 2 == 0, "fields of LG + 2 A bits, padded to an even F <= 32");

  // field j (0..15) of a step's words, the bits above F left for the masks
  template <int J>
  static __device__ __forceinline__ unsigned field(const unsigned (&w)[W2]) {
    constexpr int bit = J * F, q = bit >> 5, s = bit & 31;
    if constexpr (s + F <= 32) return w[q] >> s;
    else return __funnelshift_r(w[q], w[q + 1], s);
  }
  static __device__ __forceinline__ int a_byte(unsigned f) {
    if constexpr (LG >= 2) return static_cast<int>((f >> (LG - 2)) & kMask4);
    else return static_cast<int>((f << (2 - LG)) & kMask4);
  }
  static __device__ __forceinline__ int b_byte(unsigned f) { return static_cast<int>((f >> (LG + A - 2)) & kMask4); }
  // field f's two leaf words from the shared table (int8 coordinates biased by 128)
  static __device__ __forceinline__ void leaf_words(unsigned f, const char* s_leaf, unsigned& wa, unsigned& wb) {
    wa = *reinterpret_cast<const unsigned*>(s_leaf + a_byte(f));
    wb = *reinterpret_cast<const unsigned*>(s_leaf + b_byte(f));
  }
  // field f's eight coordinates as exact half2 and its inverse norm
  static __device__ __forceinline__ float decode(unsigned f, const char* s_leaf, __half2& a01, __half2& a23,
                                                 __half2& b01, __half2& b23) {
    unsigned wa, wb;
    leaf_words(f, s_leaf, wa, wb);
    return leaf_pair(wa, wb, a01, a23, b01, b23);
  }
};

// Whole points (pvq/kernels/leaf_rows.py, point_table): a 16-bit field gain | index << 2, two a word; table word i
// holds point i's coordinates biased by 8, coordinate 2 m at bits 4 m and 2 m + 1 at bits 16 + 4 m, so one mask makes
// each pair the mantissas of a half2 (1024 + c + 8 or 1024 + 16 (c + 8)).
template <int LG_>
struct PointFields {
  static constexpr int LG = LG_, F = 16, W2 = 8;
  static constexpr unsigned kBias = 0u;  // stored as the kernel reads it
  static_assert(LG <= 2, "the gain in bits 0 .. 1, the index from bit 2");
  template <int J>
  static __device__ __forceinline__ unsigned field(const unsigned (&w)[W2]) {
    if constexpr (J & 1) return w[J >> 1] >> 16;
    else return w[J >> 1];  // the bits above 16 are masked off by the address
  }
  static __device__ __forceinline__ void unpack(unsigned w, __half2& a01, __half2& a23, __half2& b01, __half2& b23) {
    const unsigned w8 = w >> 8;
    const __half2 low = u32_as_half2(0x64086408u);        // (1032, 1032): 1024 + the bias
    const __half2 sixteenth = u32_as_half2(0x2C002C00u);  // (1 / 16, 1 / 16)
    const __half2 high = u32_as_half2(0xD480D480u);       // (-72, -72): -(1024 / 16 + the bias)
    a01 = __hsub2(u32_as_half2((w & 0x000F000Fu) | 0x64006400u), low);
    a23 = __hfma2(u32_as_half2((w & 0x00F000F0u) | 0x64006400u), sixteenth, high);
    b01 = __hsub2(u32_as_half2((w8 & 0x000F000Fu) | 0x64006400u), low);
    b23 = __hfma2(u32_as_half2((w8 & 0x00F000F0u) | 0x64006400u), sixteenth, high);
  }
  static __device__ __forceinline__ float decode(unsigned f, const char* s_leaf, __half2& a01, __half2& a23,
                                                 __half2& b01, __half2& b23) {
    unpack(*reinterpret_cast<const unsigned*>(s_leaf + (f & 0xFFFCu)), a01, a23, b01, b23);
    return inverse_norm8(a01, a23, b01, b23);
  }
};

// fn(integral_constant<int, J>) for J = 0, 1, ... (compile-time field positions)
template <typename Fn, int... J>
__device__ __forceinline__ void unrolled(Fn& fn, std::integer_sequence<int, J...>) {
  (fn(std::integral_constant<int, J>{}), ...);
}

// x[8 v .. 8 v + 7] / 16 as four half2 from one 16-byte load (rows of x 16-byte aligned: the launcher's check);
// the same halves as float(x) * 0.0625 rounded to half (scaling by 2^-4 is exact before the rounding)
template <typename T>
__device__ __forceinline__ uint4 load8_sixteenth(const T* __restrict__ row, int v) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row) + v);
  const unsigned in[4] = {raw.x, raw.y, raw.z, raw.w};
  unsigned out[4];
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    if constexpr (std::is_same_v<T, __half>) {
      out[t] = half2_as_u32(__hmul2(u32_as_half2(in[t]), __float2half2_rn(0.0625f)));
    } else {
      __nv_bfloat162 b;
      memcpy(&b, &in[t], sizeof(b));
      const float2 f = __bfloat1622float2(b);
      out[t] = half2_as_u32(__floats2half2_rn(f.x * 0.0625f, f.y * 0.0625f));
    }
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// Two x values (one 32-bit word of fp16 or bf16) as the half2 x / 16 of load8_sixteenth
template <typename T>
__device__ __forceinline__ unsigned sixteenth_pair(unsigned raw) {
  if constexpr (std::is_same_v<T, __half>) {
    return half2_as_u32(__hmul2(u32_as_half2(raw), __float2half2_rn(0.0625f)));
  } else {
    __nv_bfloat162 b;
    memcpy(&b, &raw, sizeof(b));
    const float2 f = __bfloat1622float2(b);
    return half2_as_u32(__floats2half2_rn(f.x * 0.0625f, f.y * 0.0625f));
  }
}

// Lane ``lane``'s W2 words and scale of step s of row group rg (a warp's load of one word is 128 contiguous bytes)
template <int W2>
__device__ __forceinline__ void load_step(const unsigned* __restrict__ words, const __half* __restrict__ scales, int rg,
                                          int s, int steps, int lane, unsigned (&wn)[W2], __half& sn) {
  const size_t item = static_cast<size_t>(rg) * steps + s;
  const unsigned* p = words + item * W2 * kRows + lane;
#pragma unroll
  for (int w = 0; w < W2; ++w) wn[w] = __ldg(p + w * kRows);
  sn = scales[item * kRows + lane];
}

// Lane 4 g + t's W2 words of step s of row group rg in the quad order, and the scales of rows 4 g .. 4 g + 3
template <int W2>
__device__ __forceinline__ void load_quad_step(const unsigned* __restrict__ words, const __half* __restrict__ scales,
                                               int rg, int s, int steps, int lane, unsigned (&wn)[W2], uint2& sn) {
  const size_t item = static_cast<size_t>(rg) * steps + s;
  const unsigned* p = words + item * W2 * kRows + lane;
#pragma unroll
  for (int w = 0; w < W2; ++w) wn[w] = __ldg(p + w * kRows);
  sn = __ldg(reinterpret_cast<const uint2*>(scales + item * kRows + (lane & ~3)));  // rows 4 g .. 4 g + 3
}

// Four table words' int8 coordinates biased by 128 (the form the shared table holds)
__device__ __forceinline__ int4 biased(int4 w) {
  w.x ^= 0x80808080, w.y ^= 0x80808080, w.z ^= 0x80808080, w.w ^= 0x80808080;
  return w;
}

// cp.async copies of 16 and 4 bytes from global to shared memory (arrived after cp.async.wait_all)
__device__ __forceinline__ void copy_async16(void* dst, const void* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void copy_async4(void* dst, const void* src) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}

// The block's shared copies of the leaf table (int8 coordinates biased by 128) and the L gain levels (the table
// complete once finish_tables has run and the block has passed a barrier)
template <int L>
__device__ __forceinline__ void stage_tables(const int* __restrict__ leaves, int n_leaves,
                                             const float* __restrict__ levels, char* s_leaf, float* s_levels) {
  const int n4 = n_leaves >> 2;
  // every copy in flight while the block stages x (the leaves biased by finish_tables)
  for (int i = threadIdx.x; i < n4; i += blockDim.x) copy_async16(s_leaf + 16 * i, leaves + 4 * i);
  for (int i = (n4 << 2) + threadIdx.x; i < n_leaves; i += blockDim.x) copy_async4(s_leaf + 4 * i, leaves + i);
  for (int i = threadIdx.x; i < L; i += blockDim.x) copy_async4(s_levels + i, levels + i);
}

// Before the barrier that publishes the tables: this thread's asynchronous copies of stage_tables have arrived and it
// biases its leaves in place. Why (an experiment of session 16, made the kernels' copy in session 18: 11008x4096 at
// 3 bits, one row, 13.6 -> 13.3 us on the H200, 22016x4096 24.9 -> 23.9; no change at 8 and 16 rows; the spread
// table and x's batched copy, tried beside it, gained nothing and left): the copy before it ran its loads one L2
// round trip after another (each load's store and loop test before the next load, in SASS: thread 0 waited three
// round trips for its words of the 3-bit table of 11969 leaves, one for the table's tail, one for the levels, then
// x's), where cp.async issues all of a thread's copies at once and they travel while x is staged.
template <unsigned kBias>
__device__ __forceinline__ void finish_tables(int n_leaves, char* s_leaf) {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  if constexpr (kBias == 0u) return;
  const int n4 = n_leaves >> 2;
  for (int i = threadIdx.x; i < n4; i += blockDim.x)
    reinterpret_cast<int4*>(s_leaf)[i] = biased(reinterpret_cast<int4*>(s_leaf)[i]);
  for (int i = (n4 << 2) + threadIdx.x; i < n_leaves; i += blockDim.x) reinterpret_cast<int*>(s_leaf)[i] ^= kBias;
}

// The gain levels (2 or 4) in registers, chosen by selects on the ALUs instead of a shared-memory read on the L1
// pipe the leaf gathers are bound by (session 13: the tensor-core kernel with either, the one-row kernel with 2)
template <int L>
struct LevelRegs {
  static_assert(L == 2 || L == 4, "2 or 4 gain levels in registers");
  float v[L];
  __device__ __forceinline__ explicit LevelRegs(const float* __restrict__ levels) {
#pragma unroll
    for (int t = 0; t < L; ++t) v[t] = __ldg(levels + t);
  }
  __device__ __forceinline__ float operator()(unsigned f) const {
    if constexpr (L == 2) {
      return (f & 1u) ? v[1] : v[0];
    } else {
      const float lo = (f & 1u) ? v[1] : v[0], hi = (f & 1u) ? v[3] : v[2];
      return (f & 2u) ? hi : lo;
    }
  }
};

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

// Two to sixteen input rows on tensor cores (session 13). The layout and the decode are the one-row kernel's
// (lane l decodes row 32 rg + l), but each decoded vector becomes eight fp16 weights y * (level * scale / |y|)
// (the scale folded in per vector) that are multiplied by mma.sync m16n8k16 (fp32 accumulation) instead of by
// 8 B half2 multiply-adds: two (up to 8 rows) or four (up to 16) tensor-core instructions a k16 tile of the
// warp's 32 rows, whatever the rows. A warp's lanes store two vectors each (k 0..15 of 32 rows) to a 1 KB stage,
// read back by two ldmatrix.x4 as the A operands of the two m16 tiles (rows 0..15, 16..31); the B operand is x / 16
// (input row 8 nt + l / 4, from the shared [vector][row] copy). Lane l then holds, per m tile and n tile,
// outputs (row 16 mt + l / 4 (+ 8), input row 8 nt + 2 (l % 4) (+ 1)). A row group's warp partials (kMmaWarps
// warps a block, below) are folded pairwise in shared memory (fixed order: deterministic) until they fit the stage,
// then summed by 32 kMmaWarps / (32 NC) threads an output and a shuffle.
// Where the B operands come from (XFrom): x / 16 staged whole in shared memory, or in chunks of steps, or read
// straight from x in global memory (through L1) and scaled to x / 16 in registers. Staged x pays its copy once a
// block and its reads on the L1 pipe the decode is bound by; direct reads pay no copy and no barrier but go to
// L1 again in every row group: faster where a block has one row group (session 15: 4096x11008 at 8 rows 26.5 ->
// 23.1 us, at 16 39.7 -> 31.9; 4096x4096 11.9 -> 11.2, 17.6 -> 15.3), slower with three (11008x4096 at 8 rows
// 25.2 -> 28.4, at 16 30.5 -> 39.0). pvq/kernels/cuda_leaf.py chooses by the row groups a block takes.
enum class XFrom { kShared, kSharedChunks, kGlobal };
// Warps a block of the tensor-core kernel: 16, so a thread may hold 128 registers (at 32 warps, 64: the 16-row
// instances spilled 38 to 122 bytes). Session 24 (H100, docs/bench/speed_variants_s24_h100.txt): 16 rows at 3 bits
// 4096x4096 15.7 -> 12.6 us, 11008x4096 29.7 -> 28.0, 4096x11008 32.6 -> 29.9; 8 rows 24.8 -> 22.1 on 11008x4096;
// whole points at 16 rows on 4096x11008 slower (24.9 -> 27.3), on the other three shapes faster or level. Two stages
// a warp (tile t + 1 decoded while tile t's ldmatrix reads are in flight) measured no better than one and left.
constexpr int kMmaWarps = 16;
constexpr int kStageBytes = kMmaWarps * 2 * kRows * 16;  // 16 KB: a warp's two vectors x 32 rows of 16 bytes

__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The end of a row group in the tensor-core kernels: the upper half of the live warps' accumulators folded onto the
// lower until their partials fit buf (kStageBytes), then each output summed over the live warps by P threads in a
// fixed order (deterministic) and written. Value e of m tile mt, n tile nt in lane l is output row
// 32 rg + row_of(l, mt, e) for input row 8 nt + 2 (l % 4) + e % 2 (the mma.m16n8k16 accumulator layout).
template <typename T, int NT, typename RowOf>
__device__ __forceinline__ void fold_and_store(float (&acc)[2][NT][4], float* buf, int warp, int lane, int rg,
                                               T* __restrict__ y, int out_features, int batch, RowOf row_of) {
  constexpr int NC = 8 * NT;
  constexpr int kFit = kStageBytes / (32 * NC * 4);  // warps whose partials fit buf at once
  int live = kMmaWarps;
  for (; live > kFit; live >>= 1) {
    const int half = live >> 1;
    __syncthreads();
    if (warp >= half && warp < live) {
#pragma unroll
      for (int i = 0; i < NC; ++i) buf[((warp - half) * NC + i) * 32 + lane] = acc[i / (4 * NT)][(i / 4) % NT][i % 4];
    }
    __syncthreads();
    if (warp < half) {
#pragma unroll
      for (int i = 0; i < NC; ++i) acc[i / (4 * NT)][(i / 4) % NT][i % 4] += buf[(warp * NC + i) * 32 + lane];
    }
  }
  __syncthreads();
  if (warp < live) {
#pragma unroll
    for (int i = 0; i < NC; ++i) buf[(warp * NC + i) * 32 + lane] = acc[i / (4 * NT)][(i / 4) % NT][i % 4];
  }
  __syncthreads();
  constexpr int P = kMmaWarps * 32 / (32 * NC);
  const int o = threadIdx.x / P, part = threadIdx.x % P;
  float sum = 0.f;
  for (int k = part; k < live; k += P) sum += buf[k * NC * 32 + o];
#pragma unroll
  for (int d = 1; d < P; d <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, d);
  const int i = o / 32, l = o % 32, mt = i / (4 * NT), nt = (i / 4) % NT, e = i % 4;
  const int row = rg * kRows + row_of(l, mt, e), r = 8 * nt + 2 * (l & 3) + (e & 1);
  if (part == 0 && row < out_features && r < batch)
    y[static_cast<size_t>(r) * out_features + row] = pvq::from_float<T>(sum * 16.f);
}

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

[[maybe_unused]] int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

#ifdef PVQ_KERNEL_ONLY
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
namespace {  // the products' shared host steps (entry points below, declared in host_api.h)

// What both products check and derive from their arguments (x made 16-byte aligned: the kernels read it in 16-byte
// words; the grid: one block an SM, each over a contiguous range of row groups).
struct RowsLaunch {
  at::Tensor x;
  int batch, steps, row_groups, n_leaves, grid, groups_per_block;
  const cudaDeviceProp* props;
};

Status rows_launch(RowsLaunch& l, const at::Tensor& words, const at::Tensor& scales, const at::Tensor& levels,
                   const at::Tensor& leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                   int64_t gain_bits, int max_rows) {
  PVQ_CHECK(x.is_cuda() && x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= max_rows && x.is_contiguous() &&
            x.scalar_type() != at::kFloat, "x must be [B <= ", max_rows, ", in] fp16 or bf16, contiguous on CUDA");
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16) x = x.clone();
  PVQ_CHECK(x.size(1) % (8 * kStep) == 0, "in_features must be a multiple of 128");
  l.x = x;
  l.batch = static_cast<int>(x.size(0));
  l.steps = static_cast<int>(x.size(1) / (8 * kStep));
  l.row_groups = ceil_div(out_features, kRows);
  PVQ_CHECK(words.numel() == static_cast<int64_t>(l.row_groups) * l.steps * (field_bits / 2) * kRows &&
            scales.numel() == static_cast<int64_t>(l.row_groups) * l.steps * kRows, "words / scales of another shape");
  PVQ_CHECK(levels.numel() == (1 << gain_bits) && levels.numel() <= 16, "gain levels: 2^gain_bits <= 16");
  l.n_leaves = static_cast<int>(leaves.numel());
  l.props = at::cuda::getCurrentDeviceProperties();
  l.grid = std::max(1, std::min(l.props->multiProcessorCount, l.row_groups));
  l.groups_per_block = ceil_div(l.row_groups, l.grid);
  return {};
}

template <typename T>
struct Tag {
  using type = T;
};
template <int V>
using Int = std::integral_constant<int, V>;

// fn(Tag<T>, Tag<TL>, Tag<Fd>) -> Status for x's dtype (T the device type, TL torch's) and the field format (leaf
// pairs of F bits, or whole points), over the instances the kernels are built for; a failed status where none is
template <typename Fn>
Status by_dtype_and_fields(const at::Tensor& x, int64_t field_bits, int64_t gain_bits, bool whole_points,
                           Fn&& fn) {
  auto fields = [&](auto t, auto tl) -> Status {
    if (whole_points) {
      if (gain_bits == 1 && field_bits == 16) return fn(t, tl, Tag<PointFields<1>>{});
      return message("no instance for whole points with ", gain_bits, " gain bits in ", field_bits, "-bit fields");
    }
    if (gain_bits == 2 && field_bits == 30) return fn(t, tl, Tag<Fields<2, 30>>{});
    if (gain_bits == 1 && field_bits == 22) return fn(t, tl, Tag<Fields<1, 22>>{});
    if (gain_bits == 1 && field_bits == 26) return fn(t, tl, Tag<Fields<1, 26>>{});
    if (gain_bits == 1 && field_bits == 18) return fn(t, tl, Tag<Fields<1, 18>>{});
    return message("no instance for fields of ", field_bits, " bits with ", gain_bits, " gain bits");
  };
  if (x.scalar_type() == at::kHalf) return fields(Tag<__half>{}, Tag<at::Half>{});
  PVQ_CHECK(x.scalar_type() == at::kBFloat16, "x must be float16 or bfloat16");
  return fields(Tag<__nv_bfloat16>{}, Tag<at::BFloat16>{});
}

// kern<<<grid, threads, smem>>>(codes, x, y, shapes..., extra...) with the dynamic shared memory it asks for; a
// programmatic dependent launch where `programmatic` and the device is sm_90 or later (let_next_launch, above)
template <typename T, typename TL, typename Kernel, typename... Extra>
Status launch_rows(Kernel kern, int threads, const RowsLaunch& l, size_t smem, bool programmatic,
                   const at::Tensor& words, const at::Tensor& scales, const at::Tensor& levels,
                   const at::Tensor& leaves, at::Tensor& y, int64_t out_features, Extra... extra) {
  PVQ_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto* words_p = reinterpret_cast<const unsigned*>(words.data_ptr<int32_t>());
  const auto* scales_p = reinterpret_cast<const __half*>(scales.data_ptr<at::Half>());
  const float* levels_p = levels.data_ptr<float>();
  const int* leaves_p = leaves.data_ptr<int32_t>();
  const auto* x_p = reinterpret_cast<const T*>(l.x.data_ptr<TL>());
  auto* y_p = reinterpret_cast<T*>(y.data_ptr<TL>());
  if (programmatic && l.props->major >= 9) {  // the launch may begin before the previous kernel on the stream has
                                              // finished (captured into a CUDA graph as a programmatic edge)
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(l.grid);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attribute;
    config.numAttrs = 1;
    PVQ_CUDA_CHECK(cudaLaunchKernelEx(&config, kern, words_p, scales_p, levels_p, leaves_p, l.n_leaves, x_p, y_p,
                                      static_cast<int>(out_features), l.steps, l.row_groups, l.groups_per_block,
                                      l.batch, extra...));
  } else {
    kern<<<l.grid, threads, smem, stream>>>(words_p, scales_p, levels_p, leaves_p, l.n_leaves, x_p, y_p,
                                            static_cast<int>(out_features), l.steps, l.row_groups,
                                            l.groups_per_block, l.batch, extra...);
  }
  PVQ_LAUNCH_CHECK();
  return {};
}

}  // namespace

// y [B, out] (x's dtype) = x [B, in] @ Q'^T for 1, 2 to 4 or 5 to 8 rows of fp16 / bf16 (in launches of 1, 4 or 8
// rows: pvq/kernels/cuda_leaf.py routes by the shared-memory sizes).
Status leafrow8_gemv(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                     at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                     int64_t gain_bits, bool whole_points, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, words, scales, levels, leaves, x, out_features, field_bits, gain_bits, 8));
  const int rows_b = l.batch == 1 ? 1 : (l.batch > 4 ? 8 : 4);
  y = at::empty({l.batch, out_features}, l.x.options());
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

// y [B, out] = x [B <= 16, in] @ Q'^T on tensor cores (leafrow8_mma_kernel), one launch: x read from global memory
// where x_from_global, else staged in shared memory (in chunks of steps where all of it does not fit; the caller
// splits rows whose 32 steps do not fit: pvq/kernels/cuda_leaf.py, which also chooses x's source)
Status leafrow8_gemv_mma(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                         at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                         int64_t gain_bits, bool whole_points, bool x_from_global, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, words, scales, levels, leaves, x, out_features, field_bits, gain_bits, 16));
  y = at::empty({l.batch, out_features}, l.x.options());
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

// y [1, out] = x [1, in] @ Q'^T of a layer in the quad order by multiply-adds (leafrow8_gemv_kernel<..., 1, true>)
Status leafrow8_gemv_quad_one(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                              at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                              int64_t gain_bits, bool whole_points, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, words, scales, levels, leaves, x, out_features, field_bits, gain_bits, 1));
  y = at::empty({1, out_features}, l.x.options());
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

// y [B, out] = x [B <= 16, in] @ Q'^T on tensor cores from the quad order (leafrow8_quad_mma_kernel), one launch: x
// read from global memory where x_from_global, else staged whole in shared memory (refused where it does not fit:
// the caller reads it from global memory then; pvq/kernels/cuda_leaf.py)
Status leafrow8_gemv_quad_mma(at::Tensor& y, at::Tensor words, at::Tensor scales, at::Tensor levels,
                              at::Tensor leaves, at::Tensor x, int64_t out_features, int64_t field_bits,
                              int64_t gain_bits, bool whole_points, bool x_from_global, bool programmatic) {
  PVQ_CHECK(x.is_cuda(), "x must be on CUDA");
  const c10::cuda::CUDAGuard guard(x.device());  // before the device's properties are read
  RowsLaunch l;
  PVQ_TRY(rows_launch(l, words, scales, levels, leaves, x, out_features, field_bits, gain_bits, 16));
  y = at::empty({l.batch, out_features}, l.x.options());
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
