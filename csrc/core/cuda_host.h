// The CUDA runtime calls the core makes, behind one small interface so that the rest of the core
// builds and runs the same with or without CUDA (PYSERVE_WITH_CUDA).
#pragma once

#include <cstddef>

namespace pyserve {

// Whether the core was built with CUDA.
bool BuiltWithCuda();
// Whether a CUDA device is usable now (built with CUDA, a driver and at least one device). Cached.
bool CudaDeviceAvailable();
// Page-locked host memory, or nullptr on failure (the caller falls back to ordinary memory).
void* CudaHostAlloc(size_t nbytes);
void CudaHostFree(void* ptr);

}  // namespace pyserve
