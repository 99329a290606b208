// HTTP/1.1 requests of the common, plain form parsed in one pass, for the server's transport
// (pyserve/server/http.py). The transport's general parser is llhttp (through httptools): it calls
// back into Python once per request line, header line, body piece and end of message, about 25,000
// instructions a request before any handler runs. Most requests an inference server gets are plain:
// a request line, a few header lines, a Content-Length body, all in one read. ParsePlainRequest
// takes exactly those and answers kDefer for anything else, so that llhttp, and the transport's
// checks around it, decide every request that is not plain (errors included): this parser never
// refuses, it only declines.
//
// What a plain request is (RFC 9112, narrowed to what llhttp accepts with the same result):
//   - request line: a method of GET POST PUT DELETE HEAD OPTIONS PATCH, one space, an origin-form
//     target (starts with '/', bytes 0x21-0x7E), one space, HTTP/1.1 or HTTP/1.0, CRLF;
//   - header lines: a token name (RFC 9110 tchar), ':', optional spaces and tabs (skipped, as llhttp
//     does), a value of bytes 0x20-0x7E and tabs (trailing whitespace kept, as llhttp keeps it),
//     CRLF; no obs-fold, no bare CR or LF, at most kMaxPlainHeaders lines, no name twice;
//   - no Transfer-Encoding, Upgrade, Expect or Proxy-Connection header; a Connection header, if
//     any, of exactly "close" or "keep-alive" (any case); a Content-Length, if any, of 1 to 18
//     digits and at most `max_body_bytes`; exactly one Host with HTTP/1.1;
//   - the whole head within kMaxPlainHead bytes and the whole body present in `data`.
// tests/test_http_plain.py checks every request this parser accepts against llhttp's reading of
// the same bytes (differential tests over generated requests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace pyserve {

constexpr size_t kMaxPlainHead = 8192;     // request line and headers, CRLFs included
constexpr size_t kMaxPlainHeaders = 32;    // header lines

struct HttpHeaderView {
  std::string_view name;   // as sent (the caller lower-cases it)
  std::string_view value;  // leading spaces and tabs skipped
};

struct PlainRequest {
  std::string_view method;
  std::string_view target;
  std::string_view body;
  bool http10 = false;      // HTTP/1.0 (else HTTP/1.1)
  bool keep_alive = true;   // HTTP/1.1 without Connection: close, HTTP/1.0 with Connection: keep-alive
  size_t end = 0;           // offset in `data` just past the body
  size_t header_count = 0;
  HttpHeaderView headers[kMaxPlainHeaders];
};

enum class PlainParse { kComplete, kDefer };

// Parses the request starting at `data[0]`. kComplete: `out` describes it (views into `data`);
// kDefer: not a plain request, or not all of it is in `data` (the general parser takes it).
PlainParse ParsePlainRequest(std::string_view data, uint64_t max_body_bytes, PlainRequest* out);

}  // namespace pyserve
