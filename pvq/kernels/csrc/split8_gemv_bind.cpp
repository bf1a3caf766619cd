// Python bindings of split8_gemv.cu, built by the C++ compiler: a failed check raises RuntimeError here, never in
// code that nvcc compiled (host_status.h says why)
#include "bind_status.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("split8_gemv", pvq::returning_tensor(&pvq::split8_gemv), "split PVQ product of 1 to 8 rows, D = 8");
}
