// The randomized Hadamard transform of activation rows, x -> scale * (F (x) H_p) (s * x) and its inverse
// y -> s * scale * (F^T (x) H_p) y, as pvq.transforms.RandomizedHadamard defines them: a row of n = h p
// numbers is the [h, p] matrix X (row-major), H_p the +-1 Sylvester matrix on the inner axis, F a
// dense [h, h] float factor on the outer axis, scale = 1 / sqrt(p), s random signs. Two kernels: a
// power of two (h = 1, 16 <= p <= 16384) and a dense factor with p in {16, 32, 64} (n <= 16384).
// Float32 arithmetic.
//
// Why: the Triton kernel multiplies by H_p as two dense matrices (p^1.5 multiply-adds in one program:
// 11.8 us a row of 4096 on an H100, 352 calls in a 7B decode step), and a butterfly per thread through
// shared memory (this file's first version) waited on shared memory at every one of the log2 p steps
// (17 us). Here a block of p / 16 threads holds the row in registers, 16 numbers a thread, and runs the
// butterflies in radix-16 passes: each pass does four (the first r0 = log2 p - 4 (passes - 1)) of
// the log2 p steps on the 16 registers, whose indices differ in four bits of the row position; between
// passes the row goes through shared memory once to regroup it (padded: one float per 32, so the
// regrouping reads and writes spread over the banks). One block a row. (The Triton kernel for 11008 =
// 344 x 32 takes 11.2 us a row; the dense kernel below spreads F's h^2 p multiply-adds over blocks.)

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

// Rows with a dense factor: n = h p, p in {16, 32, 64} (11008 = 344 x 32). Grid (rows, ceil(h / HB)):
// each block loads its row (signs applied for the forward) into shared memory, one thread a segment
// of p runs H_p on it in registers (segments padded to p + 1 floats: the threads' reads spread over the
// banks), then each thread computes one number of HB rows of F Z: sum_k F[i, k] Z[k, j], four partial
// sums in flight.
template <typename T, int P>
__global__ void hadamard_dense_rows_kernel(const T* __restrict__ x, T* __restrict__ out,
                                           const float* __restrict__ signs, const float* __restrict__ f, int h,
                                           int rows_per_block, float scale, bool inverse) {
  extern __shared__ float z[];  // [h][P + 1]
  const int n = h * P;
  const long long row = blockIdx.x;
  const T* xr = x + row * n;
  T* yr = out + row * n;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const float a = to_float(xr[e]);
    z[(e / P) * (P + 1) + e % P] = inverse ? a : a * signs[e];
  }
  __syncthreads();
  for (int r = threadIdx.x; r < h; r += blockDim.x) {
    float v[P];
#pragma unroll
    for (int c = 0; c < P; ++c) v[c] = z[r * (P + 1) + c];
#pragma unroll
    for (int s = 1; s < P; s <<= 1) {
#pragma unroll
      for (int c = 0; c < P; ++c) {
        if (!(c & s)) {
          const float a = v[c], b = v[c | s];
          v[c] = a + b;
          v[c | s] = a - b;
        }
      }
    }
#pragma unroll
    for (int c = 0; c < P; ++c) z[r * (P + 1) + c] = v[c];
  }
  __syncthreads();
  const int i0 = blockIdx.y * rows_per_block;
  const int outputs = (min(h, i0 + rows_per_block) - i0) * P;
  for (int o = threadIdx.x; o < outputs; o += blockDim.x) {
    const int i = i0 + o / P, j = o % P;
    const float* fi = f + static_cast<long long>(i) * h;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int k = 0;
    for (; k + 4 <= h; k += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] = fmaf(__ldg(fi + k + u), z[(k + u) * (P + 1) + j], acc[u]);
    }
    for (; k < h; ++k) acc[0] = fmaf(__ldg(fi + k), z[k * (P + 1) + j], acc[0]);
    const float a = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * scale;
    const int e = i * P + j;
    yr[e] = from_float<T>(inverse ? a * signs[e] : a);
  }
}

#ifdef PVQ_KERNEL_ONLY
template __global__ void hadamard_rows_kernel<__half>(const __half*, __half*, const float*, int, float, bool);
template __global__ void hadamard_dense_rows_kernel<__half, 32>(const __half*, __half*, const float*, const float*,
                                                                 int, int, float, bool);
#endif

}  // namespace

#ifndef PVQ_KERNEL_ONLY
// out [B, n] (x's dtype) = the transform of each row of x [B, n], n = h 2^log2p; signs float32 [n];
// f float32 [h, h] (F, or F^T for the inverse; unused when h = 1).
torch::Tensor hadamard_rows(torch::Tensor x, torch::Tensor signs, torch::Tensor f, int64_t h, int64_t log2p,
                            double scale, bool inverse) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be [B, n] contiguous on CUDA");
  TORCH_CHECK(x.size(1) == h * (1LL << log2p), "rows of n = h * 2^log2p");
  TORCH_CHECK(h == 1 ? (log2p >= 4 && log2p <= 14) : (log2p >= 4 && log2p <= 6 && h * (1LL << log2p) <= 16384),
              "h = 1 and 16 <= p <= 16384, or p in 16, 32, 64 and n <= 16384");
  TORCH_CHECK(signs.scalar_type() == torch::kFloat32 && signs.numel() == x.size(1), "signs float32 [n]");
  TORCH_CHECK(h == 1 || (f.scalar_type() == torch::kFloat32 && f.numel() == h * h), "f float32 [h, h]");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty_like(x);
  if (x.size(0) == 0) return out;
  const int p = 1 << log2p;
  auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned rows = static_cast<unsigned>(x.size(0));
#define PVQ_SMEM(kern, smem)                                                                                      \
  if ((smem) > 48 * 1024)                                                                                         \
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)))
#define PVQ_POW2(T, TL)                                                                                           \
  do {                                                                                                            \
    auto kern = hadamard_rows_kernel<T>;                                                                          \
    const size_t smem = sizeof(float) * (p + p / 32);                                                             \
    PVQ_SMEM(kern, smem);                                                                                         \
    kern<<<rows, p / 16, smem, stream>>>(reinterpret_cast<const T*>(x.data_ptr<TL>()),                            \
                                         reinterpret_cast<T*>(out.data_ptr<TL>()), signs.data_ptr<float>(),       \
                                         static_cast<int>(log2p), static_cast<float>(scale), inverse);            \
  } while (0)
#define PVQ_DENSE(T, TL, PP)                                                                                      \
  do {                                                                                                            \
    auto kern = hadamard_dense_rows_kernel<T, PP>;                                                                \
    const int threads = 256, per_block = threads / PP;                                                            \
    const size_t smem = sizeof(float) * h * (PP + 1);                                                             \
    PVQ_SMEM(kern, smem);                                                                                         \
    const dim3 grid(rows, static_cast<unsigned>((h + per_block - 1) / per_block));                                \
    kern<<<grid, threads, smem, stream>>>(reinterpret_cast<const T*>(x.data_ptr<TL>()),                           \
                                          reinterpret_cast<T*>(out.data_ptr<TL>()), signs.data_ptr<float>(),      \
                                          f.data_ptr<float>(), static_cast<int>(h), per_block,                    \
                                          static_cast<float>(scale), inverse);                                    \
  } while (0)
#define PVQ_HADAMARD(T, TL)                                                                                       \
  do {                                                                                                            \
    if (h == 1) PVQ_POW2(T, TL);                                                                                  \
    else if (p == 16) PVQ_DENSE(T, TL, 16);                                                                       \
    else if (p == 32) PVQ_DENSE(T, TL, 32);                                                                       \
    else PVQ_DENSE(T, TL, 64);                                                                                    \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                               \
  } while (0)
  if (x.scalar_type() == torch::kHalf) {
    PVQ_HADAMARD(__half, at::Half);
  } else if (x.scalar_type() == torch::kBFloat16) {
    PVQ_HADAMARD(__nv_bfloat16, at::BFloat16);
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float16, bfloat16 or float32");
    PVQ_HADAMARD(float, float);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("hadamard_rows", &hadamard_rows, "randomized Hadamard of rows"); }
#endif
