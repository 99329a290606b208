// C++ tests of the core without Python: the batching policy on explicit times, the scheduler with the
// identity backend under concurrency and with a blocking backend for ordering, deadlines, rejection,
// cancellation and shutdown, the buffer pool, the completion queue, the histograms and the JSON tensor
// decoder (its values; every prefix of a body scanned, for the sanitizers).
//
// A tiny self-contained harness: TEST() registers a function, CHECK*() records a failure and goes on,
// REQUIRE() stops the test. The last line printed is "N passed, M failed"; the exit status is non-zero
// on any failure. PYSERVE_TEST_SCALE (default 1) scales the concurrency test (sanitizer runs use less).
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/batch_policy.h"
#include "core/json_tensor.h"
#include "core/buffer_pool.h"
#include "core/clock.h"
#include "core/completion_queue.h"
#include "core/scheduler.h"
#include "core/stats.h"

namespace {

using namespace pyserve;

// ---------------------------------------------------------------------------------------------------
// Harness

struct TestCase {
  const char* name;
  void (*fn)();
};
std::vector<TestCase>& Registry() {
  static std::vector<TestCase> tests;
  return tests;
}
struct Registrar {
  Registrar(const char* name, void (*fn)()) { Registry().push_back({name, fn}); }
};
struct RequireFailed {};
int g_check_failures = 0;  // failures in the running test (tests run one at a time)

std::string Show(StatusCode c);
template <typename T>
std::string Show(const std::vector<T>& v);
template <typename T>
std::string Show(const T& v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
template <typename T>
std::string Show(const std::vector<T>& v) {
  std::ostringstream s;
  s << '{';
  for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << Show(v[i]);
  s << '}';
  return s.str();
}
std::string Show(StatusCode c) { return std::to_string(static_cast<int>(c)); }

void ReportFailure(const char* file, int line, const std::string& what) {
  ++g_check_failures;
  std::printf("    %s:%d: CHECK failed: %s\n", file, line, what.c_str());
}

#define TEST(name)                                   \
  void name();                                       \
  const Registrar registrar_##name(#name, &name);    \
  void name()
#define CHECK(cond) \
  ((cond) ? (void)0 : ReportFailure(__FILE__, __LINE__, #cond))
#define CHECK_EQ(a, b)                                                                         \
  do {                                                                                         \
    const auto& va_ = (a);                                                                     \
    const auto& vb_ = (b);                                                                     \
    if (!(va_ == vb_)) {                                                                       \
      ReportFailure(__FILE__, __LINE__, std::string(#a " == " #b " (") + Show(va_) + " vs " + \
                                            Show(vb_) + ")");                                  \
    }                                                                                          \
  } while (0)
#define REQUIRE(cond)                                  \
  do {                                                 \
    if (!(cond)) {                                     \
      ReportFailure(__FILE__, __LINE__, #cond);        \
      throw RequireFailed{};                           \
    }                                                  \
  } while (0)

double TestScale() {
  const char* s = std::getenv("PYSERVE_TEST_SCALE");  // read once, by the test driver only
  const double v = s ? std::atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

// ---------------------------------------------------------------------------------------------------
// Decide() on a plain vector, at explicit times

struct VecQueue final : QueueView {
  std::vector<PendingRequest> items;
  size_t size() const override { return items.size(); }
  const PendingRequest& at(size_t i) const override { return items[i]; }
  VecQueue& Add(int64_t batch_size, int64_t enqueue_ns, uint64_t signature = 7,
                int64_t deadline_ns = kNoDeadline) {
    items.push_back({batch_size, signature, enqueue_ns, deadline_ns});
    return *this;
  }
};

BatchOptions Opts(int64_t max_batch_size, int64_t delay_ns, std::vector<int64_t> preferred = {}) {
  return BatchOptions{max_batch_size, std::move(preferred), delay_ns};
}
using Positions = std::vector<size_t>;

TEST(decide_empty_queue_waits_for_a_change) {
  const Decision d = Decide(VecQueue{}, 100, Opts(8, 1000));
  CHECK(d.dispatch.empty());
  CHECK(d.expire.empty());
  CHECK_EQ(d.wake_ns, kNoDeadline);
}

TEST(decide_dispatches_at_max_batch_size_without_waiting) {
  VecQueue q;
  q.Add(1, 100).Add(1, 110).Add(2, 120).Add(1, 130);
  const Decision d = Decide(q, 130, Opts(4, 1'000'000));
  CHECK_EQ(d.dispatch, (Positions{0, 1, 2}));
  CHECK(d.expire.empty());
}

TEST(decide_dispatches_when_the_next_request_does_not_fit) {
  VecQueue q;
  q.Add(3, 100).Add(2, 110).Add(1, 120);  // 3 + 2 > 4: never split, never skip ahead to the 1
  const Decision d = Decide(q, 120, Opts(4, 1'000'000));
  CHECK_EQ(d.dispatch, (Positions{0}));
}

TEST(decide_dispatches_up_to_the_largest_preferred_size_reached) {
  VecQueue q;
  for (int i = 0; i < 5; ++i) q.Add(1, 100 + i);
  CHECK_EQ(Decide(q, 200, Opts(8, 1'000'000, {2, 4})).dispatch, (Positions{0, 1, 2, 3}));
  q.items.resize(3);
  CHECK_EQ(Decide(q, 200, Opts(8, 1'000'000, {2, 4})).dispatch, (Positions{0, 1}));
  q.items.resize(1);  // below every preferred size: wait for the delay
  const Decision d = Decide(q, 200, Opts(8, 1'000'000, {2, 4}));
  CHECK(d.dispatch.empty());
  CHECK_EQ(d.wake_ns, 100 + 1'000'000);
}

TEST(decide_waits_until_oldest_plus_delay_then_sends_everything) {
  VecQueue q;
  q.Add(1, 100).Add(2, 200);
  const Decision wait = Decide(q, 500, Opts(8, 1000));
  CHECK(wait.dispatch.empty());
  CHECK_EQ(wait.wake_ns, int64_t{1100});
  const Decision just_before = Decide(q, 1099, Opts(8, 1000));
  CHECK(just_before.dispatch.empty());
  const Decision at_delay = Decide(q, 1100, Opts(8, 1000));
  CHECK_EQ(at_delay.dispatch, (Positions{0, 1}));
}

TEST(decide_wakes_for_the_nearest_deadline) {
  VecQueue q;
  q.Add(1, 100).Add(1, 200, 7, 900);
  const Decision d = Decide(q, 500, Opts(8, 1000));
  CHECK(d.dispatch.empty());
  CHECK_EQ(d.wake_ns, int64_t{900});
}

TEST(decide_wakes_for_the_deadline_of_a_request_of_another_signature) {
  // The request of signature 9 cannot join the pending batch, but its deadline (300) comes before
  // the pending batch's delay (1100): waiting until 1100 would answer it 800 ns late.
  VecQueue q;
  q.Add(1, 100, 7).Add(1, 200, 9, 300);
  const Decision d = Decide(q, 250, Opts(8, 1000));
  CHECK(d.dispatch.empty());
  CHECK_EQ(d.wake_ns, int64_t{300});
}

TEST(decide_expires_requests_past_their_deadline) {
  VecQueue q;
  q.Add(1, 100, 7, 400).Add(1, 150).Add(1, 160, 7, 500);  // a deadline equal to now has passed
  const Decision d = Decide(q, 500, Opts(2, 1000));
  CHECK_EQ(d.expire, (Positions{0, 2}));
  CHECK_EQ(d.dispatch, Positions{});
  CHECK_EQ(d.wake_ns, int64_t{1150});  // the live head (enqueued at 150) + delay
  VecQueue all_dead;
  all_dead.Add(1, 100, 7, 200).Add(1, 100, 7, 300);
  const Decision dead = Decide(all_dead, 300, Opts(8, 1000));
  CHECK_EQ(dead.expire, (Positions{0, 1}));
  CHECK(dead.dispatch.empty());
  CHECK_EQ(dead.wake_ns, kNoDeadline);
}

TEST(decide_batches_only_the_heads_signature) {
  VecQueue q;
  q.Add(1, 100, 7).Add(1, 110, 9).Add(1, 120, 7).Add(1, 130, 9);
  CHECK_EQ(Decide(q, 2000, Opts(8, 1000)).dispatch, (Positions{0, 2}));
  CHECK_EQ(Decide(q, 130, Opts(2, 1000)).dispatch, (Positions{0, 2}));  // full at 2 of signature 7
}

TEST(decide_without_batching_sends_one_request_alone_at_once) {
  VecQueue q;
  q.Add(1, 100, 7, 150).Add(3, 110).Add(1, 120);
  const Decision d = Decide(q, 200, Opts(0, 1'000'000));
  CHECK_EQ(d.expire, (Positions{0}));
  CHECK_EQ(d.dispatch, (Positions{1}));
}

TEST(decide_does_not_overflow_with_a_huge_delay) {
  VecQueue q;
  q.Add(1, 1'000'000).Add(1, 2'000'000, 7, 5'000'000);
  const Decision d = Decide(q, 3'000'000, Opts(8, kNoDeadline));
  CHECK(d.dispatch.empty());
  CHECK_EQ(d.wake_ns, int64_t{5'000'000});
}

TEST(decide_looks_no_further_than_the_scan_limit) {
  VecQueue q;
  for (int i = 0; i < 10; ++i) q.Add(1, 100, 7, 150);
  const Decision d = Decide(q, 200, Opts(8, 1000), kNeverFlushed, 4);
  CHECK_EQ(d.expire, (Positions{0, 1, 2, 3}));
}

TEST(decide_dispatches_flushed_requests_without_waiting_for_the_delay) {
  VecQueue q;
  q.Add(1, 100);
  q.Add(1, 200);
  CHECK(Decide(q, 300, Opts(8, 1000)).dispatch.empty());                   // waits for company
  CHECK(Decide(q, 300, Opts(8, 1000), 150).dispatch.empty() == false);     // oldest queued before the flush
  CHECK_EQ(Decide(q, 300, Opts(8, 1000), 150).dispatch, (Positions{0, 1}));  // and takes all it has
  CHECK(Decide(q, 300, Opts(8, 1000), 99).dispatch.empty());              // flushed before it came
}

// ---------------------------------------------------------------------------------------------------
// Scheduler

// Carries a request's input rows (so the view stays valid while queued) and the value it expects back.
struct TestOwner final : RequestOwner {
  int64_t key = 0;
  int64_t rows = 1;
  std::vector<float> data;
};

constexpr int64_t kCols = 2;

SchedulerOptions MakeOptions(int64_t max_batch_size, int64_t delay_ns, int instances = 1) {
  SchedulerOptions o;
  o.model_name = "m";
  o.model_version = "1";
  o.inputs = {TensorSpec{"x", DataType::kFp32, {kCols}}};
  o.outputs = {TensorSpec{"y", DataType::kFp32, {kCols}}};
  o.batch = Opts(max_batch_size, delay_ns);
  o.instance_count = instances;
  return o;
}

// A request of `rows` samples of `cols` values, every element equal to `key`.
std::unique_ptr<Request> MakeRequest(int64_t key, int64_t rows = 1, int priority = 0, int64_t timeout_ns = 0,
                                     int64_t cols = kCols) {
  auto owner = std::make_unique<TestOwner>();
  owner->key = key;
  owner->rows = rows;
  owner->data.assign(static_cast<size_t>(rows * cols), static_cast<float>(key));
  auto r = std::make_unique<Request>();
  r->inputs.resize(1);
  TensorView& v = r->inputs[0].view;
  v.dtype = DataType::kFp32;
  v.shape = {rows, cols};
  v.data = reinterpret_cast<const uint8_t*>(owner->data.data());
  v.nbytes = owner->data.size() * sizeof(float);
  r->priority_level = priority;
  r->timeout_ns = timeout_ns;
  r->owner = std::move(owner);
  return r;
}

const TestOwner& OwnerOf(const Completion& c) { return static_cast<const TestOwner&>(*c.owner); }

// Collects `count` completions, failing the test if they do not come within `timeout_ms`.
std::vector<Completion> Collect(CompletionQueue& cq, size_t count, int timeout_ms = 10000) {
  std::vector<Completion> got;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (got.size() < count && std::chrono::steady_clock::now() < end) {
    cq.Wait(50);
    for (auto& c : cq.Drain()) got.push_back(std::move(c));
  }
  REQUIRE(got.size() == count);
  return got;
}

// A flush runs a batch inline only when every instance is idle, and an instance that pushed an answer
// goes back to waiting a moment after the answer is seen; there is no event for it. Tests that wait
// for an inline run give the instances that moment (on a loaded machine, without it, the next flush
// found an instance still busy in 3 of 15 runs).
void LetInstancesIdle() { std::this_thread::sleep_for(std::chrono::milliseconds(1)); }

// Runs batches only when opened; records the first value of every row of every batch it ran.
class GateBackend final : public Backend {
 public:
  Status Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++started_;
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
    const TensorView& v = inputs[0].view;
    const auto* f = reinterpret_cast<const float*>(v.data);
    std::vector<float> rows;
    for (int64_t r = 0; r < v.shape[0]; ++r) rows.push_back(f[r * kCols]);
    batches_.push_back(rows);
    if (throw_) throw std::runtime_error("boom");
    outputs->push_back(BatchOutput{"y", v, inputs[0].holder});
    return Status::Ok();
  }
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  bool WaitStarted(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return started_ >= n; });
  }
  std::vector<std::vector<float>> Batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  void SetThrow(bool t) {
    std::lock_guard<std::mutex> lock(mu_);
    throw_ = t;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  bool throw_ = false;
  int started_ = 0;
  std::vector<std::vector<float>> batches_;
};

struct GateFixture {
  std::shared_ptr<GateBackend> backend = std::make_shared<GateBackend>();
  std::shared_ptr<CompletionQueue> cq = std::make_shared<CompletionQueue>();
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::unique_ptr<Scheduler> sched;

  explicit GateFixture(SchedulerOptions o) {
    REQUIRE(ValidateOptions(o).ok());
    sched = std::make_unique<Scheduler>(std::move(o), backend, cq, BufferPool::Create(), clock);
  }
  uint64_t Submit(std::unique_ptr<Request> r) {
    uint64_t id = 0;
    const Status s = sched->Submit(&r, &id);
    REQUIRE(s.ok());
    REQUIRE(r == nullptr);
    return id;
  }
  ~GateFixture() {
    backend->Open();  // a failed REQUIRE must not leave an instance blocked in Execute
    sched.reset();
  }
  // Submits request 0, a full batch (dispatched without waiting for the delay), and waits until the
  // backend holds it, so that later requests stay queued.
  void Block() {
    Submit(MakeRequest(0, std::max<int64_t>(1, sched->options().batch.max_batch_size)));
    REQUIRE(backend->WaitStarted(1));
  }
};

TEST(scheduler_many_threads_every_request_answered_once_with_its_own_rows) {
  const int threads = 8;
  const int per_thread = std::max(50, static_cast<int>(2000 * TestScale()));
  const int total = threads * per_thread;
  auto cq = std::make_shared<CompletionQueue>();
  auto backend = std::make_shared<IdentityBackend>(std::vector<std::string>{"y"});
  Scheduler sched(MakeOptions(32, 100'000, 2), backend, cq, BufferPool::Create());

  std::vector<int> answered(static_cast<size_t>(total), 0);
  std::atomic<int> bad_rows{0}, bad_status{0};
  std::thread consumer([&] {
    int seen = 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (seen < total && std::chrono::steady_clock::now() < end) {
      cq->Wait(50);
      for (const Completion& c : cq->Drain()) {
        ++seen;
        const TestOwner& o = OwnerOf(c);
        ++answered[static_cast<size_t>(o.key)];
        if (!c.status.ok() || c.outputs.size() != 1) {
          ++bad_status;
          continue;
        }
        const TensorView& y = c.outputs[0].view;
        const auto* f = reinterpret_cast<const float*>(y.data);
        bool same = y.shape == std::vector<int64_t>{o.rows, kCols} &&
                    y.nbytes == static_cast<size_t>(o.rows * kCols) * sizeof(float);
        for (int64_t i = 0; same && i < o.rows * kCols; ++i) same = f[i] == static_cast<float>(o.key);
        if (!same) ++bad_rows;
      }
    }
  });
  std::vector<std::thread> producers;
  for (int t = 0; t < threads; ++t) {
    producers.emplace_back([&, t] {
      for (int j = 0; j < per_thread; ++j) {
        const int64_t key = int64_t{t} * per_thread + j;
        auto r = MakeRequest(key, 1 + key % 3);
        if (!sched.Submit(&r).ok()) ++bad_status;
      }
    });
  }
  for (auto& p : producers) p.join();
  consumer.join();
  sched.Stop(true);
  CHECK_EQ(bad_status.load(), 0);
  CHECK_EQ(bad_rows.load(), 0);
  CHECK_EQ(std::count(answered.begin(), answered.end(), 1), static_cast<std::ptrdiff_t>(total));
  const StatsSnapshot s = sched.Stats();
  CHECK_EQ(s.requests_succeeded, static_cast<uint64_t>(total));
  CHECK_EQ(s.in_flight, int64_t{0});
  CHECK_EQ(s.queue_depth, int64_t{0});
  CHECK_EQ(s.request_us.count, static_cast<uint64_t>(total));
  CHECK_EQ(s.batch_size.count, s.batches_executed);
  CHECK_EQ(static_cast<uint64_t>(s.batch_size.sum), s.samples_inferred);
  CHECK(cq->Drain().empty());  // nothing answered twice after the count was reached
}

TEST(scheduler_runs_higher_priority_first_fifo_within_a_level) {
  SchedulerOptions o = MakeOptions(1, 0);
  o.priority_levels = 3;
  o.default_priority_level = 3;
  GateFixture f(std::move(o));
  f.Block();
  f.Submit(MakeRequest(1, 1, 3));
  f.Submit(MakeRequest(2, 1, 2));
  f.Submit(MakeRequest(3, 1, 1));
  f.Submit(MakeRequest(4, 1, 1));
  f.Submit(MakeRequest(5, 1, 0));  // 0: the default level (3)
  f.Submit(MakeRequest(6, 1, 2));
  f.backend->Open();
  for (const Completion& c : Collect(*f.cq, 7)) CHECK(c.status.ok());
  CHECK_EQ(f.backend->Batches(), (std::vector<std::vector<float>>{{0}, {3}, {4}, {2}, {6}, {1}, {5}}));
  auto bad = MakeRequest(9, 1, 4);
  CHECK_EQ(f.sched->Submit(&bad).code, StatusCode::kInvalidArgument);
  CHECK(bad != nullptr);
}

// Records the names of the inputs of every batch it runs; answers y = its first input.
class NamesBackend final : public Backend {
 public:
  Status Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) override {
    std::vector<std::string> names;
    for (const auto& in : inputs) names.push_back(in.name);
    {
      std::lock_guard<std::mutex> lock(mu_);
      names_.push_back(names);
    }
    outputs->push_back(BatchOutput{"y", inputs[0].view, inputs[0].holder});
    return Status::Ok();
  }
  std::vector<std::vector<std::string>> Names() {
    std::lock_guard<std::mutex> lock(mu_);
    return names_;
  }

 private:
  std::mutex mu_;
  std::vector<std::vector<std::string>> names_;
};

TEST(scheduler_hands_the_backend_only_the_optional_inputs_present) {
  SchedulerOptions o = MakeOptions(0, 0);
  o.inputs = {TensorSpec{"x", DataType::kFp32, {-1, kCols}}, TensorSpec{"b", DataType::kFp32, {-1, kCols}, true}};
  o.outputs = {TensorSpec{"y", DataType::kFp32, {-1, kCols}}};
  SchedulerOptions batched = o;
  batched.batch = Opts(4, 0);
  CHECK_EQ(ValidateOptions(batched).code, StatusCode::kInvalidArgument);  // optional inputs: no batching
  REQUIRE(ValidateOptions(o).ok());
  auto backend = std::make_shared<NamesBackend>();
  auto cq = std::make_shared<CompletionQueue>();
  Scheduler sched(std::move(o), backend, cq, BufferPool::Create(), std::make_shared<FakeClock>());
  auto absent = MakeRequest(1);
  absent->inputs.resize(2);
  absent->inputs[1].present = false;
  auto given = MakeRequest(2);
  given->inputs.push_back(given->inputs[0]);
  auto no_x = MakeRequest(3);  // the required input left out: refused
  no_x->inputs.resize(2);
  no_x->inputs[0] = RequestInput{};
  no_x->inputs[0].present = false;
  uint64_t id = 0;
  CHECK_EQ(sched.Submit(&no_x, &id).code, StatusCode::kInvalidArgument);
  REQUIRE(sched.Submit(&absent, &id).ok());
  REQUIRE(sched.Submit(&given, &id).ok());
  sched.Flush(false);
  for (const Completion& c : Collect(*cq, 2)) CHECK(c.status.ok());
  CHECK_EQ(backend->Names(), (std::vector<std::vector<std::string>>{{"x"}, {"x", "b"}}));
}

TEST(scheduler_answers_expired_requests_without_running_them) {
  GateFixture f(MakeOptions(4, 0));
  f.Block();
  f.Submit(MakeRequest(1, 1, 0, 1000));  // deadline: fake now + 1000 ns
  f.Submit(MakeRequest(2));
  f.clock->AdvanceNs(1000);
  f.backend->Open();
  int ok = 0, expired = 0;
  for (const Completion& c : Collect(*f.cq, 3)) {
    if (c.status.code == StatusCode::kDeadlineExceeded) {
      ++expired;
      CHECK_EQ(OwnerOf(c).key, int64_t{1});
      CHECK(c.outputs.empty());
    } else {
      ++ok;
      CHECK(c.status.ok());
    }
  }
  CHECK_EQ(ok, 2);
  CHECK_EQ(expired, 1);
  CHECK_EQ(f.backend->Batches(), (std::vector<std::vector<float>>{{0, 0, 0, 0}, {2}}));
  f.sched->Stop(true);
  CHECK_EQ(f.sched->Stats().requests_timed_out, uint64_t{1});
}

TEST(scheduler_a_timeout_past_the_clock_range_is_no_deadline) {
  // now + timeout would overflow int64 (a wrapped, negative deadline times the request out at once):
  // the largest timeout a request can ask for means "no deadline".
  GateFixture f(MakeOptions(4, 0));
  f.Block();
  f.Submit(MakeRequest(1, 1, 0, std::numeric_limits<int64_t>::max() - 5));
  f.backend->Open();
  const auto got = Collect(*f.cq, 2);
  for (const Completion& c : got) CHECK(c.status.ok());
  f.sched->Stop(true);
  CHECK_EQ(f.sched->Stats().requests_timed_out, uint64_t{0});
}

TEST(scheduler_answers_a_deadline_that_comes_before_the_pending_delay) {
  // An instance waiting out a long max_queue_delay must wake for a request that expires sooner,
  // whether it would join the pending batch (same shape) or wait behind it (another shape).
  for (const int64_t cols : {kCols, kCols + 1}) {
    SchedulerOptions o = MakeOptions(8, 5'000'000'000);  // 5 s: far beyond the test's patience
    o.inputs[0].shape = {-1};
    auto cq = std::make_shared<CompletionQueue>();
    auto backend = std::make_shared<IdentityBackend>(std::vector<std::string>{"y"});
    Scheduler sched(std::move(o), backend, cq, BufferPool::Create());  // the steady clock
    auto first = MakeRequest(1);
    REQUIRE(sched.Submit(&first).ok());
    // Let the instance settle into its timed wait (there is no event for it): otherwise it may see
    // both requests in one decision and the case would pass without testing the wake-up.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto hasty = MakeRequest(2, 1, 0, 20'000'000, cols);  // times out after 20 ms
    REQUIRE(sched.Submit(&hasty).ok());
    const auto start = std::chrono::steady_clock::now();
    const bool answered = cq->Wait(2000);
    const double waited_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!answered) {
      ReportFailure(__FILE__, __LINE__, "a request of " + std::to_string(cols) + " columns timing out after 20 ms "
                                        "was not answered within 2 s");
    } else {
      const auto got = cq->Drain();
      CHECK_EQ(got.size(), size_t{1});
      CHECK_EQ(got[0].status.code, StatusCode::kDeadlineExceeded);
      CHECK(waited_ms < 1000);
    }
    sched.Stop(false);
    cq->Drain();
  }
}

TEST(scheduler_waits_for_max_queue_delay_on_its_clock) {
  GateFixture f(MakeOptions(8, 2'000'000));
  f.backend->Open();
  f.Submit(MakeRequest(1));
  f.Submit(MakeRequest(2));
  CHECK(!f.cq->Wait(20));  // the fake clock has not moved: still gathering
  f.clock->AdvanceNs(2'000'000);
  const auto got = Collect(*f.cq, 2);
  CHECK_EQ(f.backend->Batches(), (std::vector<std::vector<float>>{{1, 2}}));
}

// Records on which thread each batch ran.
class ThreadRecordingBackend final : public Backend {
 public:
  Status Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) override {
    std::lock_guard<std::mutex> lock(mu_);
    threads.push_back(std::this_thread::get_id());
    outputs->push_back(BatchOutput{"y", inputs[0].view, inputs[0].holder});
    return Status::Ok();
  }
  std::mutex mu_;
  std::vector<std::thread::id> threads;
};

TEST(scheduler_flush_postpones_for_unknown_cost_then_runs_cheap_batches_inline) {
  SchedulerOptions o = MakeOptions(8, 5'000'000'000);  // a delay far beyond the test's patience
  o.submitter_flushes = true;
  auto backend = std::make_shared<ThreadRecordingBackend>();
  auto cq = std::make_shared<CompletionQueue>();
  Scheduler sched(o, backend, cq, BufferPool::Create());
  auto submit = [&](int64_t key) {
    auto r = MakeRequest(key);
    REQUIRE(sched.Submit(&r).ok());
  };
  // Not yet known to be cheap: the flush right after a submit is put off, the next one dispatches
  // (to the instance thread, not inline).
  submit(1);
  CHECK(sched.Flush(true) == Scheduler::FlushResult::kPostponed);
  CHECK(!cq->Wait(20));
  CHECK(sched.Flush(true) == Scheduler::FlushResult::kFlushed);
  Collect(*cq, 1);
  // Cheap batches lower the moving average below the inline limit; then a flush runs the batch on
  // the calling thread.
  Scheduler::FlushResult last = Scheduler::FlushResult::kFlushed;
  for (int i = 0; i < 40 && last != Scheduler::FlushResult::kRanInline; ++i) {
    submit(2 + i);
    last = sched.Flush(true);
    if (last == Scheduler::FlushResult::kPostponed) last = sched.Flush(true);
    Collect(*cq, 1);
    LetInstancesIdle();
  }
  CHECK(last == Scheduler::FlushResult::kRanInline);
  std::lock_guard<std::mutex> lock(backend->mu_);
  CHECK(backend->threads.front() != std::this_thread::get_id());
  CHECK(backend->threads.back() == std::this_thread::get_id());
}

// A batch run inline takes only the head's signature (its shape): the requests of other shapes left
// queued must still be dispatched at once (the submitter flushed: nothing more is coming), not stay
// queued until a later request of their shape arrives. `cols` varies the non-batch dimension.
TEST(scheduler_inline_flush_leaves_no_request_of_another_shape_stranded) {
  for (int instances : {1, 2}) {
    SchedulerOptions o = MakeOptions(32, 5'000'000'000, instances);  // submits never fill a batch: only flushes dispatch
    o.inputs = {TensorSpec{"x", DataType::kFp32, {-1}}};
    o.outputs = {TensorSpec{"y", DataType::kFp32, {-1}}};
    o.submitter_flushes = true;
    auto backend = std::make_shared<ThreadRecordingBackend>();
    auto cq = std::make_shared<CompletionQueue>();
    Scheduler sched(o, backend, cq, BufferPool::Create());
    auto submit = [&](int64_t key, int64_t cols) {
      auto r = MakeRequest(key, 1, 0, 0, cols);
      REQUIRE(sched.Submit(&r).ok());
    };
    // Cheap batches first, until a flush runs inline.
    Scheduler::FlushResult last = Scheduler::FlushResult::kFlushed;
    for (int i = 0; i < 40 && last != Scheduler::FlushResult::kRanInline; ++i) {
      submit(i, 2);
      last = sched.Flush(true);
      if (last == Scheduler::FlushResult::kPostponed) last = sched.Flush(true);
      Collect(*cq, 1);
      LetInstancesIdle();
    }
    REQUIRE(last == Scheduler::FlushResult::kRanInline);
    // Three shapes interleaved, one flush: one batch runs inline, the other two must follow. Whether
    // a flush runs inline depends on the compute time measured so far (a stall of a loaded machine
    // makes a batch look costly), so rounds go on until one did; every round's 9 must be answered.
    bool ran_inline = false;
    for (int round = 0; round < 40 && !ran_inline; ++round) {
      for (int i = 0; i < 9; ++i) submit(100 + i, 2 + i % 3);
      last = sched.Flush(true);
      if (last == Scheduler::FlushResult::kPostponed) last = sched.Flush(true);
      ran_inline = last == Scheduler::FlushResult::kRanInline;
      std::vector<Completion> got = Collect(*cq, 9, 3000);
      for (const auto& c : got) CHECK(c.status.ok());
      LetInstancesIdle();
    }
    CHECK(ran_inline);
    sched.Stop(true);
  }
}

// Refuses a batch that holds a negative value, as a model refuses a value it cannot take.
class PickyBackend final : public Backend {
 public:
  Status Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) override {
    const TensorView& v = inputs[0].view;
    const auto* f = reinterpret_cast<const float*>(v.data);
    for (int64_t i = 0; i < v.shape[0] * kCols; ++i) {
      if (f[i] < 0) return {StatusCode::kInvalidArgument, "negative value"};
    }
    outputs->push_back(BatchOutput{"y", v, inputs[0].holder});
    return Status::Ok();
  }
};

// One request's bad value fails only that request, not the others batched with it.
TEST(scheduler_invalid_input_fails_only_the_request_that_sent_it) {
  SchedulerOptions o = MakeOptions(8, 0);
  auto cq = std::make_shared<CompletionQueue>();
  auto backend = std::make_shared<PickyBackend>();
  auto clock = std::make_shared<FakeClock>();
  o.batch.max_queue_delay_ns = 1'000'000'000;  // on the fake clock: the batch forms only when full
  Scheduler sched(o, backend, cq, BufferPool::Create(), clock);
  for (int64_t key : {1, -1, 2, 3, -5, 4, 5, 6}) {
    auto r = MakeRequest(key);
    REQUIRE(sched.Submit(&r).ok());
  }
  std::vector<Completion> got = Collect(*cq, 8);
  int bad = 0;
  for (const auto& c : got) {
    const bool negative = OwnerOf(c).key < 0;
    CHECK(c.status.ok() != negative);
    if (negative) {
      ++bad;
      CHECK(c.status.code == StatusCode::kInvalidArgument);
    }
  }
  CHECK(bad == 2);
  const StatsSnapshot s = sched.Stats();
  CHECK(s.requests_succeeded == 6 && s.requests_failed == 2);
}

TEST(scheduler_rejects_when_the_queue_is_full) {
  SchedulerOptions o = MakeOptions(1, 0);
  o.max_queue_size = 2;
  GateFixture f(std::move(o));
  f.Block();  // running, no longer queued
  f.Submit(MakeRequest(1));
  f.Submit(MakeRequest(2));
  auto third = MakeRequest(3);
  const Status s = f.sched->Submit(&third);
  CHECK_EQ(s.code, StatusCode::kUnavailable);
  CHECK(s.message.find("max_queue_size 2") != std::string::npos);
  CHECK(third != nullptr);  // the caller keeps a refused request
  CHECK_EQ(f.sched->Stats().requests_rejected, uint64_t{1});
  f.backend->Open();
  Collect(*f.cq, 3);
  CHECK(!f.cq->Wait(0));
}

TEST(scheduler_cancel_answers_a_queued_request_and_never_runs_it) {
  GateFixture f(MakeOptions(1, 0));
  f.Block();
  const uint64_t id = f.Submit(MakeRequest(1));
  f.Submit(MakeRequest(2));
  CHECK(f.sched->Cancel(id));
  CHECK(!f.sched->Cancel(id));  // answered already
  CHECK(!f.sched->Cancel(1));   // request 0 (id 1) is running
  const auto cancelled = Collect(*f.cq, 1);
  CHECK_EQ(cancelled[0].status.code, StatusCode::kCancelled);
  CHECK_EQ(OwnerOf(cancelled[0]).key, int64_t{1});
  f.backend->Open();
  Collect(*f.cq, 2);
  CHECK_EQ(f.backend->Batches(), (std::vector<std::vector<float>>{{0}, {2}}));
  CHECK_EQ(f.sched->Stats().requests_cancelled, uint64_t{1});
}

TEST(scheduler_stop_with_drain_runs_everything_queued) {
  GateFixture f(MakeOptions(4, 1'000'000'000));  // a delay nobody waits for when draining
  f.Block();
  for (int i = 1; i <= 5; ++i) f.Submit(MakeRequest(i));
  std::thread stopper([&] { f.sched->Stop(true); });
  f.backend->Open();
  stopper.join();
  const auto got = Collect(*f.cq, 6, 2000);
  for (const Completion& c : got) CHECK(c.status.ok());
  CHECK_EQ(f.backend->Batches(), (std::vector<std::vector<float>>{{0, 0, 0, 0}, {1, 2, 3, 4}, {5}}));
  auto late = MakeRequest(7);
  CHECK_EQ(f.sched->Submit(&late).code, StatusCode::kUnavailable);
  CHECK(!f.cq->Wait(0));
  const StatsSnapshot s = f.sched->Stats();
  CHECK_EQ(s.in_flight, int64_t{0});
  CHECK_EQ(s.requests_succeeded, uint64_t{6});
}

TEST(scheduler_stop_without_drain_answers_queued_requests_unavailable) {
  GateFixture f(MakeOptions(4, 1'000'000'000));
  f.Block();
  for (int i = 1; i <= 5; ++i) f.Submit(MakeRequest(i));
  std::thread stopper([&] { f.sched->Stop(false); });
  // The queued five are answered while the running batch is still held by the backend.
  const auto dropped = Collect(*f.cq, 5);
  for (const Completion& c : dropped) CHECK_EQ(c.status.code, StatusCode::kUnavailable);
  f.backend->Open();
  stopper.join();
  const auto running = Collect(*f.cq, 1);
  CHECK(running[0].status.ok());
  CHECK_EQ(OwnerOf(running[0]).key, int64_t{0});
  CHECK_EQ(f.backend->Batches(), (std::vector<std::vector<float>>{{0, 0, 0, 0}}));
  CHECK_EQ(f.sched->Stats().in_flight, int64_t{0});
}

TEST(scheduler_backend_exception_fails_the_batch_not_the_scheduler) {
  GateFixture f(MakeOptions(4, 1'000'000'000));
  f.backend->SetThrow(true);
  f.backend->Open();
  for (int i = 1; i <= 4; ++i) f.Submit(MakeRequest(i));  // full at 4: dispatched at once
  for (const Completion& c : Collect(*f.cq, 4)) {
    CHECK_EQ(c.status.code, StatusCode::kInternal);
    CHECK(c.status.message.find("boom") != std::string::npos);
  }
  f.backend->SetThrow(false);
  for (int i = 5; i <= 8; ++i) f.Submit(MakeRequest(i));
  for (const Completion& c : Collect(*f.cq, 4)) CHECK(c.status.ok());
  const StatsSnapshot s = f.sched->Stats();
  CHECK_EQ(s.requests_failed, uint64_t{4});
  CHECK_EQ(s.requests_succeeded, uint64_t{4});
  CHECK_EQ(s.queue_depth, int64_t{0});
  CHECK_EQ(s.in_flight, int64_t{0});
}

TEST(scheduler_refuses_a_shape_whose_byte_size_overflows) {
  // 2^62 FP32 elements are 2^64 bytes: computed in size_t that wraps to 0 and matches nbytes 0, so
  // the request would pass as valid and hand out views claiming 16 EiB over an empty buffer.
  SchedulerOptions o = MakeOptions(4, 0);
  o.inputs[0].shape = {-1};
  o.outputs[0].shape = {-1};
  GateFixture f(std::move(o));
  f.backend->Open();
  auto r = MakeRequest(1);
  r->inputs[0].view.shape = {1, int64_t{1} << 62};
  r->inputs[0].view.nbytes = 0;
  const Status s = f.sched->Submit(&r);
  CHECK_EQ(s.code, StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------------
// BufferPool, CompletionQueue, Histogram

TEST(buffer_pool_reuses_released_buffers) {
  auto pool = BufferPool::Create();
  auto a = pool->Acquire(100);
  uint8_t* const p = a->data;
  CHECK_EQ(a->capacity, size_t{256});
  CHECK_EQ(pool->cached_bytes(), size_t{0});
  a.reset();
  CHECK_EQ(pool->cached_bytes(), size_t{256});
  auto b = pool->Acquire(200);  // same size class
  CHECK(b->data == p);
  CHECK_EQ(pool->allocated_bytes(), size_t{256});
  auto c = pool->Acquire(1000);  // another class: a new buffer
  CHECK(c->data != p);
  CHECK_EQ(c->capacity, size_t{1024});
}

TEST(buffer_pool_buffers_are_64_byte_aligned) {
  auto pool = BufferPool::Create();
  std::vector<std::shared_ptr<Buffer>> held;
  for (size_t n : {0, 1, 63, 64, 255, 256, 257, 4000, 100000}) {
    held.push_back(pool->Acquire(n));
    CHECK_EQ(reinterpret_cast<uintptr_t>(held.back()->data) % 64, uintptr_t{0});
    CHECK(held.back()->capacity >= n);
    std::memset(held.back()->data, 0xAB, held.back()->capacity);  // the whole capacity is usable
  }
}

TEST(buffer_pool_caches_no_more_than_its_cap) {
  auto pool = BufferPool::Create(512);
  {
    auto a = pool->Acquire(256), b = pool->Acquire(256), c = pool->Acquire(256);
    CHECK_EQ(pool->allocated_bytes(), size_t{768});
  }
  CHECK_EQ(pool->cached_bytes(), size_t{512});
  CHECK_EQ(pool->allocated_bytes(), size_t{512});
  std::shared_ptr<Buffer> outlives;
  {
    auto short_lived = BufferPool::Create();
    outlives = short_lived->Acquire(10);
  }
  outlives.reset();  // the buffer keeps its pool alive until it goes back
}

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

Completion Answer(uint64_t id) {
  Completion c;
  c.id = id;
  return c;
}

TEST(completion_queue_fd_is_readable_after_push_and_not_after_drain) {
  CompletionQueue cq;
  REQUIRE(cq.fd() >= 0);
  CHECK(!Readable(cq.fd()));
  CHECK(!cq.Wait(0));
  cq.Push(Answer(1));
  CHECK(Readable(cq.fd()));
  cq.Push(Answer(2));
  CHECK(Readable(cq.fd()));
  std::vector<Completion> got = cq.Drain();
  CHECK_EQ(got.size(), size_t{2});
  CHECK_EQ(got[0].id, uint64_t{1});
  CHECK_EQ(got[1].id, uint64_t{2});
  CHECK(!Readable(cq.fd()));
  std::vector<Completion> batch;
  batch.push_back(Answer(3));
  batch.push_back(Answer(4));
  cq.Push(&batch);
  CHECK(batch.empty());
  CHECK(Readable(cq.fd()));
  CHECK(cq.Wait(0));
  CHECK_EQ(cq.Drain().size(), size_t{2});
  CHECK(!Readable(cq.fd()));
  CHECK(cq.Drain().empty());
  CHECK(!Readable(cq.fd()));
}

TEST(completion_queue_wakes_a_waiting_consumer) {
  CompletionQueue cq;
  std::thread producer([&] { cq.Push(Answer(5)); });
  CHECK(cq.Wait(5000));
  producer.join();
  CHECK_EQ(cq.Drain().size(), size_t{1});
}

TEST(histogram_counts_values_into_le_buckets) {
  Histogram h({1, 5, 10});
  for (double v : {0.5, 1.0, 3.0, 10.0, 11.0, 100.0}) h.Observe(v);
  const HistogramSnapshot s = h.Snapshot();
  CHECK_EQ(s.upper_bounds, (std::vector<double>{1, 5, 10}));
  CHECK_EQ(s.counts, (std::vector<uint64_t>{2, 1, 1, 2}));
  CHECK_EQ(s.count, uint64_t{6});
  CHECK_EQ(s.sum, 125.5);
  const std::vector<double> lat = LatencyBucketsUs();
  CHECK(std::is_sorted(lat.begin(), lat.end()));
  CHECK(std::adjacent_find(lat.begin(), lat.end()) == lat.end());
}

TEST(histogram_is_exact_under_concurrent_observers) {
  Histogram h({1, 2});
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) h.Observe(i % 3);
    });
  }
  for (auto& t : ts) t.join();
  const HistogramSnapshot s = h.Snapshot();
  CHECK_EQ(s.count, uint64_t{4000});
  CHECK_EQ(s.counts[0] + s.counts[1] + s.counts[2], uint64_t{4000});
  CHECK_EQ(s.sum, 4.0 * (333 * 1 + 333 * 2));
}


// ---------------------------------------------------------------------------------------------------
// JSON tensor decoding (its agreement with the Python reference decoder: tests/test_json_tensor.py)

const std::string kJsonBody =
    R"({"id": "a\"]", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1.5, -0], [2e0, NaN]]},)"
    R"( {"data": [true, false], "name": "b", "datatype": "BOOL", "shape": [2]}, {"name": "s", "data": ["t"]}],)"
    R"( "outputs": [{"name": "y"}]})";

TEST(json_scan_lifts_numeric_data_and_leaves_a_skeleton) {
  std::string skeleton;
  std::vector<JsonDataSpan> spans;
  REQUIRE(ScanRequest(kJsonBody, &skeleton, &spans));
  REQUIRE(spans.size() == 2);
  CHECK_EQ(spans[0].entry, int64_t{0});
  CHECK_EQ(spans[1].entry, int64_t{1});
  CHECK_EQ(kJsonBody.substr(spans[1].begin, spans[1].end - spans[1].begin), std::string("[true, false]"));
  CHECK(skeleton.find(R"("data": 0})") != std::string::npos);
  CHECK(skeleton.find(R"("data": ["t"])") != std::string::npos);  // strings stay for the reference
  CHECK(!ScanRequest(R"({"inputs": [{"data": [1], "data": [2]}]})", &skeleton, &spans));
  CHECK(!ScanRequest(R"({"inputs": [{"d\u0061ta": [1]}]})", &skeleton, &spans));
  CHECK(!ScanRequest(R"({"inputs": []} x)", &skeleton, &spans));
}

TEST(json_decode_makes_numpys_values_or_defers) {
  std::string skeleton;
  std::vector<JsonDataSpan> spans;
  REQUIRE(ScanRequest(kJsonBody, &skeleton, &spans));
  const std::string_view x(kJsonBody.data() + spans[0].begin, spans[0].end - spans[0].begin);
  float f[4];
  int64_t n = -1;
  REQUIRE(DecodeData(x, DataType::kFp32, 4, f, &n) == DecodeStatus::kOk);
  CHECK_EQ(f[0], 1.5f);
  CHECK(f[1] == 0.0f && !std::signbit(f[1]));  // -0 is an integer: numpy makes +0.0 of it
  CHECK_EQ(f[2], 2.0f);
  CHECK(std::isnan(f[3]));
  CHECK(DecodeData(x, DataType::kFp32, 3, f, &n) == DecodeStatus::kWrongCount && n == 4);  // count
  CHECK(DecodeData(x, DataType::kInt32, 4, f, &n) == DecodeStatus::kDefer);  // fraction, NaN
  int8_t i8[3];
  CHECK(DecodeData("[1, -128, 127]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kOk && i8[1] == -128);
  CHECK(DecodeData("[1, -129, 127]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kDefer);
  CHECK(DecodeData("[1.0, 2e1, -0.0]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kOk && i8[1] == 20);
  CHECK(DecodeData("[[1, 2], [3]]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kRagged);
  CHECK(DecodeData("[[1, 2], 3]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kRagged);
  CHECK(DecodeData("[1, [2, 3]]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kRagged);
  CHECK(DecodeData("[[1], []]", DataType::kInt8, 1, i8, &n) == DecodeStatus::kDefer);  // empty list
  CHECK(DecodeData("[true, 1]", DataType::kBool, 2, i8, &n) == DecodeStatus::kDefer);
  // The structure decides before a value the reference must judge, as numpy.array's shape does.
  CHECK(DecodeData("[true, 1, 2, 3]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kWrongCount && n == 4);
  CHECK(DecodeData("[NaN, 300, 1, 2, 3]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kWrongCount && n == 5);
  CHECK(DecodeData("[[300], [1, 2]]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kRagged);
  CHECK(DecodeData("[1, 2]", DataType::kInt8, 3, i8, &n) == DecodeStatus::kWrongCount && n == 2);
  uint16_t h[1];
  CHECK(DecodeData("[65520]", DataType::kFp16, 1, h, &n) == DecodeStatus::kDefer);  // overflow
}

TEST(json_half_rounding_is_to_nearest_even) {
  CHECK_EQ(DoubleToHalfBits(1.0), uint16_t{0x3c00});
  CHECK_EQ(DoubleToHalfBits(65504.0), uint16_t{0x7bff});
  CHECK_EQ(DoubleToHalfBits(65519.99), uint16_t{0x7bff});
  CHECK_EQ(DoubleToHalfBits(65520.0), uint16_t{0x7c00});
  CHECK_EQ(DoubleToHalfBits(0x1p-24), uint16_t{0x0001});
  CHECK_EQ(DoubleToHalfBits(0x1p-25), uint16_t{0x0000});  // a tie: to the even zero
  CHECK_EQ(DoubleToHalfBits(3 * 0x1p-25), uint16_t{0x0002});
  CHECK_EQ(DoubleToHalfBits(1.0 + 0x1p-11), uint16_t{0x3c00});  // a tie: to the even 1.0
  CHECK_EQ(DoubleToHalfBits(-0.0), uint16_t{0x8000});
  CHECK_EQ(DoubleToHalfBits(std::numeric_limits<double>::quiet_NaN()), uint16_t{0x7e00});
}

TEST(json_scan_and_decode_of_every_prefix_stay_inside_it) {
  // Under AddressSanitizer each prefix lies in a buffer of its own size: a read past it is caught.
  for (size_t n = 0; n <= kJsonBody.size(); ++n) {
    const std::vector<char> prefix(kJsonBody.begin(), kJsonBody.begin() + static_cast<std::ptrdiff_t>(n));
    std::string skeleton;
    std::vector<JsonDataSpan> spans;
    if (!ScanRequest(std::string_view(prefix.data(), n), &skeleton, &spans)) continue;
    CHECK_EQ(n, kJsonBody.size());  // only the whole body is a JSON object
    for (const JsonDataSpan& span : spans) {
      double out[4];
      int64_t n;
      DecodeData(std::string_view(prefix.data() + span.begin, span.end - span.begin), DataType::kFp64, 4, out, &n);
    }
  }
  // DecodeData is given scanned spans only, but stays inside any text.
  const std::string words = "[true, false, NaN, Infinity, -Infinity, 1.5e3, -7]";
  for (size_t n = 0; n <= words.size(); ++n) {
    const std::vector<char> prefix(words.begin(), words.begin() + static_cast<std::ptrdiff_t>(n));
    double out[7];
    int64_t elements;
    DecodeData(std::string_view(prefix.data(), n), DataType::kFp64, 7, out, &elements);
    DecodeData(std::string_view(prefix.data(), n), DataType::kBool, 7, out, &elements);
    DecodeData(std::string_view(prefix.data(), n), DataType::kFp64, 2, out, &elements);  // too many
  }
}

TEST(json_skeleton_matches_its_bytes_and_decodes_the_data_in_one_pass) {
  const std::string plan =
      R"({"id": "r1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], )"
      R"("data": [[1.5, -0], [2, 3]]}, {"data": [7, -8], "name": "i", "datatype": "INT64"}]})";
  std::string skeleton;
  std::vector<JsonDataSpan> spans;
  REQUIRE(ScanRequest(plan, &skeleton, &spans));
  const JsonSkeleton s(plan, spans, {{DataType::kFp32, 4}, {DataType::kInt64, 2}});
  CHECK(s.lifts_id());
  float x[4];
  int64_t i[2];
  void* outs[2] = {x, i};
  std::string_view id;
  const auto body = [&](const std::string& request_id, const std::string& data, const std::string& ints) {
    std::string b = plan;
    b.replace(b.find("[7, -8]"), 7, ints);
    b.replace(b.find("[[1.5, -0], [2, 3]]"), 19, data);
    b.replace(b.find("r1"), 2, request_id);
    return b;
  };
  const std::string next = body("next", "[[8e-05, -0], [ 0.30471707880496979 ,\n-4.25]]", "[9, 1]");
  REQUIRE(s.Match(next, outs, &id));
  CHECK_EQ(id, std::string_view("next"));
  CHECK_EQ(x[0], static_cast<float>(8e-05));
  CHECK(x[1] == 0.0f && !std::signbit(x[1]));  // -0 is an integer: +0.0, as DecodeData makes it
  CHECK_EQ(x[2], static_cast<float>(0.30471707880496979));
  CHECK_EQ(x[3], -4.25f);
  CHECK(i[0] == 9 && i[1] == 1);
  REQUIRE(s.Match(body("", "[1, NaN, -Infinity, 4]", "[1.0, 2e0]"), outs, &id));  // DecodeData's path
  CHECK(std::isnan(x[1]) && std::isinf(x[2]) && i[1] == 2);
  CHECK(!s.Match(body("", "[1, true, 3, 4]", "[1, 2]"), outs, &id));  // DecodeData leaves it to the reference
  CHECK(!s.Match(body("a\\b", "[1, 2, 3, 4]", "[1, 2]"), outs, &id));   // an escaped id is not lifted
  CHECK(!s.Match(body("r", "[[1, 2, 3], [4]]", "[1, 2]"), outs, &id));     // ragged
  CHECK(!s.Match(body("r", "[1, 2, 3]", "[1, 2]"), outs, &id));            // a wrong count
  CHECK(!s.Match(body("r", "[1, 2, 3, 4]", "[1, 2.5]"), outs, &id));       // a fraction in INT64
  CHECK(!s.Match(body("r", "[1, 2, 3, 4,]", "[1, 2]"), outs, &id));        // not JSON
  CHECK(!s.Match(body("r", "[1, 2, 3, 01]", "[1, 2]"), outs, &id));
  CHECK(!s.Match(body("r", "[1, 2, 3, 4]", "[1, 2]") + " ", outs, &id));  // other bytes around the data
  bool threw = false;
  try {
    JsonSkeleton(plan, spans, {{DataType::kFp32, 4}});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  // Under AddressSanitizer each prefix lies in a buffer of its own size: a read past it is caught.
  const std::string whole = body("r2", "[[1.5e3, -0.25], [2, 3]]", "[1, -2]");
  for (size_t n = 0; n <= whole.size(); ++n) {
    const std::vector<char> prefix(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(n));
    CHECK_EQ(s.Match(std::string_view(prefix.data(), n), outs, &id), n == whole.size());
  }
  // Long digit runs are read eight bytes at a time (AppendDigits): cut anywhere in them, a run ends at
  // the buffer's end, where no word may be read past it.
  const std::string digits =
      body("r3", "[[0.123456789012345678901, -98765432109876.5], [1e-0000000000000001, 4]]",
           "[123456789012345678, -1]");
  for (size_t n = 0; n <= digits.size(); ++n) {
    const std::vector<char> prefix(digits.begin(), digits.begin() + static_cast<std::ptrdiff_t>(n));
    CHECK_EQ(s.Match(std::string_view(prefix.data(), n), outs, &id), n == digits.size());
  }
  CHECK_EQ(x[0], static_cast<float>(0.123456789012345678901));
  CHECK_EQ(x[1], static_cast<float>(-98765432109876.5));
  CHECK(x[2] == 0.1f && i[0] == 123456789012345678);
}

}  // namespace

int main() {
  int passed = 0, failed = 0;
  for (const TestCase& t : Registry()) {
    g_check_failures = 0;
    const auto start = std::chrono::steady_clock::now();
    try {
      t.fn();
    } catch (const RequireFailed&) {
    } catch (const std::exception& e) {
      ReportFailure(__FILE__, __LINE__, std::string("exception: ") + e.what());
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    const bool ok = g_check_failures == 0;
    (ok ? passed : failed) += 1;
    std::printf("%s %s (%.1f ms)\n", ok ? "PASS" : "FAIL", t.name, ms);
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
