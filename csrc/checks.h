// Argument checks for the pybind11 bindings (masking.cpp, cross_entropy.cpp, collate.cpp, and
// future ops): one way to fail, one shape_string, one set of buffer helpers.
//
// Every failure is "<prefix>: <message>", raised as ValueError (fail_value) or TypeError
// (fail_type). The prefix is the op's name ("mask_tokens", "ce_forward", ...) or, for per-row
// errors, the location ("'input_ids' of row 3"); the message names the argument first
// ("labels_out must be int64, got int32"). The kernels behind the bindings trust their
// arguments: these checks are what keeps a bad buffer from becoming a bad memory access.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>

namespace fastmask {
namespace py = pybind11;

// ---------------------------------------------------------------- failing
[[noreturn]] void fail_value(const std::string& prefix, const std::string& message);
[[noreturn]] void fail_type(const std::string& prefix, const std::string& message);

// ---------------------------------------------------------------- describing values
// numpy's spelling: "(3,)", "(2, 3)", "()".
std::string shape_string(const py::array& a);
std::string dtype_string(const py::array& a);
std::string type_string(const py::handle& obj);  // str(type(obj))

template <typename T>
constexpr const char* dtype_name() {
  if (std::is_same<T, bool>::value) return "bool";
  if (std::is_same<T, int8_t>::value) return "int8";
  if (std::is_same<T, uint8_t>::value) return "uint8";
  if (std::is_same<T, int16_t>::value) return "int16";
  if (std::is_same<T, uint16_t>::value) return "uint16";
  if (std::is_same<T, int32_t>::value) return "int32";
  if (std::is_same<T, int64_t>::value) return "int64";
  if (std::is_same<T, float>::value) return "float32";
  return "float64";
}

template <typename T>
bool has_dtype(const py::array& a) {
  return py::isinstance<py::array_t<T>>(a);
}

// ---------------------------------------------------------------- buffers
// obj as a numpy array; "<name> must be a numpy array, got <type>" otherwise.
py::array as_array(const char* op, const py::handle& obj, const char* name);

// A C-contiguous array with the given shape (-1: any extent); writable when `writable`.
void check_layout(const char* op, const py::array& a, const char* name, std::initializer_list<int64_t> shape,
                  bool writable);

// A 2-D array [n, V] whose rows are contiguous (any non-negative row stride); returns the row
// stride in elements.
int64_t check_rows(const char* op, const py::array& a, const char* name, int64_t V, bool writable);

// An optional 0/1 byte buffer (uint8 or bool) of the given shape: null for None. *size: its
// element count.
const uint8_t* byte_buffer(const char* op, const py::object& obj, const char* name,
                           std::initializer_list<int64_t> shape, int64_t* size = nullptr);

// A required T buffer of the given shape; "<name> must be a <dtype> array ..., got None" for None.
template <typename T>
T* typed_array(const char* op, const py::handle& obj, const char* name, std::initializer_list<int64_t> shape,
               bool writable, int64_t* size = nullptr) {
  py::array a = as_array(op, obj, name);
  if (!has_dtype<T>(a)) fail_value(op, std::string(name) + " must be " + dtype_name<T>() + ", got " + dtype_string(a));
  check_layout(op, a, name, shape, writable);
  if (size) *size = a.size();
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// An optional, read-only T buffer: null for None.
template <typename T>
const T* typed_buffer(const char* op, const py::object& obj, const char* name, std::initializer_list<int64_t> shape,
                      int64_t* size = nullptr) {
  if (obj.is_none()) return nullptr;
  return typed_array<T>(op, obj, name, shape, false, size);
}

// value, when it lies in [lo, hi]; "<name> = <value> is outside [lo, hi]" otherwise.
int64_t check_range(const char* op, int64_t value, const char* name, int64_t lo, int64_t hi);

// ---------------------------------------------------------------- dict-based bindings
// A binding that takes a plan (a dict of a dataclass's fields by name) reads it with these.
// The plan's "input_ids": a C-contiguous int32 or int64 [B, L] array (*is64: which one) whose
// rows hold fewer than max_length tokens.
py::array plan_token_ids(const char* op, const py::dict& plan, bool* is64,
                         int64_t max_length = std::numeric_limits<int64_t>::max());
py::object plan_field(const char* op, const py::dict& plan, const char* name);
int64_t plan_int(const char* op, const py::dict& plan, const char* name);  // int or bool; fits int64
// plan_int, in [lo, hi] (check_range).
int64_t plan_int(const char* op, const py::dict& plan, const char* name, int64_t lo, int64_t hi);

}  // namespace fastmask
