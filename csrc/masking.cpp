// The C++ masking kernel: selection (token / whole word / span; bernoulli or exact budget)
// and 80/10/10 replacement, bit-identical to fastmask/reference/masking.py (which documents
// the semantics) through the generator in common.h.
//
// Rows are independent: each is processed by one thread in one or two linear passes over
// blocks of 64 positions. The bernoulli budget needs no memory beyond the outputs; the exact
// budget keeps per-row unit tables in a thread-local workspace that only grows, and orders
// unit keys by bucketing their (uniform) top bits. The binding validates every buffer; the
// kernel itself trusts its arguments.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "bits.h"
#include "checks.h"
#include "common.h"
#include "isa.h"

namespace py = pybind11;

namespace fastmask {
namespace {

constexpr int64_t kIgnoreIndex = -100;
constexpr uint8_t kFlagSpecial = 1;
constexpr uint8_t kFlagWordStart = 2;
constexpr uint8_t kDefaultFlags = kFlagWordStart;  // an id outside the flags table
// Rows per thread chunk hold at least this many tokens, so small batches run inline.
constexpr int64_t kMinTokensPerChunk = 16384;

enum Strategy : int { kToken = 0, kWholeWord = 1, kSpan = 2 };

// Everything the kernel reads besides the id buffers; optional tables are null when absent.
struct Params {
  const uint8_t* special_mask = nullptr;    // [B, L]
  const uint8_t* attention_mask = nullptr;  // [B, L]
  const uint8_t* word_starts = nullptr;     // [B, L]
  const uint8_t* vocab_flags = nullptr;     // [flags_size]
  int64_t flags_size = 0;
  const int32_t* weights_q = nullptr;  // [weights_size]
  int64_t weights_size = 0;
  const int64_t* row_keys = nullptr;  // [B]
  const int32_t* span_thresholds = nullptr;
  int64_t num_span_thresholds = 0;
  const int32_t* budget_table = nullptr;  // [>= L + 1]; null: bernoulli
  int64_t batch = 0, length = 0;
  uint32_t seed_mix1 = 0, seed_mix2 = 0;
  int strategy = kToken;
  int64_t pad_token_id = -1;
  bool has_pad = false;  // pad_token_id >= 0
  int64_t select_threshold = 0;
  int64_t mask_token_id = 0, vocab_size = 1;
  uint32_t replace_mask_threshold = 0, replace_random_threshold = 0;
};

// Floor division as torch's `//` (the divisor is positive here).
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// Per-thread scratch for the exact budget, indexed by position ([L]) or by unit ([U <= L]).
struct Workspace {
  std::vector<uint8_t> cls;        // per position: bit0 eligible, bit1 unit start, bit2 selected
  std::vector<uint64_t> keys;      // per unit: (draw >> 1) << 32 | unit index
  std::vector<uint64_t> ordered;   // keys grouped by bucket (their top bits)
  std::vector<int32_t> unit_pos;   // per unit: position of its first token
  std::vector<int32_t> unit_len;   // per unit: tokens in it
  std::vector<int32_t> seg_last;   // per unit: last unit of its segment
  std::vector<uint8_t> covered;    // per unit
  std::vector<uint32_t> buckets;   // per bucket: count, then end offset
  void reserve(int64_t n) {
    if (static_cast<int64_t>(cls.size()) >= n) return;
    cls.resize(n);
    keys.resize(n);
    ordered.resize(n);
    unit_pos.resize(n);
    unit_len.resize(n);
    seg_last.resize(n);
    covered.resize(n);
    buckets.resize(kMaxBuckets);
  }
  static constexpr int kMaxBucketBits = 12;
  static constexpr int64_t kMaxBuckets = int64_t{1} << kMaxBucketBits;
};

// Bucket keys by their top bits, about four units per bucket: the draws are uniform, so
// counting them per bucket orders the keys up to small buckets without comparisons.
inline int bucket_bits(int64_t units) {
  int log2 = 0;
  while ((int64_t{2} << log2) <= units) ++log2;
  return std::min(Workspace::kMaxBucketBits, std::max(0, log2 - 2));
}

constexpr uint8_t kClsEligible = 1, kClsStart = 2, kClsSelected = 4;
constexpr int kBlock = 64;  // positions per block of the output passes

template <typename Id>
class RowMasker {
 public:
  RowMasker(const Params& p, const Id* ids, Id* masked, int64_t* labels, int64_t row)
      : p_(p), rng_(p.seed_mix1, p.seed_mix2, p.row_keys[row]) {
    const int64_t offset = row * p.length;
    ids_ = ids + offset;
    masked_ = masked + offset;
    labels_ = labels + offset;
    special_ = p.special_mask ? p.special_mask + offset : nullptr;
    attention_ = p.attention_mask ? p.attention_mask + offset : nullptr;
    starts_ = p.word_starts ? p.word_starts + offset : nullptr;
  }

  // Positions go in blocks: the select draws of a block first (a loop the compiler
  // vectorises), then the sequential unit logic, then the outputs, then the replacement
  // draws of the (few) selected positions.
  template <int kStrategy, bool kWeighted>
  void bernoulli() {
    const int64_t L = p_.length;
    int64_t units = 0, total = 0;
    if (kWeighted) {  // per-row sums over unit starts
      bool prev = false;
      for (int64_t i = 0; i < L; ++i) {
        const int64_t id = ids_[i];
        const uint8_t f = flags(id);
        const bool e = eligible(i, id, f);
        if (e && (kStrategy == kToken || !prev || starts_word(i, f))) {
          ++units;
          total = wrap_add(total, weight(id));
        }
        prev = e;
      }
    }
    alignas(64) uint32_t draws[kBlock];
    alignas(64) uint8_t sel[kBlock];
    bool prev = false, drawn = false;
    int64_t unit = -1, reach = -1;  // span: units are counted from the row's start
    for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, L - i0));
      draw_block(i0, n, kStreamSelect, draws);
      const Id* ids = ids_ + i0;
      // Branch-free but for span anchors (rare) and, with weights, the division at a unit
      // start: the branch predictor cannot guess word starts or draws.
      for (int j = 0; j < n; ++j) {
        const int64_t i = i0 + j;
        const int64_t id = ids[j];
        const uint8_t f = flags(id);
        const bool e = eligible(i, id, f);
        const bool start = kStrategy == kToken ? e : e & (!prev | starts_word(i, f));
        int64_t t = p_.select_threshold;
        if (kWeighted && start) t = weighted_threshold(weight(id), units, total);
        const bool d = start & (static_cast<int64_t>(prob_draw(draws[j])) < t);
        if (kStrategy == kSpan) {
          reach = (e & !prev) ? -1 : reach;  // a new segment: earlier spans stop at its start
          unit += start;
          if (d) reach = std::max(reach, unit + span_words(i));
          sel[j] = e & (reach > unit);
        } else {
          drawn = d | (drawn & !start);
          sel[j] = e & drawn;
        }
        prev = e;
      }
      emit_block(i0, n, sel);
    }
  }

  template <int kStrategy>
  void exact(Workspace& ws) {
    const int64_t L = p_.length;
    ws.reserve(L);
    uint8_t* cls = ws.cls.data();
    uint64_t* keys = ws.keys.data();
    int32_t* unit_pos = ws.unit_pos.data();
    alignas(64) uint32_t draws[kBlock];
    int64_t eligible_count = 0, units = 0, segment_first = 0;
    bool prev = false;
    for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, L - i0));
      draw_block(i0, n, kStreamSelect, draws);
      for (int j = 0; j < n; ++j) {
        const int64_t i = i0 + j;
        const int64_t id = ids_[i];
        const uint8_t f = flags(id);
        const bool e = eligible(i, id, f);
        const bool start = kStrategy == kToken ? e : e & (!prev | starts_word(i, f));
        if (kStrategy != kToken && e != prev) {  // a segment starts or ends at i (rare)
          if (e) {
            segment_first = units;
          } else {
            close_segment(ws, segment_first, units, i);
          }
        }
        // Written for every position, kept (units advances) only at a unit start.
        keys[units] = (static_cast<uint64_t>(draws[j] >> 1) << 32) | static_cast<uint64_t>(units);
        unit_pos[units] = static_cast<int32_t>(i);
        units += start;
        eligible_count += e;
        cls[i] = static_cast<uint8_t>(e | (start << 1));
        prev = e;
      }
    }
    if (kStrategy != kToken && prev) close_segment(ws, segment_first, units, L);

    const int64_t budget = p_.budget_table[eligible_count];
    if (units > 0 && budget > 0) {
      if (kStrategy == kToken) {
        select_smallest(ws, units, std::min(budget, units));
      } else {
        greedy<kStrategy>(ws, units, budget);
      }
    }
    alignas(64) uint8_t sel[kBlock];
    uint8_t selected = 0;
    for (int64_t i0 = 0; i0 < L; i0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, L - i0));
      for (int j = 0; j < n; ++j) {
        const uint8_t c = cls[i0 + j];
        const uint8_t start = (c >> 1) & 1;
        selected = static_cast<uint8_t>((selected & (start ^ 1)) | ((c >> 2) & start));
        sel[j] = static_cast<uint8_t>(c & selected & kClsEligible);
      }
      emit_block(i0, n, sel);
    }
  }

 private:
  // Units [first, last) form a segment that ends before position `end`.
  static void close_segment(Workspace& ws, int64_t first, int64_t last, int64_t end) {
    const int32_t* unit_pos = ws.unit_pos.data();
    int32_t* unit_len = ws.unit_len.data();
    int32_t* seg_last = ws.seg_last.data();
    for (int64_t u = first; u < last; ++u) {
      seg_last[u] = static_cast<int32_t>(last - 1);
      unit_len[u] = static_cast<int32_t>((u + 1 < last ? unit_pos[u + 1] : end) - unit_pos[u]);
    }
  }

  // Marks the k < units smallest keys (strategy token: every unit is one token).
  static void select_smallest(Workspace& ws, int64_t units, int64_t k) {
    const uint64_t* keys = ws.keys.data();
    const int32_t* unit_pos = ws.unit_pos.data();
    uint8_t* cls = ws.cls.data();
    if (k >= units) {
      for (int64_t u = 0; u < units; ++u) cls[unit_pos[u]] |= kClsSelected;
      return;
    }
    const int bits = bucket_bits(units);
    const int shift = 63 - bits;  // keys < 2**63
    uint32_t* counts = ws.buckets.data();
    std::fill(counts, counts + (int64_t{1} << bits), 0u);
    for (int64_t u = 0; u < units; ++u) ++counts[keys[u] >> shift];
    uint64_t cut = 0;  // the bucket holding the k-th smallest key
    int64_t below = 0;
    while (below + counts[cut] < k) below += counts[cut++];
    uint64_t* boundary = ws.ordered.data();
    int64_t in_cut = 0;
    for (int64_t u = 0; u < units; ++u) {
      const uint64_t b = keys[u] >> shift;
      cls[unit_pos[u]] |= static_cast<uint8_t>((b < cut) << 2);
      boundary[in_cut] = keys[u];
      in_cut += b == cut;
    }
    const int64_t rest = k - below;  // 1 <= rest <= in_cut
    if (rest < in_cut) std::nth_element(boundary, boundary + rest, boundary + in_cut);
    for (int64_t j = 0; j < rest; ++j) cls[unit_pos[static_cast<uint32_t>(boundary[j])]] |= kClsSelected;
  }

  // BERT's greedy rule over units in key order (see _exact_row in the reference). Keys are
  // grouped by bucket first; a bucket is sorted only when the walk reaches it, and the walk
  // usually spends the budget early.
  template <int kStrategy>
  void greedy(Workspace& ws, int64_t units, int64_t budget) const {
    const uint64_t* keys = ws.keys.data();
    const int32_t* unit_pos = ws.unit_pos.data();
    const int32_t* unit_len = ws.unit_len.data();
    const int32_t* seg_last = ws.seg_last.data();
    uint8_t* covered = ws.covered.data();
    std::fill(covered, covered + units, uint8_t{0});
    const int bits = bucket_bits(units);
    const int shift = 63 - bits;
    const int64_t num_buckets = int64_t{1} << bits;
    uint32_t* ends = ws.buckets.data();
    std::fill(ends, ends + num_buckets, 0u);
    for (int64_t u = 0; u < units; ++u) ++ends[keys[u] >> shift];
    uint32_t offset = 0;
    for (int64_t b = 0; b < num_buckets; ++b) {  // counts -> start offsets
      const uint32_t count = ends[b];
      ends[b] = offset;
      offset += count;
    }
    uint64_t* ordered = ws.ordered.data();
    for (int64_t u = 0; u < units; ++u) ordered[ends[keys[u] >> shift]++] = keys[u];  // now end offsets

    int64_t left = budget;
    uint32_t begin = 0;
    for (int64_t b = 0; b < num_buckets && left > 0; ++b) {
      const uint32_t end = ends[b];
      std::sort(ordered + begin, ordered + end);
      for (uint32_t j = begin; j < end && left > 0; ++j) {
        const int64_t u = static_cast<uint32_t>(ordered[j]);
        if (covered[u] || unit_len[u] > left) continue;
        int64_t last = u + 1;
        if (kStrategy == kSpan) last = std::min<int64_t>(u + span_words(unit_pos[u]), int64_t{seg_last[u]} + 1);
        for (int64_t w = u; w < last; ++w) {
          if (covered[w]) continue;
          if (unit_len[w] > left) break;
          covered[w] = 1;
          left -= unit_len[w];
        }
      }
      begin = end;
    }
    uint8_t* cls = ws.cls.data();
    for (int64_t u = 0; u < units; ++u) cls[unit_pos[u]] |= static_cast<uint8_t>(covered[u] << 2);
  }

  inline uint8_t flags(int64_t id) const {
    return static_cast<uint64_t>(id) < static_cast<uint64_t>(p_.flags_size) ? p_.vocab_flags[id] : kDefaultFlags;
  }
  inline int64_t weight(int64_t id) const {
    return static_cast<uint64_t>(id) < static_cast<uint64_t>(p_.weights_size) ? p_.weights_q[id] : 0;
  }
  inline bool eligible(int64_t i, int64_t id, uint8_t f) const {
    const bool special = special_ ? special_[i] != 0 : (f & kFlagSpecial) != 0;
    const bool attended = !attention_ || attention_[i] != 0;
    const bool padding = p_.has_pad & (id == p_.pad_token_id);
    return !special & attended & !padding;  // `&`: no data-dependent branches
  }
  inline bool starts_word(int64_t i, uint8_t f) const {
    return starts_ ? starts_[i] != 0 : (f & kFlagWordStart) != 0;
  }
  // 1 + #{j : prob_draw(draw) >= span_thresholds[j]}
  inline int64_t span_words(int64_t i) const {
    const int64_t u24 = prob_draw(rng_.draw(i, kStreamSpanLength));
    int64_t n = 1;
    for (int64_t j = 0; j < p_.num_span_thresholds; ++j) n += u24 >= p_.span_thresholds[j];
    return n;
  }
  static inline int64_t wrap_add(int64_t a, int64_t b) {
    return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  }
  // min(kProbOne, t * w * units // total), 0 when total == 0; 64-bit as in the reference.
  inline int64_t weighted_threshold(int64_t w, int64_t units, int64_t total) const {
    if (total <= 0) return 0;
    const uint64_t product = static_cast<uint64_t>(p_.select_threshold) * static_cast<uint64_t>(w) *
                             static_cast<uint64_t>(units);
    return std::min(kProbOne, floor_div(static_cast<int64_t>(product), total));
  }
  // out[j] = draw(i0 + j, stream) for j < n
  inline void draw_block(int64_t i0, int n, int stream, uint32_t* out) const {
    const uint32_t s1 = rng_.s1, s2 = rng_.s2;
    const uint32_t base = static_cast<uint32_t>(i0 * kNumStreams + stream);
    for (int j = 0; j < n; ++j) out[j] = lowbias32(lowbias32((base + kNumStreams * static_cast<uint32_t>(j)) ^ s1) ^ s2);
  }
  // Labels and ids of positions i0 .. i0 + n - 1, then the replacement of the selected ones.
  inline void emit_block(int64_t i0, int n, const uint8_t* sel) {
    const Id* ids = ids_ + i0;
    Id* masked = masked_ + i0;
    int64_t* labels = labels_ + i0;
    for (int j = 0; j < n; ++j) {
      masked[j] = ids[j];
      labels[j] = sel[j] ? static_cast<int64_t>(ids[j]) : kIgnoreIndex;
    }
    for (uint64_t bits = selected_bits(sel, n); bits; bits &= bits - 1) {  // no branch per position
      const int j = count_trailing_zeros(bits);
      const int64_t i = i0 + j;
      const uint32_t r = prob_draw(rng_.draw(i, kStreamReplace));
      if (r < p_.replace_mask_threshold) {
        masked[j] = static_cast<Id>(p_.mask_token_id);
      } else if (r < p_.replace_random_threshold) {
        // (draw * vocab_size) >> 32 in wrapping int64 arithmetic, as torch computes it
        const uint64_t product = static_cast<uint64_t>(rng_.draw(i, kStreamRandomId)) *
                                 static_cast<uint64_t>(p_.vocab_size);
        masked[j] = static_cast<Id>(static_cast<int64_t>(product) >> 32);
      }
    }
  }

  const Params& p_;
  const RowState rng_;
  const Id* ids_;
  Id* masked_;
  int64_t* labels_;
  const uint8_t* special_;
  const uint8_t* attention_;
  const uint8_t* starts_;
};

template <typename Id, int kStrategy>
void mask_row(const Params& p, const Id* ids, Id* masked, int64_t* labels, int64_t row) {
  RowMasker<Id> masker(p, ids, masked, labels, row);
  if (p.budget_table) {
    thread_local Workspace workspace;
    masker.template exact<kStrategy>(workspace);
  } else if (p.weights_q) {
    masker.template bernoulli<kStrategy, true>();
  } else {
    masker.template bernoulli<kStrategy, false>();
  }
}

template <typename Id, int kStrategy>
void mask_rows(const Params& p, const Id* ids, Id* masked, int64_t* labels, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) mask_row<Id, kStrategy>(p, ids, masked, labels, row);
}

// The same code is also compiled for AVX2 (8 hashes per instruction instead of 4, about a third
// faster) and picked at run time (isa.h), so a portable build still uses the vector unit.
template <typename Id, int kStrategy>
FM_TARGET_AVX2 FM_FLATTEN void mask_rows_avx2(const Params& p, const Id* ids, Id* masked, int64_t* labels,
                                              int64_t begin, int64_t end) {
  mask_rows<Id, kStrategy>(p, ids, masked, labels, begin, end);
}

// The kernel: fills masked [B, L] and labels [B, L]; no argument checking.
template <typename Id>
void mask_tokens_kernel(const Params& p, const Id* ids, Id* masked, int64_t* labels) {
  using RowsFn = void (*)(const Params&, const Id*, Id*, int64_t*, int64_t, int64_t);
  RowsFn rows_fn = p.strategy == kToken       ? &mask_rows<Id, kToken>
                   : p.strategy == kWholeWord ? &mask_rows<Id, kWholeWord>
                                              : &mask_rows<Id, kSpan>;
  if (active_isa(IsaFamily::kMasking) >= Isa::kAvx2) {
    rows_fn = p.strategy == kToken       ? &mask_rows_avx2<Id, kToken>
              : p.strategy == kWholeWord ? &mask_rows_avx2<Id, kWholeWord>
                                         : &mask_rows_avx2<Id, kSpan>;
  }
  const int64_t grain = std::max<int64_t>(1, kMinTokensPerChunk / std::max<int64_t>(p.length, 1));
  parallel_for(p.batch, grain, [&](int64_t begin, int64_t end) { rows_fn(p, ids, masked, labels, begin, end); });
}

// ------------------------------------------------------------------------- binding
constexpr const char* kOp = "mask_tokens";

template <typename Id>
void run_typed(const Params& p, const py::array& input_ids, const py::array& masked_out, int64_t* labels) {
  const Id* ids = static_cast<const Id*>(input_ids.data());
  Id* masked = static_cast<Id*>(const_cast<void*>(masked_out.data()));
  py::gil_scoped_release release;
  mask_tokens_kernel<Id>(p, ids, masked, labels);
}

void mask_tokens_binding(const py::dict& plan, const py::object& masked_obj, const py::object& labels_obj) {
  bool is64 = false;
  py::array input_ids = plan_token_ids(kOp, plan, &is64, kMaxLength);
  Params p;
  p.batch = input_ids.shape(0);
  p.length = input_ids.shape(1);
  const int64_t B = p.batch, L = p.length;

  py::array masked = as_array(kOp, masked_obj, "masked_out");
  if (!(is64 ? has_dtype<int64_t>(masked) : has_dtype<int32_t>(masked)))
    fail_value(kOp, "masked_out must have input_ids' dtype (" + dtype_string(input_ids) + "), got " + dtype_string(masked));
  check_layout(kOp, masked, "masked_out", {B, L}, true);
  py::array labels = as_array(kOp, labels_obj, "labels_out");
  if (!has_dtype<int64_t>(labels)) fail_value(kOp, "labels_out must be int64, got " + dtype_string(labels));
  check_layout(kOp, labels, "labels_out", {B, L}, true);

  p.special_mask = byte_buffer(kOp, plan_field(kOp, plan, "special_mask"), "special_mask", {B, L});
  p.attention_mask = byte_buffer(kOp, plan_field(kOp, plan, "attention_mask"), "attention_mask", {B, L});
  p.word_starts = byte_buffer(kOp, plan_field(kOp, plan, "word_starts"), "word_starts", {B, L});
  p.vocab_flags = byte_buffer(kOp, plan_field(kOp, plan, "vocab_flags"), "vocab_flags", {-1}, &p.flags_size);
  if (!p.vocab_flags) p.flags_size = 0;
  p.weights_q = typed_buffer<int32_t>(kOp, plan_field(kOp, plan, "weights_q"), "weights_q", {-1}, &p.weights_size);
  if (!p.weights_q) p.weights_size = 0;
  const py::object row_keys = plan_field(kOp, plan, "row_keys");
  const py::object span_thresholds = plan_field(kOp, plan, "span_thresholds");
  const py::object budget_table = plan_field(kOp, plan, "budget_table");
  const bool exact = plan_int(kOp, plan, "exact") != 0;
  if (row_keys.is_none()) fail_value(kOp, "row_keys must be an int64 array of shape (" + std::to_string(B) + ",), got None");
  p.row_keys = typed_buffer<int64_t>(kOp, row_keys, "row_keys", {B});
  if (span_thresholds.is_none()) {
    p.num_span_thresholds = 0;
  } else {
    p.span_thresholds = typed_buffer<int32_t>(kOp, span_thresholds, "span_thresholds", {-1},
                                              &p.num_span_thresholds);
  }
  if (exact) {
    if (budget_table.is_none()) fail_value(kOp, "exact=True needs budget_table (int32 [L + 1]), got None");
    int64_t size = 0;
    p.budget_table = typed_buffer<int32_t>(kOp, budget_table, "budget_table", {-1}, &size);
    if (size < L + 1)
      fail_value(kOp, "budget_table has " + std::to_string(size) + " entries; it needs L + 1 = " + std::to_string(L + 1));
  }

  p.seed_mix1 = static_cast<uint32_t>(check_range(kOp, plan_int(kOp, plan, "seed_mix1"), "seed_mix1", 0, 0xFFFFFFFFll));
  p.seed_mix2 = static_cast<uint32_t>(check_range(kOp, plan_int(kOp, plan, "seed_mix2"), "seed_mix2", 0, 0xFFFFFFFFll));
  p.strategy = static_cast<int>(check_range(kOp, plan_int(kOp, plan, "strategy"), "strategy", 0, 2));
  p.pad_token_id = plan_int(kOp, plan, "pad_token_id");
  p.has_pad = p.pad_token_id >= 0;  // negative: no padding id
  p.select_threshold = check_range(kOp, plan_int(kOp, plan, "select_threshold"), "select_threshold", 0, kProbOne);
  const int64_t id_max = is64 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int32_t>::max();
  p.mask_token_id = check_range(kOp, plan_int(kOp, plan, "mask_token_id"), "mask_token_id", 0, id_max);
  p.vocab_size = check_range(kOp, plan_int(kOp, plan, "vocab_size"), "vocab_size", 1, is64 ? id_max : id_max + 1);
  p.replace_mask_threshold =
      static_cast<uint32_t>(check_range(kOp, plan_int(kOp, plan, "replace_mask_threshold"), "replace_mask_threshold", 0, kProbOne));
  p.replace_random_threshold =
      static_cast<uint32_t>(check_range(kOp, plan_int(kOp, plan, "replace_random_threshold"), "replace_random_threshold", 0, kProbOne));
  if (B == 0 || L == 0) return;

  int64_t* labels_ptr = static_cast<int64_t*>(labels.mutable_data());
  masked.mutable_data();  // raises if not writable
  if (is64) {
    run_typed<int64_t>(p, input_ids, masked, labels_ptr);
  } else {
    run_typed<int32_t>(p, input_ids, masked, labels_ptr);
  }
}

}  // namespace

void register_masking(py::module_& m) {
  m.def("mask_tokens", &mask_tokens_binding, py::arg("plan"), py::arg("masked_out"), py::arg("labels_out"),
        R"doc(Masks a [B, L] batch into masked_out / labels_out (see fastmask/reference/masking.py).

plan: a dict of fastmask.masking_plan.MaskingPlan's fields by name (buffers as numpy arrays, bool
as uint8; scalars as ints). input_ids: int32 or int64 [B, L]; masked_out: same dtype and shape; labels_out: int64 [B, L].
special_mask, attention_mask, word_starts: None or uint8 [B, L]. vocab_flags: None or uint8 [V]
(bit0 special, bit1 word start; ids outside give 2). weights_q: None or int32 [V] (ids outside
give 0). row_keys: int64 [B]. span_thresholds: int32 [n]. budget_table: None (bernoulli) or
int32 [>= L + 1]. strategy: 0 token, 1 whole_word, 2 span. Thresholds are 24-bit integers.
Every buffer must be C-contiguous. Raises ValueError on a wrong dtype, shape or layout.)doc");
  m.def(
      "_masking_isa",
      [](const py::object& isa) -> std::string {
        if (!isa.is_none()) {
          const std::string name = isa.cast<std::string>();
          Isa level;
          if (!parse_isa(name, &level) || level > Isa::kAvx2)
            fail_value("_masking_isa", "isa must be 'default' or 'avx2', got '" + name + "'");
          set_isa_limit(IsaFamily::kMasking, level);
        }
        return isa_name(std::min(active_isa(IsaFamily::kMasking), Isa::kAvx2));
      },
      py::arg("isa") = py::none(),
      "The instruction set the masking and span-corruption kernels use ('avx2' or 'default'); pass "
      "one to choose it (for tests: both give identical results).");
}

}  // namespace fastmask
