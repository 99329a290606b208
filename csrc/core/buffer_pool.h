// A pool of reusable, 64-byte aligned host buffers for batch tensors. When the core is built with
// CUDA and a device is present at run time, buffers are page-locked (cudaHostAlloc) so that copies
// to the device can be asynchronous; otherwise they are ordinary aligned memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace pyserve {

struct Buffer {
  uint8_t* data = nullptr;
  size_t capacity = 0;
  bool pinned = false;
};

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // `max_cached_bytes`: memory kept for reuse once released; beyond it buffers are freed.
  static std::shared_ptr<BufferPool> Create(size_t max_cached_bytes = size_t{256} << 20);
  ~BufferPool();

  // A buffer of at least `nbytes` (rounded up to a power-of-two size class). Thread-safe. The
  // buffer goes back to the pool when the last shared_ptr to it is dropped, on any thread; the
  // pool stays alive while any of its buffers does.
  std::shared_ptr<Buffer> Acquire(size_t nbytes);

  bool pinned() const { return pinned_; }
  size_t cached_bytes() const;
  size_t allocated_bytes() const;

 private:
  explicit BufferPool(size_t max_cached_bytes);
  void Release(Buffer* buffer);
  Buffer* Allocate(size_t capacity);
  void Free(Buffer* buffer);

  static constexpr int kClasses = 48;
  const size_t max_cached_bytes_;
  const bool pinned_;
  mutable std::mutex mu_;
  std::vector<Buffer*> free_[kClasses];  // guarded by mu_
  size_t cached_bytes_ = 0;              // guarded by mu_
  size_t allocated_bytes_ = 0;           // guarded by mu_
};

}  // namespace pyserve
