// A persistent pool of worker threads for fastmask's row-parallel loops.
//
// Fork safety: a forked child has only the thread that called fork(), so the parent's pool
// (its workers, and any lock they held) is meaningless there. pthread_atfork handlers take
// pool_mutex around fork() (so no pool call is in flight), and the child drops the parent's
// pool without touching it (the object is leaked, never joined); the child's next parallel
// call builds a fresh pool. The pool is never destroyed at exit either: exit() must not join
// threads (a daemon Python thread may still be inside a kernel).
//
// Thread creation can fail (address-space or process limits): the kernels then run serially,
// and the pool is not rebuilt (retried) until the requested count changes.
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <exception>

#if defined(__unix__) || defined(__APPLE__)
#define FASTMASK_HAVE_PTHREAD_ATFORK 1
#include <pthread.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#include "common.h"

namespace fastmask {
namespace {

class ThreadPool {
 public:
  // Starts `workers` threads, or none: if one cannot be created (std::system_error from
  // pthread_create: a process or address-space limit; std::bad_alloc), the pool stops the
  // ones it started and has size 0, so every task runs on the caller. Keeping them would hold
  // the limit at its maximum for the rest of the process (libgomp, for one, aborts the
  // process when it then cannot start a thread).
  explicit ThreadPool(int workers) {
    try {
      threads_.reserve(static_cast<size_t>(workers));
      for (int i = 0; i < workers; ++i) {
        threads_.emplace_back([this] { worker_loop(); });
#if defined(__linux__)
        // Named here, not in the thread, so the name is there as soon as the pool is.
        pthread_setname_np(threads_.back().native_handle(), "fastmask-pool");  // top -H, gdb, /proc
#endif
      }
    } catch (const std::exception&) {
      stop();
      failed_ = true;
    }
  }
  ~ThreadPool() { stop(); }
  int size() const { return static_cast<int>(threads_.size()); }
  bool failed() const { return failed_; }

  // Runs task(i) for i in [0, count): the caller takes part, returns when all are done.
  void run(int count, const std::function<void(int)>& task) {
    std::unique_lock<std::mutex> lock(mutex_);
    task_ = &task;
    count_ = count;
    next_.store(0);
    pending_ = count;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    drain();
    lock.lock();
    done_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  void drain() {
    for (;;) {
      int i = next_.fetch_add(1);
      if (i >= count_) return;
      (*task_)(i);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_all();
    }
  }
  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      lock.unlock();
      drain();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* task_ = nullptr;
  std::atomic<int> next_{0};
  int count_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  bool failed_ = false;
};

// CPUs this process may run on: the affinity mask (taskset, cpusets), else the hardware count.
int affinity_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// FASTMASK_NUM_THREADS when it is a positive integer, else 0.
int env_threads() {
  const char* env = std::getenv("FASTMASK_NUM_THREADS");
  if (!env || !*env) return 0;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(env, &end, 10);
  if (errno != 0 || *end != '\0' || n <= 0 || n > 1000000) return 0;
  return static_cast<int>(n);
}

int default_threads() {
  const int env = env_threads();
  return env > 0 ? env : affinity_cpus();
}

// All of the following are guarded by pool_mutex (held by parallel_for for a whole call).
std::mutex pool_mutex;
int requested_threads = 0;   // 0: not decided yet (default_threads() on first use)
ThreadPool* pool = nullptr;  // never deleted at exit, abandoned in a forked child
int pool_request = 0;        // the worker count `pool` was built for (it may hold none)
int64_t pool_builds = 0;     // pools built (a forked child continues its parent's count)

int requested_locked() {
  if (requested_threads <= 0) requested_threads = default_threads();
  return requested_threads;
}

void drop_pool_locked() {
  delete pool;  // joins its workers (idle: no call is in flight while pool_mutex is held)
  pool = nullptr;
  pool_request = 0;
}

#ifdef FASTMASK_HAVE_PTHREAD_ATFORK
void before_fork() { pool_mutex.lock(); }
void after_fork_in_parent() { pool_mutex.unlock(); }
void after_fork_in_child() {
  pool = nullptr;  // the parent's workers do not exist here: leak the object, never join
  pool_request = 0;
  pool_mutex.unlock();  // locked by this same thread in before_fork
}
[[maybe_unused]] const bool fork_handlers_registered = [] {
  return pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child) == 0;
}();
#endif

}  // namespace

int num_threads() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  return requested_locked();
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  const int want = n > 0 ? n : default_threads();
  if (want == requested_threads) return;
  requested_threads = want;
  drop_pool_locked();
}

PoolState pool_state() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  PoolState state;
  state.threads = requested_locked();
  state.workers = pool ? pool->size() : 0;
  state.creation_failed = pool && pool->failed();
  state.builds = pool_builds;
  return state;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  if (max_chunks <= 1) {
    fn(0, n);
    return;
  }
  // One pool call at a time; concurrent callers (several Python threads) run inline instead.
  std::unique_lock<std::mutex> lock(pool_mutex, std::try_to_lock);
  if (!lock.owns_lock()) {
    fn(0, n);
    return;
  }
  const int workers = requested_locked() - 1;
  if (workers <= 0) {
    lock.unlock();
    fn(0, n);
    return;
  }
  if (!pool || pool_request != workers) {
    drop_pool_locked();
    pool = new ThreadPool(workers);
    pool_request = workers;
    ++pool_builds;
  }
  // A pool whose threads could not be started has size 0: one chunk, on this thread.
  const int chunks = static_cast<int>(std::min<int64_t>(pool->size() + 1, max_chunks));
  if (chunks <= 1) {
    lock.unlock();
    fn(0, n);
    return;
  }
  const int64_t per_chunk = (n + chunks - 1) / chunks;
  std::function<void(int)> task = [&](int c) {
    const int64_t begin = c * per_chunk;
    const int64_t end = std::min(n, begin + per_chunk);
    if (begin < end) fn(begin, end);
  };
  pool->run(chunks, task);
}

}  // namespace fastmask
