#include "python/py_backend.h"

#include <pybind11/numpy.h>

#include <cstring>

namespace py = pybind11;

namespace pyserve {

PyObjectHolder::~PyObjectHolder() {
  if (object == nullptr || !Py_IsInitialized()) return;
  PyGILState_STATE state = PyGILState_Ensure();
  Py_DECREF(object);
  PyGILState_Release(state);
}

namespace {
py::dtype MakeDtype(DataType dtype) {
  switch (dtype) {
    case DataType::kBool: return py::dtype("?");
    case DataType::kUint8: return py::dtype("<u1");
    case DataType::kUint16: return py::dtype("<u2");
    case DataType::kUint32: return py::dtype("<u4");
    case DataType::kUint64: return py::dtype("<u8");
    case DataType::kInt8: return py::dtype("<i1");
    case DataType::kInt16: return py::dtype("<i2");
    case DataType::kInt32: return py::dtype("<i4");
    case DataType::kInt64: return py::dtype("<i8");
    case DataType::kFp16: return py::dtype("<f2");
    case DataType::kFp32: return py::dtype("<f4");
    case DataType::kFp64: return py::dtype("<f8");
    case DataType::kBytes: return py::dtype("O");
  }
  return py::dtype("O");
}
}  // namespace

py::dtype NumpyDtype(DataType dtype) {
  // Made once per datatype: numpy parses a type string on every py::dtype("<f4"), which cost each
  // request's every output view about 2,000 instructions. Never freed (leaked on purpose), so that no
  // destructor runs after the interpreter is gone. GIL held.
  static py::object* cache[static_cast<int>(DataType::kBytes) + 1] = {};
  py::object*& slot = cache[static_cast<int>(dtype)];
  if (slot == nullptr) slot = new py::object(MakeDtype(dtype));
  return py::reinterpret_borrow<py::dtype>(*slot);
}

namespace {
char KindOf(DataType d) {
  switch (d) {
    case DataType::kBool: return 'b';
    case DataType::kUint8: case DataType::kUint16: case DataType::kUint32: case DataType::kUint64: return 'u';
    case DataType::kInt8: case DataType::kInt16: case DataType::kInt32: case DataType::kInt64: return 'i';
    case DataType::kFp16: case DataType::kFp32: case DataType::kFp64: return 'f';
    case DataType::kBytes: return 'O';
  }
  return '?';
}
}  // namespace

Status CheckArray(const py::array& array, DataType expected, const std::function<std::string()>& who) {
  const py::dtype dt = array.dtype();
  const char kind = dt.kind();
  const bool bytes_like = kind == 'O' || kind == 'S' || kind == 'U';
  const bool ok = expected == DataType::kBytes
                      ? bytes_like
                      : kind == KindOf(expected) && static_cast<size_t>(dt.itemsize()) == ElementSize(expected) &&
                            dt.byteorder() != '>';  // the descriptor's field: no attribute lookup
  if (!ok) {
    // Name what was sent in the protocol's words (INT32), falling back to numpy's for the rest.
    std::string got = "numpy " + py::str(dt).cast<std::string>();
    for (int t = 0; t <= static_cast<int>(DataType::kFp64); ++t) {
      const auto d = static_cast<DataType>(t);
      if (kind == KindOf(d) && static_cast<size_t>(dt.itemsize()) == ElementSize(d)) got = DataTypeName(d);
    }
    return {StatusCode::kInvalidArgument, who() + ": expected datatype " + DataTypeName(expected) + ", got " + got};
  }
  if (expected != DataType::kBytes && !(array.flags() & py::array::c_style)) {
    return {StatusCode::kInvalidArgument, who() + ": the array must be C-contiguous"};
  }
  return Status::Ok();
}

std::string SerializeBytes(const py::array& array, const std::string& who) {
  std::string out;
  py::array flat = array.attr("reshape")(-1);
  const py::ssize_t n = flat.size();
  const char kind = array.dtype().kind();
  for (py::ssize_t i = 0; i < n; ++i) {
    py::object item = flat.attr("__getitem__")(i);
    char* data = nullptr;
    Py_ssize_t len = 0;
    py::object keep;
    if (PyBytes_Check(item.ptr())) {
      PyBytes_AsStringAndSize(item.ptr(), &data, &len);
    } else if (PyUnicode_Check(item.ptr())) {
      const char* s = PyUnicode_AsUTF8AndSize(item.ptr(), &len);
      if (s == nullptr) throw py::error_already_set();
      data = const_cast<char*>(s);
    } else if (kind == 'S' || PyObject_CheckBuffer(item.ptr())) {
      keep = py::reinterpret_steal<py::object>(PyBytes_FromObject(item.ptr()));
      if (!keep) throw py::error_already_set();
      PyBytes_AsStringAndSize(keep.ptr(), &data, &len);
    } else {
      throw py::value_error(who + ": BYTES element " + std::to_string(i) + " is " +
                            py::str(py::type::of(item).attr("__name__")).cast<std::string>() +
                            ", expected bytes or str");
    }
    const uint32_t len32 = static_cast<uint32_t>(len);
    out.append(reinterpret_cast<const char*>(&len32), 4);
    out.append(data, static_cast<size_t>(len));
  }
  return out;
}

py::array DeserializeBytes(const uint8_t* data, size_t nbytes, const std::vector<int64_t>& shape) {
  const int64_t count = ElementCount(shape);
  std::vector<uint64_t> offsets;
  if (!BytesElementOffsets(data, nbytes, count, &offsets)) {
    throw py::value_error("BYTES data does not hold " + std::to_string(count) + " elements");
  }
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  py::array out(py::dtype("O"), dims);
  auto** items = static_cast<PyObject**>(out.mutable_data());
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t begin = offsets[i] + 4;
    PyObject* b = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(data + begin),
                                            static_cast<Py_ssize_t>(offsets[i + 1] - begin));
    if (b == nullptr) throw py::error_already_set();
    Py_XDECREF(items[i]);  // numpy fills new object arrays with None
    items[i] = b;
  }
  return out;
}

py::object HolderCapsule(const std::shared_ptr<const void>& holder) {
  auto* copy = new std::shared_ptr<const void>(holder);
  return py::capsule(copy, [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); });
}

py::object ToNumpy(const TensorView& view, const std::shared_ptr<const void>& holder, py::handle base) {
  if (view.dtype == DataType::kBytes) return DeserializeBytes(view.data, view.nbytes, view.shape);
  std::vector<py::ssize_t> dims(view.shape.begin(), view.shape.end());
  py::object owner = base ? py::reinterpret_borrow<py::object>(base) : HolderCapsule(holder);
  return py::array(NumpyDtype(view.dtype), dims, static_cast<const void*>(view.data), owner);
}

PyBackend::PyBackend(py::object callable, std::vector<TensorSpec> outputs, std::string label)
    : callable_(callable.release().ptr()), outputs_(std::move(outputs)), label_(std::move(label)) {}

PyBackend::~PyBackend() {
  PyObjectHolder drop(nullptr);
  drop.object = callable_;  // released with the GIL by the holder's destructor
}

Status PyBackend::Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) {
  py::gil_scoped_acquire gil;
  try {
    py::dict batch;
    for (const auto& in : inputs) batch[py::str(in.name)] = ToNumpy(in.view, in.holder, py::handle());
    py::object result = py::reinterpret_borrow<py::object>(callable_)(batch);
    if (!py::isinstance<py::dict>(result)) {
      return {StatusCode::kInternal, "the backend returned " +
                                         py::str(py::type::of(result).attr("__name__")).cast<std::string>() +
                                         ", expected a dict of numpy arrays"};
    }
    py::dict out = result;
    py::module_ np = py::module_::import("numpy");
    for (const auto& spec : outputs_) {
      const std::string who = "output '" + spec.name + "'";
      py::str key(spec.name);
      if (!out.contains(key)) return {StatusCode::kInternal, "the backend returned no " + who};
      py::array array = np.attr("asarray")(out[key]);
      if (spec.dtype != DataType::kBytes && !(array.flags() & py::array::c_style)) {
        array = np.attr("ascontiguousarray")(array);
      }
      Status s = CheckArray(array, spec.dtype, who);
      if (!s.ok()) return {StatusCode::kInternal, s.message};
      BatchOutput o;
      o.name = spec.name;
      o.view.dtype = spec.dtype;
      o.view.shape.assign(array.shape(), array.shape() + array.ndim());
      if (spec.dtype == DataType::kBytes) {
        auto serialized = std::make_shared<std::string>(SerializeBytes(array, who));
        o.view.data = reinterpret_cast<const uint8_t*>(serialized->data());
        o.view.nbytes = serialized->size();
        o.holder = serialized;
      } else {
        o.view.data = static_cast<const uint8_t*>(array.data());
        o.view.nbytes = static_cast<size_t>(array.nbytes());
        o.holder = std::make_shared<PyObjectHolder>(array.ptr());
      }
      outputs->push_back(std::move(o));
    }
    return Status::Ok();
  } catch (py::error_already_set& e) {
    // An exception that carries a core status (pyserve's own errors do, as `core_status`) keeps its
    // kind: a backend that reports bad input answers the client's mistake, not a server fault. Only
    // faults are logged with their traceback; the caller never gets a traceback.
    StatusCode code = StatusCode::kInternal;
    std::string message;
    try {
      py::object value = e.value();
      const bool typed = py::hasattr(value, "core_status");
      if (typed) {
        const int c = value.attr("core_status").cast<int>();
        if (c > static_cast<int>(StatusCode::kOk) && c <= static_cast<int>(StatusCode::kInternal)) {
          code = static_cast<StatusCode>(c);
        }
      }
      const std::string text = py::str(value).cast<std::string>();
      message = typed ? text : py::str(e.type().attr("__name__")).cast<std::string>() + ": " + text;
      if (code == StatusCode::kInternal) {
        py::module_::import("logging").attr("getLogger")("pyserve.backend").attr("error")(
            "%s: backend call failed", label_, py::arg("exc_info") = py::make_tuple(e.type(), value, e.trace()));
      }
    } catch (const std::exception&) {
      message = e.what();
    }
    return {code, message};
  } catch (const std::exception& e) {
    return {StatusCode::kInternal, e.what()};
  }
}

}  // namespace pyserve
