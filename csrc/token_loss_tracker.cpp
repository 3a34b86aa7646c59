// The C++ scatter of TokenLossTracker.update, equal to fastmask/reference/token_loss_tracker.py
// (which documents the semantics): per group, int64 sums of the fixed-point losses, the correct
// bits and the counts of the labelled positions.
//
// One pass over the positions on the calling thread (a batch's labelled positions number in the
// thousands; the sums are integers, so the result does not depend on the order). Every label and
// group is checked against its table before it is used: a bad id raises, never reads out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "checks.h"

namespace py = pybind11;

namespace fastmask {
namespace {

constexpr const char* kOp = "tracker_update";
// fastmask/tracker_update_plan.py: LOSS_FIXED_POINT_BITS
constexpr int kLossFixedPointBits = 20;

void tracker_update_binding(const py::dict& plan, const py::object& sums_obj) {
  const int64_t V = plan_int(kOp, plan, "vocab_size");
  const int64_t G = plan_int(kOp, plan, "num_groups");
  const int64_t ignore_index = plan_int(kOp, plan, "ignore_index");
  if (V < 1 || G < 1) fail_value(kOp, "vocab_size and num_groups must be >= 1");
  int64_t n = 0;
  const int64_t* labels = typed_array<int64_t>(kOp, plan_field(kOp, plan, "labels"), "labels", {-1}, false, &n);
  const float* losses = typed_array<float>(kOp, plan_field(kOp, plan, "losses"), "losses", {n}, false);
  const uint8_t* correct = byte_buffer(kOp, plan_field(kOp, plan, "correct"), "correct", {n});
  const int64_t* groups = typed_buffer<int64_t>(kOp, plan_field(kOp, plan, "groups"), "groups", {V});
  if (groups == nullptr && G != V) fail_value(kOp, "num_groups must equal vocab_size without groups");
  int64_t* sums = typed_array<int64_t>(kOp, sums_obj, "sums_out", {3, G}, true);
  int64_t* loss_sum = sums;
  int64_t* correct_sum = sums + G;
  int64_t* count = sums + 2 * G;
  const float scale = static_cast<float>(int64_t{1} << kLossFixedPointBits);
  py::gil_scoped_release release;
  for (int64_t g = 0; g < 3 * G; ++g) sums[g] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t label = labels[i];
    if (label == ignore_index) continue;
    if (label < 0 || label >= V) {
      py::gil_scoped_acquire acquire;
      fail_value(kOp, "labels[" + std::to_string(i) + "] = " + std::to_string(label) + " is outside [0, " +
                          std::to_string(V) + ")");
    }
    const int64_t g = groups ? groups[label] : label;
    if (g < 0 || g >= G) {
      py::gil_scoped_acquire acquire;
      fail_value(kOp, "groups[" + std::to_string(label) + "] = " + std::to_string(g) + " is outside [0, " +
                          std::to_string(G) + ")");
    }
    loss_sum[g] += static_cast<int64_t>(losses[i] * scale);  // exact scale, truncation toward 0
    if (correct) correct_sum[g] += correct[i] != 0;
    count[g] += 1;
  }
}

}  // namespace

void register_tracker_update(py::module_& m) {
  m.def("tracker_update", &tracker_update_binding, py::arg("plan"), py::arg("sums_out"),
        R"doc(TokenLossTracker's scatter (see fastmask/reference/token_loss_tracker.py) into sums_out.

plan: a dict of fastmask.tracker_update_plan.TrackerUpdatePlan's fields by name. labels: int64 [N];
losses: float32 [N]; correct: None or uint8 [N]; groups: None or int64 [vocab_size];
sums_out: writable int64 [3, num_groups] (overwritten). Raises ValueError on a wrong dtype,
shape or layout, or on a label / group outside its range.)doc");
}

}  // namespace fastmask
