// Python bindings of hadamard_rows.cu, built by the C++ compiler: a failed check raises RuntimeError here, never in
// code that nvcc compiled (host_status.h says why)
#include "bind_status.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hadamard_rows", pvq::returning_tensor(&pvq::hadamard_rows), "randomized Hadamard of rows");
  m.def("hadamard_dense_rows", pvq::returning_tensor(&pvq::hadamard_dense_rows),
        "randomized Hadamard with a dense factor, of rows");
}
