// KServe v2 JSON replies written straight from output tensors' buffers, without a Python object per
// element (the reverse of json_tensor.h). The text is byte for byte what pyserve's reference encoder
// writes (pyserve/protocol/kserve.py: orjson over numpy arrays, NaN/Infinity/-Infinity tokens for
// non-finite floats), so a client cannot tell which wrote it; tests/test_json_reply.py checks this by
// differential tests over random arrays of every datatype. Nothing here touches a Python object: the
// bindings (csrc/python/bind_json_reply.cc) release the GIL while these functions run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/types.h"

namespace pyserve {

// One output tensor to write as a JSON tensor entry. Borrowed views: the caller keeps the memory
// alive while the writer runs.
struct JsonTensorView {
  std::string_view name;               // UTF-8 (escaped as orjson escapes it)
  DataType dtype = DataType::kFp32;
  std::vector<int64_t> shape;
  const void* data = nullptr;          // count elements, C order, host byte order (not for BYTES)
  int64_t count = 0;
  std::vector<std::string_view> strings;  // BYTES: the count elements (must be UTF-8)
};

// An upper bound of the bytes WriteJsonTensor writes for `t` (so the caller can allocate once).
size_t JsonTensorMaxSize(const JsonTensorView& t);

// Writes `{"name":..,"datatype":..,"shape":[..],"data":[..]}` at `out` (JsonTensorMaxSize(t) bytes
// or more) and returns the end of what it wrote; nullptr when a BYTES element is not UTF-8 (JSON
// cannot carry it: the caller refuses the reply, naming the tensor).
//   Integers: decimal. BOOL: true/false. FP64/FP32: the shortest text that reads back as the same
//   double/float (std::to_chars), formatted as orjson formats it: fixed notation with at least one
//   fractional digit ("1.0", "0.00001") when the decimal exponent k of the leading digit lies in
//   [-5, 15] (FP64) or [-6, 12] (FP32), else "1e-7" / "1.5e+16". FP16: its value as FP32 (exact), written as FP32 is, which
//   reads back to the same FP16. NaN, +inf, -inf: the tokens NaN, Infinity, -Infinity (Triton's and
//   Python json's; not strict JSON). Strings: orjson's escapes (\" \\ \b \f \n \r \t, \u00XX for
//   other control characters; everything else as is).
char* WriteJsonTensor(const JsonTensorView& t, char* out);

// Writes a double or a float as WriteJsonTensor does (at most 24 bytes); returns the end.
char* WriteJsonDouble(double value, char* out);
char* WriteJsonFloat(float value, char* out);

// IEEE 754 binary16 bits to the float of the same value (exact).
float HalfBitsToFloat(uint16_t bits);

}  // namespace pyserve
