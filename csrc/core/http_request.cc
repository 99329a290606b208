#include "core/http_request.h"

#include <cstring>

namespace pyserve {

namespace {

// RFC 9110 5.6.2 tchar.
constexpr bool IsTchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  for (const char* s = "!#$%&'*+-.^_`|~"; *s != 0; ++s) {
    if (c == static_cast<unsigned char>(*s)) return true;
  }
  return false;
}

struct TcharTable {
  bool v[256] = {};
  constexpr TcharTable() {
    for (int c = 1; c < 256; ++c) v[c] = IsTchar(static_cast<unsigned char>(c));
  }
};
constexpr TcharTable kTchar;

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

bool KnownMethod(std::string_view m) {
  return m == "POST" || m == "GET" || m == "PUT" || m == "DELETE" || m == "HEAD" || m == "OPTIONS" ||
         m == "PATCH";
}

}  // namespace

PlainParse ParsePlainRequest(std::string_view data, uint64_t max_body_bytes, PlainRequest* out) {
  const size_t limit = data.size() < kMaxPlainHead ? data.size() : kMaxPlainHead;
  const char* p = data.data();
  size_t i = 0;

  // Request line.
  while (i < limit && p[i] >= 'A' && p[i] <= 'Z') ++i;
  out->method = data.substr(0, i);
  if (i >= limit || p[i] != ' ' || !KnownMethod(out->method)) return PlainParse::kDefer;
  const size_t target_start = ++i;
  if (i >= limit || p[i] != '/') return PlainParse::kDefer;
  while (i < limit && static_cast<unsigned char>(p[i]) > 0x20 && static_cast<unsigned char>(p[i]) < 0x7F) ++i;
  out->target = data.substr(target_start, i - target_start);
  if (i + 11 > limit || p[i] != ' ' || std::memcmp(p + i + 1, "HTTP/1.", 7) != 0 ||
      (p[i + 8] != '1' && p[i + 8] != '0') || p[i + 9] != '\r' || p[i + 10] != '\n') {
    return PlainParse::kDefer;
  }
  out->http10 = p[i + 8] == '0';
  i += 11;

  // Header lines, up to the empty line.
  size_t count = 0;
  int hosts = 0;
  bool has_length = false;
  uint64_t length = 0;
  int connection = 0;  // 0: none, 1: close, 2: keep-alive
  while (true) {
    if (i + 1 >= limit) return PlainParse::kDefer;
    if (p[i] == '\r') {
      if (p[i + 1] != '\n') return PlainParse::kDefer;
      i += 2;
      break;
    }
    if (count == kMaxPlainHeaders) return PlainParse::kDefer;
    const size_t name_start = i;
    while (i < limit && kTchar.v[static_cast<unsigned char>(p[i])]) ++i;
    if (i == name_start || i >= limit || p[i] != ':') return PlainParse::kDefer;
    const std::string_view name = data.substr(name_start, i - name_start);
    ++i;
    while (i < limit && (p[i] == ' ' || p[i] == '\t')) ++i;
    const size_t value_start = i;
    while (i < limit) {
      const unsigned char c = static_cast<unsigned char>(p[i]);
      if ((c < 0x20 || c >= 0x7F) && c != '\t') break;
      ++i;
    }
    if (i + 1 >= limit || p[i] != '\r' || p[i + 1] != '\n') return PlainParse::kDefer;
    const std::string_view value = data.substr(value_start, i - value_start);
    i += 2;
    for (size_t k = 0; k < count; ++k) {
      // A name twice: llhttp's path joins the values.
      if (EqualsIgnoreCase(out->headers[k].name, name)) return PlainParse::kDefer;
    }
    out->headers[count++] = {name, value};
    switch (Lower(name[0])) {
      case 'c':
        if (EqualsIgnoreCase(name, "content-length")) {
          if (value.empty() || value.size() > 18) return PlainParse::kDefer;
          for (char c : value) {
            if (c < '0' || c > '9') return PlainParse::kDefer;
            length = length * 10 + static_cast<uint64_t>(c - '0');
          }
          has_length = true;
        } else if (EqualsIgnoreCase(name, "connection")) {
          if (EqualsIgnoreCase(value, "close")) {
            connection = 1;
          } else if (EqualsIgnoreCase(value, "keep-alive")) {
            connection = 2;
          } else {
            return PlainParse::kDefer;
          }
        }
        break;
      case 'e':
        if (EqualsIgnoreCase(name, "expect")) return PlainParse::kDefer;
        break;
      case 'h':
        if (EqualsIgnoreCase(name, "host")) ++hosts;
        break;
      case 'p':
        if (EqualsIgnoreCase(name, "proxy-connection")) return PlainParse::kDefer;
        break;
      case 't':
        if (EqualsIgnoreCase(name, "transfer-encoding")) return PlainParse::kDefer;
        break;
      case 'u':
        if (EqualsIgnoreCase(name, "upgrade")) return PlainParse::kDefer;
        break;
      default:
        break;
    }
  }
  if (!out->http10 && hosts != 1) return PlainParse::kDefer;  // the general path answers 400
  if (has_length && length > max_body_bytes) return PlainParse::kDefer;  // ... and 413
  const size_t body_size = has_length ? static_cast<size_t>(length) : 0;
  if (data.size() - i < body_size) return PlainParse::kDefer;  // not all here yet
  out->body = data.substr(i, body_size);
  out->end = i + body_size;
  out->header_count = count;
  out->keep_alive = out->http10 ? connection == 2 : connection != 1;
  return PlainParse::kComplete;
}

}  // namespace pyserve
