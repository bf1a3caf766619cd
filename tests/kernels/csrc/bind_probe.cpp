// A CPU extension bound like the CUDA kernels' (bind_status.h), for tests/kernels/test_bind_status.py: host
// functions that report a failed check as a pvq::Status (and one that throws), bound through pvq::returning_tensor /
// returning_none.
#include <stdexcept>
#include "bind_status.h"

namespace {

pvq::Status scaled(torch::Tensor& y, torch::Tensor x, int64_t factor) {
  PVQ_CHECK(factor >= 0, "factor must be >= 0, got ", factor);
  PVQ_TRY(factor == 7 ? pvq::message("seven refused by a nested call") : pvq::Status{});
  if (factor == 9) throw std::runtime_error("nine thrown");  // what a torch call inside may do: caught in bind_status.h
  y = x * factor;
  return {};
}

pvq::Status two_dimensional(torch::Tensor x) {
  PVQ_CHECK(x.dim() == 2, "x must be 2-D, got ", x.dim(), " dims");
  return {};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scaled", pvq::returning_tensor(&scaled), "x * factor");
  m.def("two_dimensional", pvq::returning_none(&two_dimensional), "checks x");
}
