#include "core/cuda_host.h"

#ifdef PYSERVE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace pyserve {

#ifdef PYSERVE_WITH_CUDA
bool BuiltWithCuda() { return true; }

bool CudaDeviceAvailable() {
  // The runtime is linked statically; with no driver on the machine this answers an error, not a crash.
  static const bool available = [] {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  }();
  return available;
}

void* CudaHostAlloc(size_t nbytes) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, nbytes, cudaHostAllocPortable) != cudaSuccess) return nullptr;
  return p;
}

void CudaHostFree(void* ptr) { cudaFreeHost(ptr); }
#else
bool BuiltWithCuda() { return false; }
bool CudaDeviceAvailable() { return false; }
void* CudaHostAlloc(size_t) { return nullptr; }
void CudaHostFree(void*) {}
#endif

}  // namespace pyserve
