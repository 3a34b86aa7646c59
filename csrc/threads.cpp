// A persistent pool of worker threads for fastmask's row-parallel loops.
#include <atomic>
#include <cstdlib>
#include <memory>

#include "common.h"

namespace fastmask {
namespace {

class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int size() const { return static_cast<int>(threads_.size()); }

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
};

int default_threads() {
  if (const char* env = std::getenv("FASTMASK_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

std::mutex pool_mutex;
int requested_threads = 0;
std::unique_ptr<ThreadPool> pool;

}  // namespace

int num_threads() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (requested_threads <= 0) requested_threads = default_threads();
  return requested_threads;
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  requested_threads = n > 0 ? n : default_threads();
  pool.reset();
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int threads = num_threads();
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int chunks = static_cast<int>(std::min<int64_t>(threads, max_chunks));
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  // One pool call at a time; concurrent callers (several Python threads) run inline instead.
  std::unique_lock<std::mutex> lock(pool_mutex, std::try_to_lock);
  if (!lock.owns_lock()) {
    fn(0, n);
    return;
  }
  if (!pool || pool->size() != threads - 1) pool = std::make_unique<ThreadPool>(threads - 1);
  const int64_t per_chunk = (n + chunks - 1) / chunks;
  std::function<void(int)> task = [&](int c) {
    const int64_t begin = c * per_chunk;
    const int64_t end = std::min(n, begin + per_chunk);
    if (begin < end) fn(begin, end);
  };
  pool->run(chunks, task);
}

}  // namespace fastmask
