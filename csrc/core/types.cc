#include "core/types.h"

#include <cstring>

namespace pyserve {

namespace {
struct TypeInfo {
  DataType dtype;
  const char* name;
  size_t size;
};
constexpr TypeInfo kTypes[] = {
    {DataType::kBool, "BOOL", 1},     {DataType::kUint8, "UINT8", 1},   {DataType::kUint16, "UINT16", 2},
    {DataType::kUint32, "UINT32", 4}, {DataType::kUint64, "UINT64", 8}, {DataType::kInt8, "INT8", 1},
    {DataType::kInt16, "INT16", 2},   {DataType::kInt32, "INT32", 4},   {DataType::kInt64, "INT64", 8},
    {DataType::kFp16, "FP16", 2},     {DataType::kFp32, "FP32", 4},     {DataType::kFp64, "FP64", 8},
    {DataType::kBytes, "BYTES", 0},
};
}  // namespace

size_t ElementSize(DataType dtype) { return kTypes[static_cast<int>(dtype)].size; }

const char* DataTypeName(DataType dtype) { return kTypes[static_cast<int>(dtype)].name; }

bool ParseDataType(const std::string& name, DataType* out) {
  for (const auto& t : kTypes) {
    if (name == t.name) {
      *out = t.dtype;
      return true;
    }
  }
  return false;
}

int64_t ElementCount(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool BytesElementOffsets(const uint8_t* data, size_t nbytes, int64_t count,
                         std::vector<uint64_t>* offsets) {
  offsets->clear();
  offsets->reserve(static_cast<size_t>(count) + 1);
  uint64_t pos = 0;
  for (int64_t i = 0; i < count; ++i) {
    offsets->push_back(pos);
    if (pos + 4 > nbytes) return false;
    uint32_t len;
    std::memcpy(&len, data + pos, 4);  // the wire is little-endian, as are the targets we build for
    pos += 4 + static_cast<uint64_t>(len);
    if (pos > nbytes) return false;
  }
  offsets->push_back(pos);
  return pos == nbytes;
}

}  // namespace pyserve
