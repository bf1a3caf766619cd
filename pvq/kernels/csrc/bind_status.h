// Binding the host entry points (host_api.h) in the *_bind.cpp files: a failed pvq::Status is thrown as
// std::runtime_error inside a function wrapped by torch::wrap_pybind_function, which hands Python a RuntimeError
// (host_status.h says why this form). C++ files only: torch/extension.h's Python parts.
#pragma once
#include <stdexcept>
#include <torch/extension.h>
#include "host_api.h"

namespace pvq {

inline void raise_if_failed(const Status& status) {
  if (!status.empty()) throw std::runtime_error(status);
}

// f(y, args...) bound as a function of args that returns y
template <typename... A>
auto returning_tensor(Status (*f)(torch::Tensor&, A...)) {
  return torch::wrap_pybind_function([f](A... args) {
    torch::Tensor y;
    raise_if_failed(f(y, args...));
    return y;
  });
}

// f(args...) bound as a function of args that returns None
template <typename... A>
auto returning_none(Status (*f)(A...)) {
  return torch::wrap_pybind_function([f](A... args) { raise_if_failed(f(args...)); });
}

}  // namespace pvq
