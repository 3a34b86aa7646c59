// Shared pieces of fastmask's C++ core: the counter-based generator (the same arithmetic as
// fastmask/_rng.py and the Triton kernels) and a small thread pool for loops over rows
// (csrc/threads.cpp).
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fastmask {

// ---------------------------------------------------------------- generator (see _rng.py)
constexpr uint32_t kHashMul1 = 0x7FEB352Du;
constexpr uint32_t kHashMul2 = 0x846CA68Bu;
constexpr int kNumStreams = 4;
constexpr int kStreamSelect = 0;
constexpr int kStreamReplace = 1;
constexpr int kStreamRandomId = 2;
constexpr int kStreamSpanLength = 3;
// text infilling (fastmask/_rng.py STREAM_INFILL_* / INFILL_INSERT_OFFSET)
constexpr int kStreamInfillStart = 0;
constexpr int kStreamInfillRandom = 1;
constexpr int kStreamInfillInsertKey = 0;
constexpr int kStreamInfillInsertRandom = 1;
constexpr int64_t kInfillInsertOffset = int64_t{1} << 28;
// Probabilities are kProbBits-bit thresholds: an event fires when prob_draw(draw) < threshold,
// prob_draw keeping a 32-bit draw's top kProbBits bits (PROB_BITS / PROB_ONE in _rng.py).
constexpr int kProbBits = 24;
constexpr int kDrawBits = 32;
constexpr int kProbShift = kDrawBits - kProbBits;
constexpr int64_t kProbOne = int64_t{1} << kProbBits;
// Positions are counted as kNumStreams * i + stream in 32 bits (MAX_SEQUENCE_LENGTH in _rng.py).
constexpr int64_t kMaxLength = int64_t{1} << 30;

inline uint32_t prob_draw(uint32_t draw) { return draw >> kProbShift; }

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= kHashMul1;
  x ^= x >> 15;
  x *= kHashMul2;
  x ^= x >> 16;
  return x;
}

struct RowState {
  uint32_t s1, s2;
  RowState(uint32_t seed_mix1, uint32_t seed_mix2, int64_t row_key) {
    const uint64_t key = static_cast<uint64_t>(row_key);
    const uint32_t lo = static_cast<uint32_t>(key), hi = static_cast<uint32_t>(key >> 32);
    s1 = lowbias32(lowbias32(lo ^ seed_mix1) ^ hi);
    s2 = lowbias32(lowbias32(hi ^ seed_mix2) ^ lo);
  }
  inline uint32_t draw(int64_t position, int stream) const {
    const uint32_t counter = static_cast<uint32_t>(position * kNumStreams + stream);
    return lowbias32(lowbias32(counter ^ s1) ^ s2);
  }
};

// ---------------------------------------------------------------- threads
// Threads a parallel_for uses (the caller and num_threads() - 1 pool workers). Python's op
// layer sets it before each kernel call (fastmask/_backend.py: FASTMASK_NUM_THREADS, else
// torch.get_num_threads() bounded by the CPU affinity); set_num_threads restarts the pool,
// so it is called only when the count changes. Without that (direct use of the module), or
// after set_num_threads(n <= 0): FASTMASK_NUM_THREADS, else the CPUs in the process's
// affinity mask (sched_getaffinity; hardware concurrency elsewhere).
int num_threads();
void set_num_threads(int n);

// The pool as it stands: threads requested, worker threads running (0 before the first
// parallel call that needs them), whether starting them failed (the kernels then run
// serially until the count changes) and how many pools this process has built.
struct PoolState {
  int threads;
  int workers;
  bool creation_failed;
  int64_t builds;
};
PoolState pool_state();

// Runs fn(begin, end) over [0, n) split into contiguous chunks of at least `grain` items,
// on a persistent pool. Runs inline when one chunk suffices. fn must not throw. Fork-safe: a
// forked child drops the parent's pool and starts its own on its first parallel call.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace fastmask
