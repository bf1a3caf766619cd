// Errors of the CUDA extensions: checks that throw std::runtime_error (pybind11 raises it as RuntimeError with
// the message), never c10::Error.
//
// Why: on the H200 machine (torch 2.11 + CUDA 13, pybind11 3.1, gcc 13) a c10::Error thrown from extension code
// killed the process with a segmentation fault, in a C++ or a CUDA extension alike, even when the extension caught
// it itself and rethrew a std::runtime_error; a std::runtime_error thrown there arrived as RuntimeError (session 14:
// a load_inline probe, then tests/kernels/test_leaf_rows.py's refusal test). So the extensions check with
// PVQ_CHECK / PVQ_CUDA_CHECK / PVQ_LAUNCH_CHECK instead of TORCH_CHECK / C10_CUDA_CHECK /
// C10_CUDA_KERNEL_LAUNCH_CHECK, and errors_as_runtime_error turns what torch's own calls throw into the same.
#pragma once
#include <torch/extension.h>
#include <cuda_runtime.h>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace pvq {

template <typename... A>
std::string message(const A&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <typename R, typename... A>
auto errors_as_runtime_error(R (*fn)(A...)) {
  return [fn](A... args) -> R {
    try {
      return fn(std::forward<A>(args)...);
    } catch (const c10::Error& e) {
      throw std::runtime_error(e.what_without_backtrace());
    }
  };
}

}  // namespace pvq

#define PVQ_CHECK(cond, ...)                                                                         \
  do {                                                                                               \
    if (!(cond)) throw std::runtime_error(pvq::message(__VA_ARGS__));                                \
  } while (0)
#define PVQ_CUDA_CHECK(expr)                                                                         \
  do {                                                                                               \
    const cudaError_t pvq_err_ = (expr);                                                             \
    if (pvq_err_ != cudaSuccess)                                                                     \
      throw std::runtime_error(pvq::message("CUDA error: ", cudaGetErrorString(pvq_err_)));          \
  } while (0)
#define PVQ_LAUNCH_CHECK() PVQ_CUDA_CHECK(cudaGetLastError())
