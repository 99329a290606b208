// The extension module pyserve._core: one register function per area.
#include <pybind11/pybind11.h>

namespace pyserve {
void RegisterCore(pybind11::module_& m);
void RegisterJson(pybind11::module_& m);
void RegisterJsonReply(pybind11::module_& m);
void RegisterHttp(pybind11::module_& m);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyserve's C++ core: dynamic batcher, buffer pool, statistics, JSON tensor decoding and reply writing, plain HTTP request parsing.";
  pyserve::RegisterCore(m);
  pyserve::RegisterJson(m);
  pyserve::RegisterJsonReply(m);
  pyserve::RegisterHttp(m);
}
