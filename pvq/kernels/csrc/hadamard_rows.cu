// The randomized Hadamard transform of activation rows, x -> scale * (F (x) H_p) (s * x), and its
// inverse y -> s * scale * (F^T (x) H_p) y, as pvq.transforms.RandomizedHadamard defines them: a row
// of n = h p numbers is the [h, p] matrix X (row-major), H_p the +-1 Sylvester matrix on the inner
// axis (a fast Walsh-Hadamard transform in shared memory), F a dense [h, h] float factor on the outer
// axis (identity when h = 1), scale = 1 / sqrt(p), s random signs. Float32 arithmetic.
//
// Why: the Triton kernels multiply by H_p as two dense matrices (p^1.5 multiply-adds in one program: 11.8
// us for one row of 4096 on an H100, 352 calls in a decode step of a 7B model); here the butterflies
// take log2 p steps over the whole block. Grid (rows, ceil(h / HB)): every block transforms its row's
// inner axis (n log2 p additions), then computes HB rows of the dense factor's product (h^2 p
// multiply-adds a row, spread over the blocks).

#include "dtype.cuh"
#ifndef PVQ_KERNEL_ONLY
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace {

using pvq::from_float;
using pvq::to_float;


template <typename T>
__global__ void hadamard_rows_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ signs,
                                     const float* __restrict__ f, int n, int h, int log2p, int rows_per_block,
                                     float scale, bool inverse) {
  extern __shared__ float z[];  // [n]: the row, then X H_p
  const long long row = blockIdx.x;
  const T* xr = x + row * n;
  T* yr = out + row * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = to_float(xr[i]);
    z[i] = inverse ? v : v * signs[i];
  }
  __syncthreads();
  // butterflies of stride 2^s (s < log2 p never pair two rows of X)
  const int pairs = n >> 1;
  for (int s = 0; s < log2p; ++s) {
    const int half = 1 << s;
    for (int t = threadIdx.x; t < pairs; t += blockDim.x) {
      const int a = ((t >> s) << (s + 1)) | (t & (half - 1));
      const float u = z[a], w = z[a + half];
      z[a] = u + w;
      z[a + half] = u - w;
    }
    __syncthreads();
  }
  const int p = 1 << log2p;
  if (h == 1) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = z[i] * scale;
      yr[i] = from_float<T>(inverse ? v * signs[i] : v);
    }
    return;
  }
  // rows [i0, i1) of F Z (F already transposed for the inverse)
  const int i0 = blockIdx.y * rows_per_block;
  const int i1 = min(h, i0 + rows_per_block);
  for (int o = threadIdx.x; o < (i1 - i0) * p; o += blockDim.x) {
    const int i = i0 + (o >> log2p), j = o & (p - 1);
    const float* fi = f + static_cast<long long>(i) * h;
    float acc = 0.f;
    for (int k = 0; k < h; ++k) acc = fmaf(__ldg(fi + k), z[k * p + j], acc);
    const float v = acc * scale;
    yr[i * p + j] = from_float<T>(inverse ? v * signs[i * p + j] : v);
  }
}

}  // namespace

#ifndef PVQ_KERNEL_ONLY
// out [B, n] (x's dtype) = the transform of each row of x [B, n]; signs float32 [n]; f float32 [h, h]
// (F, or F^T for the inverse; ignored when h = 1).
torch::Tensor hadamard_rows(torch::Tensor x, torch::Tensor signs, torch::Tensor f, int64_t h, int64_t log2p,
                            double scale, bool inverse) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be [B, n] contiguous on CUDA");
  const int n = static_cast<int>(x.size(1));
  TORCH_CHECK(n == h * (1LL << log2p), "n must be h * 2^log2p");
  TORCH_CHECK(signs.scalar_type() == torch::kFloat32 && signs.numel() == n, "signs float32 [n]");
  TORCH_CHECK(h == 1 || (f.scalar_type() == torch::kFloat32 && f.numel() == h * h), "f float32 [h, h]");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty_like(x);
  if (x.size(0) == 0) return out;
  const int threads = 256;
  const int p = 1 << log2p;
  const int rows_per_block = h == 1 ? 1 : std::max(1, threads / p);
  const dim3 grid(static_cast<unsigned>(x.size(0)), h == 1 ? 1 : static_cast<unsigned>((h + rows_per_block - 1) / rows_per_block));
  const size_t smem = sizeof(float) * n;
  auto stream = at::cuda::getCurrentCUDAStream();
#define PVQ_HADAMARD(T, TL)                                                                                       \
  do {                                                                                                            \
    auto kern = hadamard_rows_kernel<T>;                                                                          \
    C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))); \
    kern<<<grid, threads, smem, stream>>>(reinterpret_cast<const T*>(x.data_ptr<TL>()),                           \
                                          reinterpret_cast<T*>(out.data_ptr<TL>()), signs.data_ptr<float>(),      \
                                          h == 1 ? nullptr : f.data_ptr<float>(), n, static_cast<int>(h),         \
                                          static_cast<int>(log2p), rows_per_block, static_cast<float>(scale),     \
                                          inverse);                                                               \
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
