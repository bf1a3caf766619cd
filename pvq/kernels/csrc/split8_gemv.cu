// One-row product y = x @ Q'^T of a split-order PVQ layer, D = 8, N(8, K) < 2^22, codes <= 32 bits,
// with every decode table in shared memory.
//
// Why CUDA: on an H100 the Triton kernels are bound by their table gathers through L1 (Nsight: two
// thirds of the 24 M sectors a 11008 x 4096 product reads are "excessive", one sector per thread
// for each P(4, k) leaf), and Triton 3.6 has no indexed gather from shared memory.
//
// Layout: blocks of 512 threads, as many resident per SM as fit (each copies the tables to shared
// memory once, then loops over rows); each warp owns whole output rows (row = warp id, + total warps); lane l takes vectors
// l, l + 32, ... of the row (consecutive codes: coalesced reads), sums x . y * mult in float32,
// and the warp's sum is the row's output (no atomics, no zeroing). Tables, from
// pvq/kernels/split_lean.py: buckets int2 {j0, S_8(K, j0 + 1)} by index >> shift; pair int4
// {S_8(K, j), N(4, K - j), float bits of 1 / N(4, K - j), leaf_off[j] | leaf_off[K - j] << 16};
// leaves int32 (4 x int8, P(4, k) for k <= K); inverse norms float [K^2 + 1]; gain levels float [L].
// The weights are y * ((level * scale) * inverse_norm[|y|^2]) in float32, as the reference.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

template <typename T> __device__ __forceinline__ void load8(const T* x, int v, float* out);

template <> __device__ __forceinline__ void load8<__half>(const __half* x, int v, float* out) {
  uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + v);
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    float2 f = __half22float2(h[t]);
    out[2 * t] = f.x;
    out[2 * t + 1] = f.y;
  }
}

template <> __device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* x, int v, float* out) {
  uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + v);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    float2 f = __bfloat1622float2(h[t]);
    out[2 * t] = f.x;
    out[2 * t + 1] = f.y;
  }
}

template <> __device__ __forceinline__ void load8<float>(const float* x, int v, float* out) {
  float4 a = __ldg(reinterpret_cast<const float4*>(x) + 2 * v);
  float4 b = __ldg(reinterpret_cast<const float4*>(x) + 2 * v + 1);
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}

__device__ __forceinline__ float leaf_dot(int w, const float* x4) {
  float s = 0.f;
#pragma unroll
  for (int t = 0; t < 4; ++t) s = fmaf(static_cast<float>(static_cast<signed char>(w >> (8 * t))), x4[t], s);
  return s;
}

template <typename T, int L>
__global__ void split8_gemv_kernel(const uint32_t* __restrict__ words, long long n_words,
                                   const __half* __restrict__ scales, const float* __restrict__ levels,
                                   const int2* __restrict__ buckets, int n_buckets,
                                   const int4* __restrict__ pair, const int* __restrict__ leaves, int n_leaves,
                                   const float* __restrict__ inv_norms, int n_norms,
                                   const T* __restrict__ x, float* __restrict__ y,
                                   int out_features, int vpr, int code_bits, int K, int group, int group_log2,
                                   int shift) {
  extern __shared__ int smem[];
  int* s_leaves = smem;
  int4* s_pair = reinterpret_cast<int4*>(s_leaves + ((n_leaves + 3) & ~3));
  int2* s_buckets = reinterpret_cast<int2*>(s_pair + (K + 1));
  float* s_inv = reinterpret_cast<float*>(s_buckets + n_buckets);
  float* s_levels = s_inv + n_norms;
  // the leaf table (48 KB at 3 bits) in 16-byte copies, four in flight per thread: a block's prologue
  const int n4 = n_leaves >> 2;
#pragma unroll 4
  for (int i = threadIdx.x; i < n4; i += blockDim.x)
    reinterpret_cast<int4*>(s_leaves)[i] = __ldg(reinterpret_cast<const int4*>(leaves) + i);
  for (int i = (n4 << 2) + threadIdx.x; i < n_leaves; i += blockDim.x) s_leaves[i] = leaves[i];
  for (int i = threadIdx.x; i <= K; i += blockDim.x) s_pair[i] = pair[i];
  for (int i = threadIdx.x; i < n_buckets; i += blockDim.x) s_buckets[i] = buckets[i];
  for (int i = threadIdx.x; i < n_norms; i += blockDim.x) s_inv[i] = inv_norms[i];
  for (int i = threadIdx.x; i < L; i += blockDim.x) s_levels[i] = levels[i];
  __syncthreads();

  const int lane = threadIdx.x & 31;
  const int warps = (gridDim.x * blockDim.x) >> 5;
  const uint32_t mask = code_bits == 32 ? 0xFFFFFFFFu : ((1u << code_bits) - 1u);
  const int groups_per_row = vpr / group;
  for (int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < out_features; row += warps) {
    float acc = 0.f;
    for (int v = lane; v < vpr; v += 32) {
      const long long vec = static_cast<long long>(row) * vpr + v;
      const unsigned long long bit = static_cast<unsigned long long>(vec) * code_bits;
      const long long q = static_cast<long long>(bit >> 5);
      const uint32_t lo = __ldg(words + q);
      const uint32_t hi = q + 1 < n_words ? __ldg(words + q + 1) : 0u;
      const uint32_t code = __funnelshift_r(lo, hi, static_cast<uint32_t>(bit & 31)) & mask;
      const int gain = static_cast<int>(code % L);
      const int r = static_cast<int>(code / L);
      const int2 b = s_buckets[r >> shift];
      const int j = b.x + (r >= b.y ? 1 : 0);
      const int4 e = s_pair[j];
      const int rest = r - e.x;
      int qa = static_cast<int>(static_cast<float>(rest) * __int_as_float(e.z));
      if (qa * e.y > rest) --qa;
      if (rest - qa * e.y >= e.y) ++qa;
      const int rb = rest - qa * e.y;
      const int wa = s_leaves[(e.w & 0xFFFF) + qa];
      const int wb = s_leaves[static_cast<int>(static_cast<uint32_t>(e.w) >> 16) + rb];
      const int n2 = __dp4a(wa, wa, 0) + __dp4a(wb, wb, 0);
      const int g = row * groups_per_row + (group_log2 >= 0 ? (v >> group_log2) : v / group);
      const float mult = (s_levels[gain] * __half2float(scales[g])) * s_inv[n2];
      float xs[8];
      load8<T>(x, v, xs);
      acc = fmaf(leaf_dot(wa, xs) + leaf_dot(wb, xs + 4), mult, acc);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, o);
    if (lane == 0) y[row] = acc;
  }
}

}  // namespace

// y [1, out] float32 = x [1, in] @ Q'^T. Tables as in the header comment; all tensors on one CUDA device.
torch::Tensor split8_gemv(torch::Tensor words, torch::Tensor scales, torch::Tensor levels, torch::Tensor buckets,
                          torch::Tensor pair, torch::Tensor leaves, torch::Tensor inv_norms, torch::Tensor x,
                          int64_t out_features, int64_t code_bits, int64_t K, int64_t group, int64_t shift,
                          int64_t blocks_per_sm) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.size(0) == 1 && x.is_contiguous(), "x must be [1, in] contiguous on CUDA");
  TORCH_CHECK(x.size(1) % 8 == 0, "in_features must be a multiple of 8");
  const int vpr = static_cast<int>(x.size(1) / 8);
  TORCH_CHECK(vpr % group == 0, "vectors per row must be a multiple of the group size");
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = torch::empty({1, out_features}, x.options().dtype(torch::kFloat32));
  const int n_leaves = static_cast<int>(leaves.numel());
  const int n_buckets = static_cast<int>(buckets.numel());  // int64 entries: one int2 each
  const int n_norms = static_cast<int>(inv_norms.numel());
  const int L = static_cast<int>(levels.numel());
  const size_t smem = sizeof(int) * (((n_leaves + 3) & ~3) + 4 * (K + 1) + 2 * n_buckets + n_norms + L);
  int group_log2 = -1;
  if ((group & (group - 1)) == 0) { group_log2 = 0; while ((1LL << group_log2) < group) ++group_log2; }
  const int threads = 512;  // fewer, larger blocks: each one copies the tables once
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  auto stream = at::cuda::getCurrentCUDAStream();
#define PVQ_LAUNCH(T, TL, LL)                                                                                    \
  do {                                                                                                           \
    auto kern = split8_gemv_kernel<T, LL>;                                                                       \
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))); \
    int per_sm = 0;                                                                                              \
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem));               \
    if (blocks_per_sm > 0 && blocks_per_sm < per_sm) per_sm = static_cast<int>(blocks_per_sm);                 \
    const int rows_blocks = static_cast<int>((out_features * 32 + threads - 1) / threads);                     \
    const int grid = std::max(1, std::min(per_sm * sms, rows_blocks));                                          \
    kern<<<grid, threads, smem, stream>>>(                                                                       \
        reinterpret_cast<const uint32_t*>(words.data_ptr<int32_t>()), words.numel(),                            \
        reinterpret_cast<const __half*>(scales.data_ptr<at::Half>()), levels.data_ptr<float>(),                  \
        reinterpret_cast<const int2*>(buckets.data_ptr<int64_t>()), n_buckets,                                   \
        reinterpret_cast<const int4*>(pair.data_ptr<int64_t>()), leaves.data_ptr<int32_t>(), n_leaves,           \
        inv_norms.data_ptr<float>(), n_norms, reinterpret_cast<const T*>(x.data_ptr<TL>()),                      \
        y.data_ptr<float>(), static_cast<int>(out_features), vpr, static_cast<int>(code_bits),                  \
        static_cast<int>(K), static_cast<int>(group), group_log2, static_cast<int>(shift));                      \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                              \
  } while (0)
#define PVQ_BY_LEVELS(T, TL)                                                                                     \
  switch (L) {                                                                                                   \
    case 2: PVQ_LAUNCH(T, TL, 2); break;                                                                         \
    case 4: PVQ_LAUNCH(T, TL, 4); break;                                                                         \
    case 8: PVQ_LAUNCH(T, TL, 8); break;                                                                         \
    case 16: PVQ_LAUNCH(T, TL, 16); break;                                                                       \
    default: TORCH_CHECK(false, "gain levels L must be 2, 4, 8 or 16, got ", L);                                 \
  }
  if (x.scalar_type() == torch::kHalf) {
    PVQ_BY_LEVELS(__half, at::Half);
  } else if (x.scalar_type() == torch::kBFloat16) {
    PVQ_BY_LEVELS(__nv_bfloat16, at::BFloat16);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float16, bfloat16 or float32");
    PVQ_BY_LEVELS(float, float);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("split8_gemv", &split8_gemv, "one-row split PVQ product, D = 8"); }
