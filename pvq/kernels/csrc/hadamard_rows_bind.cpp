// Python bindings of hadamard_rows.cu, built by the C++ compiler: a failed check comes back as a value (bind_status.h;
// Python raises it), never as an exception (host_status.h says why)
#include "bind_status.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hadamard_rows", pvq::returning_tensor(&pvq::hadamard_rows), "randomized Hadamard of rows");
  m.def("hadamard_dense_rows", pvq::returning_tensor(&pvq::hadamard_dense_rows),
        "randomized Hadamard with a dense factor, of rows");
}
