// Python binding of the JSON reply writer (core/json_reply.h): the whole body of a KServe JSON reply
// written into one bytes object with the GIL released. Python objects are read first (buffers,
// strings, the parts of the reply), then the GIL is released while the text is written, then the
// bytes object is trimmed to what was written (no copy of the body).
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "core/json_reply.h"

namespace py = pybind11;

namespace pyserve {

namespace {

std::string_view BytesView(const py::handle& obj, const char* what) {
  if (!PyBytes_Check(obj.ptr())) throw py::type_error(std::string(what) + ": expected bytes");
  return {PyBytes_AS_STRING(obj.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(obj.ptr()))};
}

// One piece of the body: a fragment written as is, or a tensor entry.
struct Piece {
  std::string_view fragment;
  bool is_tensor = false;
  JsonTensorView tensor;
};

// Reads a (name, datatype, shape, flat array) item; false when its BYTES elements are not all bytes
// or str (the caller encodes that reply the reference way). `buffers` keeps the array views alive.
bool ReadTensor(const py::tuple& item, JsonTensorView* t, std::vector<py::buffer_info>* buffers) {
  if (item.size() != 4) throw py::value_error("a tensor item is (name, datatype, shape, flat array)");
  const py::str name = item[0];
  Py_ssize_t size = 0;
  const char* utf8 = PyUnicode_AsUTF8AndSize(name.ptr(), &size);
  if (utf8 == nullptr) {
    PyErr_Clear();  // a lone surrogate: the reference says what is wrong
    return false;
  }
  t->name = {utf8, static_cast<size_t>(size)};
  if (!ParseDataType(item[1].cast<std::string>(), &t->dtype)) throw py::value_error("unknown datatype");
  for (const auto& d : item[2]) t->shape.push_back(d.cast<int64_t>());
  const py::handle array = item[3];
  if (t->dtype == DataType::kBytes) {
    // A 1-D object array: its elements are owned by the array, which the caller keeps alive.
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(array);
    const size_t n = seq.size();
    t->strings.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const py::object v = seq[i];
      PyObject* o = v.ptr();
      if (PyBytes_Check(o)) {
        t->strings.emplace_back(PyBytes_AS_STRING(o), static_cast<size_t>(PyBytes_GET_SIZE(o)));
      } else if (PyUnicode_Check(o)) {
        const char* s = PyUnicode_AsUTF8AndSize(o, &size);
        if (s == nullptr) {
          PyErr_Clear();
          return false;
        }
        t->strings.emplace_back(s, static_cast<size_t>(size));
      } else {
        return false;
      }
      // The element outlives `v`: the array holds a reference to it.
    }
    t->count = static_cast<int64_t>(n);
    return true;
  }
  buffers->push_back(py::reinterpret_borrow<py::buffer>(array).request());
  const py::buffer_info& info = buffers->back();
  const auto itemsize = static_cast<py::ssize_t>(ElementSize(t->dtype));
  if (info.ndim != 1 || info.itemsize != itemsize || (info.size > 1 && info.strides[0] != itemsize)) {
    throw py::value_error("a tensor item's array must be flat, C-contiguous, of the datatype's item size");
  }
  t->data = info.ptr;
  t->count = info.size;
  return true;
}

py::object EncodeJsonReply(const py::bytes& head, const py::list& items, const py::bytes& tail,
                           const py::list& parts) {
  std::vector<Piece> pieces(items.size());
  std::vector<py::buffer_info> buffers;
  buffers.reserve(items.size() + parts.size());
  size_t total = BytesView(head, "head").size() + BytesView(tail, "tail").size() + items.size();
  for (size_t i = 0; i < items.size(); ++i) {
    const py::handle item = items[i];
    if (PyBytes_Check(item.ptr())) {
      pieces[i].fragment = BytesView(item, "item");
      total += pieces[i].fragment.size();
      continue;
    }
    pieces[i].is_tensor = true;
    if (!ReadTensor(py::reinterpret_borrow<py::tuple>(item), &pieces[i].tensor, &buffers)) return py::none();
    total += JsonTensorMaxSize(pieces[i].tensor);
  }
  std::vector<std::string_view> raw;
  for (const auto& part : parts) {
    buffers.push_back(py::reinterpret_borrow<py::buffer>(part).request());
    const py::buffer_info& info = buffers.back();
    const size_t nbytes = static_cast<size_t>(info.size * info.itemsize);
    if (info.ndim > 1 || (info.ndim == 1 && info.size > 1 && info.strides[0] != info.itemsize)) {
      throw py::value_error("a part must be a flat, contiguous buffer");
    }
    raw.emplace_back(static_cast<const char*>(info.ptr), nbytes);
    total += nbytes;
  }
  PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
  if (out == nullptr) throw py::error_already_set();
  py::object result = py::reinterpret_steal<py::object>(out);
  char* const begin = PyBytes_AS_STRING(out);
  char* p = begin;
  int64_t bad = -1;  // the item whose BYTES elements are not UTF-8
  const std::string_view head_text = BytesView(head, "head"), tail_text = BytesView(tail, "tail");
  {
    py::gil_scoped_release release;
    std::memcpy(p, head_text.data(), head_text.size());
    p += head_text.size();
    for (size_t i = 0; i < pieces.size() && bad < 0; ++i) {
      if (i) *p++ = ',';
      if (!pieces[i].is_tensor) {
        std::memcpy(p, pieces[i].fragment.data(), pieces[i].fragment.size());
        p += pieces[i].fragment.size();
        continue;
      }
      char* end = WriteJsonTensor(pieces[i].tensor, p);
      if (end == nullptr) bad = static_cast<int64_t>(i);
      p = end;
    }
    if (bad < 0) {
      std::memcpy(p, tail_text.data(), tail_text.size());
      p += tail_text.size();
      for (const auto& r : raw) {
        std::memcpy(p, r.data(), r.size());
        p += r.size();
      }
    }
  }
  if (bad >= 0) return py::int_(bad);
  // Shrinks in place (realloc), without copying what was written.
  if (_PyBytes_Resize(&out, static_cast<Py_ssize_t>(p - begin)) != 0) {
    result.release();  // _PyBytes_Resize freed it
    throw py::error_already_set();
  }
  result.release();
  return py::reinterpret_steal<py::object>(out);
}

}  // namespace

void RegisterJsonReply(py::module_& m) {
  m.def("encode_json_reply", &EncodeJsonReply, py::arg("head"), py::arg("items"), py::arg("tail"),
        py::arg("parts"),
        "head + the items joined by ',' + tail + the raw parts, as one bytes object written with the GIL "
        "released. An item is bytes (written as is) or (name, datatype, shape, flat C-contiguous array) "
        "written as a KServe JSON tensor entry. Returns the bytes; the index of an item whose BYTES "
        "elements are not UTF-8; or None when an item holds what this writer does not take (BYTES "
        "elements other than bytes and str, a str with a lone surrogate).");
  m.def("join_buffers", [](const py::list& parts) { return EncodeJsonReply(py::bytes(), py::list(), py::bytes(), parts); },
        py::arg("parts"),
        "b''.join(parts) with the GIL released while the bytes are copied (parts: flat contiguous buffers).");
}

}  // namespace pyserve
