// Completion-only label mask (TRL's former DataCollatorForCompletionOnlyLM rule, restated on
// counts): see fastmask/reference/completion_labels.py, which this kernel equals exactly.
// One pass per row: template hits, running counts of response ends / instruction starts, then
// keep[l] from the counts. Rows run in parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "checks.h"
#include "common.h"

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

constexpr const char* kOp = "completion_mask";

void completion_mask_binding(const py::dict& plan, const py::object& keep_obj, const py::object& missing_obj) {
  bool is64 = false;
  py::array ids = plan_token_ids(kOp, plan, &is64);
  const int64_t batch = ids.shape(0), length = ids.shape(1);
  uint8_t* keep = typed_array<uint8_t>(kOp, keep_obj, "keep_out", {batch, length}, true);
  int32_t* missing = typed_array<int32_t>(kOp, missing_obj, "missing_out", {batch}, true);
  int64_t resp_len = 0, inst_len = 0;
  const int64_t* resp =
      typed_array<int64_t>(kOp, plan_field(kOp, plan, "response_ids"), "response_ids", {-1}, false, &resp_len);
  const int64_t* inst =
      typed_buffer<int64_t>(kOp, plan_field(kOp, plan, "instruction_ids"), "instruction_ids", {-1}, &inst_len);
  const uint8_t* attention =
      byte_buffer(kOp, plan_field(kOp, plan, "attention_mask"), "attention_mask", {batch, length});
  const bool has_inst = inst != nullptr;
  py::gil_scoped_release release;
  if (is64)
    completion_rows(static_cast<const int64_t*>(ids.data()), batch, length, resp, resp_len, inst, inst_len, has_inst,
                    attention, keep, missing);
  else
    completion_rows(static_cast<const int32_t*>(ids.data()), batch, length, resp, resp_len, inst, inst_len, has_inst,
                    attention, keep, missing);
}

}  // namespace

void register_completion_mask(py::module_& m) {
  m.def("completion_mask", &completion_mask_binding, py::arg("plan"), py::arg("keep_out"), py::arg("missing_out"),
        R"doc(Completion-only label mask (see fastmask/reference/completion_labels.py).

plan: a dict of fastmask.completion_labels.CompletionPlan's fields by name: input_ids int32/int64
[B, L]; response_ids int64 [R]; instruction_ids None or int64 [I]; attention_mask None or uint8
[B, L]. keep_out: uint8 [B, L] (1 = label kept); missing_out: int32 [B] (bit 0 no response
template, bit 1 no instruction template). Every buffer must be C-contiguous; a wrong dtype, shape or
layout raises ValueError naming the argument.)doc");
}

}  // namespace fastmask
