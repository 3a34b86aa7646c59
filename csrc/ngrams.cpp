// n-gram counting (for PMI vocabularies) and n-gram unit segmentation (for PMI masking), the C++
// side of fastmask/ngrams.py. The hashes are the ones fastmask/reference/ngrams.py defines (and
// the Triton kernel in fastmask/kernels/ngrams.py repeats):
//
//   mix64(x)            the splitmix64 finaliser
//   word hash           h = kWordSeed; for each token t of the word: h = mix64(h ^ t)
//   counting key        g = hash(word 0); for each next word w: g = mix64(mix64(g) ^ hash(w));
//                       key = g | 1 (never 0, the empty slot)
//   word code           the word's token id if it has one token, else hash(word) | 2**63
//   matching key        g = code(word 0); for each next word w: g = mix64(rotl32(g) ^ code(w));
//                       key = g | 1 (the probe table's keys; cheaper per word than counting keys)
//
// Counting (NgramCounter): rows of token ids are split into words by a per-vocabulary flag table
// (bit 0: special, bit 1: starts a word, as fastmask/masking_plan.py's vocab_flags); a special
// token ends a segment, and n-grams never cross segments or rows. Every n-gram of 1..max_n words
// is counted in an open-addressing table per length, keyed by its 64-bit key; a new entry keeps
// a representative: unigrams a word index into a word dictionary (its token ids), longer n-grams
// the word indices of their words. No Python runs per token.
//
// Segmentation (ngram_units): per row, the words of the masking plan (eligible positions, word
// starts) are grouped left to right into units: at each word the longest n-gram of 2..max_n
// words (inside the segment) whose matching key (not the counting key above: a word's code is
// its token id when it has one token) is in the plan's probe table, else the word alone. The
// table also holds every prefix of a vocabulary n-gram (marked), so the search at a word stops
// at the first run of words that no vocabulary n-gram starts with.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "common.h"

namespace py = pybind11;

namespace fastmask {
namespace {

constexpr uint64_t kWordSeed = 0x9E3779B97F4A7C15ull;
constexpr int kMaxN = 8;
constexpr uint8_t kFlagSpecial = 1, kFlagWordStart = 2, kDefaultFlags = kFlagWordStart;

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}
inline uint64_t extend_key(uint64_t g, uint64_t word_hash) { return mix64(mix64(g) ^ word_hash); }
inline uint64_t slot_of(uint64_t key, uint64_t mask) { return (key >> 1) & mask; }

// ---------------------------------------------------------------- counting
// Open addressing, linear probing, power-of-two capacity, load <= 1/2; key 0 is empty. One
// entry per slot (key, count, representative) so that a probe touches one cache line.
struct CountTable {
  struct Entry {
    uint64_t key;
    int64_t count;
    uint64_t ref;  // unigrams: word index; n >= 2: offset into the word-index arena
  };
  std::vector<Entry> slots;
  uint64_t mask = 0;
  int64_t size = 0;

  CountTable() { reset(uint64_t{1} << 14); }
  void reset(uint64_t capacity) {
    slots.assign(capacity, Entry{0, 0, 0});
    mask = capacity - 1;
    size = 0;
  }
  void grow() {
    std::vector<Entry> old;
    old.swap(slots);
    reset(old.size() * 2);
    for (const Entry& e : old) {
      if (!e.key) continue;
      uint64_t s = slot_of(e.key, mask);
      while (slots[s].key) s = (s + 1) & mask;
      slots[s] = e;
      ++size;
    }
  }
  void prefetch(uint64_t key) const { __builtin_prefetch(&slots[slot_of(key, mask)], 1, 1); }
  // The slot of key (inserted with count 0 when new; *fresh tells).
  uint64_t find_or_insert(uint64_t key, bool* fresh) {
    if (static_cast<uint64_t>(size + 1) * 2 > slots.size()) grow();
    uint64_t s = slot_of(key, mask);
    while (true) {
      const uint64_t k = slots[s].key;
      if (k == key) {
        *fresh = false;
        return s;
      }
      if (k == 0) {
        slots[s].key = key;
        ++size;
        *fresh = true;
        return s;
      }
      s = (s + 1) & mask;
    }
  }
  int64_t find(uint64_t key) const {
    uint64_t s = slot_of(key, mask);
    while (true) {
      const uint64_t k = slots[s].key;
      if (k == key) return static_cast<int64_t>(s);
      if (k == 0) return -1;
      s = (s + 1) & mask;
    }
  }
};

class NgramCounter {
 public:
  explicit NgramCounter(int max_n) : max_n_(max_n), tables_(max_n), positions_(max_n, 0) {
    if (max_n < 1 || max_n > kMaxN) fail_value("NgramCounter", "max_n = " + std::to_string(max_n) + " is outside [1, 8]");
  }

  int max_n() const { return max_n_; }

  // Count the n-grams of rows: ids [T] (int32/int64) cut at row_offsets [R + 1]; flags [F] uint8.
  void add_rows(const py::array& ids_obj, const py::array& offsets_obj, const py::object& flags_obj) {
    const char* op = "NgramCounter.add_rows";
    int64_t T = 0, R1 = 0, F = 0;
    py::array ids = as_array(op, ids_obj, "ids");
    const bool is64 = has_dtype<int64_t>(ids);
    if (!is64 && !has_dtype<int32_t>(ids)) fail_value(op, "ids must be int32 or int64, got " + dtype_string(ids));
    check_layout(op, ids, "ids", {-1}, false);
    T = ids.size();
    const int64_t* offsets = typed_array<int64_t>(op, offsets_obj, "row_offsets", {-1}, false, &R1);
    const uint8_t* flags = typed_buffer<uint8_t>(op, flags_obj, "flags", {-1}, &F);
    if (R1 < 1) fail_value(op, "row_offsets must hold at least one entry (0)");
    for (int64_t r = 0; r < R1; ++r) {
      const int64_t lo = r ? offsets[r - 1] : 0;
      if (offsets[r] < lo || offsets[r] > T)
        fail_value(op, "row_offsets must be non-decreasing within [0, len(ids)], entry " + std::to_string(r) + " is " +
                           std::to_string(offsets[r]));
    }
    py::gil_scoped_release release;
    for (int64_t r = 0; r + 1 < R1; ++r) {
      if (is64)
        add_row(static_cast<const int64_t*>(ids.data()) + offsets[r], offsets[r + 1] - offsets[r], flags, F);
      else
        add_row(static_cast<const int32_t*>(ids.data()) + offsets[r], offsets[r + 1] - offsets[r], flags, F);
    }
  }

  // Words with count >= min_count: (counts [W], token offsets [W + 1], tokens [T], hashes [W]);
  // their order defines the word indices that entries() refers to.
  py::tuple words(int64_t min_count) const {
    std::vector<int64_t> counts, offsets{0}, tokens, keys;
    std::vector<int64_t> remap;
    export_words(min_count, &counts, &offsets, &tokens, &keys, &remap);
    return py::make_tuple(to_numpy(counts), to_numpy(offsets), to_numpy(tokens), to_numpy(keys));
  }

  // n-grams of n >= 2 words with count >= min_count: (word indices [E, n] into words(min_count),
  // counts [E]). Sub-n-grams of a kept n-gram are kept too (their counts are at least as large).
  py::tuple entries(int n, int64_t min_count) const {
    check_n("NgramCounter.entries", n, 2);
    std::vector<int64_t> counts, offsets{0}, tokens, keys, remap;
    export_words(min_count, &counts, &offsets, &tokens, &keys, &remap);
    const CountTable& t = tables_[n - 1];
    std::vector<int64_t> words, out_counts;
    for (size_t s = 0; s < t.slots.size(); ++s) {
      if (!t.slots[s].key || t.slots[s].count < min_count) continue;
      for (int j = 0; j < n; ++j) words.push_back(remap[arena_[t.slots[s].ref + j]]);
      out_counts.push_back(t.slots[s].count);
    }
    py::array_t<int64_t> w({static_cast<py::ssize_t>(out_counts.size()), static_cast<py::ssize_t>(n)});
    std::copy(words.begin(), words.end(), w.mutable_data());
    return py::make_tuple(w, to_numpy(out_counts));
  }

  // Add another counter's export: words (offsets [W + 1], tokens [T], counts [W]) and, per n >= 2,
  // entries (word indices [E, n] into those words, counts [E]).
  void absorb(const py::array& word_offsets_obj, const py::array& word_tokens_obj, const py::array& word_counts_obj,
              const py::list& ngrams) {
    const char* op = "NgramCounter.absorb";
    int64_t W1 = 0, T = 0, W = 0;
    const int64_t* offsets = typed_array<int64_t>(op, word_offsets_obj, "word_offsets", {-1}, false, &W1);
    const int64_t* tokens = typed_array<int64_t>(op, word_tokens_obj, "word_tokens", {-1}, false, &T);
    const int64_t* wcounts = typed_array<int64_t>(op, word_counts_obj, "word_counts", {-1}, false, &W);
    if (W1 != W + 1 || offsets[0] != 0 || offsets[W] != T) fail_value(op, "word_offsets must be [W + 1], 0 .. len(word_tokens)");
    std::vector<int64_t> global(W);
    std::vector<uint64_t> hashes(W);
    for (int64_t w = 0; w < W; ++w) {
      if (offsets[w + 1] <= offsets[w]) fail_value(op, "word_offsets must be strictly increasing");
      uint64_t h = kWordSeed;
      for (int64_t i = offsets[w]; i < offsets[w + 1]; ++i) h = mix64(h ^ static_cast<uint64_t>(tokens[i]));
      hashes[w] = h;
      global[w] = count_word(h, tokens + offsets[w], offsets[w + 1] - offsets[w], wcounts[w]);
      positions_[0] += wcounts[w];
    }
    if (static_cast<int64_t>(ngrams.size()) > max_n_ - 1)
      fail_value(op, "ngrams has " + std::to_string(ngrams.size()) + " lengths; this counter counts up to " +
                         std::to_string(max_n_) + " words");
    for (size_t k = 0; k < ngrams.size(); ++k) {
      const int n = static_cast<int>(k) + 2;
      py::tuple pair = ngrams[k].cast<py::tuple>();
      int64_t E = 0;
      py::array idx = as_array(op, pair[0], "ngrams[][0]");
      const int64_t* counts = typed_array<int64_t>(op, pair[1], "ngrams[][1]", {-1}, false, &E);
      const int64_t* words = typed_array<int64_t>(op, idx, "ngrams[][0]", {E, n}, false);
      uint64_t ws[kMaxN];
      uint64_t wh[kMaxN];
      for (int64_t e = 0; e < E; ++e) {
        for (int j = 0; j < n; ++j) {
          const int64_t w = words[e * n + j];
          if (w < 0 || w >= W) fail_value(op, "a word index in ngrams is outside [0, W)");
          ws[j] = static_cast<uint64_t>(global[w]);
          wh[j] = hashes[w];
        }
        uint64_t g = wh[0];
        for (int j = 1; j < n; ++j) g = extend_key(g, wh[j]);
        count_ngram(n, g | 1, ws, counts[e]);
        positions_[n - 1] += counts[e];
      }
    }
  }

  // PMI of every n-gram of n words with count >= min_count against its least surprising
  // segmentation: log p(x) - max over segmentations into >= 2 contiguous parts of sum log p(part),
  // p(part of k words) = count / positions(k). Returns scores [E] in entries(n, min_count)' order.
  py::array_t<double> pmi_scores(int n, int64_t min_count) const {
    check_n("NgramCounter.pmi_scores", n, 2);
    const CountTable& t = tables_[n - 1];
    std::vector<double> out;
    double log_positions[kMaxN];
    for (int k = 0; k < max_n_; ++k) log_positions[k] = std::log(static_cast<double>(std::max<int64_t>(positions_[k], 1)));
    for (size_t s = 0; s < t.slots.size(); ++s) {
      if (!t.slots[s].key || t.slots[s].count < min_count) continue;
      uint64_t wh[kMaxN];
      for (int j = 0; j < n; ++j) wh[j] = word_hashes_[arena_[t.slots[s].ref + j]];
      // logp[i][j]: log p of words i..j-1 (j - i < n); every part of a counted n-gram is counted
      double logp[kMaxN][kMaxN + 1];
      for (int i = 0; i < n; ++i) {
        uint64_t g = wh[i];
        for (int j = i + 1; j <= n; ++j) {
          if (j > i + 1) g = extend_key(g, wh[j - 1]);
          if (j - i == n) break;
          const CountTable& part = tables_[j - i - 1];
          const int64_t slot = part.find(g | 1);
          const double c = slot >= 0 ? static_cast<double>(part.slots[slot].count) : 0.0;
          logp[i][j] = std::log(std::max(c, 1.0)) - log_positions[j - i - 1];
        }
      }
      // best[j]: max over segmentations of words 0..j-1 of the sum of the parts' log p
      double best[kMaxN + 1];
      best[0] = 0.0;
      for (int j = 1; j < n; ++j) {
        best[j] = -std::numeric_limits<double>::infinity();
        for (int i = 0; i < j; ++i) best[j] = std::max(best[j], best[i] + logp[i][j]);
      }
      double split = -std::numeric_limits<double>::infinity();
      for (int i = 1; i < n; ++i) split = std::max(split, best[i] + logp[i][n]);
      const double whole = std::log(static_cast<double>(t.slots[s].count)) - log_positions[n - 1];
      out.push_back(whole - split);
    }
    return to_numpy(out);
  }

  // positions(k) for k = 1..max_n: how many k-word windows were counted.
  std::vector<int64_t> positions() const { return positions_; }
  int64_t distinct(int n) const {
    check_n("NgramCounter.distinct", n, 1);
    return tables_[n - 1].size;
  }

 private:
  template <typename T>
  static py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
  }
  void check_n(const char* op, int n, int lo) const {
    if (n < lo || n > max_n_)
      fail_value(op, "n = " + std::to_string(n) + " is outside [" + std::to_string(lo) + ", " + std::to_string(max_n_) + "]");
  }

  // The index in the dictionary of the word with this hash (added when new), count += by.
  int64_t count_word(uint64_t hash, const int64_t* tokens, int64_t length, int64_t by) {
    bool fresh = false;
    CountTable& t = tables_[0];
    const uint64_t s = t.find_or_insert(hash | 1, &fresh);
    if (fresh) {
      t.slots[s].ref = word_offsets_.size() - 1;
      word_tokens_.insert(word_tokens_.end(), tokens, tokens + length);
      word_offsets_.push_back(word_tokens_.size());
      word_hashes_.push_back(hash);
    }
    t.slots[s].count += by;
    return static_cast<int64_t>(t.slots[s].ref);
  }
  void count_ngram(int n, uint64_t key, const uint64_t* word_indices, int64_t by) {
    bool fresh = false;
    CountTable& t = tables_[n - 1];
    const uint64_t s = t.find_or_insert(key, &fresh);
    if (fresh) {
      t.slots[s].ref = arena_.size();
      for (int j = 0; j < n; ++j) arena_.push_back(static_cast<uint32_t>(word_indices[j]));
    }
    t.slots[s].count += by;
  }

  template <typename Id>
  void add_row(const Id* ids, int64_t length, const uint8_t* flags, int64_t n_flags) {
    int64_t i = 0;
    std::vector<int64_t>& tokens = scratch_tokens_;
    while (i < length) {
      // one segment: a maximal run of non-special tokens
      seg_hash_.clear();
      seg_word_.clear();
      while (i < length) {
        const int64_t id = static_cast<int64_t>(ids[i]);
        const uint8_t f = (id >= 0 && id < n_flags) ? flags[id] : kDefaultFlags;
        if (f & kFlagSpecial) {
          ++i;
          break;
        }
        // a word: this token and the following non-special non-start tokens
        tokens.clear();
        uint64_t h = kWordSeed;
        do {
          const int64_t t = static_cast<int64_t>(ids[i]);
          tokens.push_back(t);
          h = mix64(h ^ static_cast<uint64_t>(t));
          ++i;
          if (i >= length) break;
          const int64_t next = static_cast<int64_t>(ids[i]);
          const uint8_t nf = (next >= 0 && next < n_flags) ? flags[next] : kDefaultFlags;
          if (nf & (kFlagSpecial | kFlagWordStart)) break;
        } while (true);
        seg_hash_.push_back(h);
        seg_word_.push_back(count_word(h, tokens.data(), static_cast<int64_t>(tokens.size()), 1));
      }
      const int64_t words = static_cast<int64_t>(seg_hash_.size());
      positions_[0] += words;
      // n = 2..max_n: the keys of all windows first, then the inserts, prefetching ahead
      seg_key_.assign(seg_hash_.begin(), seg_hash_.end());
      uint64_t ws[kMaxN];
      for (int n = 2; n <= max_n_ && n <= words; ++n) {
        const int64_t windows = words - n + 1;
        CountTable& t = tables_[n - 1];
        while (static_cast<uint64_t>(t.size + windows) * 2 > t.slots.size()) t.grow();
        for (int64_t w = 0; w < windows; ++w) seg_key_[w] = extend_key(seg_key_[w], seg_hash_[w + n - 1]);
        constexpr int64_t kAhead = 8;
        for (int64_t w = 0; w < std::min(kAhead, windows); ++w) t.prefetch(seg_key_[w] | 1);
        for (int64_t w = 0; w < windows; ++w) {
          if (w + kAhead < windows) t.prefetch(seg_key_[w + kAhead] | 1);
          for (int j = 0; j < n; ++j) ws[j] = static_cast<uint64_t>(seg_word_[w + j]);
          count_ngram(n, seg_key_[w] | 1, ws, 1);
        }
        positions_[n - 1] += windows;
      }
    }
  }

  void export_words(int64_t min_count, std::vector<int64_t>* counts, std::vector<int64_t>* offsets,
                    std::vector<int64_t>* tokens, std::vector<int64_t>* keys, std::vector<int64_t>* remap) const {
    const CountTable& t = tables_[0];
    remap->assign(word_hashes_.size(), -1);
    std::vector<int64_t> kept;  // word indices with count >= min_count, in dictionary order
    std::vector<int64_t> count_of(word_hashes_.size(), 0);
    for (const CountTable::Entry& e : t.slots)
      if (e.key) count_of[e.ref] = e.count;
    for (size_t w = 0; w < word_hashes_.size(); ++w) {
      if (count_of[w] < min_count) continue;
      (*remap)[w] = static_cast<int64_t>(counts->size());
      counts->push_back(count_of[w]);
      tokens->insert(tokens->end(), word_tokens_.begin() + word_offsets_[w], word_tokens_.begin() + word_offsets_[w + 1]);
      offsets->push_back(static_cast<int64_t>(tokens->size()));
      keys->push_back(static_cast<int64_t>(word_hashes_[w]));
    }
  }

  int max_n_;
  std::vector<CountTable> tables_;
  std::vector<int64_t> positions_;
  std::vector<uint32_t> arena_;           // word indices of n-grams (n >= 2)
  std::vector<int64_t> word_tokens_;      // the dictionary's token ids
  std::vector<int64_t> word_offsets_{0};  // word w: word_tokens_[word_offsets_[w] .. [w + 1])
  std::vector<uint64_t> word_hashes_;     // word w's hash (its key is hash | 1)
  std::vector<int64_t> scratch_tokens_;
  std::vector<uint64_t> seg_hash_, seg_key_;
  std::vector<int64_t> seg_word_;
};

// ---------------------------------------------------------------- segmentation
struct UnitParams {
  const uint8_t* special = nullptr;
  const uint8_t* attention = nullptr;
  const uint8_t* word_starts = nullptr;
  const uint8_t* flags = nullptr;
  const int64_t* table = nullptr;
  int64_t n_flags = 0, table_mask = 0, pad = -1;
  int64_t batch = 0, length = 0;
  int max_n = 2;
};

// 0: key absent; 1: a prefix of vocabulary n-grams only; 2: a vocabulary n-gram. A slot holds the
// key of an n-gram (odd) or the key - 1 of a prefix (even), 0 when empty.
inline int lookup(const UnitParams& p, uint64_t key) {
  const uint64_t mask = static_cast<uint64_t>(p.table_mask);
  uint64_t s = slot_of(key, mask);
  while (true) {
    const uint64_t v = static_cast<uint64_t>(p.table[s]);
    if (v == 0) return 0;
    if ((v | 1) == key) return 1 + static_cast<int>(v & 1);
    s = (s + 1) & mask;
  }
}

// Matching keys (fastmask/reference/ngrams.py): a word's code is its token id (one token) or its
// hash | 2**63; an n-gram's key chains extend_ngram_key over the codes.
constexpr uint64_t kMultiTokenCode = uint64_t{1} << 63;
inline uint64_t extend_ngram_key(uint64_t g, uint64_t code) { return mix64(((g << 32) | (g >> 32)) ^ code); }

template <typename Id>
void units_rows(const UnitParams& p, const Id* ids_all, uint8_t* out_all, int64_t b0, int64_t b1) {
  const int64_t L = p.length;
  // per word; one spare slot: stores for a token that starts no word land there or are overwritten
  std::vector<uint64_t> code(L + 1), pair(L + 1);
  std::vector<int32_t> pos(L + 1), seg(L + 1);
  // the tokens that continue a word (after its first), and their word
  std::vector<int32_t> continuing(L + 1), continued_word(L + 1);
  const uint64_t table_mask = static_cast<uint64_t>(p.table_mask);
  for (int64_t b = b0; b < b1; ++b) {
    const Id* ids = ids_all + b * L;
    uint8_t* out = out_all + b * L;
    std::fill(out, out + L, uint8_t{0});
    // pass 1, branch-free: words (first position, segment, code as if one token) and the
    // continuing tokens; the plan's fields in locals, so the stores cannot make the compiler
    // reload them
    const uint8_t* special = p.special ? p.special + b * L : nullptr;
    const uint8_t* attention = p.attention ? p.attention + b * L : nullptr;
    const uint8_t* word_starts = p.word_starts ? p.word_starts + b * L : nullptr;
    const uint8_t* flags = p.flags;
    const int64_t n_flags = p.n_flags, pad = p.pad;
    uint64_t* code_out = code.data();
    int32_t* pos_out = pos.data();
    int32_t* seg_out = seg.data();
    int32_t* cont_out = continuing.data();
    int32_t* cont_word_out = continued_word.data();
    int64_t words = 0, segment = 0, continuations = 0;
    int64_t previous = 0;  // the previous position was eligible
    for (int64_t i = 0; i < L; ++i) {
      const int64_t id = static_cast<int64_t>(ids[i]);
      const uint8_t f = flags ? ((id >= 0 && id < n_flags) ? flags[id] : kDefaultFlags) : kDefaultFlags;
      int64_t eligible = special ? special[i] == 0 : (f & kFlagSpecial) == 0;
      if (attention) eligible &= attention[i] != 0;
      if (pad >= 0) eligible &= id != pad;
      const int64_t starts = word_starts ? word_starts[i] != 0 : (f & kFlagWordStart) != 0;
      const int64_t new_segment = eligible & (previous ^ 1);
      const int64_t new_word = eligible & (starts | new_segment);
      segment += new_segment;
      pos_out[words] = static_cast<int32_t>(i);
      seg_out[words] = static_cast<int32_t>(segment);
      code_out[words] = static_cast<uint64_t>(id);
      words += new_word;
      cont_out[continuations] = static_cast<int32_t>(i);
      cont_word_out[continuations] = static_cast<int32_t>(words - 1);
      continuations += eligible & (new_word ^ 1);
      previous = eligible;
    }
    // the codes of words of several tokens (a minority): their hashes
    int64_t hashed = -1;
    uint64_t h = 0;
    for (int64_t j = 0; j < continuations; ++j) {
      const int64_t v = continued_word[j];
      if (v != hashed) {
        h = mix64(kWordSeed ^ static_cast<uint64_t>(static_cast<int64_t>(ids[pos[v]])));
        hashed = v;
      }
      h = mix64(h ^ static_cast<uint64_t>(static_cast<int64_t>(ids[continuing[j]])));
      code[v] = h | kMultiTokenCode;
    }
    // the two-word keys, prefetching their slots: the walk below then finds them in cache
    for (int64_t v = 0; v + 1 < words; ++v) {
      pair[v] = extend_ngram_key(code[v], code[v + 1]);
      if (seg[v + 1] == seg[v]) __builtin_prefetch(&p.table[slot_of(pair[v] | 1, table_mask)], 0, 1);
    }
    // pass 2: greedy longest match, left to right
    int64_t w = 0;
    while (w < words) {
      int best = 1;
      if (w + 1 < words && seg[w + 1] == seg[w]) {
        uint64_t g = pair[w];
        int found = lookup(p, g | 1);  // 0: no vocabulary n-gram starts with these words
        if (found == 2) best = 2;
        for (int k = 2; found && k < p.max_n && w + k < words && seg[w + k] == seg[w]; ++k) {
          g = extend_ngram_key(g, code[w + k]);
          found = lookup(p, g | 1);
          if (found == 2) best = k + 1;
        }
      }
      out[pos[w]] = 1;
      w += best;
    }
  }
}

void ngram_units_binding(const py::dict& plan, const py::object& out_obj) {
  const char* op = "ngram_units";
  py::array input_ids = as_array(op, plan_field(op, plan, "input_ids"), "input_ids");
  const bool is64 = has_dtype<int64_t>(input_ids);
  if (!is64 && !has_dtype<int32_t>(input_ids)) fail_value(op, "input_ids must be int32 or int64, got " + dtype_string(input_ids));
  check_layout(op, input_ids, "input_ids", {-1, -1}, false);
  UnitParams p;
  p.batch = input_ids.shape(0);
  p.length = input_ids.shape(1);
  const int64_t B = p.batch, L = p.length;
  p.special = byte_buffer(op, plan_field(op, plan, "special_mask"), "special_mask", {B, L});
  p.attention = byte_buffer(op, plan_field(op, plan, "attention_mask"), "attention_mask", {B, L});
  p.word_starts = byte_buffer(op, plan_field(op, plan, "word_starts"), "word_starts", {B, L});
  p.flags = typed_buffer<uint8_t>(op, plan_field(op, plan, "vocab_flags"), "vocab_flags", {-1}, &p.n_flags);
  p.pad = plan_int(op, plan, "pad_token_id");
  if (!p.word_starts && !p.flags) fail_value(op, "the plan has neither word_starts nor vocab_flags");
  int64_t C = 0;
  p.table = typed_array<int64_t>(op, plan_field(op, plan, "table"), "table", {-1}, false, &C);
  if (C < 2 || (C & (C - 1))) fail_value(op, "table must have a power-of-two size >= 2, got " + std::to_string(C));
  p.table_mask = C - 1;
  p.max_n = static_cast<int>(check_range(op, plan_int(op, plan, "max_n"), "max_n", 2, kMaxN));
  py::array out = as_array(op, out_obj, "out");
  if (!has_dtype<uint8_t>(out)) fail_value(op, "out must be uint8, got " + dtype_string(out));
  check_layout(op, out, "out", {B, L}, true);
  uint8_t* out_data = static_cast<uint8_t*>(out.mutable_data());
  const void* ids = input_ids.data();
  py::gil_scoped_release release;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(L, 1));  // as masking.cpp
  parallel_for(B, grain, [&](int64_t b0, int64_t b1) {
    if (is64)
      units_rows<int64_t>(p, static_cast<const int64_t*>(ids), out_data, b0, b1);
    else
      units_rows<int32_t>(p, static_cast<const int32_t*>(ids), out_data, b0, b1);
  });
}

}  // namespace

void register_ngrams(py::module_& m) {
  py::class_<NgramCounter>(m, "NgramCounter",
                           "Counts every n-gram of 1..max_n words (hashed word sequences; see csrc/ngrams.cpp).")
      .def(py::init<int>(), py::arg("max_n"))
      .def_property_readonly("max_n", &NgramCounter::max_n)
      .def("add_rows", &NgramCounter::add_rows, py::arg("ids"), py::arg("row_offsets"), py::arg("flags"),
           "Count rows: ids int32/int64 [T] cut at row_offsets int64 [R + 1]; flags uint8 [V] (bit 0 special, "
           "bit 1 word start; ids past it start words).")
      .def("words", &NgramCounter::words, py::arg("min_count") = 1,
           "(counts [W], token offsets [W + 1], tokens, keys [W]) of the words counted >= min_count times.")
      .def("entries", &NgramCounter::entries, py::arg("n"), py::arg("min_count") = 1,
           "(word indices [E, n] into words(min_count), counts [E]) of the n-grams counted >= min_count times.")
      .def("absorb", &NgramCounter::absorb, py::arg("word_offsets"), py::arg("word_tokens"), py::arg("word_counts"),
           py::arg("ngrams"), "Add another counter's words(...) and [entries(2, ...), entries(3, ...), ...].")
      .def("pmi_scores", &NgramCounter::pmi_scores, py::arg("n"), py::arg("min_count") = 1,
           "PMI against the least surprising segmentation, in entries(n, min_count)' order.")
      .def("positions", &NgramCounter::positions, "k-word windows counted, k = 1..max_n.")
      .def("distinct", &NgramCounter::distinct, py::arg("n"), "Distinct n-grams of n words counted.");
  m.def("ngram_units", &ngram_units_binding, py::arg("plan"), py::arg("out"),
        R"doc(Unit starts of PMI masking into out (uint8 [B, L]); see fastmask/reference/ngrams.py.

plan: a dict of fastmask.ngram_units_plan.NgramUnitsPlan's fields (input_ids, special_mask,
attention_mask, word_starts, vocab_flags, pad_token_id; table: int64 [C], C a power of two, the
probe table of the vocabulary's n-gram keys and prefixes (fastmask.reference.ngrams.probe_table);
max_n in [2, 8]).)doc");
}

}  // namespace fastmask
