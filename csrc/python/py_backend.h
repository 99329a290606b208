// A Backend that calls a Python callable once per batch, and the GIL-aware holders that keep Python
// objects alive inside the core.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <functional>
#include <string>
#include <vector>

#include "core/backend.h"

namespace pyserve {

// Owns one strong reference; drops it with the GIL held, from whichever thread lets go last
// (at most once per batch output, so the GIL round-trip is per batch, not per request).
struct PyObjectHolder {
  PyObject* object;
  explicit PyObjectHolder(PyObject* o) : object(o) { Py_XINCREF(object); }
  ~PyObjectHolder();
  PyObjectHolder(const PyObjectHolder&) = delete;
  PyObjectHolder& operator=(const PyObjectHolder&) = delete;
};

// Numpy dtype of a datatype (BYTES: object).
pybind11::dtype NumpyDtype(DataType dtype);
// The datatype of a numpy array, checked against `expected`; the error names the tensor (`who` is
// called only for an error: the request path checks every input of every request).
Status CheckArray(const pybind11::array& array, DataType expected, const std::function<std::string()>& who);
inline Status CheckArray(const pybind11::array& array, DataType expected, const std::string& who) {
  return CheckArray(array, expected, [&who] { return who; });
}
// BYTES wire form <-> numpy object arrays of bytes.
std::string SerializeBytes(const pybind11::array& array, const std::string& who);
pybind11::array DeserializeBytes(const uint8_t* data, size_t nbytes, const std::vector<int64_t>& shape);
// A numpy array over `view.data` that keeps `holder` alive (BYTES: a new object array).
pybind11::object ToNumpy(const TensorView& view, const std::shared_ptr<const void>& holder, pybind11::handle base);
// A capsule owning a copy of `holder`, to be an array's base.
pybind11::object HolderCapsule(const std::shared_ptr<const void>& holder);

class PyBackend final : public Backend {
 public:
  // `label` names the model version in the server log ("model 'm' version '1'").
  PyBackend(pybind11::object callable, std::vector<TensorSpec> outputs, std::string label);
  ~PyBackend() override;
  Status Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) override;

 private:
  PyObject* callable_;  // strong reference, dropped with the GIL
  const std::vector<TensorSpec> outputs_;
  const std::string label_;
};

}  // namespace pyserve
