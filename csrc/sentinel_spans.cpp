// The C++ T5 span-corruption kernel, bit-identical to fastmask/reference/sentinel_spans.py
// (which documents the semantics) through the generator in common.h.
//
// Rows are independent: one thread takes a row and (1) counts its units, (2) draws the two
// random compositions (all gap draws in one vectorised loop, then the S - 1 smallest gap keys:
// the candidates below a threshold, a histogram of their draws, nth_element within one bucket;
// no sort), (3) writes inputs and targets at running offsets (the per-row prefix sums): token
// units copy whole segments of the row's real tokens, word units walk the row once more; then
// pads. Scratch lives in a thread-local workspace that only grows.
// The binding validates every buffer; the kernel trusts its arguments.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "bits.h"
#include "checks.h"
#include "common.h"
#include "isa.h"

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

// Per-thread scratch, grown to the longest row seen and then re-used (no allocation per row).
template <typename Id>
struct Workspace {
  std::vector<int32_t> draws;               // per gap: draw >> 1 (31 bits)
  std::vector<int32_t> cand_key, cand_gap;  // the candidate cuts: their draws and gaps, in gap order
  std::vector<int32_t> counts;              // candidates per bucket of draws
  std::vector<uint64_t> keys;               // (draw >> 1) << 32 | gap of the boundary bucket's candidates
  std::vector<int64_t> ns, ks;              // segment starts (S + 1 each)
  std::vector<uint8_t> marker;              // per unit: a segment starts here (word units)
  std::vector<Id> tokens;                   // a row's real tokens, when padding sits between them
};

// draws[g - 1] = draw(g, stream) >> 1 for the gaps g in 1 .. gaps: a loop the compiler
// vectorises (8 hashes per instruction with AVX2).
FM_INLINE void gap_draws(const RowState& rng, int64_t gaps, int stream, int32_t* draws) {
  const uint32_t s1 = rng.s1, s2 = rng.s2;
  const uint32_t n = static_cast<uint32_t>(gaps);
  for (uint32_t g = 1; g <= n; ++g) {
    const uint32_t counter = g * static_cast<uint32_t>(kNumStreams) + static_cast<uint32_t>(stream);
    draws[g - 1] = static_cast<int32_t>(lowbias32(lowbias32(counter ^ s1) ^ s2) >> 1);
  }
}

// The candidate cuts: the gaps g whose draws[g - 1] <= last, in gap order, as key[i] (the
// draw) and gap[i]; returns how many. Blocks of 64 gaps become bit masks whose set bits (about
// one in eight) are visited: no branch per gap.
FM_INLINE int64_t collect_candidates(const int32_t* draws, int64_t gaps, int32_t last, int32_t* key, int32_t* gap) {
  int64_t found = 0;
  alignas(64) uint8_t below[64];
  for (int64_t g0 = 0; g0 < gaps; g0 += 64) {
    const int n = static_cast<int>(std::min<int64_t>(64, gaps - g0));
    for (int j = 0; j < n; ++j) below[j] = draws[g0 + j] <= last;
    for (uint64_t bits = selected_bits(below, n); bits != 0; bits &= bits - 1) {
      const int64_t g = g0 + count_trailing_zeros(bits);
      key[found] = draws[g];
      gap[found] = static_cast<int32_t>(g + 1);
      ++found;
    }
  }
  return found;
}

// Starts of a random composition of `items` into `segments` parts (reference:
// composition_starts), written to out[0 .. segments], with out[segments] = items.
//
// The cuts are the gaps with the segments - 1 smallest keys (draw >> 1, gap), compared
// lexicographically (distinct keys). The draws are uniform, so the gaps whose draw falls below
// a threshold a little above the expected quantile are nearly always enough: they are
// collected in one pass, in gap order (when too few fall below it, every gap is). The largest
// cut key T is found without sorting: a histogram of the candidates' draws over about one
// bucket per candidate gives the bucket that holds it, and nth_element orders the few
// candidates of that bucket. The cuts are then the candidates with keys <= T, taken in gap
// order, so already sorted: the reference's set, with no data-dependent branch per gap.
template <typename Id>
FM_INLINE void composition_starts(const RowState& rng, int64_t items, int64_t segments, int stream, Workspace<Id>& w,
                                  std::vector<int64_t>& out) {
  out.resize(segments + 1);
  out[0] = 0;
  out[segments] = items;
  if (segments <= 1) return;
  const int64_t gaps = items - 1, cuts = segments - 1;
  if (static_cast<int64_t>(w.draws.size()) < gaps) {
    w.draws.resize(gaps);
    w.cand_key.resize(gaps);
    w.cand_gap.resize(gaps);
  }
  int32_t* draws = w.draws.data();
  int32_t* key = w.cand_key.data();
  int32_t* gap = w.cand_gap.data();
  gap_draws(rng, gaps, stream, draws);
  // threshold on draw >> 1 (31 bits): expected cuts + 4 sd + 8 keys below it
  const double want = static_cast<double>(cuts) + 4.0 * std::sqrt(static_cast<double>(cuts)) + 8.0;
  int64_t bound = want >= static_cast<double>(gaps)
                      ? (int64_t{1} << 31)
                      : static_cast<int64_t>(want / static_cast<double>(gaps) * 2147483648.0) + 1;
  int64_t found = collect_candidates(draws, gaps, static_cast<int32_t>(bound - 1), key, gap);
  if (found < cuts) {  // rare: every gap is a candidate
    for (int64_t g = 1; g <= gaps; ++g) {
      key[g - 1] = draws[g - 1];
      gap[g - 1] = static_cast<int32_t>(g);
    }
    found = gaps;
    bound = int64_t{1} << 31;
  }
  // candidates' draws lie in [0, bound): buckets of 2^shift draws, about one candidate each
  int bucket_bits = 0;
  while (bucket_bits < 12 && (int64_t{1} << bucket_bits) < found) ++bucket_bits;
  int draw_bits = 0;
  while ((int64_t{1} << draw_bits) < bound) ++draw_bits;
  const int shift = std::max(0, draw_bits - bucket_bits);
  const int64_t buckets = ((bound - 1) >> shift) + 1;
  w.counts.assign(buckets, 0);
  int32_t* counts = w.counts.data();
  for (int64_t i = 0; i < found; ++i) ++counts[key[i] >> shift];
  int64_t below = 0, b = 0;
  while (below + counts[b] < cuts) below += counts[b++];
  // the largest cut is the (cuts - below)-th smallest key of bucket b
  w.keys.clear();
  for (int64_t i = 0; i < found; ++i)
    if ((key[i] >> shift) == b)
      w.keys.push_back((static_cast<uint64_t>(key[i]) << 32) | static_cast<uint64_t>(static_cast<uint32_t>(gap[i])));
  const auto nth = w.keys.begin() + (cuts - below - 1);
  std::nth_element(w.keys.begin(), nth, w.keys.end());
  const int32_t last_key = static_cast<int32_t>(*nth >> 32), last_gap = static_cast<int32_t>(*nth & 0xFFFFFFFFull);
  int64_t k = 1;
  for (int64_t i = 0; i < found; ++i) {
    out[k] = gap[i];
    k += (key[i] < last_key) | ((key[i] == last_key) & (gap[i] <= last_gap));
  }
  out[segments] = items;  // the loop may have written past the last cut
}

// dst[0 .. n) = src[0 .. n). When dst has room for whole 32-byte blocks up to dst_end and src
// can be read that far (up to src_end), it copies whole blocks: no call and no tail loop for the
// short runs of a row; the ids written past n are overwritten by the row's later writes.
template <typename Id>
FM_INLINE void copy_ids(Id* dst, const Id* dst_end, const Id* src, const Id* src_end, int64_t n) {
  constexpr int64_t kBlock = 32 / static_cast<int64_t>(sizeof(Id));
  const int64_t whole = (n + kBlock - 1) / kBlock * kBlock;
  if (whole <= dst_end - dst && whole <= src_end - src) {
    for (int64_t i = 0; i < whole; i += kBlock) std::memcpy(dst + i, src + i, 32);
    return;
  }
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(Id));
}

// The row's outputs from its real tokens `tokens[0 .. units)` (token units; readable up to
// `tokens_end`): kept segments are copied to `in`, each span becomes its sentinel in `in` and
// the sentinel plus its tokens in `out`. Returns the ids written to each.
template <typename Id>
FM_INLINE void write_runs(const Params& p, const Id* tokens, const Id* tokens_end, const int64_t* ns,
                          const int64_t* ks, int64_t spans, Id* in, Id* out, int64_t* n_in, int64_t* n_out) {
  const Id* in_end = in + p.inputs_length;
  const Id* out_end = out + p.targets_length;
  int64_t a = 0, b = 0;
  for (int64_t j = 0; j < spans; ++j) {
    const int64_t keep_begin = ks[j] + ns[j], noise_begin = ks[j + 1] + ns[j], noise_end = ks[j + 1] + ns[j + 1];
    copy_ids(in + a, in_end, tokens + keep_begin, tokens_end, noise_begin - keep_begin);
    a += noise_begin - keep_begin;
    const Id sentinel = static_cast<Id>(p.first_sentinel_id - j);
    in[a++] = sentinel;
    out[b++] = sentinel;
    copy_ids(out + b, out_end, tokens + noise_begin, tokens_end, noise_end - noise_begin);
    b += noise_end - noise_begin;
  }
  *n_in = a;
  *n_out = b;
}

// The row's outputs by walking its tokens (word units: a word takes its first token's status).
template <typename Id>
FM_INLINE void write_words(const Params& p, const Id* ids, const uint8_t* att, const uint8_t* ws, int64_t units,
                           const int64_t* ns, const int64_t* ks, int64_t spans, std::vector<uint8_t>& marker, Id* in,
                           Id* out, int64_t* n_in, int64_t* n_out) {
  const Id pad = static_cast<Id>(p.pad_token_id);
  marker.assign(units + 1, 0);
  for (int64_t j = 0; j < spans; ++j) {
    if (j > 0) marker[ks[j] + ns[j]] = 1;
    marker[ks[j + 1] + ns[j]] = 1;
  }
  int64_t segment = 0, unit = -1, a = 0, b = 0;
  bool first = true;
  for (int64_t i = 0; i < p.length; ++i) {
    if (att ? att[i] == 0 : ids[i] == pad) continue;
    bool span_first = false;
    if (first || ws[i] != 0) {
      ++unit;
      if (marker[unit]) {
        ++segment;
        span_first = (segment & 1) != 0;
      }
    }
    first = false;
    const Id token = ids[i];
    if (segment & 1) {
      if (span_first) {
        const Id sentinel = static_cast<Id>(p.first_sentinel_id - (segment >> 1));
        in[a++] = sentinel;
        out[b++] = sentinel;
      }
      out[b++] = token;
    } else {
      in[a++] = token;
    }
  }
  *n_in = a;
  *n_out = b;
}

template <typename Id>
FM_INLINE void corrupt_row(const Params& p, const Id* ids_all, Id* inputs_all, Id* targets_all, int64_t row,
                           Workspace<Id>& w) {
  const int64_t L = p.length;
  const Id* ids = ids_all + row * L;
  const uint8_t* att = p.attention_mask ? p.attention_mask + row * L : nullptr;
  const uint8_t* ws = p.word_starts ? p.word_starts + row * L : nullptr;
  Id* in = inputs_all + row * p.inputs_length;
  Id* out = targets_all + row * p.targets_length;
  const Id pad = static_cast<Id>(p.pad_token_id);

  // pass 1: units (real tokens, or words: the first real token and real word starts) and,
  // for token units, the span [lo, hi) holding the real tokens (padding usually sits at an end)
  int64_t units = 0, lo = 0, hi = L;
  if (ws == nullptr) {
    if (att) {
      for (int64_t i = 0; i < L; ++i) units += att[i] != 0;
      while (lo < hi && att[lo] == 0) ++lo;
      while (hi > lo && att[hi - 1] == 0) --hi;
    } else {
      for (int64_t i = 0; i < L; ++i) units += ids[i] != pad;
      while (lo < hi && ids[lo] == pad) ++lo;
      while (hi > lo && ids[hi - 1] == pad) --hi;
    }
  } else {
    bool first = true;
    for (int64_t i = 0; i < L; ++i) {
      if (att ? att[i] == 0 : ids[i] == pad) continue;
      units += first || ws[i] != 0;
      first = false;
    }
  }
  const int64_t noise = p.noise_table[units], spans = p.spans_table[units], keep = units - noise;
  const RowState rng(p.seed_mix1, p.seed_mix2, p.row_keys[row]);
  composition_starts<Id>(rng, noise, spans, kStreamNoiseCut, w, w.ns);
  composition_starts<Id>(rng, keep, spans, kStreamKeepCut, w, w.ks);

  // pass 2: the outputs, at running offsets (the per-row prefix sums)
  int64_t n_in = 0, n_out = 0;
  if (ws == nullptr) {
    const Id* tokens = ids + lo;
    const Id* tokens_end = ids_all + p.batch * L;  // reading past the row is harmless
    if (hi - lo != units) {  // padding between real tokens: gather them first
      w.tokens.resize(units);
      int64_t n = 0;
      for (int64_t i = lo; i < hi; ++i)
        if (att ? att[i] != 0 : ids[i] != pad) w.tokens[n++] = ids[i];
      tokens = w.tokens.data();
      tokens_end = tokens + units;
    }
    write_runs<Id>(p, tokens, tokens_end, w.ns.data(), w.ks.data(), spans, in, out, &n_in, &n_out);
  } else {
    write_words<Id>(p, ids, att, ws, units, w.ns.data(), w.ks.data(), spans, w.marker, in, out, &n_in, &n_out);
  }
  in[n_in++] = static_cast<Id>(p.eos_token_id);
  out[n_out++] = static_cast<Id>(p.eos_token_id);
  std::fill(in + n_in, in + p.inputs_length, pad);
  std::fill(out + n_out, out + p.targets_length, pad);
}

template <typename Id>
void corrupt_rows(const Params& p, const Id* ids, Id* inputs, Id* targets, int64_t begin, int64_t end) {
  thread_local Workspace<Id> w;
  for (int64_t row = begin; row < end; ++row) corrupt_row<Id>(p, ids, inputs, targets, row, w);
}

// The same code compiled for AVX2 (the gap draws: 8 hashes per instruction), picked at run time
// with the masking kernel's level (isa.h, IsaFamily::kMasking; both give identical results).
template <typename Id>
FM_TARGET_AVX2 FM_FLATTEN void corrupt_rows_avx2(const Params& p, const Id* ids, Id* inputs, Id* targets,
                                                 int64_t begin, int64_t end) {
  corrupt_rows<Id>(p, ids, inputs, targets, begin, end);
}

template <typename Id>
void span_corruption_kernel(const Params& p, const Id* ids, Id* inputs, Id* targets) {
  using RowsFn = void (*)(const Params&, const Id*, Id*, Id*, int64_t, int64_t);
  const RowsFn rows_fn =
      active_isa(IsaFamily::kMasking) >= Isa::kAvx2 ? &corrupt_rows_avx2<Id> : &corrupt_rows<Id>;
  const int64_t grain = std::max<int64_t>(1, kMinTokensPerChunk / std::max<int64_t>(p.length, 1));
  parallel_for(p.batch, grain, [&](int64_t begin, int64_t end) { rows_fn(p, ids, inputs, targets, begin, end); });
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
