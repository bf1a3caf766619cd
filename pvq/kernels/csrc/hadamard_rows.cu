// The randomized Hadamard transform of activation rows of a power-of-two length p (16 <= p <= 16384):
// x -> scale * H_p (s * x) and its inverse y -> s * scale * H_p y, as pvq.transforms.RandomizedHadamard
// defines them when its dense factor has order 1 (H_p the +-1 Sylvester matrix, scale = 1 / sqrt(p),
// s random signs). Float32 arithmetic.
//
// Why: the Triton kernel multiplies by H_p as two dense matrices (p^1.5 multiply-adds in one program:
// 11.8 us a row of 4096 on an H100, 352 calls in a 7B decode step), and a butterfly per thread through
// shared memory (this file's first version) waited on shared memory at every one of the log2 p steps
// (17 us). Here a block of p / 16 threads holds the row in registers, 16 numbers a thread, and runs the
// butterflies in radix-16 passes: each pass does four (the first r0 = log2 p - 4 (passes - 1)) of
// the log2 p steps on the 16 registers, whose indices differ in four bits of the row position; between
// passes the row goes through shared memory once to regroup it (padded: one float per 32, so the
// regrouping reads and writes spread over the banks). One block a row.

#include "dtype.cuh"
#include <algorithm>
#ifndef PVQ_KERNEL_ONLY
#include "aten_light.h"
#include "host_api.h"
#endif

namespace {

using pvq::from_float;
using pvq::to_float;

__device__ __forceinline__ int padded(int e) { return e + (e >> 5); }

// row position of register j of thread t in a pass over bits [b, b + 4): t's bits below b stay low,
// the rest move above b + 4
__device__ __forceinline__ int position(int t, int j, int b) {
  return ((t >> b) << (b + 4)) | (j << b) | (t & ((1 << b) - 1));
}

// butterflies over bits [0, r) of the register index (r <= 4)
__device__ __forceinline__ void butterflies(float (&v)[16], int r) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    if (s < r) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        if (!(j & (1 << s))) {
          const float a = v[j], c = v[j | (1 << s)];
          v[j] = a + c;
          v[j | (1 << s)] = a - c;
        }
      }
    }
  }
}

template <typename T>
__global__ void hadamard_rows_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ signs,
                                     int log2p, float scale, bool inverse) {
  extern __shared__ float z[];  // the row, padded
  const int p = 1 << log2p;
  const long long row = blockIdx.x;
  const T* xr = x + row * p;
  T* yr = out + row * p;
  const int t = threadIdx.x;
  float v[16];
  // pass 0: sixteen consecutive numbers, steps over bits [0, r0)
  const int passes = (log2p + 3) / 4;
  const int r0 = log2p - 4 * (passes - 1);
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int e = 16 * t + j;
    const float a = to_float(xr[e]);
    v[j] = inverse ? a : a * signs[e];
  }
  butterflies(v, r0);
  int b = 0;  // the bits the registers span start at b
  for (int k = 1; k < passes; ++k) {
#pragma unroll
    for (int j = 0; j < 16; ++j) z[padded(position(t, j, b))] = v[j];
    __syncthreads();
    b = r0 + 4 * (k - 1);
#pragma unroll
    for (int j = 0; j < 16; ++j) v[j] = z[padded(position(t, j, b))];
    __syncthreads();
    butterflies(v, 4);
  }
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const int e = position(t, j, b);
    const float a = v[j] * scale;
    yr[e] = from_float<T>(inverse ? a * signs[e] : a);
  }
}


// The transform of rows whose length n = h p has a dense factor F [h, h] (n = 11008 = 344 x 32 in a 7B
// MLP): forward (F (x) H_p)(s x), inverse s (F^T (x) H_p) y, x viewed as [h, p] (outer k, inner j).
// The dense and the Walsh parts act on different indices and commute, so a block takes I outer rows i of
// one row's output and forms u[i, :] = sum_k G[i, k] v[k, :] (G = F or F^T, v = s x or y read through L1),
// each output's sum cut into `parts` runs of k summed by different threads (so a thread does about h /
// parts multiply-adds, not h: session 12's first version, a thread an output, took 28.8 us a row of 11008
// against the Triton kernel's 11.3), the runs added in a fixed order; then the butterflies over p on the
// block's I rows in shared memory, the scale (and the signs of the inverse). Blocks: rows x ceil(h / I).
template <typename T>
__global__ void hadamard_dense_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ signs,
                                      const float* __restrict__ factor, int h, int log2p, int outer_per_block,
                                      int blocks_per_row, int parts, float scale, bool inverse) {
  extern __shared__ float u[];  // [I p] the outputs, then [parts][I p] the runs' sums where parts > 1
  const int p = 1 << log2p;
  const long long row = blockIdx.x / blocks_per_row;
  const int i0 = (blockIdx.x % blocks_per_row) * outer_per_block;
  const int count = min(outer_per_block, h - i0) << log2p;  // outputs of this block
  const int stride = outer_per_block << log2p;
  const long long n = static_cast<long long>(h) << log2p;
  const T* xr = x + row * n;
  const int run = (h + parts - 1) / parts;
  for (int t = threadIdx.x; t < stride * parts; t += blockDim.x) {
    const int e = t % stride, part = t / stride;
    if (e >= count) continue;
    const int j = e & (p - 1);
    const float* g = factor + static_cast<long long>(i0 + (e >> log2p)) * h;
    const int k1 = min(h, (part + 1) * run);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int k = part * run;
    for (; k + 4 <= k1; k += 4) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int idx = ((k + q) << log2p) + j;
        const float a = to_float(xr[idx]);
        acc[q] = fmaf(__ldg(g + k + q), inverse ? a : a * __ldg(signs + idx), acc[q]);
      }
    }
    for (; k < k1; ++k) {
      const int idx = (k << log2p) + j;
      const float a = to_float(xr[idx]);
      acc[0] = fmaf(__ldg(g + k), inverse ? a : a * __ldg(signs + idx), acc[0]);
    }
    u[(parts > 1 ? stride * (1 + part) : 0) + e] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
  if (parts > 1) {
    __syncthreads();
    for (int e = threadIdx.x; e < count; e += blockDim.x) {
      float sum = 0.f;
      for (int q = 0; q < parts; ++q) sum += u[stride * (1 + q) + e];
      u[e] = sum;
    }
  }
  __syncthreads();
  for (int len = 1; len < p; len <<= 1) {  // butterflies over the inner index, every row of the block
    for (int b = threadIdx.x; 2 * b < count; b += blockDim.x) {
      const int lo = ((b & ~(len - 1)) << 1) | (b & (len - 1));  // pairs (lo, lo + len) within p-aligned rows
      const float a = u[lo], c = u[lo + len];
      u[lo] = a + c;
      u[lo + len] = a - c;
    }
    __syncthreads();
  }
  T* yr = out + row * n + (static_cast<long long>(i0) << log2p);
  for (int e = threadIdx.x; e < count; e += blockDim.x) {
    const float a = u[e] * scale;
    yr[e] = from_float<T>(inverse ? a * signs[(i0 << log2p) + e] : a);
  }
}

}  // namespace

#ifndef PVQ_KERNEL_ONLY
namespace pvq {

// out [B, p] (x's dtype) = the transform of each row of x [B, p]; signs float32 [p].
Status hadamard_rows(at::Tensor& out, at::Tensor x, at::Tensor signs, int64_t log2p, double scale,
                     bool inverse) {
  PVQ_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be [B, p] contiguous on CUDA");
  PVQ_CHECK(log2p >= 4 && log2p <= 14 && x.size(1) == (1LL << log2p), "rows of p = 2^log2p, 16 <= p <= 16384");
  PVQ_CHECK(signs.scalar_type() == at::kFloat && signs.numel() == x.size(1), "signs float32 [p]");
  const c10::cuda::CUDAGuard guard(x.device());
  out = at::empty_like(x);
  if (x.size(0) == 0) return {};
  const int p = static_cast<int>(x.size(1));
  const int threads = p / 16;
  const size_t smem = sizeof(float) * (p + p / 32);
  auto stream = c10::cuda::getCurrentCUDAStream();
#define PVQ_HADAMARD(T, TL)                                                                                       \
  do {                                                                                                            \
    auto kern = hadamard_rows_kernel<T>;                                                                          \
    if (smem > 48 * 1024)                                                                                         \
      PVQ_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))); \
    kern<<<static_cast<unsigned>(x.size(0)), threads, smem, stream>>>(                                            \
        reinterpret_cast<const T*>(x.data_ptr<TL>()), reinterpret_cast<T*>(out.data_ptr<TL>()),                   \
        signs.data_ptr<float>(), static_cast<int>(log2p), static_cast<float>(scale), inverse);                    \
    PVQ_LAUNCH_CHECK();                                                                                           \
  } while (0)
  PVQ_BY_DTYPE(x, PVQ_HADAMARD);
  return {};
}

// out [B, h p] (x's dtype) = the transform of each row of x with the dense factor G float32 [h, h] (F for the
// forward, F^T for the inverse); signs float32 [h p]; scale = 1 / sqrt(p).
Status hadamard_dense_rows(at::Tensor& out, at::Tensor x, at::Tensor signs, at::Tensor factor,
                           int64_t log2p, double scale, bool inverse) {
  PVQ_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be [B, n] contiguous on CUDA");
  PVQ_CHECK(factor.scalar_type() == at::kFloat && factor.dim() == 2 && factor.size(0) == factor.size(1) &&
            factor.is_contiguous(), "factor float32 [h, h]");
  const int h = static_cast<int>(factor.size(0));
  PVQ_CHECK(log2p >= 0 && log2p <= 14 && x.size(1) == (static_cast<int64_t>(h) << log2p),
            "rows of n = h 2^log2p, 2^log2p <= 16384");
  PVQ_CHECK(signs.scalar_type() == at::kFloat && signs.numel() == x.size(1), "signs float32 [n]");
  const c10::cuda::CUDAGuard guard(x.device());
  out = at::empty_like(x);
  if (x.size(0) == 0) return {};
  const int p = 1 << log2p;
  // a warp's worth of outputs a block (p < 32: several outer rows), each sum cut into up to 8 runs of at least
  // 16 multiply-adds, so 11008 = 344 x 32 runs as 344 blocks of 256 threads of 43 multiply-adds each
  const int outer_per_block = std::max(1, std::min(h, 32 / p));
  const int stride = outer_per_block * p;
  const int parts = std::max(1, std::min({8, 256 / stride, h / 16}));
  const int blocks_per_row = (h + outer_per_block - 1) / outer_per_block;
  PVQ_CHECK(x.size(0) * blocks_per_row < (1LL << 31), "too many rows for one launch");
  const int threads = std::min(1024, std::max(32, stride * parts));
  const size_t smem = sizeof(float) * static_cast<size_t>(stride) * (parts > 1 ? parts + 1 : 1);
  auto stream = c10::cuda::getCurrentCUDAStream();
#define PVQ_HADAMARD_DENSE(T, TL)                                                                                 \
  do {                                                                                                            \
    auto kern = hadamard_dense_kernel<T>;                                                                         \
    if (smem > 48 * 1024)                                                                                         \
      PVQ_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))); \
    kern<<<static_cast<unsigned>(x.size(0) * blocks_per_row), threads, smem, stream>>>(                            \
        reinterpret_cast<const T*>(x.data_ptr<TL>()), reinterpret_cast<T*>(out.data_ptr<TL>()),                   \
        signs.data_ptr<float>(), factor.data_ptr<float>(), h, static_cast<int>(log2p), outer_per_block,           \
        blocks_per_row, parts, static_cast<float>(scale), inverse);                                               \
    PVQ_LAUNCH_CHECK();                                                                                           \
  } while (0)
  PVQ_BY_DTYPE(x, PVQ_HADAMARD_DENSE);
  return {};
}

}  // namespace pvq
#endif
