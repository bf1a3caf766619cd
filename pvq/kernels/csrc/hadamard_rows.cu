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
#ifndef PVQ_KERNEL_ONLY
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
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

}  // namespace

#ifndef PVQ_KERNEL_ONLY
// out [B, p] (x's dtype) = the transform of each row of x [B, p]; signs float32 [p].
torch::Tensor hadamard_rows(torch::Tensor x, torch::Tensor signs, int64_t log2p, double scale, bool inverse) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be [B, p] contiguous on CUDA");
  TORCH_CHECK(log2p >= 4 && log2p <= 14 && x.size(1) == (1LL << log2p), "rows of p = 2^log2p, 16 <= p <= 16384");
  TORCH_CHECK(signs.scalar_type() == torch::kFloat32 && signs.numel() == x.size(1), "signs float32 [p]");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty_like(x);
  if (x.size(0) == 0) return out;
  const int p = static_cast<int>(x.size(1));
  const int threads = p / 16;
  const size_t smem = sizeof(float) * (p + p / 32);
  auto stream = at::cuda::getCurrentCUDAStream();
#define PVQ_HADAMARD(T, TL)                                                                                       \
  do {                                                                                                            \
    auto kern = hadamard_rows_kernel<T>;                                                                          \
    if (smem > 48 * 1024)                                                                                         \
      C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))); \
    kern<<<static_cast<unsigned>(x.size(0)), threads, smem, stream>>>(                                            \
        reinterpret_cast<const T*>(x.data_ptr<TL>()), reinterpret_cast<T*>(out.data_ptr<TL>()),                   \
        signs.data_ptr<float>(), static_cast<int>(log2p), static_cast<float>(scale), inverse);                    \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                               \
  } while (0)
  PVQ_BY_DTYPE(x, PVQ_HADAMARD);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("hadamard_rows", &hadamard_rows, "randomized Hadamard of rows"); }
#endif
