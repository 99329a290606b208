// KServe v2 JSON tensor data decoded straight from a request body into typed, C-contiguous buffers.
//
// Two steps, neither of which touches a Python object (the bindings release the GIL around both):
//  1. ScanRequest walks the body once and lifts out the `data` arrays of the top-level `inputs`
//     entries, leaving a small "skeleton" (the body with each lifted array replaced by `0`) that the
//     caller parses with its usual JSON parser (names, datatypes, shapes, parameters).
//  2. DecodeData parses one lifted array into the buffer of the tensor's datatype.
// Both are conservative: whenever the result could differ from pyserve's reference decoder
// (pyserve/protocol/kserve.py: orjson, then numpy's inference and checks), they say so (kDefer /
// not lifted), and the caller uses the reference for that body or that tensor. The only refusals
// they find are those of the data's structure (kRagged, kWrongCount), which the reference finds
// before it looks at any value; the caller raises them with the reference's messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/types.h"

namespace pyserve {

// The entry of the span of the request's `id` (see ScanRequest).
inline constexpr int64_t kIdEntry = -1;

// The byte span [begin, end) of the `data` array of the input at `entry` (its index in `inputs`),
// or of the text of the request's `id` between its quotes (entry kIdEntry).
struct JsonDataSpan {
  int64_t entry = 0;
  size_t begin = 0;
  size_t end = 0;
};

// Scans a request body (a JSON object). On true, `spans` holds the lifted `data` arrays, in body
// order, and `skeleton` the body with each replaced by `0`; a top-level `id` that is a string of
// printable ASCII without escapes is lifted too (its span last in `spans`, with entry kIdEntry, and
// `""` in its place in the skeleton), so that requests differing only in their ids have one
// skeleton. False when the body is not one this
// scanner can take apart with certainty (not an object, escaped or repeated keys `inputs`/`data`/`id`,
// nesting over 512 levels, unterminated strings...): the caller decodes the body as before.
// A `data` array is lifted only when it holds nothing but arrays, JSON numbers (strict grammar, no
// finite number too large for a double), true, false and the tokens NaN, Infinity and -Infinity,
// nested at most 32 levels; any other `data` stays in the skeleton.
bool ScanRequest(std::string_view body, std::string* skeleton, std::vector<JsonDataSpan>* spans);

enum class DecodeStatus : uint8_t {
  kOk,     // `out` holds the `count` elements, row-major
  kDefer,  // the reference decoder must decide: a refusal, or a case whose numpy result is subtle
  // Refusals whose reference message follows from the structure alone (numpy.array makes nothing
  // else of it), found without the reference's parse of every number while holding the GIL:
  kRagged,      // lists of unequal lengths, or elements at unequal depths (numpy: ValueError)
  kWrongCount,  // equal lengths, but `*elements` elements (numpy's size) rather than `count`
};

// Decodes one lifted `data` array (text as ScanRequest lifted it) of `count` elements of `dtype`
// into `out` (count * ElementSize(dtype) bytes, little-endian host order). Values as numpy makes
// them from the parsed JSON: integers exact, or rounded once to the float datatype; numbers with a
// fraction or exponent parsed as double (correctly rounded, std::from_chars) then rounded to
// FP32/FP16; integral ones accepted in integer tensors. kDefer for: BYTES; booleans outside BOOL
// tensors and numbers in BOOL ones; an integer or float out of the datatype's range (or one that
// overflows FP16/FP32); a fraction, NaN or Infinity in an integer tensor; empty lists; integers
// beyond 2**53 in a float tensor without fractions. kRagged and kWrongCount (`*elements` set) come
// before those, as in the reference, whose numpy.array finds them before it looks at a value.
DecodeStatus DecodeData(std::string_view text, DataType dtype, int64_t count, void* out,
                        int64_t* elements);

// A KServe JSON body's skeleton as a decode plan keeps it: the body's bytes around its lifted spans
// (ScanRequest's), with each data span's datatype and element count. Match() takes a new body in
// one pass: it compares the bytes between the spans and decodes each data array straight into its
// tensor's buffer as it reads it (a plain run of numbers without a dispatch per element; anything
// else through ScanRequest's and DecodeData's own code for that span). It holds exactly when
// ScanRequest would make this very skeleton of the body and DecodeData would decode each of its
// data arrays (kOk) with the span's datatype and count, and then `outs` hold what DecodeData makes;
// else the caller takes the scan-then-decode path, which decides (with its refusals).
class JsonSkeleton {
 public:
  struct Tensor {
    DataType dtype;
    int64_t count;  // elements, > 0
  };
  // `body`: a body ScanRequest took; `spans`: what it returned (the id's last, if lifted);
  // `tensors[i]`: the datatype and element count of the i-th data span. Throws
  // std::invalid_argument when they do not fit together (spans out of order or out of the body,
  // a count that is not the spans', BYTES).
  JsonSkeleton(std::string_view body, const std::vector<JsonDataSpan>& spans, std::vector<Tensor> tensors);

  // Whether `body` has this skeleton and decodable data (see the class). outs[i]: the buffer of
  // tensor i (count * ElementSize(dtype) bytes), written even when Match fails. `id`: the lifted
  // id's text (between its quotes), when the skeleton lifted one.
  bool Match(std::string_view body, void* const* outs, std::string_view* id) const;
  // Whether `body` starts with the bytes before the first span (and is long enough for the bytes
  // around the spans): a cheap test before buffers are made for Match. Match checks it again.
  bool MayMatch(std::string_view body) const {
    return body.size() >= fixed_bytes_ && body.compare(0, pieces_[0].size(), pieces_[0]) == 0;
  }

  bool lifts_id() const { return lifts_id_; }

 private:
  std::vector<std::string> pieces_;  // the bytes before each span, and after the last one
  std::vector<int64_t> holes_;       // per span: the tensor's index, or kIdEntry
  std::vector<Tensor> tensors_;
  size_t fixed_bytes_ = 0;  // the pieces' bytes together
  bool lifts_id_ = false;
};

// IEEE 754 binary16 bits of `value`, rounded to nearest, ties to even (as numpy's float16 cast).
uint16_t DoubleToHalfBits(double value);

}  // namespace pyserve
