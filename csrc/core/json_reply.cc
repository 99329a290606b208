// See json_reply.h. Number formatting follows orjson (3.x) over numpy arrays, which is what the
// reference encoder (pyserve/protocol/kserve.py, _json_tensor) writes; the shortest round-trip digits
// come from std::to_chars (C++17, <charconv>), as in Ryu (Adams, "Ryu: fast float-to-string
// conversion", PLDI 2018).
#include "core/json_reply.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <system_error>

namespace pyserve {

namespace {

constexpr size_t kMaxNumber = 24;  // "-1.2345678901234567e-308", "-0.000012345678901234567"

inline char* Put(char* out, std::string_view s) {
  std::memcpy(out, s.data(), s.size());
  return out + s.size();
}

// The shortest round-trip text of a positive finite value in scientific form ("d[.ddd]e(+|-)XX",
// std::to_chars) laid out as orjson lays it out (see json_reply.h): fixed notation for a decimal
// exponent k of the first digit in [min_k, max_k]. Plain loops: the pieces are at most 17 bytes,
// where calls to memcpy cost more than the copy.
inline char* Layout(const char* sci, const char* sci_end, int min_k, int max_k, char* out) {
  const char* e = sci_end - 3;  // the exponent has two or three digits: find the 'e'
  while (*e != 'e') --e;
  int k = 0;
  for (const char* q = e + 2; q < sci_end; ++q) k = k * 10 + (*q - '0');
  const bool negative = e[1] == '-';
  if (negative) k = -k;
  // The digits: sci[0], then sci[2..e) when there is a point.
  const char* rest = sci + 2;
  const int more = e > sci + 1 ? static_cast<int>(e - rest) : 0;
  if (k >= 0 && k <= max_k) {
    *out++ = sci[0];
    int i = 0;
    for (; i < k; ++i) *out++ = i < more ? rest[i] : '0';
    *out++ = '.';
    if (i >= more) {
      *out++ = '0';
      return out;
    }
    for (; i < more; ++i) *out++ = rest[i];
    return out;
  }
  if (k < 0 && k >= min_k) {  // 0.000ddd
    *out++ = '0';
    *out++ = '.';
    for (int i = -1; i > k; --i) *out++ = '0';
    *out++ = sci[0];
    for (int i = 0; i < more; ++i) *out++ = rest[i];
    return out;
  }
  *out++ = sci[0];
  if (more) {
    *out++ = '.';
    for (int i = 0; i < more; ++i) *out++ = rest[i];
  }
  *out++ = 'e';
  *out++ = negative ? '-' : '+';
  const int a = negative ? -k : k;  // no leading zero, unlike to_chars's "e-07"
  if (a >= 100) *out++ = static_cast<char>('0' + a / 100);
  if (a >= 10) *out++ = static_cast<char>('0' + a / 10 % 10);
  *out++ = static_cast<char>('0' + a % 10);
  return out;
}

template <typename T>
char* WriteFloat(T value, char* out) {
  if (std::isnan(value)) return Put(out, "NaN");
  if (std::isinf(value)) return Put(out, value > 0 ? std::string_view("Infinity") : std::string_view("-Infinity"));
  if (std::signbit(value)) {
    *out++ = '-';
    value = -value;
  }
  if (value == 0) {
    out[0] = '0', out[1] = '.', out[2] = '0';
    return out + 3;
  }
  char buf[32];
  const char* end = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific).ptr;
  // orjson's (Rust ryu's) ranges: [-5, 15] for a double, [-6, 12] for a float.
  return sizeof(T) == 8 ? Layout(buf, end, -5, 15, out) : Layout(buf, end, -6, 12, out);
}

template <typename T>
char* WriteInts(const T* values, int64_t n, char* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (i) *out++ = ',';
    out = std::to_chars(out, out + kMaxNumber, values[i]).ptr;
  }
  return out;
}

template <typename T>
char* WriteFloats(const T* values, int64_t n, char* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (i) *out++ = ',';
    out = WriteFloat(values[i], out);
  }
  return out;
}

// Whether s is valid UTF-8 (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF), as
// Python's bytes.decode("utf-8") requires.
bool ValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    int n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;  // at most U+10FFFF
    } else {
      return false;
    }
    if (end - p <= n) return false;
    if (p[1] < lo || p[1] > hi) return false;
    for (int i = 2; i <= n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
    }
    p += n + 1;
  }
  return true;
}

// A JSON string of s (valid UTF-8), escaped as orjson escapes.
char* WriteString(std::string_view s, char* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  *out++ = '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != '"' && c != '\\') {
      *out++ = ch;
      continue;
    }
    *out++ = '\\';
    switch (c) {
      case '"': *out++ = '"'; break;
      case '\\': *out++ = '\\'; break;
      case '\b': *out++ = 'b'; break;
      case '\f': *out++ = 'f'; break;
      case '\n': *out++ = 'n'; break;
      case '\r': *out++ = 'r'; break;
      case '\t': *out++ = 't'; break;
      default:
        out = Put(out, "u00");
        *out++ = kHex[c >> 4];
        *out++ = kHex[c & 15];
    }
  }
  *out++ = '"';
  return out;
}

}  // namespace

float HalfBitsToFloat(uint16_t bits) {
  const float sign = (bits & 0x8000) ? -1.0f : 1.0f;
  const int exponent = (bits >> 10) & 0x1f;
  const int fraction = bits & 0x3ff;
  if (exponent == 0x1f) return fraction ? std::nanf("") : sign * INFINITY;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(fraction), -24);  // subnormal
  return sign * std::ldexp(static_cast<float>(fraction | 0x400), exponent - 25);
}

char* WriteJsonDouble(double value, char* out) { return WriteFloat(value, out); }
char* WriteJsonFloat(float value, char* out) { return WriteFloat(value, out); }

size_t JsonTensorMaxSize(const JsonTensorView& t) {
  size_t size = 64 + 6 * t.name.size() + 21 * t.shape.size();
  if (t.dtype == DataType::kBytes) {
    for (const auto& s : t.strings) size += 6 * s.size() + 3;
  } else {
    size += (kMaxNumber + 1) * static_cast<size_t>(t.count);
  }
  return size;
}

char* WriteJsonTensor(const JsonTensorView& t, char* out) {
  out = Put(out, "{\"name\":");
  out = WriteString(t.name, out);
  out = Put(out, ",\"datatype\":\"");
  out = Put(out, DataTypeName(t.dtype));
  out = Put(out, "\",\"shape\":[");
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (i) *out++ = ',';
    out = std::to_chars(out, out + kMaxNumber, t.shape[i]).ptr;
  }
  out = Put(out, "],\"data\":[");
  const int64_t n = t.count;
  switch (t.dtype) {
    case DataType::kBool: {
      const auto* v = static_cast<const uint8_t*>(t.data);
      for (int64_t i = 0; i < n; ++i) {
        if (i) *out++ = ',';
        out = v[i] ? Put(out, "true") : Put(out, "false");
      }
      break;
    }
    case DataType::kUint8: out = WriteInts(static_cast<const uint8_t*>(t.data), n, out); break;
    case DataType::kUint16: out = WriteInts(static_cast<const uint16_t*>(t.data), n, out); break;
    case DataType::kUint32: out = WriteInts(static_cast<const uint32_t*>(t.data), n, out); break;
    case DataType::kUint64: out = WriteInts(static_cast<const uint64_t*>(t.data), n, out); break;
    case DataType::kInt8: out = WriteInts(static_cast<const int8_t*>(t.data), n, out); break;
    case DataType::kInt16: out = WriteInts(static_cast<const int16_t*>(t.data), n, out); break;
    case DataType::kInt32: out = WriteInts(static_cast<const int32_t*>(t.data), n, out); break;
    case DataType::kInt64: out = WriteInts(static_cast<const int64_t*>(t.data), n, out); break;
    case DataType::kFp16: {
      const auto* v = static_cast<const uint16_t*>(t.data);
      for (int64_t i = 0; i < n; ++i) {
        if (i) *out++ = ',';
        out = WriteFloat(HalfBitsToFloat(v[i]), out);
      }
      break;
    }
    case DataType::kFp32: out = WriteFloats(static_cast<const float*>(t.data), n, out); break;
    case DataType::kFp64: out = WriteFloats(static_cast<const double*>(t.data), n, out); break;
    case DataType::kBytes:
      for (size_t i = 0; i < t.strings.size(); ++i) {
        if (!ValidUtf8(t.strings[i])) return nullptr;
        if (i) *out++ = ',';
        out = WriteString(t.strings[i], out);
      }
      break;
  }
  return Put(out, "]}");
}

}  // namespace pyserve
