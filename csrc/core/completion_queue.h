// Where finished requests wait for their consumer (the asyncio event loop). Producers push a whole
// batch of completions under one lock; the consumer is woken through an eventfd only when the queue
// goes from empty to non-empty, so a busy server pays one wake-up per drain, not per request.
#pragma once

#include <mutex>
#include <vector>

#include "core/request.h"

namespace pyserve {

class CompletionQueue {
 public:
  CompletionQueue();
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  // Thread-safe. Takes the completions (and the owners inside them).
  void Push(std::vector<Completion>* batch);
  void Push(Completion completion);

  // Everything queued so far, oldest first; clears the wake-up. The caller owns the result.
  std::vector<Completion> Drain();

  // Readable while completions are waiting (edge-triggered by Push). -1 if no eventfd.
  int fd() const { return fd_; }

  // Blocks until something is queued or `timeout_ms` passes (tests and non-asyncio consumers).
  bool Wait(int timeout_ms) const;

 private:
  void SignalLocked();

  int fd_ = -1;
  mutable std::mutex mu_;
  std::vector<Completion> items_;  // guarded by mu_
  bool signaled_ = false;          // guarded by mu_: the eventfd holds an unread wake-up
};

}  // namespace pyserve
