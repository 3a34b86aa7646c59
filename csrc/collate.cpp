// Placeholder: filled in by the collate work.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastmask {
void register_collate(py::module_& m) { (void)m; }
}  // namespace fastmask
