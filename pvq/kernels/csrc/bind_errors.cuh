// Errors of the CUDA extensions: checks that throw std::runtime_error (pybind11 raises it as RuntimeError with
// the message), never c10::Error, and no catch of c10::Error in extension code.
//
// Why: on the H200 machine (torch 2.11 + CUDA 13, pybind11 3.1, gcc 13) a TORCH_CHECK failing in extension code
// killed the process with a segmentation fault, in a C++ or a CUDA extension alike, while a std::runtime_error
// thrown there arrived as RuntimeError (session 14, a load_inline probe). A wrapper that caught c10::Error and
// rethrew std::runtime_error crashed as well, even for a std::runtime_error thrown inside it: so the fault is in
// matching or throwing the type c10::Error from extension code (its type information as this module sees it),
// and the extensions name that type nowhere. (This last form was compiled, not yet run on a GPU.)
#pragma once
#include <torch/extension.h>
#include <cuda_runtime.h>
#include <sstream>
#include <stdexcept>
#include <string>

namespace pvq {

template <typename... A>
std::string message(const A&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
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
