// Session 18's diagnostic (benchmarks/diag/ostream_probe.py): which step of an extension's error path segfaulted on
// the H200 machine. Each function returns what crosses the binding; none throws out of the module.
#include <sstream>
#include <stdexcept>
#include <string>
#include <torch/extension.h>
namespace py = pybind11;
py::tuple const_string() { return py::make_tuple(py::none(), std::string("a constant message of some length, beyond SSO")); }
py::tuple short_string() { return py::make_tuple(py::none(), std::string("short")); }
std::string oss_only(int64_t v) { std::ostringstream o; o << "v=" << v; return o.str(); }
std::string oss_string_only(int64_t v) { std::ostringstream o; o << "v="; return o.str() + std::to_string(v); }
std::string caught(int64_t v) { try { if (v) throw std::runtime_error("thrown"); } catch (const std::exception& e) { return e.what(); } return ""; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("const_string", &const_string); m.def("short_string", &short_string); m.def("oss_only", &oss_only);
  m.def("oss_string_only", &oss_string_only); m.def("caught", &caught);
}
