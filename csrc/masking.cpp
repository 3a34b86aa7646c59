// Placeholder: filled in by the masking work.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastmask {
void register_masking(py::module_& m) { (void)m; }
}  // namespace fastmask
