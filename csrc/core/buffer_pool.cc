#include "core/buffer_pool.h"

#include <cstdlib>
#include <new>

#include "core/cuda_host.h"

namespace pyserve {

namespace {
constexpr size_t kAlignment = 64;
constexpr size_t kMinCapacity = 256;

int SizeClass(size_t nbytes, size_t* capacity) {
  size_t cap = kMinCapacity;
  int cls = 0;
  while (cap < nbytes) {
    cap <<= 1;
    ++cls;
  }
  *capacity = cap;
  return cls;
}
}  // namespace

std::shared_ptr<BufferPool> BufferPool::Create(size_t max_cached_bytes) {
  return std::shared_ptr<BufferPool>(new BufferPool(max_cached_bytes));
}

BufferPool::BufferPool(size_t max_cached_bytes)
    : max_cached_bytes_(max_cached_bytes), pinned_(CudaDeviceAvailable()) {}

BufferPool::~BufferPool() {
  for (auto& list : free_) {
    for (Buffer* b : list) Free(b);
  }
}

Buffer* BufferPool::Allocate(size_t capacity) {
  auto* b = new Buffer;
  b->capacity = capacity;
  if (pinned_) {
    b->data = static_cast<uint8_t*>(CudaHostAlloc(capacity));
    b->pinned = b->data != nullptr;
  }
  if (b->data == nullptr) {
    b->data = static_cast<uint8_t*>(std::aligned_alloc(kAlignment, capacity));
    if (b->data == nullptr) {
      delete b;
      throw std::bad_alloc();
    }
  }
  return b;
}

void BufferPool::Free(Buffer* b) {
  if (b->pinned) {
    CudaHostFree(b->data);
  } else {
    std::free(b->data);
  }
  delete b;
}

std::shared_ptr<Buffer> BufferPool::Acquire(size_t nbytes) {
  size_t capacity;
  const int cls = SizeClass(nbytes, &capacity);
  Buffer* b = nullptr;
  if (cls < kClasses) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& list = free_[cls];
    if (!list.empty()) {
      b = list.back();
      list.pop_back();
      cached_bytes_ -= b->capacity;
    }
  }
  if (b == nullptr) {
    b = Allocate(capacity);
    std::lock_guard<std::mutex> lock(mu_);
    allocated_bytes_ += capacity;
  }
  auto self = shared_from_this();
  return std::shared_ptr<Buffer>(b, [self](Buffer* p) { self->Release(p); });
}

void BufferPool::Release(Buffer* b) {
  size_t capacity;
  const int cls = SizeClass(b->capacity, &capacity);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cls < kClasses && cached_bytes_ + b->capacity <= max_cached_bytes_) {
      free_[cls].push_back(b);
      cached_bytes_ += b->capacity;
      return;
    }
    allocated_bytes_ -= b->capacity;
  }
  Free(b);
}

size_t BufferPool::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_bytes_;
}

size_t BufferPool::allocated_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocated_bytes_;
}

}  // namespace pyserve
