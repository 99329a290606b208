#include "core/stats.h"

#include <algorithm>

namespace pyserve {

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  double old = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(old, old + value, std::memory_order_relaxed)) {
  }
}

HistogramSnapshot Histogram::Snapshot() const {
  HistogramSnapshot s;
  s.upper_bounds = bounds_;
  s.counts.resize(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) s.counts[i] = counts_[i].load(std::memory_order_relaxed);
  s.count = count_.load(std::memory_order_relaxed);
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> LatencyBucketsUs() {
  return {10,     25,     50,     100,     250,     500,     1000,    2500,     5000,    10000,
          25000,  50000,  100000, 250000,  500000,  1000000, 2500000, 5000000,  10000000, 30000000};
}

std::vector<double> BatchSizeBuckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
}

ModelStats::ModelStats()
    : queue_us(LatencyBucketsUs()),
      compute_us(LatencyBucketsUs()),
      request_us(LatencyBucketsUs()),
      batch_size(BatchSizeBuckets()) {}

StatsSnapshot ModelStats::Snapshot() const {
  StatsSnapshot s;
  s.requests_succeeded = requests_succeeded.load(std::memory_order_relaxed);
  s.requests_failed = requests_failed.load(std::memory_order_relaxed);
  s.requests_timed_out = requests_timed_out.load(std::memory_order_relaxed);
  s.requests_rejected = requests_rejected.load(std::memory_order_relaxed);
  s.requests_cancelled = requests_cancelled.load(std::memory_order_relaxed);
  s.samples_inferred = samples_inferred.load(std::memory_order_relaxed);
  s.batches_executed = batches_executed.load(std::memory_order_relaxed);
  s.queue_depth = queue_depth.load(std::memory_order_relaxed);
  s.in_flight = in_flight.load(std::memory_order_relaxed);
  s.queue_us = queue_us.Snapshot();
  s.compute_us = compute_us.Snapshot();
  s.request_us = request_us.Snapshot();
  s.batch_size = batch_size.Snapshot();
  return s;
}

}  // namespace pyserve
