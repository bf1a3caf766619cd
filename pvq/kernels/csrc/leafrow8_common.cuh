// The device and host pieces shared by the three sources of the row-interleaved products' extension: leafrow8_gemv.cu
// (1 to 8 rows by multiply-adds; its head comment describes the layout and the arithmetic), leafrow8_gemv.mma.cu and
// leafrow8_gemv.quad_mma.cu (up to 16 rows on tensor cores, plain and quad order). One source until session 35: its
// 130 kernel instances took nvcc 123 s on a 2-core CPU, 93 s of it in cicc; split, ninja compiles the three side by
// side.
#pragma once
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

}  // namespace

#ifndef PVQ_KERNEL_ONLY
namespace pvq {
namespace {  // the products' shared host steps (entry points in the three sources, declared in host_api.h)

[[maybe_unused]] int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

// What the products check and derive from their arguments (x made 16-byte aligned: the kernels read it in 16-byte
// words; the grid: one block an SM, each over a contiguous range of row groups); rows_launch also allocates y [B, out].
struct RowsLaunch {
  at::Tensor x;
  int batch, steps, row_groups, n_leaves, grid, groups_per_block;
  const cudaDeviceProp* props;
};

Status rows_launch(RowsLaunch& l, at::Tensor& y, const at::Tensor& words, const at::Tensor& scales,
                   const at::Tensor& levels, const at::Tensor& leaves, at::Tensor x, int64_t out_features,
                   int64_t field_bits, int64_t gain_bits, int max_rows) {
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
  y = at::empty({l.batch, out_features}, l.x.options());
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
}  // namespace pvq
#endif
