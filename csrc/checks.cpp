// Argument checks shared by the bindings (see checks.h).
#include "checks.h"

namespace fastmask {

void fail_value(const std::string& prefix, const std::string& message) { throw py::value_error(prefix + ": " + message); }

void fail_type(const std::string& prefix, const std::string& message) { throw py::type_error(prefix + ": " + message); }

std::string shape_string(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_string(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string type_string(const py::handle& obj) { return py::str(py::type::of(obj)).cast<std::string>(); }

py::array as_array(const char* op, const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) fail_value(op, std::string(name) + " must be a numpy array, got " + type_string(obj));
  return py::reinterpret_borrow<py::array>(obj);
}

void check_layout(const char* op, const py::array& a, const char* name, std::initializer_list<int64_t> shape,
                  bool writable) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  if (ok) {
    py::ssize_t d = 0;
    for (int64_t extent : shape) ok = ok && (extent < 0 || a.shape(d) == extent), ++d;
  }
  if (!ok) {
    std::string want = "(";
    size_t d = 0;
    for (int64_t extent : shape) want += (d++ ? ", " : "") + (extent < 0 ? std::string("n") : std::to_string(extent));
    fail_value(op, std::string(name) + " must have shape " + want + (shape.size() == 1 ? ",)" : ")") + ", got " +
                       shape_string(a));
  }
  if (!(a.flags() & py::array::c_style))
    fail_value(op, std::string(name) + " must be C-contiguous; pass np.ascontiguousarray(...) / tensor.contiguous()");
  if (writable && !a.writeable()) fail_value(op, std::string(name) + " must be writable");
}

int64_t check_rows(const char* op, const py::array& a, const char* name, int64_t V, bool writable) {
  if (a.ndim() != 2 || a.shape(1) != V)
    fail_value(op, std::string(name) + " must have shape (n, " + std::to_string(V) + "), got " + shape_string(a));
  if (writable && !a.writeable()) fail_value(op, std::string(name) + " must be writable");
  if (a.shape(0) == 0) return V;  // nothing to address
  if (a.shape(1) > 1 && a.strides(1) != a.itemsize())
    fail_value(op, std::string(name) + " must have contiguous rows (last stride 1)");
  if (a.strides(0) % a.itemsize() != 0 || a.strides(0) < 0)
    fail_value(op, std::string(name) + " has an unsupported row stride (" + std::to_string(a.strides(0)) + " bytes)");
  return a.shape(0) > 1 ? a.strides(0) / a.itemsize() : V;
}

const uint8_t* byte_buffer(const char* op, const py::object& obj, const char* name,
                           std::initializer_list<int64_t> shape, int64_t* size) {
  if (obj.is_none()) return nullptr;
  py::array a = as_array(op, obj, name);
  if (!has_dtype<uint8_t>(a) && !has_dtype<bool>(a))
    fail_value(op, std::string(name) + " must be uint8 (or bool), got " + dtype_string(a));
  check_layout(op, a, name, shape, false);
  if (size) *size = a.size();
  return static_cast<const uint8_t*>(a.data());
}

int64_t check_range(const char* op, int64_t value, const char* name, int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    fail_value(op, std::string(name) + " = " + std::to_string(value) + " is outside [" + std::to_string(lo) + ", " +
                       std::to_string(hi) + "]");
  return value;
}

py::object plan_field(const char* op, const py::dict& plan, const char* name) {
  if (!plan.contains(name)) fail_value(op, std::string("plan is missing the field '") + name + "'");
  return plan[name];
}

int64_t plan_int(const char* op, const py::dict& plan, const char* name) {
  py::object value = plan_field(op, plan, name);
  if (!py::isinstance<py::int_>(value) && !py::isinstance<py::bool_>(value))
    fail_value(op, std::string(name) + " must be an int, got " + type_string(value));
  try {
    return value.cast<int64_t>();
  } catch (const py::cast_error&) {
    fail_value(op, std::string(name) + " = " + py::str(value).cast<std::string>() + " does not fit in int64");
  }
}

py::array plan_token_ids(const char* op, const py::dict& plan, bool* is64, int64_t max_length) {
  py::array ids = as_array(op, plan_field(op, plan, "input_ids"), "input_ids");
  *is64 = has_dtype<int64_t>(ids);
  if (!*is64 && !has_dtype<int32_t>(ids)) fail_value(op, "input_ids must be int32 or int64, got " + dtype_string(ids));
  check_layout(op, ids, "input_ids", {-1, -1}, false);
  if (ids.shape(1) >= max_length)
    fail_value(op, "rows have " + std::to_string(ids.shape(1)) + " tokens; at most " + std::to_string(max_length - 1) +
                       " are supported");
  return ids;
}

int64_t plan_int(const char* op, const py::dict& plan, const char* name, int64_t lo, int64_t hi) {
  return check_range(op, plan_int(op, plan, name), name, lo, hi);
}

}  // namespace fastmask
