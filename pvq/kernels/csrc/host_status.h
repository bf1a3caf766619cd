// How the extensions' host code reports a failed check: as a value. The host functions of the .cu files return a
// pvq::Status (empty: done; else the message that says what to change) and never throw; the bindings
// (*_bind.cpp, built by the C++ compiler; bind_status.h) return it beside the result, and Python raises a failed
// one as RuntimeError (pvq/kernels/cuda_build.py, StatusExtension).
//
// Why: on the H200 machine (torch 2.11 + CUDA 13, pybind11 3.1, gcc 13) a failed check of an extension killed the
// process with a segmentation fault: a TORCH_CHECK (c10::Error) thrown in a .cu or a .cpp (session 14, load_inline
// probes), and a std::runtime_error thrown in a .cu (session 14) or in a .cpp bound by a plain pybind11 m.def
// (session 15; tests/kernels/test_leaf_rows.py, the refusals). The one form seen to arrive as RuntimeError: a
// std::runtime_error thrown in a function bound through torch::wrap_pybind_function (session 14, load_inline's
// bindings), which converts it to a Python error inside the call, so pybind11's dispatcher never walks its list of
// registered exception translators (shared with torch's own modules; a crash in that walk is the failure of
// pybind/pybind11#286). Session 15 bound that way (compiled, never run on a GPU). Session 16 went further: no
// exception leaves a bound function at all (bind_status.h catches anything thrown inside and returns its message),
// so an error takes the path of a result, the one every passing GPU test takes (tested on the CPU:
// tests/kernels/test_bind_status.py; not yet run on a GPU).
#pragma once
#include <sstream>
#include <string>

namespace pvq {

using Status = std::string;  // empty: done

template <typename... A>
std::string message(const A&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
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
