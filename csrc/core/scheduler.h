// One scheduler per loaded model version: a bounded priority queue, the dynamic batcher's threads
// (one per instance) and the statistics. The batching policy itself is Decide() in batch_policy.h.
//
// Progress guarantee: after any dispatch (by an instance or inline in Flush), whatever remains queued
// is dispatched, or has an instance that will dispatch it: an instance that takes a batch wakes
// another idle one when requests remain, an inline run wakes one after its batch, and an instance
// that finds nothing to dispatch yet waits with a timer set to Decide's wake_ns (at most the oldest
// request's max_queue_delay, or its deadline). Requests queued before a Flush() are dispatched at once
// (work-conserving) by the first idle instance.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/batch_policy.h"
#include "core/buffer_pool.h"
#include "core/clock.h"
#include "core/completion_queue.h"
#include "core/request.h"
#include "core/stats.h"

namespace pyserve {

struct SchedulerOptions {
  std::string model_name;
  std::string model_version;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  BatchOptions batch;              // max_batch_size, preferred_batch_sizes, max_queue_delay_ns
  int64_t max_queue_size = 0;      // requests; 0 = unbounded
  int64_t default_timeout_ns = 0;  // 0 = none
  int priority_levels = 1;         // priority 1 is the highest
  int default_priority_level = 1;
  int instance_count = 1;
  // The submitter calls Flush() after each round of submits: Submit then leaves waking an instance
  // to Flush (unless the batch may be full), which can also run a cheap batch inline.
  bool submitter_flushes = false;
};

// Checks options for values the scheduler cannot work with; the message names the option.
Status ValidateOptions(const SchedulerOptions& options);

class Scheduler {
 public:
  // Starts `instance_count` instance threads. `clock` defaults to the steady clock.
  Scheduler(SchedulerOptions options, std::shared_ptr<Backend> backend,
            std::shared_ptr<CompletionQueue> completions, std::shared_ptr<BufferPool> pool,
            std::shared_ptr<const Clock> clock = nullptr);
  // Stops without draining if Stop was not called. Must not be called by an instance thread.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Validates `*request` and queues it. On success the scheduler owns the request (*request is
  // null) and pushes exactly one completion for it later: result, backend error, timeout or
  // cancellation. On failure the caller keeps the request and nothing is pushed: kInvalidArgument
  // (the message names the tensor and what was expected) or kUnavailable (queue full, stopping).
  // `id` receives the request's id (for Cancel) on success.
  Status Submit(std::unique_ptr<Request>* request, uint64_t* id = nullptr);

  // The submitter has queued every request it received so far: an idle instance dispatches what is
  // queued now instead of waiting out max_queue_delay for more (see Decide's `flushed_ns`).
  // run_inline: when every instance is idle and recent batches took at most kInlineMaxComputeNs,
  // run the batch on the calling thread instead (two thread hand-offs cost more than such a batch);
  // returns whether it did. A caller holding the GIL may do this: a Python backend re-enters it.
  // Postponed: for a model whose batches are costly, where a fuller batch is worth a loop iteration,
  // a flush that follows fresh submits is put off; the caller flushes again once it has handled
  // what else has arrived (until then a full batch still goes at once).
  enum class FlushResult { kFlushed = 0, kRanInline = 1, kPostponed = 2 };
  FlushResult Flush(bool run_inline = false);
  static constexpr int64_t kInlineMaxComputeNs = 200'000;

  // Cancels a queued request: it is answered kCancelled and never executed. False if it is not
  // queued (unknown, already running or answered).
  bool Cancel(uint64_t id);

  // Stops accepting. drain: queued requests still run (without waiting for max_queue_delay);
  // otherwise they are answered kUnavailable. Returns once every instance thread has exited.
  // Idempotent. Blocks: a caller holding the GIL must release it first.
  void Stop(bool drain);

  StatsSnapshot Stats() const { return stats_.Snapshot(); }
  const SchedulerOptions& options() const { return options_; }

 private:
  class View;
  using Batch = std::vector<std::unique_ptr<Request>>;

  Status Validate(Request* r) const;  // fills r->pending; needs no lock
  void InstanceLoop();
  // Whether `queued_samples_` could make a waiting instance dispatch before its timer fires.
  bool BatchMayBeReadyLocked() const;
  void Execute(Batch* batch, int64_t dispatch_ns);
  // Moves the requests `d` chose out of the queue. Needs mu_.
  void TakeLocked(const View& view, const Decision& d, Batch* batch, Batch* expired);
  // Answers the expired requests and executes the batch. Without mu_.
  void RunTaken(Batch* batch, Batch* expired, int64_t dispatch_ns);
  // Answers `requests` with `code`; `queued`: they are still counted in the queue depth (not taken
  // into a batch yet).
  // dispatch_ns / compute_ns: when the failed batch started and how long its backend call took
  // (-1: it never ran), for the completions' timings.
  void Fail(Batch* requests, StatusCode code, const std::string& message, bool queued = true,
            int64_t dispatch_ns = -1, int64_t compute_ns = -1);
  Completion MakeCompletion(std::unique_ptr<Request> r, Status status);

  const SchedulerOptions options_;
  const std::shared_ptr<Backend> backend_;
  const std::shared_ptr<CompletionQueue> completions_;
  const std::shared_ptr<BufferPool> pool_;
  const std::shared_ptr<const Clock> clock_;
  ModelStats stats_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::deque<std::unique_ptr<Request>>> queues_;  // guarded by mu_: one per priority level
  int64_t queued_ = 0;       // guarded by mu_
  int64_t queued_samples_ = 0;  // guarded by mu_
  int idle_instances_ = 0;   // guarded by mu_: instances waiting on cv_
  int timed_waiters_ = 0;    // guarded by mu_: of those, the ones waiting for max_queue_delay to pass
  int64_t timed_wake_ns_ = kNoDeadline;  // guarded by mu_: the earliest time a timed waiter wakes
  int64_t flushed_ns_ = kNeverFlushed;   // guarded by mu_: time of the last Flush()
  int64_t submits_since_flush_ = 0;      // guarded by mu_
  // Recent backend call time (moving average). Starts above the inline limit: a model is run
  // inline only once its batches have been seen to be cheap.
  std::atomic<int64_t> compute_ewma_ns_{2 * kInlineMaxComputeNs};
  bool stopping_ = false;    // guarded by mu_
  bool draining_ = false;    // guarded by mu_
  bool joined_ = false;      // guarded by stop_mu_
  uint64_t next_id_ = 1;     // guarded by mu_
  std::mutex stop_mu_;
  std::vector<std::thread> instances_;
};

}  // namespace pyserve
