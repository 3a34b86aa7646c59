// value_range: (min, max) of an integer buffer in one pass, for the id and label range checks
// the Python layer runs before a kernel (numpy needs two passes and a temporary per call).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"
#include "isa.h"

namespace fastmask {
namespace {

struct Range {
  int64_t lo, hi;
};

template <typename T>
FM_INLINE Range min_max_impl(const T* values, int64_t n) {
  // Eight independent lanes, so the loop vectorises at each ISA level.
  T lo[8], hi[8];
  for (int k = 0; k < 8; ++k) lo[k] = hi[k] = values[0];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) {
      lo[k] = std::min(lo[k], values[i + k]);
      hi[k] = std::max(hi[k], values[i + k]);
    }
  }
  for (; i < n; ++i) {
    lo[0] = std::min(lo[0], values[i]);
    hi[0] = std::max(hi[0], values[i]);
  }
  for (int k = 1; k < 8; ++k) {
    lo[0] = std::min(lo[0], lo[k]);
    hi[0] = std::max(hi[0], hi[k]);
  }
  return {lo[0], hi[0]};
}

FM_ISA_VARIANTS(IsaFamily::kMasking, template <typename T>, Range, min_max, (const T* values, int64_t n),
                (values, n))

py::tuple value_range(const py::handle& obj) {
  constexpr const char* op = "value_range";
  py::array a = as_array(op, obj, "values");
  if (!(a.flags() & py::array::c_style)) fail_value(op, "values must be C-contiguous");
  if (a.size() == 0) fail_value(op, "values is empty; the range of no values is undefined");
  const bool is64 = has_dtype<int64_t>(a);
  if (!is64 && !has_dtype<int32_t>(a)) fail_value(op, "values must be int32 or int64, got " + dtype_string(a));
  const Range range = is64 ? min_max(static_cast<const int64_t*>(a.data()), a.size())
                            : min_max(static_cast<const int32_t*>(a.data()), a.size());
  return py::make_tuple(range.lo, range.hi);
}

}  // namespace

void register_value_range(py::module_& m) {
  m.def("value_range", &value_range, py::arg("values"),
        "(min, max) of a non-empty C-contiguous int32 or int64 array, in one pass.");
}

}  // namespace fastmask
