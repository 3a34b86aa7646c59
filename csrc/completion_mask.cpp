// Completion-only label mask (TRL's former DataCollatorForCompletionOnlyLM rule, restated on
// counts): see fastmask/reference/completion_mask.py, which this kernel equals exactly.
// One pass per row: template hits, running counts of response ends / instruction starts, then
// keep[l] from the counts. Rows run in parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace fastmask {
namespace {

constexpr int32_t kMissingResponse = 1;
constexpr int32_t kMissingInstruction = 2;

template <typename Id>
inline bool hit_at(const Id* row, int64_t length, int64_t p, const int64_t* tpl, int64_t width) {
  if (width == 0 || p + width > length) return false;
  for (int64_t j = 0; j < width; ++j)
    if (static_cast<int64_t>(row[p + j]) != tpl[j]) return false;
  return true;
}

template <typename Id>
void completion_rows(const Id* ids, int64_t batch, int64_t length, const int64_t* resp, int64_t resp_len,
                     const int64_t* inst, int64_t inst_len, bool has_inst, const uint8_t* attention, uint8_t* keep,
                     int32_t* missing) {
  parallel_for(batch, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> ends_le(length), inst_le(length);
    std::vector<uint8_t> starts(length);
    for (int64_t b = begin; b < end; ++b) {
      const Id* row = ids + b * length;
      uint8_t* out = keep + b * length;
      int64_t n_resp = 0, n_inst = 0, first_end = length + resp_len + 1, first_inst = length + resp_len + 1;
      for (int64_t p = 0; p < length; ++p) {
        starts[p] = hit_at(row, length, p, resp, resp_len);
        if (starts[p]) {
          if (n_resp == 0) first_end = p + resp_len;
          ++n_resp;
        }
      }
      // response ends <= l: starts at positions <= l - resp_len
      int64_t running = 0;
      for (int64_t l = 0; l < length; ++l) {
        const int64_t s = l - resp_len;
        if (s >= 0) running += starts[s];
        ends_le[l] = running;
      }
      if (has_inst) {
        for (int64_t p = 0; p < length; ++p) {
          if (hit_at(row, length, p, inst, inst_len)) {
            if (n_inst == 0) first_inst = p;
            ++n_inst;
          }
          inst_le[p] = n_inst;
        }
      }
      int32_t flags = n_resp == 0 ? kMissingResponse : 0;
      if (has_inst && n_inst == 0) flags |= kMissingInstruction;
      missing[b] = flags;
      if (flags != 0) {
        std::fill(out, out + length, uint8_t{0});
        continue;
      }
      if (!has_inst) {
        for (int64_t l = 0; l < length; ++l) out[l] = ends_le[l] >= 1;
      } else {
        const int64_t pre = first_inst > first_end ? 1 : 0;
        const int64_t turns = n_inst + pre;
        const int64_t last_pair = std::min(turns, n_resp) - 1;
        const bool tail = n_resp < turns;
        for (int64_t l = 0; l < length; ++l) {
          const int64_t turn = std::max<int64_t>(0, inst_le[l] + pre - 1);
          bool masked = ends_le[l] <= std::min(turn, last_pair);
          masked = masked || (tail && inst_le[l] == n_inst);
          out[l] = !masked;
        }
      }
      if (attention != nullptr) {
        const uint8_t* a = attention + b * length;
        for (int64_t l = 0; l < length; ++l) out[l] = out[l] && a[l];
      }
    }
  });
}

py::array checked(const py::dict& plan, const char* name) {
  if (!plan.contains(name)) throw py::value_error(std::string("completion_mask: plan has no ") + name);
  py::object value = plan[name];
  if (value.is_none()) return py::array();
  py::array array = py::reinterpret_borrow<py::array>(value);
  if (!(array.flags() & py::array::c_style))
    throw py::value_error(std::string("completion_mask: ") + name + " must be C-contiguous");
  return array;
}

void completion_mask_binding(const py::dict& plan, py::array_t<uint8_t, 0> keep_out,
                             py::array_t<int32_t, 0> missing_out) {
  py::array ids = checked(plan, "input_ids");
  py::array resp = checked(plan, "response_ids");
  py::object inst_obj = plan["instruction_ids"];
  py::object attn_obj = plan["attention_mask"];
  py::array inst = inst_obj.is_none() ? py::array() : checked(plan, "instruction_ids");
  py::array attn = attn_obj.is_none() ? py::array() : checked(plan, "attention_mask");
  if (ids.ndim() != 2) throw py::value_error("completion_mask: input_ids must be [B, L]");
  const int64_t batch = ids.shape(0), length = ids.shape(1);
  if (keep_out.ndim() != 2 || keep_out.shape(0) != batch || keep_out.shape(1) != length)
    throw py::value_error("completion_mask: keep_out must be uint8 [B, L]");
  if (missing_out.ndim() != 1 || missing_out.shape(0) != batch)
    throw py::value_error("completion_mask: missing_out must be int32 [B]");
  if (!py::isinstance<py::array_t<int64_t>>(resp) || resp.ndim() != 1)
    throw py::value_error("completion_mask: response_ids must be int64 [R]");
  const bool has_inst = !inst_obj.is_none();
  if (has_inst && (!py::isinstance<py::array_t<int64_t>>(inst) || inst.ndim() != 1))
    throw py::value_error("completion_mask: instruction_ids must be int64 [I]");
  const uint8_t* attention = nullptr;
  if (!attn_obj.is_none()) {
    if (attn.ndim() != 2 || attn.shape(0) != batch || attn.shape(1) != length || attn.itemsize() != 1)
      throw py::value_error("completion_mask: attention_mask must be uint8 [B, L]");
    attention = static_cast<const uint8_t*>(attn.data());
  }
  const int64_t* r = static_cast<const int64_t*>(resp.data());
  const int64_t* i = has_inst ? static_cast<const int64_t*>(inst.data()) : nullptr;
  const int64_t i_len = has_inst ? inst.shape(0) : 0;
  uint8_t* keep = keep_out.mutable_data();
  int32_t* missing = missing_out.mutable_data();
  py::gil_scoped_release release;
  if (ids.itemsize() == 8 && ids.dtype().kind() == 'i') {
    completion_rows(static_cast<const int64_t*>(ids.data()), batch, length, r, resp.shape(0), i, i_len, has_inst,
                    attention, keep, missing);
  } else if (ids.itemsize() == 4 && ids.dtype().kind() == 'i') {
    completion_rows(static_cast<const int32_t*>(ids.data()), batch, length, r, resp.shape(0), i, i_len, has_inst,
                    attention, keep, missing);
  } else {
    py::gil_scoped_acquire acquire;
    throw py::value_error("completion_mask: input_ids must be int32 or int64");
  }
}

}  // namespace

void register_completion_mask(py::module_& m) {
  m.def("completion_mask", &completion_mask_binding, py::arg("plan"), py::arg("keep_out"), py::arg("missing_out"),
        R"doc(Completion-only label mask (see fastmask/reference/completion_mask.py).

plan: a dict of fastmask.completion_mask.CompletionPlan's fields by name: input_ids int32/int64
[B, L]; response_ids int64 [R]; instruction_ids None or int64 [I]; attention_mask None or uint8
[B, L]. keep_out: uint8 [B, L] (1 = label kept); missing_out: int32 [B] (bit 0 no response
template, bit 1 no instruction template). Every buffer must be C-contiguous.)doc");
}

}  // namespace fastmask
