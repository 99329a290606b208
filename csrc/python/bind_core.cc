// Python bindings of the scheduler, the completion queue and the batching policy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/batch_policy.h"
#include "core/cuda_host.h"
#include "core/scheduler.h"
#include "python/py_backend.h"

namespace py = pybind11;

namespace pyserve {

namespace {

// What a Python submitter lends the core: the future (token) and the arrays the request reads.
// Destroyed only by CompletionQueue.drain() or a failed submit, both with the GIL held.
struct PyRequestOwner final : RequestOwner {
  py::object token;
  std::vector<py::object> keep;
};

std::shared_ptr<BufferPool> SharedPool() {
  static std::shared_ptr<BufferPool> pool = BufferPool::Create();
  return pool;
}

TensorSpec SpecFromTuple(const py::handle& t) {
  auto tup = t.cast<py::tuple>();
  TensorSpec s;
  s.name = tup[0].cast<std::string>();
  const auto dt = tup[1].cast<std::string>();
  if (!ParseDataType(dt, &s.dtype)) throw py::value_error("tensor '" + s.name + "': unknown datatype " + dt);
  s.shape = tup[2].cast<std::vector<int64_t>>();
  if (tup.size() > 3) s.optional = tup[3].cast<bool>();
  return s;
}

py::object CoreError() {
  static py::object cls = py::module_::import("pyserve._core").attr("CoreError");
  return cls;
}

[[noreturn]] void Raise(const Status& s) {
  PyErr_SetObject(CoreError().ptr(), py::make_tuple(static_cast<int>(s.code), s.message).ptr());
  throw py::error_already_set();
}

py::dict HistogramDict(const HistogramSnapshot& h) {
  py::dict d;
  d["upper_bounds"] = h.upper_bounds;
  d["counts"] = h.counts;
  d["sum"] = h.sum;
  d["count"] = h.count;
  return d;
}

// The core's built-in identity backend, as a Python object: a Scheduler given one runs batches in C++
// and never takes the GIL for them (tests and benchmarks of the core).
struct NativeIdentity {};

// Deletes a Scheduler with the GIL released: stopping joins instance threads that may need it.
struct ReleaseGilDelete {
  void operator()(Scheduler* s) const {
    py::gil_scoped_release release;
    delete s;
  }
};

class PyScheduler {
 public:
  PyScheduler(SchedulerOptions options, py::object backend, std::shared_ptr<CompletionQueue> completions) {
    Status s = ValidateOptions(options);
    if (!s.ok()) Raise(s);
    std::shared_ptr<Backend> b;
    std::vector<std::string> output_names;
    for (const auto& o : options.outputs) output_names.push_back(o.name);
    if (py::isinstance<NativeIdentity>(backend)) {
      b = std::make_shared<IdentityBackend>(output_names);
    } else {
      b = std::make_shared<PyBackend>(backend, options.outputs,
                                      "model '" + options.model_name + "' version '" + options.model_version + "'");
    }
    for (const auto& in : options.inputs) input_names_.push_back(py::str(in.name));
    completions_ = completions;
    scheduler_.reset(new Scheduler(std::move(options), std::move(b), std::move(completions), SharedPool()));
  }

  // Hot path: the GIL stays held; the queue lock is taken only briefly inside Submit, and releasing
  // and re-taking the GIL would cost more than the push itself.
  uint64_t Submit(const py::dict& inputs, py::object token, int priority, int64_t timeout_us) {
    const auto& specs = scheduler_->options().inputs;
    auto owner = std::make_unique<PyRequestOwner>();
    auto request = std::make_unique<Request>();
    request->inputs.resize(specs.size());
    owner->keep.reserve(specs.size());
    size_t present = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      PyObject* item = PyDict_GetItem(inputs.ptr(), input_names_[i].ptr());
      if (item == nullptr && specs[i].optional) {  // left out: the backend gets the inputs present
        request->inputs[i].present = false;
        request->inputs[i].view.dtype = specs[i].dtype;
        continue;
      }
      if (item == nullptr) Raise({StatusCode::kInvalidArgument, "missing input '" + specs[i].name + "'"});
      ++present;
      // The name for a message, built only when one is needed (every input of every request passes here).
      const auto who = [&specs, i] { return "input '" + specs[i].name + "'"; };
      if (!py::isinstance<py::array>(item)) {
        Raise({StatusCode::kInvalidArgument, who() + ": expected a numpy array"});
      }
      auto array = py::reinterpret_borrow<py::array>(item);
      Status s = CheckArray(array, specs[i].dtype, who);
      if (!s.ok()) Raise(s);
      RequestInput& in = request->inputs[i];
      in.view.dtype = specs[i].dtype;
      in.view.shape.assign(array.shape(), array.shape() + array.ndim());
      if (specs[i].dtype == DataType::kBytes) {
        try {
          in.owned = SerializeBytes(array, who());
        } catch (const py::value_error& e) {
          Raise({StatusCode::kInvalidArgument, e.what()});
        }
        in.view.data = reinterpret_cast<const uint8_t*>(in.owned.data());
        in.view.nbytes = in.owned.size();
      } else {
        in.view.data = static_cast<const uint8_t*>(array.data());
        in.view.nbytes = static_cast<size_t>(array.nbytes());
        owner->keep.push_back(std::move(array));
      }
    }
    if (static_cast<size_t>(PyDict_Size(inputs.ptr())) != present) {
      for (auto item : inputs) {
        bool known = false;
        for (const auto& n : input_names_) known = known || n.equal(item.first);
        if (!known) {
          std::string names;
          for (const auto& sp : specs) names += (names.empty() ? "" : ", ") + sp.name;
          Raise({StatusCode::kInvalidArgument, "unexpected input '" + py::str(item.first).cast<std::string>() +
                                                   "': the model's inputs are " + names});
        }
      }
    }
    request->priority_level = priority;
    request->timeout_ns = timeout_us * 1000;
    owner->token = std::move(token);
    request->owner = std::move(owner);
    uint64_t id = 0;
    Status s = scheduler_->Submit(&request, &id);
    if (!s.ok()) Raise(s);  // `request` (and the references it holds) is dropped here, GIL held
    return id;
  }

  bool Cancel(uint64_t id) { return scheduler_->Cancel(id); }
  // Holds the GIL: an inline batch of a Python backend runs on this thread, which already has it.
  int Flush(bool run_inline) { return static_cast<int>(scheduler_->Flush(run_inline)); }

  void Stop(bool drain) {
    py::gil_scoped_release release;
    scheduler_->Stop(drain);
  }

  py::dict Stats() const {
    StatsSnapshot s = scheduler_->Stats();
    py::dict d;
    d["requests_succeeded"] = s.requests_succeeded;
    d["requests_failed"] = s.requests_failed;
    d["requests_timed_out"] = s.requests_timed_out;
    d["requests_rejected"] = s.requests_rejected;
    d["requests_cancelled"] = s.requests_cancelled;
    d["samples_inferred"] = s.samples_inferred;
    d["batches_executed"] = s.batches_executed;
    d["queue_depth"] = s.queue_depth;
    d["in_flight"] = s.in_flight;
    d["queue_us"] = HistogramDict(s.queue_us);
    d["compute_us"] = HistogramDict(s.compute_us);
    d["request_us"] = HistogramDict(s.request_us);
    d["batch_size"] = HistogramDict(s.batch_size);
    return d;
  }

 private:
  std::vector<py::str> input_names_;
  std::shared_ptr<CompletionQueue> completions_;
  std::unique_ptr<Scheduler, ReleaseGilDelete> scheduler_;
};

// drain() -> list of (token, code, message, outputs or None, queue_us, compute_us); the owners die
// here, GIL held. The times are -1 when the request never queued / never ran.
py::list Drain(CompletionQueue& cq) {
  std::vector<Completion> items = cq.Drain();
  py::list out(items.size());
  const void* last_holder = nullptr;
  py::object last_base;
  // The outputs' names as Python strings, made once per drain rather than once per request and output
  // (a batch's requests name the same outputs in the same order).
  std::vector<std::pair<std::string, py::str>> names;
  for (size_t i = 0; i < items.size(); ++i) {
    Completion& c = items[i];
    auto* owner = static_cast<PyRequestOwner*>(c.owner.get());
    py::object token = owner ? owner->token : py::none();
    py::object outputs = py::none();
    if (c.status.ok()) {
      py::dict d;
      for (size_t o = 0; o < c.outputs.size(); ++o) {
        const OutputSlice& s = c.outputs[o];
        if (s.view.dtype != DataType::kBytes && s.holder.get() != last_holder) {
          last_holder = s.holder.get();  // one capsule per batch output, shared by its slices
          last_base = HolderCapsule(s.holder);
        }
        if (o == names.size()) names.emplace_back(s.name, py::str(s.name));
        if (names[o].first != s.name) names[o] = {s.name, py::str(s.name)};
        d[names[o].second] = ToNumpy(s.view, s.holder, s.view.dtype == DataType::kBytes ? py::handle() : last_base);
      }
      outputs = std::move(d);
    }
    out[i] = py::make_tuple(std::move(token), static_cast<int>(c.status.code), c.status.message, std::move(outputs),
                            c.queue_ns < 0 ? -1 : c.queue_ns / 1000, c.compute_ns < 0 ? -1 : c.compute_ns / 1000);
  }
  return out;
}

}  // namespace

void RegisterCore(py::module_& m) {
  py::object core_error = py::reinterpret_steal<py::object>(
      PyErr_NewExceptionWithDoc("pyserve._core.CoreError",
                                "A request or option the core refused: args are (status code, message).",
                                PyExc_Exception, nullptr));
  m.attr("CoreError") = core_error;

  py::class_<SchedulerOptions>(m, "SchedulerOptions")
      .def(py::init([](std::string model_name, std::string model_version, const py::list& inputs,
                       const py::list& outputs, int64_t max_batch_size, std::vector<int64_t> preferred_batch_sizes,
                       int64_t max_queue_delay_us, int64_t max_queue_size, int64_t default_timeout_us,
                       int priority_levels, int default_priority_level, int instance_count,
                       bool submitter_flushes) {
             SchedulerOptions o;
             o.model_name = std::move(model_name);
             o.model_version = std::move(model_version);
             for (auto t : inputs) o.inputs.push_back(SpecFromTuple(t));
             for (auto t : outputs) o.outputs.push_back(SpecFromTuple(t));
             o.batch.max_batch_size = max_batch_size;
             o.batch.preferred_batch_sizes = std::move(preferred_batch_sizes);
             o.batch.max_queue_delay_ns = max_queue_delay_us * 1000;
             o.max_queue_size = max_queue_size;
             o.default_timeout_ns = default_timeout_us * 1000;
             o.priority_levels = priority_levels;
             o.default_priority_level = default_priority_level;
             o.instance_count = instance_count;
             o.submitter_flushes = submitter_flushes;
             return o;
           }),
           py::kw_only(), py::arg("model_name"), py::arg("model_version"), py::arg("inputs"), py::arg("outputs"),
           py::arg("max_batch_size") = 0, py::arg("preferred_batch_sizes") = std::vector<int64_t>{},
           py::arg("max_queue_delay_us") = 0, py::arg("max_queue_size") = 0, py::arg("default_timeout_us") = 0,
           py::arg("priority_levels") = 1, py::arg("default_priority_level") = 1, py::arg("instance_count") = 1,
           py::arg("submitter_flushes") = false);

  py::class_<CompletionQueue, std::shared_ptr<CompletionQueue>>(m, "CompletionQueue")
      .def(py::init<>())
      .def("fileno", &CompletionQueue::fd)
      .def("drain", &Drain)
      .def("wait", &CompletionQueue::Wait, py::arg("timeout_ms"), py::call_guard<py::gil_scoped_release>());

  py::class_<NativeIdentity>(m, "IdentityBackend",
                             "The core's identity backend: output i is input i, run in C++ without the GIL.")
      .def(py::init<>());

  py::class_<PyScheduler>(m, "Scheduler")
      .def(py::init<SchedulerOptions, py::object, std::shared_ptr<CompletionQueue>>(), py::arg("options"),
           py::arg("backend"), py::arg("completions"))
      .def("submit", &PyScheduler::Submit, py::arg("inputs"), py::arg("token"), py::arg("priority") = 0,
           py::arg("timeout_us") = 0)
      .def("cancel", &PyScheduler::Cancel, py::arg("request_id"))
      .def("flush", &PyScheduler::Flush, py::arg("run_inline") = false,
           "Every request received so far is queued: an idle instance need not wait for more. With "
           "run_inline, a cheap batch may run on the calling thread. Returns 0 (flushed), 1 (ran a batch "
           "inline) or 2 (postponed: costly model, fresh submits; flush again next turn).")
      .def("stop", &PyScheduler::Stop, py::arg("drain") = true)
      .def("stats", &PyScheduler::Stats);

  m.def(
      "decide",
      [](const std::vector<std::tuple<int64_t, uint64_t, int64_t, int64_t>>& queue, int64_t now_ns,
         int64_t max_batch_size, std::vector<int64_t> preferred_batch_sizes, int64_t max_queue_delay_ns,
         int64_t flushed_ns) {
        struct VecView final : QueueView {
          std::vector<PendingRequest> items;
          size_t size() const override { return items.size(); }
          const PendingRequest& at(size_t i) const override { return items[i]; }
        } view;
        for (const auto& [bs, sig, enq, dl] : queue) view.items.push_back({bs, sig, enq, dl});
        BatchOptions o{max_batch_size, std::move(preferred_batch_sizes), max_queue_delay_ns};
        Decision d = Decide(view, now_ns, o, flushed_ns);
        return py::make_tuple(d.dispatch, d.expire, d.wake_ns);
      },
      py::arg("queue"), py::arg("now_ns"), py::arg("max_batch_size"), py::arg("preferred_batch_sizes"),
      py::arg("max_queue_delay_ns"), py::arg("flushed_ns") = kNeverFlushed,
      "The batching policy on a queue of (batch_size, signature, enqueue_ns, deadline_ns) tuples in dispatch "
      "order: returns (dispatch positions, expired positions, wake_ns).");
  m.attr("NO_DEADLINE") = kNoDeadline;
  m.attr("NEVER_FLUSHED") = kNeverFlushed;

  m.def("serialize_bytes", [](const py::array& a) { return py::bytes(SerializeBytes(a, "tensor")); },
        "BYTES wire form of an array of bytes/str.");
  m.def(
      "deserialize_bytes",
      [](const py::buffer& b, const std::vector<int64_t>& shape) {
        py::buffer_info info = b.request();
        return DeserializeBytes(static_cast<const uint8_t*>(info.ptr), static_cast<size_t>(info.size * info.itemsize),
                                shape);
      },
      py::arg("data"), py::arg("shape"), "An object array of bytes from the BYTES wire form.");

  m.def("build_info", [] {
    py::dict d;
    d["cuda"] = BuiltWithCuda();
    d["cuda_device"] = CudaDeviceAvailable();
    d["pinned_buffers"] = SharedPool()->pinned();
    return d;
  });
}

}  // namespace pyserve
