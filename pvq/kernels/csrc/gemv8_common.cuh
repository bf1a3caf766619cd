// Pieces of the D = 8 PVQ products (split8_gemv.cu, leaf8_gemv.cu, leafrow8_gemv.cu): x in registers, int8 leaf words as exact
// half2 or float, a leaf pair's coordinates and inverse norm, the warp reductions of several rows at once.
#pragma once
#include "dtype.cuh"
#include <cstring>

namespace pvq8 {

constexpr float kTwo23 = 8388608.f;

// x[8 v .. 8 v + 7] as floats (zeros when the vector is past the row)
template <typename T>
__device__ __forceinline__ void load8(const T* __restrict__ x, int v, bool valid, float* out) {
#pragma unroll
  for (int t = 0; t < 8; ++t) out[t] = valid ? pvq::to_float(x[8 * v + t]) : 0.f;
}

// sum_t c_t x_t over the four int8 coordinates of a leaf word, without I2F: each byte, biased by 128,
// becomes the mantissa of 2^23 + c + 128
__device__ __forceinline__ float leaf_dot(int w, const float* x4) {
  const unsigned biased = static_cast<unsigned>(w) ^ 0x80808080u;
  float s = 0.f;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const float c = __int_as_float(__byte_perm(biased, 0x4B000000u, t | (4 << 4) | (4 << 8) | (7 << 12))) - (kTwo23 + 128.f);
    s = fmaf(c, x4[t], s);
  }
  return s;
}

__device__ __forceinline__ __half2 u32_as_half2(unsigned w) {
  __half2 h;
  memcpy(&h, &w, sizeof(h));
  return h;
}

// 1 / sqrt(v) from the special-function unit alone (v = |y|^2 >= 1: no range fix-ups)
__device__ __forceinline__ float rsqrt_approx(float v) {
  float r;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}

// Four int8 coordinates (biased by 128) as two exact half2: the bytes under 0x64 are the halves
// 1024 + c + 128, less 1152.
__device__ __forceinline__ void leaf_halves(unsigned biased, __half2& c01, __half2& c23) {
  const __half2 bias = u32_as_half2(0x64806480u);  // (1152, 1152)
  c01 = __hsub2(u32_as_half2(__byte_perm(biased, 0x64646464u, 0x5140)), bias);
  c23 = __hsub2(u32_as_half2(__byte_perm(biased, 0x64646464u, 0x5342)), bias);
}

// 1 / |y| of eight exact half2 coordinates (the squared norm summed in HFMA2: exact integers; then the
// special-function unit)
__device__ __forceinline__ float inverse_norm8(__half2 a01, __half2 a23, __half2 b01, __half2 b23) {
  __half2 n = __hmul2(a01, a01);
  n = __hfma2(a23, a23, n);
  n = __hfma2(b01, b01, n);
  n = __hfma2(b23, b23, n);
  return rsqrt_approx(__half2float(__hadd(__low2half(n), __high2half(n))));
}

// A leaf pair's eight coordinates as exact half2 (a01, a23 of leaf a; b01, b23 of leaf b) and 1 / |y|
__device__ __forceinline__ float leaf_pair(unsigned wa, unsigned wb, __half2& a01, __half2& a23, __half2& b01,
                                           __half2& b23) {
  leaf_halves(wa, a01, a23);
  leaf_halves(wb, b01, b23);
  return inverse_norm8(a01, a23, b01, b23);
}

// Sums of R rows' per-lane values over the warp in 5 + R - 1 shuffles (not 5 R): each step hands
// half of the rows still held to the partner lane. Afterwards lane l holds the sum of row
// (l >> (5 - log2 R)), complete in the lanes whose low 5 - log2 R bits are zero.
template <int R>
__device__ __forceinline__ float reduce_rows(float (&a)[R], int lane) {
  static_assert(R == 1 || R == 2 || R == 4 || R == 8 || R == 16, "rows a step: 1, 2, 4, 8 or 16");
  float k[R];
#pragma unroll
  for (int r = 0; r < R; ++r) k[r] = a[r];
#pragma unroll
  for (int n = R, o = 16; n > 1; n >>= 1, o >>= 1) {  // keep the half of the rows this lane's bit o names
    const bool up = lane & o;
#pragma unroll
    for (int r = 0; r < n / 2; ++r) {
      const float keep = up ? k[r + n / 2] : k[r], give = up ? k[r] : k[r + n / 2];
      k[r] = keep + __shfl_xor_sync(0xFFFFFFFFu, give, o);
    }
  }
  float sum = k[0];
#pragma unroll
  for (int o = 16 / R; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);  // the lanes of one row
  return sum;
}

}  // namespace pvq8
