// Python binding of the plain HTTP request parser (core/http_request.h): one call a request instead
// of llhttp's callbacks into Python. A raw METH_FASTCALL function, not a pybind11 one: it runs once
// per request on the event loop's thread, where pybind11's argument dispatch would cost more than the
// parse itself.
#include <pybind11/pybind11.h>

#include <cstring>

#include "core/http_request.h"

namespace py = pybind11;

namespace pyserve {

namespace {

// Header names most requests carry, made once: no new str (and no hash to compute) for them.
constexpr const char* kCommonNames[] = {
    "host", "content-type", "content-length", "user-agent", "accept", "accept-encoding",
    "connection", "inference-header-content-length", "authorization", "traceparent"};
constexpr const char* kMethods[] = {"POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};

PyObject* g_names[std::size(kCommonNames)] = {};
PyObject* g_methods[std::size(kMethods)] = {};

PyObject* NameObject(std::string_view lower) {
  for (size_t k = 0; k < std::size(kCommonNames); ++k) {
    if (std::string_view(kCommonNames[k]) == lower) {
      Py_INCREF(g_names[k]);
      return g_names[k];
    }
  }
  return PyUnicode_FromStringAndSize(lower.data(), static_cast<Py_ssize_t>(lower.size()));
}

PyObject* MethodObject(std::string_view method) {
  for (size_t k = 0; k < std::size(kMethods); ++k) {
    if (method == kMethods[k]) {
      Py_INCREF(g_methods[k]);
      return g_methods[k];
    }
  }
  return PyBytes_FromStringAndSize(method.data(), static_cast<Py_ssize_t>(method.size()));
}

PyObject* Bytes(std::string_view s) {
  return PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
}

PyObject* Build(const PlainRequest& r, size_t start) {
  PyObject* headers = PyDict_New();
  if (headers == nullptr) return nullptr;
  char lower[kMaxPlainHead];
  for (size_t k = 0; k < r.header_count; ++k) {
    const HttpHeaderView& h = r.headers[k];
    for (size_t j = 0; j < h.name.size(); ++j) {
      const char c = h.name[j];
      lower[j] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
    }
    PyObject* name = NameObject({lower, h.name.size()});
    // ASCII only (the parser took 0x20-0x7E and tabs), so this is latin-1 as the general path decodes.
    PyObject* value = PyUnicode_FromStringAndSize(h.value.data(), static_cast<Py_ssize_t>(h.value.size()));
    const int failed = name == nullptr || value == nullptr || PyDict_SetItem(headers, name, value) < 0;
    Py_XDECREF(name);
    Py_XDECREF(value);
    if (failed) {
      Py_DECREF(headers);
      return nullptr;
    }
  }
  // (end, method, target, headers, body, http10, keep_alive)
  PyObject* result = PyTuple_New(7);
  if (result == nullptr) {
    Py_DECREF(headers);
    return nullptr;
  }
  PyTuple_SET_ITEM(result, 0, PyLong_FromSsize_t(static_cast<Py_ssize_t>(start + r.end)));
  PyTuple_SET_ITEM(result, 1, MethodObject(r.method));
  PyTuple_SET_ITEM(result, 2, Bytes(r.target));
  PyTuple_SET_ITEM(result, 3, headers);
  PyTuple_SET_ITEM(result, 4, Bytes(r.body));
  PyTuple_SET_ITEM(result, 5, Py_NewRef(r.http10 ? Py_True : Py_False));
  PyTuple_SET_ITEM(result, 6, Py_NewRef(r.keep_alive ? Py_True : Py_False));
  for (Py_ssize_t k = 0; k < 7; ++k) {
    if (PyTuple_GET_ITEM(result, k) == nullptr) {  // out of memory: the tuple frees what was made
      Py_DECREF(result);
      return nullptr;
    }
  }
  return result;
}

PyObject* ParsePlainRequestPy(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "parse_plain_request(data, start, max_body_bytes) takes 3 arguments");
    return nullptr;
  }
  const Py_ssize_t start = PyLong_AsSsize_t(args[1]);
  if (start == -1 && PyErr_Occurred()) return nullptr;
  const unsigned long long max_body = PyLong_AsUnsignedLongLong(args[2]);
  if (max_body == static_cast<unsigned long long>(-1) && PyErr_Occurred()) return nullptr;
  Py_buffer view;
  if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return nullptr;
  if (start < 0 || start > view.len) {
    PyBuffer_Release(&view);
    PyErr_SetString(PyExc_ValueError, "start: expected an offset within data");
    return nullptr;
  }
  PlainRequest request;
  const std::string_view data(static_cast<const char*>(view.buf) + start,
                              static_cast<size_t>(view.len - start));
  PyObject* result = nullptr;
  if (ParsePlainRequest(data, max_body, &request) == PlainParse::kComplete) {
    result = Build(request, static_cast<size_t>(start));
  } else {
    result = Py_NewRef(Py_None);
  }
  PyBuffer_Release(&view);
  return result;
}

PyMethodDef kMethodsDef[] = {
    {"parse_plain_request", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ParsePlainRequestPy)),
     METH_FASTCALL,
     "parse_plain_request(data, start, max_body_bytes) -> (end, method, target, headers, body, http10, "
     "keep_alive) | None\n\n"
     "The plain HTTP/1.1 request at data[start:] (csrc/core/http_request.h says which are plain): end is\n"
     "the offset just past its body; method, target and body are bytes; headers a dict of lower-cased\n"
     "names to values (str). None: not plain, or not all in data; the general parser takes it."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

void RegisterHttp(py::module_& m) {
  for (size_t k = 0; k < std::size(kCommonNames); ++k) {
    g_names[k] = PyUnicode_InternFromString(kCommonNames[k]);
    if (g_names[k] == nullptr) throw py::error_already_set();
  }
  for (size_t k = 0; k < std::size(kMethods); ++k) {
    g_methods[k] = PyBytes_FromString(kMethods[k]);
    if (g_methods[k] == nullptr) throw py::error_already_set();
  }
  if (PyModule_AddFunctions(m.ptr(), kMethodsDef) < 0) throw py::error_already_set();
}

}  // namespace pyserve
