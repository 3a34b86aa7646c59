// The C++ T5 span-corruption kernel, bit-identical to fastmask/reference/sentinel_spans.py
// (which documents the semantics) through the generator in common.h.
//
// Rows are independent: one thread takes a row and (1) counts its units, (2) draws the two
// random compositions (the S - 1 smallest gap keys: a threshold pass, then nth_element over the
// few candidates, then sorted), (3) walks the row once more, writing inputs and targets at
// running offsets (the per-row prefix sums), then pads. Scratch lives in a thread-local
// workspace that only grows.
// The binding validates every buffer; the kernel trusts its arguments.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "common.h"

namespace fastmask {
namespace {

// fastmask/_rng.py: STREAM_NOISE_CUT, STREAM_KEEP_CUT
constexpr int kStreamNoiseCut = 0;
constexpr int kStreamKeepCut = 1;
// Rows per thread chunk hold at least this many tokens: a batch of 64 x 568 runs inline (about
// 0.6 ms on one core), where waking pool threads on a loaded machine costs more than it saves.
constexpr int64_t kMinTokensPerChunk = int64_t{1} << 16;

struct Params {
  const uint8_t* attention_mask = nullptr;  // [B, L]
  const uint8_t* word_starts = nullptr;     // [B, L]
  const int64_t* row_keys = nullptr;        // [B]
  const int32_t* noise_table = nullptr;     // [L + 1]
  const int32_t* spans_table = nullptr;     // [L + 1]
  int64_t batch = 0, length = 0, inputs_length = 0, targets_length = 0;
  uint32_t seed_mix1 = 0, seed_mix2 = 0;
  int64_t first_sentinel_id = 0, eos_token_id = 0, pad_token_id = 0;
};

struct Workspace {
  std::vector<uint64_t> keys;        // gap keys (draw >> 1) << 32 | gap, then the candidates
  std::vector<int64_t> ns, ks;       // segment starts (S + 1 each)
  std::vector<uint8_t> marker;       // per unit: a segment starts here
};

// Starts of a random composition of `items` into `segments` parts (reference:
// composition_starts), written to out[0 .. segments], with out[segments] = items.
//
// The cuts are the segments - 1 smallest of the distinct keys (draw >> 1) << 32 | gap. The
// draws are uniform, so the keys whose top bits fall below a threshold a little above the
// expected quantile are nearly always enough: they are collected in one pass and only they are
// ordered; when too few fall below it, every key is ranked. Either way the result is the set
// of smallest keys, so it is the same set as the reference's sort.
void composition_starts(const RowState& rng, int64_t items, int64_t segments, int stream,
                        std::vector<uint64_t>& keys, std::vector<int64_t>& out) {
  out.assign(segments + 1, 0);
  out[segments] = items;
  if (segments <= 1) return;
  const int64_t gaps = items - 1, cuts = segments - 1;
  keys.resize(gaps);
  // threshold on draw >> 1 (31 bits): expected cuts + 4 sd + 8 keys below it
  const double want = static_cast<double>(cuts) + 4.0 * std::sqrt(static_cast<double>(cuts)) + 8.0;
  const uint64_t limit = want >= static_cast<double>(gaps)
                             ? (uint64_t{1} << 31)
                             : static_cast<uint64_t>(want / static_cast<double>(gaps) * 2147483648.0) + 1;
  int64_t found = 0;
  for (int64_t g = 1; g <= gaps; ++g) {
    const uint64_t hi = rng.draw(g, stream) >> 1;
    keys[found] = (hi << 32) | static_cast<uint64_t>(g);
    found += hi < limit;
  }
  if (found < cuts) {  // rare: rank every key
    for (int64_t g = 1; g <= gaps; ++g)
      keys[g - 1] = (static_cast<uint64_t>(rng.draw(g, stream) >> 1) << 32) | static_cast<uint64_t>(g);
    found = gaps;
  }
  if (cuts < found) std::nth_element(keys.begin(), keys.begin() + (cuts - 1), keys.begin() + found);
  // the cuts smallest keys are now keys[0 .. cuts)
  for (int64_t j = 0; j < cuts; ++j) out[j + 1] = static_cast<int64_t>(keys[j] & 0xFFFFFFFFull);
  std::sort(out.begin() + 1, out.begin() + segments);
}

template <typename Id>
void corrupt_row(const Params& p, const Id* ids_all, Id* inputs_all, Id* targets_all, int64_t row, Workspace& w) {
  const int64_t L = p.length;
  const Id* ids = ids_all + row * L;
  const uint8_t* att = p.attention_mask ? p.attention_mask + row * L : nullptr;
  const uint8_t* ws = p.word_starts ? p.word_starts + row * L : nullptr;
  Id* in = inputs_all + row * p.inputs_length;
  Id* out = targets_all + row * p.targets_length;
  const Id pad = static_cast<Id>(p.pad_token_id);
  auto real = [&](int64_t i) { return att ? att[i] != 0 : ids[i] != pad; };

  // pass 1: units (real tokens, or words: the first real token and real word starts)
  int64_t units = 0;
  if (ws == nullptr) {
    if (att) {
      for (int64_t i = 0; i < L; ++i) units += att[i] != 0;
    } else {
      for (int64_t i = 0; i < L; ++i) units += ids[i] != pad;
    }
  } else {
    bool first = true;
    for (int64_t i = 0; i < L; ++i) {
      if (!real(i)) continue;
      units += first || ws[i] != 0;
      first = false;
    }
  }
  const int64_t noise = p.noise_table[units], spans = p.spans_table[units], keep = units - noise;
  const RowState rng(p.seed_mix1, p.seed_mix2, p.row_keys[row]);
  composition_starts(rng, noise, spans, kStreamNoiseCut, w.keys, w.ns);
  composition_starts(rng, keep, spans, kStreamKeepCut, w.keys, w.ks);
  w.marker.assign(units + 1, 0);
  for (int64_t j = 0; j < spans; ++j) {
    if (j > 0) w.marker[w.ks[j] + w.ns[j]] = 1;
    w.marker[w.ks[j + 1] + w.ns[j]] = 1;
  }

  // pass 2: the outputs, at running offsets (the per-row prefix sums)
  int64_t segment = 0, unit = -1, n_in = 0, n_out = 0;
  bool first = true;
  for (int64_t i = 0; i < L; ++i) {
    if (!real(i)) continue;
    bool span_first = false;
    if (ws == nullptr || first || ws[i] != 0) {
      ++unit;
      if (w.marker[unit]) {
        ++segment;
        span_first = (segment & 1) != 0;
      }
    }
    first = false;
    const Id token = ids[i];
    if (segment & 1) {
      if (span_first) {
        const Id sentinel = static_cast<Id>(p.first_sentinel_id - (segment >> 1));
        in[n_in++] = sentinel;
        out[n_out++] = sentinel;
      }
      out[n_out++] = token;
    } else {
      in[n_in++] = token;
    }
  }
  in[n_in++] = static_cast<Id>(p.eos_token_id);
  out[n_out++] = static_cast<Id>(p.eos_token_id);
  std::fill(in + n_in, in + p.inputs_length, pad);
  std::fill(out + n_out, out + p.targets_length, pad);
}

template <typename Id>
void span_corruption_kernel(const Params& p, const Id* ids, Id* inputs, Id* targets) {
  const int64_t grain = std::max<int64_t>(1, kMinTokensPerChunk / std::max<int64_t>(p.length, 1));
  parallel_for(p.batch, grain, [&](int64_t begin, int64_t end) {
    thread_local Workspace w;
    for (int64_t row = begin; row < end; ++row) corrupt_row<Id>(p, ids, inputs, targets, row, w);
  });
}

// ------------------------------------------------------------------------- binding
constexpr const char* kOp = "span_corruption";

template <typename Id>
void run_typed(const Params& p, const py::array& input_ids, py::array& inputs, py::array& targets) {
  const Id* ids = static_cast<const Id*>(input_ids.data());
  Id* in = static_cast<Id*>(inputs.mutable_data());
  Id* out = static_cast<Id*>(targets.mutable_data());
  // rows of fewer than 2 units would read count tables meant for >= 2; plan_span_corruption rejects them
  py::gil_scoped_release release;
  span_corruption_kernel<Id>(p, ids, in, out);
}

void span_corruption_binding(const py::dict& plan, const py::object& inputs_obj, const py::object& targets_obj) {
  bool is64 = false;
  py::array input_ids = plan_token_ids(kOp, plan, &is64, kMaxLength);
  Params p;
  p.batch = input_ids.shape(0);
  p.length = input_ids.shape(1);
  const int64_t B = p.batch, L = p.length;
  const int64_t id_max = is64 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int32_t>::max();
  p.inputs_length = plan_int(kOp, plan, "inputs_length", 1, L + 1);
  p.targets_length = plan_int(kOp, plan, "targets_length", 1, L + 1);
  py::array inputs = as_array(kOp, inputs_obj, "inputs_out");
  py::array targets = as_array(kOp, targets_obj, "targets_out");
  for (auto* a : {&inputs, &targets})
    if (!(is64 ? has_dtype<int64_t>(*a) : has_dtype<int32_t>(*a)))
      fail_value(kOp, "inputs_out / targets_out must have input_ids' dtype (" + dtype_string(input_ids) + "), got " +
                          dtype_string(*a));
  check_layout(kOp, inputs, "inputs_out", {B, p.inputs_length}, true);
  check_layout(kOp, targets, "targets_out", {B, p.targets_length}, true);
  p.attention_mask = byte_buffer(kOp, plan_field(kOp, plan, "attention_mask"), "attention_mask", {B, L});
  p.word_starts = byte_buffer(kOp, plan_field(kOp, plan, "word_starts"), "word_starts", {B, L});
  p.row_keys = typed_array<int64_t>(kOp, plan_field(kOp, plan, "row_keys"), "row_keys", {B}, false);
  p.noise_table = typed_array<int32_t>(kOp, plan_field(kOp, plan, "noise_table"), "noise_table", {L + 1}, false);
  p.spans_table = typed_array<int32_t>(kOp, plan_field(kOp, plan, "spans_table"), "spans_table", {L + 1}, false);
  p.seed_mix1 = static_cast<uint32_t>(plan_int(kOp, plan, "seed_mix1", 0, 0xFFFFFFFFll));
  p.seed_mix2 = static_cast<uint32_t>(plan_int(kOp, plan, "seed_mix2", 0, 0xFFFFFFFFll));
  p.first_sentinel_id = plan_int(kOp, plan, "first_sentinel_id", 0, id_max);
  p.eos_token_id = plan_int(kOp, plan, "eos_token_id", 0, id_max);
  p.pad_token_id = plan_int(kOp, plan, "pad_token_id", 0, id_max);
  if (B == 0 || L == 0) return;
  if (is64)
    run_typed<int64_t>(p, input_ids, inputs, targets);
  else
    run_typed<int32_t>(p, input_ids, inputs, targets);
}

}  // namespace

void register_span_corruption(py::module_& m) {
  m.def("span_corruption", &span_corruption_binding, py::arg("plan"), py::arg("inputs_out"), py::arg("targets_out"),
        R"doc(T5 span corruption of a [B, L] batch into inputs_out / targets_out (see
fastmask/reference/sentinel_spans.py).

plan: a dict of fastmask.sentinel_spans_plan.SpanCorruptionPlan's fields by name (buffers as
numpy arrays, bool as uint8; scalars as ints). input_ids: int32 or int64 [B, L];
inputs_out [B, inputs_length] / targets_out [B, targets_length]: input_ids' dtype.
attention_mask, word_starts: None or uint8 [B, L]. row_keys: int64 [B]. noise_table,
spans_table: int32 [L + 1]. Every row must hold >= 2 units and the widths must fit every row
(plan_span_corruption guarantees both). Raises ValueError on a wrong dtype, shape or layout.)doc");
}

}  // namespace fastmask
