// The C++ BART text-infilling kernel, bit-identical to fastmask/reference/infilling.py
// (which documents the semantics) through the generator in common.h.
//
// Rows are independent: one thread takes a row and (1) marks its eligible tokens, word starts,
// word numbers and segments, (2) picks the S start words with the smallest keys (nth_element),
// (3) walks the row once, keeping the running maximum of the spans' packed ends, writing the
// surviving tokens at a running offset (the per-row prefix sum), then (4) picks the insertion
// slots the same way and writes the output row. Scratch lives in a thread-local workspace.
// The binding validates every buffer; the kernel trusts its arguments.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "common.h"

namespace py = pybind11;

namespace fastmask {
namespace {

constexpr const char* kOp = "text_infilling";
constexpr int64_t kMinTokensPerChunk = int64_t{1} << 16;

struct Params {
  const uint8_t* attention_mask = nullptr;  // [B, L]
  const uint8_t* special = nullptr;         // [B, L]
  const uint8_t* word_starts = nullptr;     // [B, L]
  const int64_t* row_keys = nullptr;        // [B]
  const int32_t* span_lengths = nullptr;    // [B, max_spans]
  const int32_t* span_count = nullptr;      // [B]
  const int32_t* insert_count = nullptr;    // [B]
  const int32_t* insert_table = nullptr;    // [table_size]
  int64_t batch = 0, length = 0, max_spans = 0, table_size = 0, width = 0;
  uint32_t seed_mix1 = 0, seed_mix2 = 0;
  int64_t mask_token_id = 0, pad_token_id = 0, vocab_size = 1;
  uint32_t random_threshold = 0;
  int replace_length = 1;
};

struct Workspace {
  std::vector<uint8_t> eligible, start, chosen;
  std::vector<int64_t> word, segment, tokens, start_position;
  std::vector<uint64_t> keys;
};

inline uint64_t rank_key(uint32_t draw, uint64_t index) { return (static_cast<uint64_t>(draw >> 1) << 32) | index; }

inline int64_t random_id(uint32_t draw, int64_t vocab_size) {
  return static_cast<int64_t>((static_cast<uint64_t>(draw) * static_cast<uint64_t>(vocab_size)) >> 32);
}

// keys[0 .. n) -> the count smallest moved to keys[0 .. count)
void smallest(std::vector<uint64_t>& keys, int64_t n, int64_t count) {
  if (count > 0 && count < n) std::nth_element(keys.begin(), keys.begin() + (count - 1), keys.begin() + n);
}

// Returns false (and writes nothing past the row's width) when the row does not fit `width`.
template <typename Id>
bool infill_row(const Params& p, const Id* ids_all, Id* out_all, int64_t* attention_all, int64_t row, Workspace& w) {
  const int64_t L = p.length;
  const Id* ids = ids_all + row * L;
  const uint8_t* att = p.attention_mask ? p.attention_mask + row * L : nullptr;
  const uint8_t* special = p.special ? p.special + row * L : nullptr;
  const uint8_t* ws = p.word_starts ? p.word_starts + row * L : nullptr;
  const RowState rng(p.seed_mix1, p.seed_mix2, p.row_keys[row]);
  auto real = [&](int64_t i) { return att ? att[i] != 0 : ids[i] != static_cast<Id>(p.pad_token_id); };

  // (1) eligible tokens, word starts, word numbers, segments; start-word keys
  w.eligible.assign(L, 0);
  w.start.assign(L, 0);
  w.chosen.assign(L, 0);
  w.word.resize(L);
  w.segment.resize(L);
  w.keys.resize(L);
  w.start_position.resize(L);
  int64_t words = 0, segment = 0;
  bool previous = false;
  for (int64_t i = 0; i < L; ++i) {
    const bool e = real(i) && !(special && special[i]);
    segment += !e;
    const bool s = e && (!previous || !ws || ws[i]);
    w.eligible[i] = e;
    w.start[i] = s;
    if (s) {
      w.keys[words] = rank_key(rng.draw(words, kStreamInfillStart), static_cast<uint64_t>(words));
      w.start_position[words++] = i;
    }
    w.word[i] = words - 1;
    w.segment[i] = segment;
    previous = e;
  }
  // (2) the S start words with the smallest keys
  const int64_t spans = std::min<int64_t>(p.span_count[row], words);
  smallest(w.keys, words, spans);
  for (int64_t j = 0; j < spans; ++j) w.chosen[w.start_position[w.keys[j] & 0xFFFFFFFFull]] = 1;

  // (3) coverage, heads, replacement; surviving tokens at running offsets
  const int32_t* lengths = p.span_lengths + row * p.max_spans;
  w.tokens.resize(L);
  uint64_t reach = 0;
  int64_t rank = 0, m = 0, real_index = -1;
  bool group_random = false;
  const Id mask = static_cast<Id>(p.mask_token_id);
  for (int64_t i = 0; i < L; ++i) {
    if (!real(i)) continue;
    ++real_index;
    const uint64_t seg = static_cast<uint64_t>(w.segment[i]);
    const uint64_t word = static_cast<uint64_t>(w.word[i]);
    auto covers = [&](uint64_t packed) { return (packed >> 32) == seg && (packed & 0xFFFFFFFFull) > word; };
    bool head = false;
    if (w.chosen[i]) {
      head = !covers(reach);
      const uint64_t end = word + static_cast<uint64_t>(lengths[rank++]);
      reach = std::max(reach, (seg << 32) | end);
    }
    const bool covered = w.eligible[i] && covers(reach);
    if (!covered) {
      w.tokens[m++] = ids[i];
      continue;
    }
    bool random = false;
    if (head) {
      random = prob_draw(rng.draw(w.word[i], kStreamInfillRandom)) < p.random_threshold;
      group_random = random;
    }
    if (p.replace_length == -1) random = group_random;
    if (p.replace_length == 0 || (p.replace_length == 1 && !head)) continue;
    w.tokens[m++] = random ? static_cast<Id>(random_id(rng.draw(real_index, kStreamRandomId), p.vocab_size)) : mask;
  }

  // (4) insertion slots and the output row
  const int64_t inserts = p.insert_count[row] + p.insert_table[m + p.insert_count[row]];
  const int64_t lead = m >= 2 ? 1 : 0;
  const int64_t slots = m + inserts - 2 * lead;
  Id* out = out_all + row * p.width;
  int64_t* attention = attention_all + row * p.width;
  const int64_t total = m + inserts;
  if (total > p.width) return false;
  if (inserts == 0) {
    std::copy(w.tokens.begin(), w.tokens.begin() + m, out);
  } else {
    w.keys.resize(std::max<int64_t>(slots, 1));
    for (int64_t s = 0; s < slots; ++s)
      w.keys[s] = rank_key(rng.draw(kInfillInsertOffset + s, kStreamInfillInsertKey), static_cast<uint64_t>(s));
    smallest(w.keys, slots, inserts);
    w.chosen.assign(std::max<int64_t>(slots, 1), 0);
    for (int64_t j = 0; j < inserts; ++j) w.chosen[w.keys[j] & 0xFFFFFFFFull] = 1;
    int64_t next = lead;
    if (lead) out[0] = w.tokens[0];
    for (int64_t s = 0; s < slots; ++s) {
      Id value;
      if (w.chosen[s]) {
        const int64_t position = kInfillInsertOffset + s;
        const bool random = prob_draw(rng.draw(position, kStreamInfillInsertRandom)) < p.random_threshold;
        value = random ? static_cast<Id>(random_id(rng.draw(position, kStreamRandomId), p.vocab_size)) : mask;
      } else {
        value = w.tokens[next++];
      }
      out[lead + s] = value;
    }
    if (lead) out[total - 1] = w.tokens[m - 1];
  }
  std::fill(out + total, out + p.width, static_cast<Id>(p.pad_token_id));
  std::fill(attention, attention + total, int64_t{1});
  std::fill(attention + total, attention + p.width, int64_t{0});
  return true;
}

// Returns the first row that did not fit the plan's width, or -1.
template <typename Id>
int64_t text_infilling_kernel(const Params& p, const Id* ids, Id* out, int64_t* attention) {
  const int64_t grain = std::max<int64_t>(1, kMinTokensPerChunk / std::max<int64_t>(p.length, 1));
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  parallel_for(p.batch, grain, [&](int64_t begin, int64_t end) {
    thread_local Workspace w;
    for (int64_t row = begin; row < end; ++row) {
      if (!infill_row<Id>(p, ids, out, attention, row, w)) {
        int64_t seen = bad.load();
        while (row < seen && !bad.compare_exchange_weak(seen, row)) {
        }
      }
    }
  });
  const int64_t first = bad.load();
  return first == std::numeric_limits<int64_t>::max() ? -1 : first;
}

void text_infilling_binding(const py::dict& plan, const py::object& out_obj, const py::object& attention_obj) {
  py::array input_ids = as_array(kOp, plan_field(kOp, plan, "input_ids"), "input_ids");
  const bool is64 = has_dtype<int64_t>(input_ids);
  if (!is64 && !has_dtype<int32_t>(input_ids))
    fail_value(kOp, "input_ids must be int32 or int64, got " + dtype_string(input_ids));
  check_layout(kOp, input_ids, "input_ids", {-1, -1}, false);
  Params p;
  p.batch = input_ids.shape(0);
  p.length = input_ids.shape(1);
  const int64_t B = p.batch, L = p.length;
  if (L >= kInfillInsertOffset / 4) fail_value(kOp, "rows have " + std::to_string(L) + " tokens; at most 2**26 - 1 are supported");
  const int64_t id_max = is64 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int32_t>::max();
  p.width = check_range(kOp, plan_int(kOp, plan, "width"), "width", 1, kInfillInsertOffset / 2);
  py::array out = as_array(kOp, out_obj, "out");
  if (!(is64 ? has_dtype<int64_t>(out) : has_dtype<int32_t>(out)))
    fail_value(kOp, "out must have input_ids' dtype (" + dtype_string(input_ids) + "), got " + dtype_string(out));
  check_layout(kOp, out, "out", {B, p.width}, true);
  int64_t* attention = typed_array<int64_t>(kOp, attention_obj, "attention_out", {B, p.width}, true);
  p.attention_mask = byte_buffer(kOp, plan_field(kOp, plan, "attention_mask"), "attention_mask", {B, L});
  p.special = byte_buffer(kOp, plan_field(kOp, plan, "special_tokens_mask"), "special_tokens_mask", {B, L});
  p.word_starts = byte_buffer(kOp, plan_field(kOp, plan, "word_starts"), "word_starts", {B, L});
  p.row_keys = typed_array<int64_t>(kOp, plan_field(kOp, plan, "row_keys"), "row_keys", {B}, false);
  int64_t lengths_size = 0;
  p.span_lengths =
      typed_array<int32_t>(kOp, plan_field(kOp, plan, "span_lengths"), "span_lengths", {B, -1}, false, &lengths_size);
  p.max_spans = B ? lengths_size / B : 0;
  p.span_count = typed_array<int32_t>(kOp, plan_field(kOp, plan, "span_count"), "span_count", {B}, false);
  p.insert_count = typed_array<int32_t>(kOp, plan_field(kOp, plan, "insert_count"), "insert_count", {B}, false);
  p.insert_table =
      typed_array<int32_t>(kOp, plan_field(kOp, plan, "insert_table"), "insert_table", {-1}, false, &p.table_size);
  p.seed_mix1 = static_cast<uint32_t>(check_range(kOp, plan_int(kOp, plan, "seed_mix1"), "seed_mix1", 0, 0xFFFFFFFFll));
  p.seed_mix2 = static_cast<uint32_t>(check_range(kOp, plan_int(kOp, plan, "seed_mix2"), "seed_mix2", 0, 0xFFFFFFFFll));
  p.mask_token_id = check_range(kOp, plan_int(kOp, plan, "mask_token_id"), "mask_token_id", 0, id_max);
  p.pad_token_id = check_range(kOp, plan_int(kOp, plan, "pad_token_id"), "pad_token_id", 0, id_max);
  p.vocab_size = check_range(kOp, plan_int(kOp, plan, "vocab_size"), "vocab_size", 1, int64_t{1} << 31);
  p.random_threshold =
      static_cast<uint32_t>(check_range(kOp, plan_int(kOp, plan, "random_threshold"), "random_threshold", 0, kProbOne));
  p.replace_length = static_cast<int>(check_range(kOp, plan_int(kOp, plan, "replace_length"), "replace_length", -1, 1));
  // the per-row counts index these buffers: check them here, so no plan can make the kernel read out of bounds
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = p.span_count[b], ins = p.insert_count[b];
    if (s < 0 || s > p.max_spans || s > L) fail_value(kOp, "span_count[" + std::to_string(b) + "] is outside [0, L]");
    if (ins < 0 || ins + L >= p.table_size)
      fail_value(kOp, "insert_count[" + std::to_string(b) + "] + L exceeds insert_table");
  }
  if (B == 0 || L == 0) return;
  const void* ids = input_ids.data();
  void* out_data = out.mutable_data();
  int64_t bad_row;
  {
    py::gil_scoped_release release;
    bad_row = is64 ? text_infilling_kernel<int64_t>(p, static_cast<const int64_t*>(ids),
                                                     static_cast<int64_t*>(out_data), attention)
                   : text_infilling_kernel<int32_t>(p, static_cast<const int32_t*>(ids),
                                                     static_cast<int32_t*>(out_data), attention);
  }
  if (bad_row >= 0) fail_value(kOp, "width is too small for row " + std::to_string(bad_row) + " (a bad plan)");
}

// Step 3 of the plan (fastmask/reference/infilling.py draw_spans, which documents it): per row,
// Poisson span lengths drawn at positions 0, 1, ... until they cover the row's masked-word budget
// (the last one cut to fit; at most `cap`), zero lengths counted as inserts, the others packed
// and rotated by a drawn offset. Returns (span_lengths int32 [B, max(1, max S)], span_count
// int32 [B], insert_count int32 [B]).
py::tuple span_lengths_binding(const py::object& keys_obj, int64_t seed_mix1, int64_t seed_mix2,
                               const py::object& budgets_obj, const py::object& thresholds_obj, int64_t cap) {
  constexpr const char* op = "infilling_span_lengths";
  int64_t batch = 0, n_bounds = 0;
  const int64_t* keys = typed_array<int64_t>(op, keys_obj, "row_keys", {-1}, false, &batch);
  const int64_t* budgets = typed_array<int64_t>(op, budgets_obj, "budgets", {batch}, false);
  const int64_t* bounds = typed_array<int64_t>(op, thresholds_obj, "thresholds", {-1}, false, &n_bounds);
  check_range(op, seed_mix1, "seed_mix1", 0, 0xFFFFFFFFll);
  check_range(op, seed_mix2, "seed_mix2", 0, 0xFFFFFFFFll);
  check_range(op, cap, "cap", 1, kMaxLength);
  for (int64_t t = 1; t < n_bounds; ++t) {
    if (bounds[t] < bounds[t - 1]) fail_value(op, "thresholds must be non-decreasing");
  }
  std::vector<std::vector<int32_t>> spans(static_cast<size_t>(batch));
  std::vector<int64_t> rotation(static_cast<size_t>(batch));
  py::array_t<int32_t> count_arr(batch), insert_arr(batch);
  int32_t* count = count_arr.mutable_data();
  int32_t* inserts = insert_arr.mutable_data();
  int64_t width = 1;
  for (int64_t b = 0; b < batch; ++b) {
    const RowState state(static_cast<uint32_t>(seed_mix1), static_cast<uint32_t>(seed_mix2), keys[b]);
    std::vector<int32_t>& row = spans[static_cast<size_t>(b)];
    int64_t covered = 0, zero = 0;
    for (int64_t k = 0; budgets[b] > 0 && k < cap; ++k) {
      const int64_t draw = prob_draw(state.draw(k, kStreamSpanLength));
      int64_t length = std::upper_bound(bounds, bounds + n_bounds, draw) - bounds;  // searchsorted, right
      const bool reached = covered + length >= budgets[b];
      if (reached) length = budgets[b] - covered;
      covered += length;
      if (length > 0) {
        row.push_back(static_cast<int32_t>(length));
      } else {
        ++zero;
      }
      if (reached) break;
    }
    const int64_t n = static_cast<int64_t>(row.size());
    rotation[static_cast<size_t>(b)] =
        static_cast<int64_t>(state.draw(kInfillInsertOffset, kStreamSpanLength)) % std::max<int64_t>(n, 1);
    count[b] = static_cast<int32_t>(n);
    inserts[b] = static_cast<int32_t>(zero);
    width = std::max<int64_t>(width, static_cast<int64_t>(row.size()));
  }
  py::array_t<int32_t> lengths_arr({batch, width});
  int32_t* lengths = lengths_arr.mutable_data();
  std::fill(lengths, lengths + batch * width, 0);
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<int32_t>& row = spans[static_cast<size_t>(b)];
    const int64_t n = static_cast<int64_t>(row.size());
    const int64_t offset = rotation[static_cast<size_t>(b)];
    for (int64_t r = 0; r < n; ++r) lengths[b * width + r] = row[static_cast<size_t>((r + offset) % n)];
  }
  return py::make_tuple(lengths_arr, count_arr, insert_arr);
}

}  // namespace

void register_text_infilling(py::module_& m) {
  m.def("text_infilling", &text_infilling_binding, py::arg("plan"), py::arg("out"), py::arg("attention_out"),
        R"doc(BART text infilling of a [B, L] batch into out / attention_out (see
fastmask/reference/infilling.py).

plan: a dict of fastmask.infilling_plan.TextInfillingPlan's fields by name (buffers as numpy
arrays, bool as uint8; scalars as ints). input_ids: int32 or int64 [B, L]; out [B, width]:
input_ids' dtype; attention_out: int64 [B, width]. attention_mask, special_tokens_mask,
word_starts: None or uint8 [B, L]. row_keys: int64 [B]. span_lengths: int32 [B, n]; span_count,
insert_count: int32 [B]; insert_table: int32. Raises ValueError on a wrong dtype, shape, layout
or count.)doc");
  m.def("infilling_span_lengths", &span_lengths_binding, py::arg("row_keys"), py::arg("seed_mix1"),
        py::arg("seed_mix2"), py::arg("budgets"), py::arg("thresholds"), py::arg("cap"),
        "The plan's span lengths (fastmask/reference/infilling.py draw_spans) for int64 row_keys [B] "
        "and budgets [B]; thresholds: int64, non-decreasing. Returns (span_lengths int32 [B, max(1, max S)], "
        "span_count int32 [B], insert_count int32 [B]).");
}

}  // namespace fastmask
