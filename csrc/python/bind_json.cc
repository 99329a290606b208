// Python bindings of the JSON tensor decoder (core/json_tensor.h). Both functions read the body
// through the buffer protocol (no copy) and release the GIL while they parse, so that a large body
// decoded on a decoder thread leaves the event loop's thread free.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "core/json_tensor.h"
#include "python/py_backend.h"  // NumpyDtype

namespace py = pybind11;

namespace pyserve {

namespace {

std::string_view View(const py::buffer_info& info) {
  if (info.ndim != 1 || info.itemsize != 1) throw py::value_error("body: expected a contiguous bytes-like object");
  return {static_cast<const char*>(info.ptr), static_cast<size_t>(info.size)};
}

py::object ScanKServeRequest(const py::buffer& body) {
  const py::buffer_info info = body.request();
  const std::string_view text = View(info);
  std::string skeleton;
  std::vector<JsonDataSpan> spans;
  bool ok;
  {
    py::gil_scoped_release release;
    ok = ScanRequest(text, &skeleton, &spans);
  }
  if (!ok) return py::none();
  py::list out(spans.size());
  for (size_t i = 0; i < spans.size(); ++i) {
    out[i] = py::make_tuple(spans[i].entry, spans[i].begin, spans[i].end);
  }
  return py::make_tuple(py::bytes(skeleton), out);
}

py::object DecodeJsonTensor(const py::buffer& body, size_t begin, size_t end, const std::string& datatype,
                            int64_t count) {
  const py::buffer_info info = body.request();
  const std::string_view text = View(info);
  if (begin > end || end > text.size()) throw py::value_error("span out of the body");
  DataType dtype;
  if (!ParseDataType(datatype, &dtype)) throw py::value_error("unknown datatype " + datatype);
  // Each element takes at least two characters ("1,"): a larger count cannot be in the span, and
  // the array is not allocated for it.
  if (dtype == DataType::kBytes || count <= 0 || static_cast<size_t>(count) > (end - begin) / 2 + 1) {
    return py::none();
  }
  // numpy.empty: pybind11's own allocating constructor makes arrays numpy marks read-only here.
  static const auto* empty = new py::object(py::module_::import("numpy").attr("empty"));  // never freed
  py::array out = (*empty)(count, NumpyDtype(dtype));
  void* data = out.mutable_data();
  DecodeStatus status;
  int64_t elements = 0;
  {
    py::gil_scoped_release release;
    status = DecodeData(text.substr(begin, end - begin), dtype, count, data, &elements);
  }
  switch (status) {
    case DecodeStatus::kOk: return std::move(out);
    case DecodeStatus::kRagged: return py::int_(-1);
    case DecodeStatus::kWrongCount: return py::int_(elements);
    case DecodeStatus::kDefer: break;
  }
  return py::none();
}

// A decode plan's JsonSkeleton with what the Python side makes of a match: each tensor's array, of
// its planned shape, and the id as a str.
class PyJsonSkeleton {
 public:
  using Spans = std::vector<std::tuple<int64_t, size_t, size_t>>;            // (entry, begin, end)
  using Tensors = std::vector<std::tuple<std::string, std::string, py::tuple>>;  // (name, datatype, shape)

  // Bodies above this size are matched with the GIL released (a smaller one takes less time than
  // handing the GIL to another thread and back).
  static constexpr size_t kReleaseGilBytes = 64 << 10;

  PyJsonSkeleton(const py::buffer& body, const Spans& spans, const Tensors& tensors)
      : skeleton_(Make(body, spans, tensors)) {
    static const auto* numpy_empty = new py::object(py::module_::import("numpy").attr("empty"));  // kept
    empty_ = *numpy_empty;
    for (const auto& [name, datatype, shape] : tensors) {
      DataType dtype;
      ParseDataType(datatype, &dtype);  // Make checked it
      names_.push_back(py::str(name));
      shapes_.push_back(shape);
      dtypes_.push_back(NumpyDtype(dtype));
    }
  }

  py::object Match(const py::buffer& body) const {
    const py::buffer_info info = body.request();
    const std::string_view text = View(info);
    if (!skeleton_.MayMatch(text)) return py::none();  // another skeleton's body: no buffers made
    const size_t n = names_.size();
    std::vector<py::object> arrays(n);
    std::vector<void*> outs(n);
    for (size_t i = 0; i < n; ++i) {
      arrays[i] = empty_(shapes_[i], dtypes_[i]);
      outs[i] = py::reinterpret_borrow<py::array>(arrays[i]).mutable_data();
    }
    std::string_view id;
    bool matched;
    if (text.size() >= kReleaseGilBytes) {
      py::gil_scoped_release release;
      matched = skeleton_.Match(text, outs.data(), &id);
    } else {
      matched = skeleton_.Match(text, outs.data(), &id);
    }
    if (!matched) return py::none();
    py::dict inputs;
    for (size_t i = 0; i < n; ++i) inputs[names_[i]] = std::move(arrays[i]);
    py::object request_id = skeleton_.lifts_id() ? py::object(py::str(id.data(), id.size())) : py::none();
    return py::make_tuple(std::move(inputs), std::move(request_id));
  }

 private:
  static JsonSkeleton Make(const py::buffer& body, const Spans& spans, const Tensors& tensors) {
    const py::buffer_info info = body.request();
    std::vector<JsonDataSpan> lifted;
    for (const auto& [entry, begin, end] : spans) lifted.push_back({entry, begin, end});
    std::vector<JsonSkeleton::Tensor> planned;
    for (const auto& [name, datatype, shape] : tensors) {
      DataType dtype;
      if (!ParseDataType(datatype, &dtype)) throw py::value_error("unknown datatype " + datatype);
      int64_t count = 1;
      for (const auto& dim : shape) {
        if (__builtin_mul_overflow(count, dim.cast<int64_t>(), &count)) {
          throw py::value_error("tensor '" + name + "': its shape's element count overflows");
        }
      }
      planned.push_back({dtype, count});
    }
    return JsonSkeleton(View(info), lifted, std::move(planned));
  }

  JsonSkeleton skeleton_;
  py::object empty_;
  std::vector<py::str> names_;
  std::vector<py::tuple> shapes_;
  std::vector<py::dtype> dtypes_;
};

}  // namespace

void RegisterJson(py::module_& m) {
  py::class_<PyJsonSkeleton>(m, "JsonSkeleton",
                             "A KServe JSON body's skeleton, as a decode plan keeps it (see "
                             "core/json_tensor.h): JsonSkeleton(body, spans, tensors), from a body, "
                             "what scan_kserve_request lifted from it (the id's span included) and "
                             "each data span's (name, datatype, shape); ValueError when they do not "
                             "fit together.")
      .def(py::init<const py::buffer&, const PyJsonSkeleton::Spans&, const PyJsonSkeleton::Tensors&>(),
           py::arg("body"), py::arg("spans"), py::arg("tensors"))
      .def("match", &PyJsonSkeleton::Match, py::arg("body"),
           "({name: array of the planned shape}, id or None) when `body` has this skeleton and data "
           "that decode_json_tensor decodes (in one pass over the body); None otherwise, for the "
           "scan-then-decode path to decide.");
  m.def("scan_kserve_request", &ScanKServeRequest, py::arg("body"),
        "Lift the inputs' JSON data arrays (and a plain top-level id) out of a KServe request body "
        "(GIL released): (skeleton bytes, [(entry, begin, end)]), the id's span last with entry -1; "
        "or None to decode the body as before.");
  m.def("decode_json_tensor", &DecodeJsonTensor, py::arg("body"), py::arg("begin"), py::arg("end"),
        py::arg("datatype"), py::arg("count"),
        "Decode the data array body[begin:end] into a flat array of `count` elements of `datatype` "
        "(GIL released); -1 when its lists are ragged, its element count when that is not `count`, "
        "None when the reference decoder must decide.");
}

}  // namespace pyserve
