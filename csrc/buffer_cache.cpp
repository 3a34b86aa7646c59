// The gradient-block cache behind ce_alloc (see buffer_cache.h).
#include "buffer_cache.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "checks.h"

namespace fastmask {
namespace {

// Gradient buffers: a small cache of freed blocks. A fresh N x V gradient costs more in
// first-touch page faults than in computing it (4 KiB pages: ~100 ms per 500 MB here, versus
// ~20 ms for the kernel), and a training loop asks for the same sizes every step, so the last
// kCacheSlots freed blocks of at least kCacheMin bytes are kept and handed out again for an
// equal (2 MiB-rounded) size. ce_cache_clear() frees them; FASTMASK_CACHE_BUFFERS=0 disables
// the cache. Blocks are 2 MiB aligned; huge pages are not requested (compaction stalls on a
// busy machine cost more than they save).
constexpr size_t kCacheAlign = size_t{1} << 21;
constexpr size_t kCacheMin = size_t{1} << 21;
constexpr size_t kCacheSlots = 2;

struct Block {
  void* ptr;
  size_t size;  // bytes allocated (rounded)
};

void* block_alloc(size_t align, size_t size) {  // size: a multiple of align
#if defined(_MSC_VER)
  return _aligned_malloc(size, align);
#else
  return std::aligned_alloc(align, size);
#endif
}

void block_free(void* ptr) {
#if defined(_MSC_VER)
  _aligned_free(ptr);
#else
  std::free(ptr);
#endif
}

class BufferCache {
 public:
  BufferCache() {
    const char* env = std::getenv("FASTMASK_CACHE_BUFFERS");
    enabled_ = !(env && std::string(env) == "0");
  }
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < blocks_.size(); ++i) {
      if (blocks_[i].size == size) {
        void* ptr = blocks_[i].ptr;
        blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(i));
        return ptr;
      }
    }
    return nullptr;
  }
  void give(Block block) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!enabled_ || block.size < kCacheMin) {
      lock.unlock();
      block_free(block.ptr);
      return;
    }
    blocks_.push_back(block);
    std::vector<void*> evicted;
    while (blocks_.size() > kCacheSlots) {  // keep the most recently freed
      evicted.push_back(blocks_.front().ptr);
      blocks_.erase(blocks_.begin());
    }
    lock.unlock();
    for (void* ptr : evicted) block_free(ptr);
  }
  size_t clear() {
    std::vector<Block> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(blocks_);
    }
    size_t freed = 0;
    for (const Block& b : blocks) {
      freed += b.size;
      block_free(b.ptr);
    }
    return freed;
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t total = 0;
    for (const Block& b : blocks_) total += b.size;
    return total;
  }
  void set_enabled(bool on) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      enabled_ = on;
    }
    if (!on) clear();
  }
  bool enabled() {
    std::lock_guard<std::mutex> lock(mutex_);
    return enabled_;
  }

 private:
  std::mutex mutex_;
  std::vector<Block> blocks_;
  bool enabled_ = true;
};

// Never destroyed: numpy arrays freed during interpreter shutdown may still return blocks.
BufferCache& buffer_cache() {
  static BufferCache* cache = new BufferCache();
  return *cache;
}

// An uninitialised uint8 buffer of nbytes, from the cache when a block of that size is free.
py::array_t<uint8_t> ce_alloc(int64_t nbytes) {
  if (nbytes < 0) fail_value("ce_alloc", "nbytes must be >= 0, got " + std::to_string(nbytes));
  const size_t want = std::max<size_t>(static_cast<size_t>(nbytes), 1);
  const size_t align = want >= kCacheMin ? kCacheAlign : 64;
  Block block{nullptr, (want + align - 1) / align * align};
  if (want >= kCacheMin) block.ptr = buffer_cache().take(block.size);
  if (!block.ptr) block.ptr = block_alloc(align, block.size);
  if (!block.ptr) throw std::bad_alloc();
  Block* owned = new Block(block);
  py::capsule owner(owned, [](void* p) {
    Block* b = static_cast<Block*>(p);
    buffer_cache().give(*b);
    delete b;
  });
  return py::array_t<uint8_t>({static_cast<py::ssize_t>(nbytes)}, {static_cast<py::ssize_t>(1)},
                              static_cast<uint8_t*>(block.ptr), owner);
}

}  // namespace

void register_buffer_cache(py::module_& m) {
  m.def("ce_alloc", &ce_alloc, py::arg("nbytes"),
        "An uninitialised uint8 buffer; blocks >= 2 MiB come from / return to a small cache of freed blocks.");
  m.def(
      "ce_cache_clear", [] { return buffer_cache().clear(); }, "Free the cached gradient blocks; returns bytes freed.");
  m.def(
      "ce_cache_bytes", [] { return buffer_cache().held(); }, "Bytes held by the gradient-block cache.");
  m.def(
      "ce_cache_enable", [](bool on) { buffer_cache().set_enabled(on); }, py::arg("on"),
      "Enable or disable (and clear) the gradient-block cache.");
  m.def(
      "ce_cache_enabled", [] { return buffer_cache().enabled(); }, "Whether the gradient-block cache is on.");
}

}  // namespace fastmask
