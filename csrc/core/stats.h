// Per model version statistics: counters and fixed-bucket histograms, updated with relaxed atomics by
// the scheduler's threads and read as a snapshot.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace pyserve {

struct HistogramSnapshot {
  std::vector<double> upper_bounds;  // ascending; an implicit +Inf bucket follows
  std::vector<uint64_t> counts;      // per bucket (not cumulative), upper_bounds.size() + 1 entries
  double sum = 0;
  uint64_t count = 0;
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  HistogramSnapshot Snapshot() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

struct StatsSnapshot {
  uint64_t requests_succeeded = 0;
  uint64_t requests_failed = 0;     // the backend failed
  uint64_t requests_timed_out = 0;  // deadline passed while queued
  uint64_t requests_rejected = 0;   // queue full or shutting down, at submit
  uint64_t requests_cancelled = 0;
  uint64_t samples_inferred = 0;
  uint64_t batches_executed = 0;
  int64_t queue_depth = 0;          // requests queued now
  int64_t in_flight = 0;            // requests accepted and not yet answered
  HistogramSnapshot queue_us;       // enqueue -> dispatch
  HistogramSnapshot compute_us;     // one backend call
  HistogramSnapshot request_us;     // enqueue -> answer
  HistogramSnapshot batch_size;     // samples per batch
};

class ModelStats {
 public:
  ModelStats();

  std::atomic<uint64_t> requests_succeeded{0};
  std::atomic<uint64_t> requests_failed{0};
  std::atomic<uint64_t> requests_timed_out{0};
  std::atomic<uint64_t> requests_rejected{0};
  std::atomic<uint64_t> requests_cancelled{0};
  std::atomic<uint64_t> samples_inferred{0};
  std::atomic<uint64_t> batches_executed{0};
  std::atomic<int64_t> queue_depth{0};
  std::atomic<int64_t> in_flight{0};
  Histogram queue_us;
  Histogram compute_us;
  Histogram request_us;
  Histogram batch_size;

  StatsSnapshot Snapshot() const;
};

// Bucket bounds used for latencies (microseconds) and batch sizes.
std::vector<double> LatencyBucketsUs();
std::vector<double> BatchSizeBuckets();

}  // namespace pyserve
