#include "cpu/output_pool.h"

#include <sys/mman.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

namespace pydiffuse::cpu {
namespace {

constexpr size_t kMinCachedBytes = size_t{1} << 20;
constexpr size_t kAlignment = size_t{2} << 20;

size_t cap_from_environment() {
  const char* mb = std::getenv("PYDIFFUSE_CPU_POOL_MB");
  return (mb ? std::stoull(mb) : 1024) << 20;
}

class OutputPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes || cap_ == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t size = (n + kAlignment - 1) / kAlignment * kAlignment;
    void* p = take(size);
    if (p == nullptr) {
      p = std::aligned_alloc(kAlignment, size);
      TORCH_CHECK(p != nullptr, "pydiffuse: out of memory allocating ", size, " bytes");
      madvise(p, size, MADV_HUGEPAGE);  // a hint: fewer first-touch faults where THP is on
    }
    return {p, new Block{p, size}, &release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t release_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto released = static_cast<int64_t>(cached_bytes_);
    for (auto& [size, p] : free_) std::free(p);
    free_.clear();
    cached_bytes_ = 0;
    return released;
  }

  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive exit
    return *pool;
  }

 private:
  struct Block {
    void* p;
    size_t size;
  };

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = free_.find(size);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_bytes_ -= size;
    return p;
  }

  void give_back(void* p, size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_bytes_ + size > cap_) return std::free(p);
    free_.emplace(size, p);
    cached_bytes_ += size;
  }

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    instance().give_back(block->p, block->size);
    delete block;
  }

  const size_t cap_ = cap_from_environment();
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format) {
  return at::detail::empty_generic(sizes, &OutputPool::instance(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU), dtype, format);
}

int64_t release_cached_outputs() { return OutputPool::instance().release_all(); }

}  // namespace pydiffuse::cpu
