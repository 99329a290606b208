// Basic vocabulary of the core: datatypes, status codes, tensor specs and views.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pyserve {

// KServe v2 datatypes. BYTES tensors travel through the core in their wire form: for each element a
// uint32 little-endian length, then its bytes; concatenating requests concatenates their bytes.
enum class DataType : uint8_t {
  kBool, kUint8, kUint16, kUint32, kUint64, kInt8, kInt16, kInt32, kInt64, kFp16, kFp32, kFp64, kBytes,
};

// Bytes per element; 0 for BYTES (variable).
size_t ElementSize(DataType dtype);
const char* DataTypeName(DataType dtype);
// Parses a KServe datatype name; false when unknown.
bool ParseDataType(const std::string& name, DataType* out);

// Outcome of a request or an operation. The values are stable: Python maps them to ErrorKind.
enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument = 1,
  kUnavailable = 2,       // queue full, shutting down: the caller may retry elsewhere or later
  kDeadlineExceeded = 3,  // the request's deadline passed while it was queued
  kCancelled = 4,
  kInternal = 5,          // the backend failed
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;

  static Status Ok() { return {}; }
  bool ok() const { return code == StatusCode::kOk; }
};

// One declared input or output of a model. When the model batches (max_batch_size > 0) `shape`
// excludes the batch dimension, as in Triton's config. -1 is a variable dimension.
struct TensorSpec {
  std::string name;
  DataType dtype = DataType::kFp32;
  std::vector<int64_t> shape;
  // An input a request may leave out (ONNX optional(tensor)): only without batching (max_batch_size
  // 0), where a batch is one request and the backend is handed the inputs present.
  bool optional = false;
};

// A tensor the core reads or hands out, by pointer. Who keeps `data` alive is said where it is used.
struct TensorView {
  DataType dtype = DataType::kFp32;
  std::vector<int64_t> shape;  // full shape, batch dimension first when batching
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};

int64_t ElementCount(const std::vector<int64_t>& shape);

// Byte offset of each element of a serialized BYTES tensor (count + 1 entries); false if `data`
// does not hold exactly `count` well-formed elements.
bool BytesElementOffsets(const uint8_t* data, size_t nbytes, int64_t count,
                         std::vector<uint64_t>* offsets);

}  // namespace pyserve
