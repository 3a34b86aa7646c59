// Collation fast path: read the rows of a batch of tokenized features (Python lists / tuples of
// ints, numpy arrays, anything with __array__) and write them, padded, into preallocated numpy
// arrays. It replaces transformers' per-row Python padding (tokenizer.pad) and the conversion of
// nested lists to tensors. Python objects are read under the GIL, one row after another.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "checks.h"

namespace fastmask {
namespace {

// ---------------------------------------------------------------- errors
// Per-row errors are prefixed with their location (where_of); the binding's own with kOp.
constexpr const char* kOp = "pad_rows";

std::string where_of(const py::object& key, int64_t row) {
  std::string name = key.is_none() ? std::string("features") : "'" + std::string(py::str(key)) + "'";
  return name + " of row " + std::to_string(row);
}

// A row's location, spelled out (where_of) only when an error needs it.
struct RowWhere {
  const py::object& key;
  int64_t row;
  std::string str() const { return where_of(key, row); }
};

// ---------------------------------------------------------------- row access
// A new reference to features[row][key] (or features[row] when key is None).
py::object row_value(PyObject* features, int64_t row, const py::object& key) {
  PyObject* item = PyList_GET_ITEM(features, row);  // borrowed; features is a list
  if (key.is_none()) return py::reinterpret_borrow<py::object>(item);
  if (PyDict_Check(item)) {
    PyObject* value = PyDict_GetItemWithError(item, key.ptr());  // borrowed
    if (value == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      fail_value(where_of(key, row), "missing (row 0 has this key; every feature needs the same keys)");
    }
    return py::reinterpret_borrow<py::object>(value);
  }
  PyObject* value = PyObject_GetItem(item, key.ptr());  // new reference
  if (value == nullptr) {
    if (PyErr_ExceptionMatches(PyExc_KeyError)) {
      PyErr_Clear();
      fail_value(where_of(key, row), "missing (row 0 has this key; every feature needs the same keys)");
    }
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(value);
}

// A view of one row: a list/tuple of Python objects or a strided buffer.
struct Row {
  py::object owner;   // keeps the buffer's exporter alive
  Py_buffer view{};   // valid when is_buffer
  bool is_buffer = false;
  PyObject* seq = nullptr;  // list or tuple (borrowed from owner) when !is_buffer
  int64_t length = 0;

  Row() = default;
  Row(const Row&) = delete;
  Row& operator=(const Row&) = delete;
  ~Row() {
    if (is_buffer) PyBuffer_Release(&view);
  }
};

void open_row(py::object value, const RowWhere& where, Row* row) {
  PyObject* o = value.ptr();
  if (PyList_Check(o) || PyTuple_Check(o)) {
    row->owner = std::move(value);
    row->seq = row->owner.ptr();
    row->length = Py_SIZE(row->seq);
    return;
  }
  if (!PyObject_CheckBuffer(o)) {
    if (PyObject_HasAttrString(o, "__array__")) {  // torch tensors and other array-likes
      value = py::reinterpret_steal<py::object>(
          PyObject_CallMethod(o, "__array__", nullptr));
      if (!value) throw py::error_already_set();
      o = value.ptr();
    }
  }
  if (PyObject_CheckBuffer(o)) {
    if (PyObject_GetBuffer(o, &row->view, PyBUF_RECORDS_RO) != 0) throw py::error_already_set();
    row->is_buffer = true;
    row->owner = std::move(value);
    if (row->view.ndim < 1) fail_type(where.str(), "expected a sequence, got a 0-d array");
    row->length = row->view.shape[0];
    return;
  }
  // Any other sequence (range, array.array without buffer, ...): materialise as a tuple.
  PyObject* tuple = PySequence_Tuple(o);
  if (tuple == nullptr) {
    PyErr_Clear();
    fail_type(where.str(), std::string("expected a list, tuple, array or tensor, got ") + Py_TYPE(o)->tp_name);
  }
  row->owner = py::reinterpret_steal<py::object>(tuple);
  row->seq = tuple;
  row->length = Py_SIZE(tuple);
}

// ---------------------------------------------------------------- scalar conversion
// `where` is a callable returning the location for error messages (built only on error).
template <typename T, typename Where>
inline T from_integer(long long v, const Where& where) {
  if (std::is_same<T, bool>::value) {
    if (v != 0 && v != 1) fail_value(where(), "value " + std::to_string(v) + " is not 0/1 for a bool array");
    return static_cast<T>(v);
  }
  if (std::is_integral<T>::value) {
    if (v < static_cast<long long>(std::numeric_limits<T>::min()) ||
        v > static_cast<long long>(std::numeric_limits<T>::max())) {
      fail_value(where(), "value " + std::to_string(v) + " does not fit in " + dtype_name<T>());
    }
  }
  return static_cast<T>(v);
}

template <typename T, typename Where>
inline T from_double(double v, const Where& where) {
  if (!std::is_floating_point<T>::value) {
    fail_type(where(), "float value " + std::to_string(v) + " in an integer sequence");
  }
  return static_cast<T>(v);
}

// Converts one Python object (int, bool, float, numpy scalar, None) to T.
template <typename T, typename Where>
T read_object(PyObject* o, PyObject* none_value, const Where& where) {
  if (PyLong_Check(o)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow != 0) fail_value(where(), "integer does not fit in 64 bits");
    return from_integer<T>(v, where);
  }
  if (PyFloat_Check(o)) return from_double<T>(PyFloat_AS_DOUBLE(o), where);
  if (o == Py_None) {
    if (none_value == Py_None) fail_type(where(), "None is not a number");
    return read_object<T>(none_value, Py_None, where);
  }
  if (PyIndex_Check(o)) {  // numpy integers, 0-d integer arrays
    py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(o));
    if (!index) throw py::error_already_set();
    return read_object<T>(index.ptr(), none_value, where);
  }
  const double d = PyFloat_AsDouble(o);  // numpy floats and anything with __float__
  if (d == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    fail_type(where(), std::string("expected a number, got ") + Py_TYPE(o)->tp_name);
  }
  return from_double<T>(d, where);
}

// A Python int of one digit (|v| < 2**30: nearly every token id) read straight from the object:
// true and *v; false for other ints (PyLong_AsLongLongAndOverflow reads those). CPython 3.11+
// (3.12 has an API for it); other builds always take the call.
inline bool read_compact_int(PyObject* o, long long* v) {
#if !defined(Py_LIMITED_API) && !defined(PYPY_VERSION) && PY_VERSION_HEX >= 0x030C0000
  PyLongObject* value = reinterpret_cast<PyLongObject*>(o);
  if (!PyUnstable_Long_IsCompact(value)) return false;
  *v = static_cast<long long>(PyUnstable_Long_CompactValue(value));
  return true;
#elif !defined(Py_LIMITED_API) && !defined(PYPY_VERSION) && PY_VERSION_HEX >= 0x030B0000
  const Py_ssize_t size = Py_SIZE(o);  // digits, with the sign
  if (size < -1 || size > 1) return false;
  *v = static_cast<long long>(size) * static_cast<long long>(reinterpret_cast<PyLongObject*>(o)->ob_digit[0]);
  return true;
#else
  (void)o;
  (void)v;
  return false;
#endif
}

// read_object with the common case first: a Python int that fits T.
template <typename T>
inline T read_item(PyObject* o, PyObject* none_value, const RowWhere& row_where, int64_t pos) {
  if (PyLong_CheckExact(o)) {
    int overflow = 0;
    long long v;
    if (!read_compact_int(o, &v)) v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0) {
      if (std::is_same<T, int64_t>::value || std::is_floating_point<T>::value) return static_cast<T>(v);
      if (!std::is_same<T, bool>::value && v >= static_cast<long long>(std::numeric_limits<T>::min()) &&
          v <= static_cast<long long>(std::numeric_limits<T>::max())) {
        return static_cast<T>(v);
      }
    }
  }
  return read_object<T>(o, none_value, [&] { return row_where.str() + ", position " + std::to_string(pos); });
}

// Reads one element of type S at p as T.
template <typename T, typename S>
inline T convert_buffer(const char* p, const RowWhere& where) {
  S s;
  std::memcpy(&s, p, sizeof(S));
  auto at = [&] { return where.str(); };
  if (std::is_floating_point<S>::value) return from_double<T>(static_cast<double>(s), at);
  if (std::is_same<S, uint64_t>::value && static_cast<uint64_t>(s) > static_cast<uint64_t>(INT64_MAX)) {
    fail_value(where.str(), "value does not fit in 64 bits");
  }
  const long long v = static_cast<long long>(s);
  if (std::is_same<T, int64_t>::value) return static_cast<T>(v);
  return from_integer<T>(v, at);
}

template <typename T>
using Reader = T (*)(const char*, const RowWhere&);

template <typename T>
Reader<T> buffer_reader(const Py_buffer& view, const RowWhere& where) {
  const char* f = view.format ? view.format : "B";
  while (*f == '@' || *f == '=' || *f == '<' || *f == '>' || *f == '!') ++f;
  const char code = f[0];
  if (f[0] == '\0' || f[1] != '\0') fail_type(where.str(), std::string("unsupported array format '") + view.format + "'");
  switch (code) {
    case '?': return &convert_buffer<T, uint8_t>;
    case 'b': return &convert_buffer<T, int8_t>;
    case 'B': return &convert_buffer<T, uint8_t>;
    case 'h': return &convert_buffer<T, int16_t>;
    case 'H': return &convert_buffer<T, uint16_t>;
    case 'i': return &convert_buffer<T, int32_t>;
    case 'I': return &convert_buffer<T, uint32_t>;
    case 'l': return view.itemsize == 8 ? &convert_buffer<T, int64_t> : &convert_buffer<T, int32_t>;
    case 'L': return view.itemsize == 8 ? &convert_buffer<T, uint64_t> : &convert_buffer<T, uint32_t>;
    case 'q': return &convert_buffer<T, int64_t>;
    case 'Q': return &convert_buffer<T, uint64_t>;
    case 'f': return &convert_buffer<T, float>;
    case 'd': return &convert_buffer<T, double>;
    default: fail_type(where.str(), std::string("unsupported array dtype (format '") + view.format + "')");
  }
}

// ---------------------------------------------------------------- padding
// out: C-contiguous [B, L] or [B, L, W] of T. Each row is written at the left (right padding) or
// right (left padding) end; the rest is filled with `pad`.
template <typename T>
void pad_rows_typed(PyObject* features, const py::object& key, py::array& out, const py::object& pad_value,
                    bool left, const py::object& none_value) {
  const int64_t batch = out.shape(0), length = out.shape(1);
  const int64_t width = out.ndim() == 3 ? out.shape(2) : 1;
  const bool nested = out.ndim() == 3;
  T* base = static_cast<T*>(out.mutable_data());
  const T pad = read_object<T>(pad_value.ptr(), Py_None, [] { return std::string("pad value"); });
  PyObject* none = none_value.ptr();

  for (int64_t b = 0; b < batch; ++b) {
    const RowWhere row_where{key, b};
    Row row;
    open_row(row_value(features, b, key), row_where, &row);
    const int64_t n = row.length;
    if (n > length) {
      fail_value(row_where.str(), "has " + std::to_string(n) + " items, more than the padded length " + std::to_string(length));
    }
    T* dst = base + b * length * width;
    const int64_t offset = left ? length - n : 0;
    T* pad_begin = left ? dst : dst + n * width;
    std::fill(pad_begin, pad_begin + (length - n) * width, pad);
    T* w = dst + offset * width;

    if (row.is_buffer) {
      const Py_buffer& v = row.view;
      const int expect_dims = nested ? 2 : 1;
      if (v.ndim != expect_dims || (nested && v.shape[1] != width)) {
        fail_value(row_where.str(), "array has shape of " + std::to_string(v.ndim) + " dims; expected " +
                                  (nested ? "[n, " + std::to_string(width) + "]" : std::string("[n]")));
      }
      const Reader<T> read = buffer_reader<T>(v, row_where);
      const char* src = static_cast<const char*>(v.buf);
      const Py_ssize_t s0 = v.strides ? v.strides[0] : v.itemsize * width;
      const Py_ssize_t s1 = nested ? (v.strides ? v.strides[1] : v.itemsize) : 0;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < width; ++j) w[i * width + j] = read(src + i * s0 + j * s1, row_where);
      }
      continue;
    }
    PyObject** items = PySequence_Fast_ITEMS(row.seq);
    if (!nested) {
      for (int64_t i = 0; i < n; ++i) w[i] = read_item<T>(items[i], none, row_where, i);
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      PyObject* inner = items[i];
      if (PyList_Check(inner) || PyTuple_Check(inner)) {
        if (Py_SIZE(inner) != width) {
          fail_value(row_where.str(), "position " + std::to_string(i) + " has " + std::to_string(Py_SIZE(inner)) +
                                    " values; expected " + std::to_string(width));
        }
        PyObject** values = PySequence_Fast_ITEMS(inner);
        for (int64_t j = 0; j < width; ++j) w[i * width + j] = read_item<T>(values[j], none, row_where, i);
      } else {
        Row sub;
        open_row(py::reinterpret_borrow<py::object>(inner), row_where, &sub);
        if (sub.length != width || (sub.is_buffer && sub.view.ndim != 1)) {
          fail_value(row_where.str(), "position " + std::to_string(i) + " is not a sequence of " + std::to_string(width) + " values");
        }
        if (sub.is_buffer) {
          const Reader<T> read = buffer_reader<T>(sub.view, row_where);
          const char* src = static_cast<const char*>(sub.view.buf);
          const Py_ssize_t s = sub.view.strides ? sub.view.strides[0] : sub.view.itemsize;
          for (int64_t j = 0; j < width; ++j) w[i * width + j] = read(src + j * s, row_where);
        } else {
          PyObject** values = PySequence_Fast_ITEMS(sub.seq);
          for (int64_t j = 0; j < width; ++j) w[i * width + j] = read_item<T>(values[j], none, row_where, i);
        }
      }
    }
  }
}

py::list as_list(const py::object& features) {
  if (PyList_Check(features.ptr())) return py::reinterpret_borrow<py::list>(features);
  return py::list(features);
}

void pad_rows(const py::object& features_obj, const py::object& key, py::array out, const py::object& pad_value,
              bool left, const py::object& none_value) {
  py::list features = as_list(features_obj);
  if (out.ndim() != 2 && out.ndim() != 3) fail_value(kOp, "out must be [batch, length] or [batch, length, width]");
  if (!(out.flags() & py::array::c_style) || !out.writeable()) fail_value(kOp, "out must be a writeable C-contiguous array");
  if (static_cast<int64_t>(PyList_GET_SIZE(features.ptr())) != out.shape(0)) {
    fail_value(kOp, "out has " + std::to_string(out.shape(0)) + " rows but there are " +
                        std::to_string(PyList_GET_SIZE(features.ptr())) + " features");
  }
  PyObject* f = features.ptr();
  const auto dtype = out.dtype();
  const char kind = dtype.kind();
  const auto size = dtype.itemsize();
  if (kind == 'b') return pad_rows_typed<bool>(f, key, out, pad_value, left, none_value);
  if (kind == 'i' && size == 8) return pad_rows_typed<int64_t>(f, key, out, pad_value, left, none_value);
  if (kind == 'i' && size == 4) return pad_rows_typed<int32_t>(f, key, out, pad_value, left, none_value);
  if (kind == 'i' && size == 2) return pad_rows_typed<int16_t>(f, key, out, pad_value, left, none_value);
  if (kind == 'i' && size == 1) return pad_rows_typed<int8_t>(f, key, out, pad_value, left, none_value);
  if (kind == 'u' && size == 1) return pad_rows_typed<uint8_t>(f, key, out, pad_value, left, none_value);
  if (kind == 'f' && size == 4) return pad_rows_typed<float>(f, key, out, pad_value, left, none_value);
  if (kind == 'f' && size == 8) return pad_rows_typed<double>(f, key, out, pad_value, left, none_value);
  fail_type(kOp, "unsupported output dtype " + dtype_string(out));
}

// Lengths of features[i][key] (features[i] when key is None) as int64 [B]; -1 for a scalar
// (int, float, bool, None, numpy scalar or 0-d array).
int64_t row_length(PyObject* features, int64_t row, const py::object& key) {
  py::object value = row_value(features, row, key);
  PyObject* o = value.ptr();
  if (PyList_Check(o) || PyTuple_Check(o)) return Py_SIZE(o);
  if (PyLong_Check(o) || PyFloat_Check(o) || o == Py_None) return -1;
  const Py_ssize_t n = PyObject_Length(o);
  if (n < 0) {  // no len(): numpy scalars, 0-d arrays / tensors, other objects
    PyErr_Clear();
    return -1;
  }
  return n;
}

py::array_t<int64_t> row_lengths(const py::object& features_obj, const py::object& key) {
  py::list features = as_list(features_obj);
  const int64_t batch = PyList_GET_SIZE(features.ptr());
  py::array_t<int64_t> out(batch);
  int64_t* lengths = out.mutable_data();
  for (int64_t b = 0; b < batch; ++b) lengths[b] = row_length(features.ptr(), b, key);
  return out;
}

// int64 [B, length]: features[i][key] (features[i] when key is None) read in one call, when
// `features` is a non-empty list of objects of one type whose rows all hold exactly `length`
// items; None otherwise (the caller's general path then pads and names what is wrong). Values
// are read as pad_rows reads them, with its errors.
py::object fixed_length_rows(const py::object& features_obj, const py::object& key, int64_t length) {
  PyObject* f = features_obj.ptr();
  if (!PyList_Check(f) || PyList_GET_SIZE(f) == 0 || length < 0) return py::none();
  const int64_t batch = PyList_GET_SIZE(f);
  PyTypeObject* kind = Py_TYPE(PyList_GET_ITEM(f, 0));
  for (int64_t b = 1; b < batch; ++b)
    if (Py_TYPE(PyList_GET_ITEM(f, b)) != kind) return py::none();
  for (int64_t b = 0; b < batch; ++b)
    if (row_length(f, b, key) != length) return py::none();
  py::array out(py::dtype::of<int64_t>(), {batch, length});
  pad_rows_typed<int64_t>(f, key, out, py::int_(0), false, py::none());
  return std::move(out);
}

}  // namespace

void register_collate(py::module_& m) {
  m.def("pad_rows", &pad_rows, py::arg("features"), py::arg("key"), py::arg("out"), py::arg("pad_value"),
        py::arg("left") = false, py::arg("none_value") = py::none(),
        "Write features[i][key] (features[i] when key is None) into out[i], a preallocated C-contiguous\n"
        "[B, L] or [B, L, W] numpy array, padding each row with pad_value on the right (left=True: on\n"
        "the left). Rows may be lists/tuples of numbers (or of W-tuples), numpy arrays or tensors.\n"
        "None items become none_value (an error when none_value is None).");
  m.def("fixed_length_rows", &fixed_length_rows, py::arg("features"), py::arg("key"), py::arg("length"),
        "int64 [B, length]: features[i][key] (features[i] when key is None) in one call, when features is a\n"
        "non-empty list of objects of one type and every row holds exactly length items; None otherwise.\n"
        "Values are read (and rejected) as pad_rows reads them.");
  m.def("row_lengths", &row_lengths, py::arg("features"), py::arg("key") = py::none(),
        "int64 [B]: len(features[i][key]) (features[i] when key is None), -1 for scalar values.");
}

}  // namespace fastmask
