// Binding the host entry points (host_api.h) in the *_bind.cpp files, with no C++ exception ever leaving them: a bound
// function returns (result, "") or (None, message) (a failed pvq::Status, or the message of anything thrown inside,
// e.g. by a torch call, caught here in the module that threw it), and the Python side raises RuntimeError(message)
// (pvq/kernels/cuda_build.py, StatusExtension). Why: on the H200 machine a C++ exception thrown out of a bound
// function into pybind11's dispatcher killed the process (host_status.h), whichever file or compiler threw it; the
// one path every passing GPU test takes, returning a value, is the only one an error takes now.
// C++ files only: torch/extension.h's Python parts.
#pragma once
#include <exception>
#include <string>
#include <torch/extension.h>
#include "host_api.h"

namespace pvq {

namespace py = pybind11;

// (result or None, message): call() returns the Status; the result is made by done() when it is empty
template <typename Call, typename Done>
py::tuple status_tuple(Call&& call, Done&& done) {
  Status status;
  try {
    status = call();
  } catch (const std::exception& e) {
    status = message("unexpected C++ exception: ", e.what());
  } catch (...) {
    status = "unexpected C++ exception of an unknown type";
  }
  if (!status.empty()) return py::make_tuple(py::none(), status);
  return py::make_tuple(done(), std::string());
}

// f(y, args...) bound as a function of args returning (y, "") or (None, message)
template <typename... A>
auto returning_tensor(Status (*f)(torch::Tensor&, A...)) {
  return [f](A... args) {
    torch::Tensor y;
    return status_tuple([&] { return f(y, args...); }, [&] { return py::cast(y); });
  };
}

// f(args...) bound as a function of args returning (None, "") or (None, message)
template <typename... A>
auto returning_none(Status (*f)(A...)) {
  return [f](A... args) { return status_tuple([&] { return f(args...); }, [] { return py::none(); }); };
}

}  // namespace pvq
