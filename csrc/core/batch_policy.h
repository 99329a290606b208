// The dynamic batcher's policy: a pure function of (queue, now, options) that answers "dispatch these
// requests", "wait until T", or both "expire these". Threads, locks and condition variables live in
// Scheduler; nothing here blocks or reads a clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace pyserve {

constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max();

struct BatchOptions {
  int64_t max_batch_size = 0;                  // 0: no batching, each request is a batch alone
  std::vector<int64_t> preferred_batch_sizes;  // ascending, each <= max_batch_size
  int64_t max_queue_delay_ns = 0;
};

// What the policy needs to know of one queued request.
struct PendingRequest {
  int64_t batch_size = 1;      // samples in the request
  uint64_t signature = 0;      // hash of the non-batch dimensions of all inputs
  int64_t enqueue_ns = 0;
  int64_t deadline_ns = kNoDeadline;
};

// A read-only view of the queue in dispatch order: higher priority first, FIFO within a priority.
// Implemented by the scheduler's queue and by tests.
class QueueView {
 public:
  virtual ~QueueView() = default;
  virtual size_t size() const = 0;
  virtual const PendingRequest& at(size_t i) const = 0;
};

struct Decision {
  std::vector<size_t> dispatch;  // positions (in view order) forming the batch, ascending; may be empty
  std::vector<size_t> expire;    // positions whose deadline has passed: answer them, never run them
  int64_t wake_ns = kNoDeadline; // when dispatch is empty: decide again at this time (or on change)
};

// Triton's rule. Walk the queue in order; expire requests past their deadline; the first live request
// (the head) fixes the signature, and only requests with the same signature join; never split a
// request; stop when the next compatible request does not fit. Dispatch at once when the batch
// reaches max_batch_size or when nothing more fits; else, with preferred sizes, dispatch up to the
// largest preferred size reached; else dispatch everything gathered once the oldest gathered request
// has waited max_queue_delay; otherwise wait until then or until the nearest deadline, whichever is
// first. Looks at no more than `scan_limit` queued requests per call.
//
// `flushed_ns`: the submitter's word that every request it had received by then is queued (the
// server has nothing else to add). Requests queued by then wait no longer for company: waiting out
// the delay could only add latency. kNeverFlushed keeps the pure delay rule.
constexpr int64_t kNeverFlushed = std::numeric_limits<int64_t>::min();
Decision Decide(const QueueView& queue, int64_t now_ns, const BatchOptions& options,
                int64_t flushed_ns = kNeverFlushed, size_t scan_limit = 4096);

}  // namespace pyserve
