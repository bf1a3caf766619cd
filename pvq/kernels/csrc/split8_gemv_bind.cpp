// Python bindings of split8_gemv.cu, built by the C++ compiler: a failed check comes back as a value (bind_status.h;
// Python raises it), never as an exception (host_status.h says why)
#include "bind_status.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("split8_gemv", pvq::returning_tensor(&pvq::split8_gemv), "split PVQ product of 1 to 8 rows, D = 8");
}
