// Python bindings of leafrow8_gemv.cu and its parts leafrow8_gemv.*.cu (and of its experiments' versions,
// benchmarks/_variants.py), built by the C++ compiler: a failed check comes back as a value (bind_status.h; Python
// raises it), never an exception
#include "bind_status.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("leafrow8_gemv", pvq::returning_tensor(&pvq::leafrow8_gemv),
        "row-interleaved leaf-pair PVQ product of 1 to 8 rows, D = 8");
  m.def("leafrow8_gemv_mma", pvq::returning_tensor(&pvq::leafrow8_gemv_mma),
        "the same product of 1 to 16 rows on tensor cores (mma.sync), x from global or shared memory");
  m.def("leafrow8_gemv_quad_one", pvq::returning_tensor(&pvq::leafrow8_gemv_quad_one),
        "the product of one row by multiply-adds from the quad order");
  m.def("leafrow8_gemv_quad_mma", pvq::returning_tensor(&pvq::leafrow8_gemv_quad_mma),
        "the same product of 1 to 16 rows on tensor cores from the quad order (no stage, no ldmatrix)");
}
