#include "core/batch_policy.h"

#include <algorithm>

namespace pyserve {

Decision Decide(const QueueView& queue, int64_t now_ns, const BatchOptions& options,
                int64_t flushed_ns, size_t scan_limit) {
  Decision d;
  const size_t n = std::min(queue.size(), scan_limit);
  bool have_head = false;
  uint64_t signature = 0;
  int64_t total = 0;
  int64_t oldest_ns = kNoDeadline;
  int64_t nearest_deadline_ns = kNoDeadline;
  size_t preferred_cut = 0;  // dispatch.size() when the total last equalled a preferred size
  bool full = false;

  for (size_t i = 0; i < n; ++i) {
    const PendingRequest& r = queue.at(i);
    if (r.deadline_ns <= now_ns) {
      d.expire.push_back(i);
      continue;
    }
    // Any live request's deadline bounds the wait, whatever its shape: it must be answered on time.
    nearest_deadline_ns = std::min(nearest_deadline_ns, r.deadline_ns);
    if (!have_head) {
      have_head = true;
      signature = r.signature;
      if (options.max_batch_size <= 0) {  // no batching: the head goes alone, now
        d.dispatch.push_back(i);
        return d;
      }
    } else if (r.signature != signature) {
      continue;  // a different shape: it waits for a batch of its own kind
    }
    if (total + r.batch_size > options.max_batch_size) {
      full = true;  // nothing more fits without splitting a request
      break;
    }
    d.dispatch.push_back(i);
    total += r.batch_size;
    oldest_ns = std::min(oldest_ns, r.enqueue_ns);
    if (std::binary_search(options.preferred_batch_sizes.begin(),
                           options.preferred_batch_sizes.end(), total)) {
      preferred_cut = d.dispatch.size();
    }
    if (total == options.max_batch_size) {
      full = true;
      break;
    }
  }

  if (d.dispatch.empty()) return d;  // nothing live: wait for a change
  if (full) return d;
  const int64_t delay_end_ns = oldest_ns > kNoDeadline - options.max_queue_delay_ns
                                   ? kNoDeadline
                                   : oldest_ns + options.max_queue_delay_ns;
  if (now_ns >= delay_end_ns || oldest_ns <= flushed_ns) return d;
  if (preferred_cut > 0) {
    d.dispatch.resize(preferred_cut);
    return d;
  }
  d.dispatch.clear();
  d.wake_ns = std::min(delay_end_ns, nearest_deadline_ns);
  return d;
}

}  // namespace pyserve
