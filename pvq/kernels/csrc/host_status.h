// How the extensions' host code reports a failed check: as a value. The host functions of the .cu files return a
// pvq::Status (empty: done; else the message that says what to change) and never throw; the bindings
// (*_bind.cpp, built by the C++ compiler; bind_status.h) return it beside the result, and Python raises a failed
// one as RuntimeError (pvq/kernels/cuda_build.py, StatusExtension).
//
// Why values (sessions 14-16): on the H200 machine (torch 2.11 + CUDA 13, pybind11 3.1, gcc 13, libstdc++ 6.0.33) a
// failed check of an extension killed the process with a segmentation fault, whether it threw (TORCH_CHECK, a
// std::runtime_error) or, from session 16, returned its message as a value. Session 18 found the common step
// (benchmarks/diag/ostream_probe.py, output docs/bench/bind_diag_s18_h200.txt): writing an integer to a
// std::ostringstream segfaults there, with torch alone imported; a string written to one, std::to_string, a
// std::string returned to Python and an exception thrown and caught inside the module all work. TORCH_CHECK builds its
// message the same way (c10::str), so the earlier crashes were most likely that formatting, not the throw (not
// re-tested). So pvq::message builds messages from std::string and std::to_string alone
// (tests/kernels/test_cuda_sources.py bans ostreams in csrc), and the bindings still return errors as values
// (bind_status.h), the path tests/kernels/test_bind_status.py and the refusals of test_leaf_rows.py passed on the H200.
#pragma once
#include <string>
#include <type_traits>

namespace pvq {

using Status = std::string;  // empty: done

// one part of a message as text: numbers through std::to_string, never an ostream (see above)
inline std::string text(const std::string& s) { return s; }
inline std::string text(const char* s) { return s; }
inline std::string text(char c) { return std::string(1, c); }
template <typename T>
std::string text(const T& v) {
  static_assert(std::is_arithmetic_v<T>, "pvq::message takes strings and numbers");
  if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else return std::to_string(v);
}

template <typename... A>
std::string message(const A&... parts) {
  std::string out;
  (out += ... += text(parts));
  return out;
}

}  // namespace pvq

// In a function returning pvq::Status: return the message where cond is false
#define PVQ_CHECK(cond, ...)                                                                         \
  do {                                                                                               \
    if (!(cond)) return pvq::message(__VA_ARGS__);                                                   \
  } while (0)
// ... where a CUDA runtime call failed (.cu files)
#define PVQ_CUDA_CHECK(expr)                                                                         \
  do {                                                                                               \
    const cudaError_t pvq_err_ = (expr);                                                             \
    if (pvq_err_ != cudaSuccess) return pvq::message("CUDA error: ", cudaGetErrorString(pvq_err_));  \
  } while (0)
#define PVQ_LAUNCH_CHECK() PVQ_CUDA_CHECK(cudaGetLastError())
// ... where a call returning pvq::Status failed
#define PVQ_TRY(expr)                                                                                \
  do {                                                                                               \
    pvq::Status pvq_status_ = (expr);                                                                \
    if (!pvq_status_.empty()) return pvq_status_;                                                    \
  } while (0)
