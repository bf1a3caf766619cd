// The extensions' functions as Python sees them: a c10::Error (TORCH_CHECK, C10_CUDA_CHECK) raised inside becomes
// a std::runtime_error, which pybind11 raises as RuntimeError with the same message (torch's own translation).
//
// Why: on the H200 machine (torch 2.11 + CUDA 13, pybind11 3.1, gcc 13) a c10::Error thrown out of any extension,
// C++ or CUDA, killed the process with a segmentation fault, while a std::runtime_error arrived as RuntimeError
// (session 14: .devstage probe, then tests/kernels/test_leaf_rows.py's refusal test): a bad argument must be an
// error, not a crash.
#pragma once
#include <torch/extension.h>
#include <stdexcept>
#include <utility>

namespace pvq {

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
