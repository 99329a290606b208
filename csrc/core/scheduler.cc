#include "core/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>

namespace pyserve {

namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

Status Invalid(const std::string& message) { return {StatusCode::kInvalidArgument, message}; }

// Whether an output shape a backend returned keeps the model's declaration (-1 matches any size). With
// batching the declared shape leaves out the batch dimension, which must be the batch's sample count.
bool KeepsDeclaredShape(const std::vector<int64_t>& got, const std::vector<int64_t>& declared, bool batching,
                        int64_t samples) {
  const size_t skip = batching ? 1 : 0;
  if (got.size() != declared.size() + skip || (batching && got[0] != samples)) return false;
  for (size_t d = 0; d < declared.size(); ++d) {
    if (declared[d] >= 0 && got[d + skip] != declared[d]) return false;
  }
  return true;
}

uint64_t Mix(uint64_t h, uint64_t v) {  // FNV-1a over 8-byte words
  h ^= v;
  return h * 1099511628211ull;
}

}  // namespace

Status ValidateOptions(const SchedulerOptions& o) {
  const auto& b = o.batch;
  if (b.max_batch_size < 0) return Invalid("max_batch_size must be >= 0");
  for (size_t i = 0; i < b.preferred_batch_sizes.size(); ++i) {
    const int64_t p = b.preferred_batch_sizes[i];
    if (p < 1 || p > b.max_batch_size) return Invalid("preferred_batch_sizes must be within 1..max_batch_size");
    if (i > 0 && p <= b.preferred_batch_sizes[i - 1]) return Invalid("preferred_batch_sizes must be strictly increasing");
  }
  if (b.max_queue_delay_ns < 0) return Invalid("max_queue_delay_us must be >= 0");
  if (o.max_queue_size < 0) return Invalid("max_queue_size must be >= 0");
  if (o.default_timeout_ns < 0) return Invalid("default_timeout_us must be >= 0");
  if (o.priority_levels < 1) return Invalid("priority_levels must be >= 1");
  if (o.default_priority_level < 1 || o.default_priority_level > o.priority_levels)
    return Invalid("default_priority_level must be within 1..priority_levels");
  if (o.instance_count < 1) return Invalid("instance_count must be >= 1");
  if (o.inputs.empty()) return Invalid("a model needs at least one input");
  for (const auto& in : o.inputs) {
    if (in.optional && b.max_batch_size > 0) {
      return Invalid("input '" + in.name + "' is optional: a model with optional inputs needs max_batch_size 0");
    }
  }
  return Status::Ok();
}

// The queue in dispatch order (priority 1 first, FIFO within a level), as Decide() reads it.
class Scheduler::View final : public QueueView {
 public:
  explicit View(const std::vector<std::deque<std::unique_ptr<Request>>>& queues) : queues_(queues) {
    size_t total = 0;
    for (const auto& q : queues_) {
      starts_.push_back(total);
      total += q.size();
    }
    size_ = total;
  }
  size_t size() const override { return size_; }
  const PendingRequest& at(size_t i) const override {
    const auto [level, index] = Locate(i);
    return queues_[level][index]->pending;
  }
  std::pair<size_t, size_t> Locate(size_t i) const {
    size_t level = std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin() - 1;
    while (queues_[level].size() <= i - starts_[level]) ++level;  // skip empty levels
    return {level, i - starts_[level]};
  }

 private:
  const std::vector<std::deque<std::unique_ptr<Request>>>& queues_;
  std::vector<size_t> starts_;
  size_t size_ = 0;
};

Scheduler::Scheduler(SchedulerOptions options, std::shared_ptr<Backend> backend,
                     std::shared_ptr<CompletionQueue> completions, std::shared_ptr<BufferPool> pool,
                     std::shared_ptr<const Clock> clock)
    : options_(std::move(options)),
      backend_(std::move(backend)),
      completions_(std::move(completions)),
      pool_(std::move(pool)),
      clock_(clock ? std::move(clock) : std::make_shared<SteadyClock>()),
      queues_(static_cast<size_t>(std::max(1, options_.priority_levels))) {
  for (int i = 0; i < options_.instance_count; ++i) instances_.emplace_back([this] { InstanceLoop(); });
}

Scheduler::~Scheduler() { Stop(false); }

Status Scheduler::Validate(Request* r) const {
  const auto& specs = options_.inputs;
  const bool batching = options_.batch.max_batch_size > 0;
  if (r->inputs.size() != specs.size()) {
    return Invalid("expected " + std::to_string(specs.size()) + " inputs, got " + std::to_string(r->inputs.size()));
  }
  int64_t batch_size = 1;
  uint64_t signature = 14695981039346656037ull;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    if (!r->inputs[i].present) {
      if (!spec.optional) return Invalid("missing input '" + spec.name + "'");
      continue;  // never batching (ValidateOptions): nothing to check against the other inputs
    }
    const TensorView& v = r->inputs[i].view;
    // The messages' strings are built only for a refusal: this runs for every input of every request.
    const auto who = [&spec] { return "input '" + spec.name + "'"; };
    if (v.dtype != spec.dtype) {
      return Invalid(who() + ": expected datatype " + DataTypeName(spec.dtype) + ", got " + DataTypeName(v.dtype));
    }
    const size_t skip = batching ? 1 : 0;  // the batch dimension leads, of any size
    const size_t rank = spec.shape.size() + skip;
    bool shape_ok = v.shape.size() == rank;
    for (size_t d = 0; shape_ok && d < rank; ++d) {
      const int64_t want = d < skip ? -1 : spec.shape[d - skip];
      shape_ok = v.shape[d] >= 0 && (want < 0 || v.shape[d] == want);
    }
    if (!shape_ok) {
      std::vector<int64_t> expected = spec.shape;
      if (batching) expected.insert(expected.begin(), -1);
      return Invalid(who() + ": expected shape " + ShapeString(expected) + ", got " + ShapeString(v.shape));
    }
    if (batching) {
      if (i == 0) {
        batch_size = v.shape[0];
      } else if (v.shape[0] != batch_size) {
        return Invalid(who() + ": batch dimension " + std::to_string(v.shape[0]) + " differs from input '" +
                       specs[0].name + "' (" + std::to_string(batch_size) + ")");
      }
      for (size_t d = 1; d < rank; ++d) signature = Mix(signature, static_cast<uint64_t>(v.shape[d]));
    }
    signature = Mix(signature, 0xFFFFFFFFFFFFFFFFull);  // separates the inputs' dimension lists
    // The element count, refusing shapes whose size overflows or cannot fit in the data given.
    int64_t count = 1;
    bool overflow = false;
    for (int64_t dim : v.shape) overflow = overflow || __builtin_mul_overflow(count, dim, &count);
    const size_t min_element_bytes = spec.dtype == DataType::kBytes ? 4 : ElementSize(spec.dtype);
    if (overflow || (count > 0 && static_cast<uint64_t>(count) > v.nbytes / min_element_bytes)) {
      return Invalid(who() + ": shape " + ShapeString(v.shape) + " holds more elements than the " +
                     std::to_string(v.nbytes) + " bytes given");
    }
    if (spec.dtype == DataType::kBytes) {
      std::vector<uint64_t> offsets;
      if (!BytesElementOffsets(v.data, v.nbytes, count, &offsets)) {
        return Invalid(who() + ": BYTES data does not hold the " + std::to_string(count) + " elements of shape " +
                       ShapeString(v.shape));
      }
    } else if (v.nbytes != static_cast<size_t>(count) * ElementSize(spec.dtype)) {
      return Invalid(who() + ": expected " + std::to_string(count * ElementSize(spec.dtype)) + " bytes for " +
                     DataTypeName(spec.dtype) + " shape " + ShapeString(v.shape) + ", got " +
                     std::to_string(v.nbytes));
    }
  }
  if (batching) {
    if (batch_size < 1) return Invalid("the batch dimension must be at least 1, got " + std::to_string(batch_size));
    if (batch_size > options_.batch.max_batch_size) {
      return Invalid("input '" + specs[0].name + "': batch of " + std::to_string(batch_size) +
                     " samples (its first dimension) exceeds max_batch_size " +
                     std::to_string(options_.batch.max_batch_size));
    }
  }
  if (r->priority_level == 0) r->priority_level = options_.default_priority_level;
  if (r->priority_level < 1 || r->priority_level > options_.priority_levels) {
    return Invalid("priority must be within 1.." + std::to_string(options_.priority_levels) + ", got " +
                   std::to_string(r->priority_level));
  }
  if (r->timeout_ns < 0) return Invalid("timeout must be >= 0");
  r->pending.batch_size = batch_size;
  r->pending.signature = signature;
  return Status::Ok();
}

bool Scheduler::BatchMayBeReadyLocked() const {
  const auto& b = options_.batch;
  return queued_samples_ >= b.max_batch_size ||
         (!b.preferred_batch_sizes.empty() && queued_samples_ >= b.preferred_batch_sizes.front());
}

Status Scheduler::Submit(std::unique_ptr<Request>* request, uint64_t* id) {
  Request* r = request->get();
  Status s = Validate(r);
  if (!s.ok()) return s;
  const int64_t now = clock_->NowNs();
  const int64_t timeout = r->timeout_ns > 0 ? r->timeout_ns : options_.default_timeout_ns;
  r->pending.enqueue_ns = now;
  // Saturating: a timeout longer than what is left of the clock's range (up to ~292 years) is no
  // deadline, not a sum that wraps around into the past and times the request out at once.
  r->pending.deadline_ns = timeout > 0 && now <= kNoDeadline - timeout ? now + timeout : kNoDeadline;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      stats_.requests_rejected.fetch_add(1, std::memory_order_relaxed);
      return {StatusCode::kUnavailable, "model '" + options_.model_name + "' version '" +
                                            options_.model_version + "' is shutting down"};
    }
    if (options_.max_queue_size > 0 && queued_ >= options_.max_queue_size) {
      stats_.requests_rejected.fetch_add(1, std::memory_order_relaxed);
      return {StatusCode::kUnavailable, "the queue of model '" + options_.model_name + "' is full (max_queue_size " +
                                            std::to_string(options_.max_queue_size) + ")"};
    }
    r->id = next_id_++;
    if (id != nullptr) *id = r->id;
    queues_[r->priority_level - 1].push_back(std::move(*request));
    ++queued_;
    ++submits_since_flush_;
    queued_samples_ += r->pending.batch_size;
    // Wake an instance only when it changes something: one waiting for work, or one waiting out
    // max_queue_delay when the batch may now be full or of a preferred size. Waking it for every
    // request would cost two context switches per request on a busy core. A submitter that flushes
    // promises a Flush() after its submits: that flush wakes (or runs the batch inline) instead.
    if (options_.submitter_flushes) {
      wake = idle_instances_ > 0 && BatchMayBeReadyLocked();
    } else {
      wake = idle_instances_ > timed_waiters_ ||
             (timed_waiters_ > 0 && (BatchMayBeReadyLocked() || r->pending.deadline_ns < timed_wake_ns_));
    }
  }
  stats_.queue_depth.fetch_add(1, std::memory_order_relaxed);
  stats_.in_flight.fetch_add(1, std::memory_order_relaxed);
  if (wake) cv_.notify_one();  // after unlocking, so the woken instance does not block on mu_
  return Status::Ok();
}

Scheduler::FlushResult Scheduler::Flush(bool run_inline) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t now = clock_->NowNs();
  const bool costly = compute_ewma_ns_.load(std::memory_order_relaxed) > kInlineMaxComputeNs;
  const int64_t fresh = submits_since_flush_;
  submits_since_flush_ = 0;
  if (costly && fresh > 0 && !stopping_) return FlushResult::kPostponed;
  flushed_ns_ = now;
  // Inline: every instance is idle and recent batches were cheap, so handing the batch to an
  // instance thread and the answer back would cost more than running it here.
  if (run_inline && !stopping_ && queued_ > 0 && idle_instances_ == options_.instance_count &&
      compute_ewma_ns_.load(std::memory_order_relaxed) <= kInlineMaxComputeNs) {
    View view(queues_);
    const Decision d = Decide(view, now, options_.batch, flushed_ns_);
    if (!d.dispatch.empty() || !d.expire.empty()) {
      Batch batch, expired;
      TakeLocked(view, d, &batch, &expired);
      lock.unlock();
      RunTaken(&batch, &expired, now);
      // Progress: a batch holds one signature (shape), so requests of other shapes may remain. The
      // flush covers them (they were queued before it), so an idle instance dispatches them at once;
      // wake one, or nothing would until a later request of their shape arrived.
      lock.lock();
      const bool more = queued_ > 0 && idle_instances_ > 0;
      lock.unlock();
      if (more) cv_.notify_one();
      return FlushResult::kRanInline;
    }
  }
  const bool wake = queued_ > 0 && idle_instances_ > 0;
  lock.unlock();
  if (wake) cv_.notify_one();
  return FlushResult::kFlushed;
}

void Scheduler::TakeLocked(const View& view, const Decision& d, Batch* batch, Batch* expired) {
  // Highest position first, so that earlier positions stay valid while requests are erased.
  std::vector<std::pair<size_t, bool>> picks;  // (position, dispatch?)
  for (size_t p : d.dispatch) picks.emplace_back(p, true);
  for (size_t p : d.expire) picks.emplace_back(p, false);
  std::sort(picks.begin(), picks.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [pos, dispatch] : picks) {
    const auto [level, index] = view.Locate(pos);
    auto& q = queues_[level];
    queued_samples_ -= q[index]->pending.batch_size;
    (dispatch ? batch : expired)->push_back(std::move(q[index]));
    q.erase(q.begin() + static_cast<std::ptrdiff_t>(index));
  }
  std::reverse(batch->begin(), batch->end());
  queued_ -= static_cast<int64_t>(picks.size());
}

void Scheduler::RunTaken(Batch* batch, Batch* expired, int64_t dispatch_ns) {
  Fail(expired, StatusCode::kDeadlineExceeded, "request timed out in the queue of model '" + options_.model_name + "'");
  if (!batch->empty()) {
    stats_.queue_depth.fetch_sub(static_cast<int64_t>(batch->size()), std::memory_order_relaxed);
    Execute(batch, dispatch_ns);
  }
}

bool Scheduler::Cancel(uint64_t id) {
  std::unique_ptr<Request> found;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& q : queues_) {
      auto it = std::find_if(q.begin(), q.end(), [id](const auto& r) { return r->id == id; });
      if (it != q.end()) {
        found = std::move(*it);
        q.erase(it);
        --queued_;
        queued_samples_ -= found->pending.batch_size;
        break;
      }
    }
  }
  if (!found) return false;
  stats_.queue_depth.fetch_sub(1, std::memory_order_relaxed);
  stats_.requests_cancelled.fetch_add(1, std::memory_order_relaxed);
  completions_->Push(MakeCompletion(std::move(found), {StatusCode::kCancelled, "request cancelled"}));
  return true;
}

void Scheduler::Stop(bool drain) {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  if (joined_) return;
  Batch dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    draining_ = drain;
    if (!drain) {
      for (auto& q : queues_) {
        for (auto& r : q) dropped.push_back(std::move(r));
        q.clear();
      }
      queued_ = 0;
      queued_samples_ = 0;
    }
  }
  cv_.notify_all();
  Fail(&dropped, StatusCode::kUnavailable,
       "model '" + options_.model_name + "' version '" + options_.model_version + "' is shutting down");
  for (auto& t : instances_) t.join();
  joined_ = true;
}

Completion Scheduler::MakeCompletion(std::unique_ptr<Request> r, Status status) {
  Completion c;
  c.id = r->id;
  c.status = std::move(status);
  c.owner = std::move(r->owner);
  stats_.in_flight.fetch_sub(1, std::memory_order_relaxed);
  return c;
}

void Scheduler::Fail(Batch* requests, StatusCode code, const std::string& message, bool queued,
                     int64_t dispatch_ns, int64_t compute_ns) {
  if (requests->empty()) return;
  std::vector<Completion> out;
  out.reserve(requests->size());
  const int64_t now = clock_->NowNs();
  for (auto& r : *requests) {
    if (code == StatusCode::kDeadlineExceeded) {
      stats_.requests_timed_out.fetch_add(1, std::memory_order_relaxed);
    } else if (code == StatusCode::kUnavailable) {
      stats_.requests_rejected.fetch_add(1, std::memory_order_relaxed);
    } else {
      stats_.requests_failed.fetch_add(1, std::memory_order_relaxed);
    }
    if (code != StatusCode::kUnavailable) stats_.request_us.Observe((now - r->pending.enqueue_ns) / 1e3);
    const int64_t queue_ns = (dispatch_ns >= 0 ? dispatch_ns : now) - r->pending.enqueue_ns;
    out.push_back(MakeCompletion(std::move(r), {code, message}));
    out.back().queue_ns = queue_ns;
    out.back().compute_ns = compute_ns;
  }
  if (queued) stats_.queue_depth.fetch_sub(static_cast<int64_t>(requests->size()), std::memory_order_relaxed);
  requests->clear();
  completions_->Push(&out);
}

void Scheduler::InstanceLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (queued_ == 0) {
      if (stopping_) return;
      ++idle_instances_;
      cv_.wait(lock);
      --idle_instances_;
      continue;
    }
    const int64_t now = clock_->NowNs();
    BatchOptions batch_options = options_.batch;
    if (draining_) batch_options.max_queue_delay_ns = 0;  // finish quickly, do not wait for company
    View view(queues_);
    const Decision d = Decide(view, now, batch_options, flushed_ns_);
    if (d.dispatch.empty() && d.expire.empty()) {
      ++idle_instances_;
      if (d.wake_ns == kNoDeadline) {
        cv_.wait(lock);
      } else {
        ++timed_waiters_;
        timed_wake_ns_ = std::min(timed_wake_ns_, d.wake_ns);
        cv_.wait_for(lock, std::chrono::nanoseconds(d.wake_ns - now));
        if (--timed_waiters_ == 0) timed_wake_ns_ = kNoDeadline;
      }
      --idle_instances_;
      continue;
    }
    Batch batch, expired;
    TakeLocked(view, d, &batch, &expired);
    const bool more = queued_ > 0 && idle_instances_ > 0;
    lock.unlock();
    if (more) cv_.notify_one();  // another instance can form the next batch meanwhile
    RunTaken(&batch, &expired, now);
    lock.lock();
  }
}

void Scheduler::Execute(Batch* batch, int64_t dispatch_ns) {
  const bool batching = options_.batch.max_batch_size > 0;
  int64_t total = 0;
  for (const auto& r : *batch) total += r->pending.batch_size;

  // Copy each input of every request once into one pooled, contiguous buffer. The backend is handed
  // the inputs present, in the model's order.
  std::vector<BatchInput> inputs;
  inputs.reserve(options_.inputs.size());
  for (size_t i = 0; i < options_.inputs.size(); ++i) {
    // An optional input left out (only without batching: the batch is this one request).
    if (!batch->front()->inputs[i].present) continue;
    size_t nbytes = 0;
    for (const auto& r : *batch) nbytes += r->inputs[i].view.nbytes;
    std::shared_ptr<Buffer> buffer = pool_->Acquire(nbytes);
    size_t offset = 0;
    for (const auto& r : *batch) {
      const TensorView& v = r->inputs[i].view;
      if (v.nbytes) std::memcpy(buffer->data + offset, v.data, v.nbytes);
      offset += v.nbytes;
    }
    BatchInput& in = inputs.emplace_back();
    in.name = options_.inputs[i].name;
    in.view.dtype = options_.inputs[i].dtype;
    in.view.shape = batch->front()->inputs[i].view.shape;
    if (batching) in.view.shape[0] = total;
    in.view.data = buffer->data;
    in.view.nbytes = nbytes;
    in.holder = std::shared_ptr<const void>(buffer, buffer.get());
  }

  std::vector<BatchOutput> outputs;
  const int64_t start_ns = clock_->NowNs();
  Status status;
  try {
    status = backend_->Execute(inputs, &outputs);
  } catch (const std::exception& e) {
    status = {StatusCode::kInternal, e.what()};
  }
  const int64_t end_ns = clock_->NowNs();
  const int64_t ewma = compute_ewma_ns_.load(std::memory_order_relaxed);
  compute_ewma_ns_.store(ewma - ewma / 8 + (end_ns - start_ns) / 8, std::memory_order_relaxed);
  inputs.clear();  // the buffers go back to the pool unless the backend kept them

  // Match outputs to the declared ones and check their datatypes and shapes.
  std::vector<const BatchOutput*> ordered(options_.outputs.size(), nullptr);
  std::vector<std::vector<uint64_t>> byte_offsets(options_.outputs.size());
  for (size_t o = 0; status.ok() && o < options_.outputs.size(); ++o) {
    const TensorSpec& spec = options_.outputs[o];
    for (const auto& out : outputs) {
      if (out.name == spec.name) ordered[o] = &out;
    }
    const BatchOutput* out = ordered[o];
    const std::string who = "output '" + spec.name + "'";
    if (out == nullptr) {
      status = {StatusCode::kInternal, "the backend returned no " + who};
    } else if (out->view.dtype != spec.dtype) {
      status = {StatusCode::kInternal, who + ": the backend returned " + DataTypeName(out->view.dtype) +
                                           ", the model declares " + DataTypeName(spec.dtype)};
    } else if (!KeepsDeclaredShape(out->view.shape, spec.shape, batching, total)) {
      // A model that breaks its own declaration (an exporter's wrong shape): the batch fails as a
      // fault of the model, and the server goes on. One compare per output and batch.
      std::vector<int64_t> declared = spec.shape;
      if (batching) declared.insert(declared.begin(), -1);
      status = {StatusCode::kInternal,
                who + ": the model returned shape " + ShapeString(out->view.shape) +
                    (batching ? " for a batch of " + std::to_string(total) + (total == 1 ? " sample" : " samples") : "") +
                    " but declares " + ShapeString(declared) + (batching ? " (the batch dimension first)" : "")};
    } else if (spec.dtype == DataType::kBytes &&
               !BytesElementOffsets(out->view.data, out->view.nbytes, ElementCount(out->view.shape),
                                    &byte_offsets[o])) {
      status = {StatusCode::kInternal, who + ": malformed BYTES data from the backend"};
    } else if (spec.dtype != DataType::kBytes &&
               out->view.nbytes != static_cast<size_t>(ElementCount(out->view.shape)) * ElementSize(spec.dtype)) {
      status = {StatusCode::kInternal, who + ": byte size does not match its shape"};
    }
  }

  stats_.batches_executed.fetch_add(1, std::memory_order_relaxed);
  stats_.compute_us.Observe((end_ns - start_ns) / 1e3);
  stats_.batch_size.Observe(static_cast<double>(total));
  if (status.code == StatusCode::kInvalidArgument && batch->size() > 1) {
    // The input of one request (a value the model cannot take) must not fail the others batched
    // with it: run each half again, down to single requests, so only the guilty ones are answered
    // INVALID_ARGUMENT. Halving costs about 2 log2(n) backend calls for one bad request in n.
    const size_t half = batch->size() / 2;
    Batch first, second;
    for (size_t i = 0; i < batch->size(); ++i) ((i < half) ? first : second).push_back(std::move((*batch)[i]));
    batch->clear();
    Execute(&first, dispatch_ns);
    Execute(&second, dispatch_ns);
    return;
  }
  if (!status.ok()) {
    for (const auto& r : *batch) stats_.queue_us.Observe((dispatch_ns - r->pending.enqueue_ns) / 1e3);
    // The backend's code is kept: a backend that reports invalid input answers the client's mistake.
    Fail(batch, status.code,
         "model '" + options_.model_name + "' version '" + options_.model_version + "': " + status.message,
         /*queued=*/false, dispatch_ns, end_ns - start_ns);
    return;
  }
  stats_.samples_inferred.fetch_add(static_cast<uint64_t>(total), std::memory_order_relaxed);

  // Hand each request its rows of every output, as views that keep the batch output alive.
  std::vector<Completion> done;
  done.reserve(batch->size());
  int64_t row = 0;
  for (auto& r : *batch) {
    const int64_t n = r->pending.batch_size;
    stats_.queue_us.Observe((dispatch_ns - r->pending.enqueue_ns) / 1e3);
    stats_.request_us.Observe((end_ns - r->pending.enqueue_ns) / 1e3);
    const int64_t enqueue_ns = r->pending.enqueue_ns;
    Completion c = MakeCompletion(std::move(r), Status::Ok());
    c.queue_ns = dispatch_ns - enqueue_ns;
    c.compute_ns = end_ns - start_ns;
    c.outputs.reserve(ordered.size());
    for (size_t o = 0; o < ordered.size(); ++o) {
      const BatchOutput& out = *ordered[o];
      OutputSlice s;
      s.name = out.name;
      s.holder = out.holder;
      s.view.dtype = out.view.dtype;
      s.view.shape = out.view.shape;
      if (!batching) {
        s.view.data = out.view.data;
        s.view.nbytes = out.view.nbytes;
      } else {
        s.view.shape[0] = n;
        const int64_t per_row = total > 0 ? ElementCount(out.view.shape) / total : 0;
        if (out.view.dtype == DataType::kBytes) {
          const uint64_t begin = byte_offsets[o][row * per_row];
          const uint64_t end = byte_offsets[o][(row + n) * per_row];
          s.view.data = out.view.data + begin;
          s.view.nbytes = end - begin;
        } else {
          const size_t row_bytes = static_cast<size_t>(per_row) * ElementSize(out.view.dtype);
          s.view.data = out.view.data + static_cast<size_t>(row) * row_bytes;
          s.view.nbytes = static_cast<size_t>(n) * row_bytes;
        }
      }
      c.outputs.push_back(std::move(s));
    }
    row += n;
    stats_.requests_succeeded.fetch_add(1, std::memory_order_relaxed);
    done.push_back(std::move(c));
  }
  batch->clear();
  completions_->Push(&done);
}

}  // namespace pyserve
