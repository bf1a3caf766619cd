// float32 <-> the activation dtypes (fp16, bf16, fp32), shared by the CUDA kernels of pvq/kernels/csrc.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace pvq {

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }

}  // namespace pvq

// Host side: CASE(T, TL) for the dtype of x (T the device type, TL torch's), float16, bfloat16 or float32.
#define PVQ_BY_DTYPE(x, CASE)                                                                               \
  do {                                                                                                      \
    if ((x).scalar_type() == at::kHalf) {                                                                   \
      CASE(__half, at::Half);                                                                               \
    } else if ((x).scalar_type() == at::kBFloat16) {                                                        \
      CASE(__nv_bfloat16, at::BFloat16);                                                                    \
    } else {                                                                                                \
      PVQ_CHECK((x).scalar_type() == at::kFloat, "x must be float16, bfloat16 or float32");                 \
      CASE(float, float);                                                                                   \
    }                                                                                                       \
  } while (0)
