// Python bindings of the JSON tensor decoder (core/json_tensor.h). Both functions read the body
// through the buffer protocol (no copy) and release the GIL while they parse, so that a large body
// decoded on a decoder thread leaves the event loop's thread free.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <string_view>
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

}  // namespace

void RegisterJson(py::module_& m) {
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
