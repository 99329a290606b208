// See json_tensor.h. The JSON grammar is RFC 8259's; the values are those numpy makes of what
// orjson parses (pyserve/protocol/kserve.py, _array_from_json), checked by tests/test_json_tensor.py
// against that decoder (differential tests over random data).
#include "core/json_tensor.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <system_error>
#include <type_traits>

namespace pyserve {

namespace {

constexpr int kMaxScanDepth = 512;  // orjson refuses 1024; deeper bodies go to the reference
constexpr int kMaxDataDepth = 32;   // numpy's limit is 64 dimensions; deeper data goes to the reference

inline bool IsWs(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Length of the JSON number at p (RFC 8259 grammar), 0 when there is none. `is_float`: it has a
// fraction or an exponent. `magnitude`: an estimate of its decimal exponent (digits before the
// point + exponent), used to find numbers a double may not hold.
size_t NumberLength(const char* p, const char* end, bool* is_float, long* magnitude) {
  const char* q = p;
  if (q < end && *q == '-') ++q;
  if (q >= end || !IsDigit(*q)) return 0;
  const char* int_begin = q;
  if (*q == '0') {
    ++q;
  } else {
    while (q < end && IsDigit(*q)) ++q;
  }
  long digits = static_cast<long>(q - int_begin);
  *is_float = false;
  if (q < end && *q == '.') {
    ++q;
    if (q >= end || !IsDigit(*q)) return 0;
    while (q < end && IsDigit(*q)) ++q;
    *is_float = true;
  }
  long exponent = 0;
  if (q < end && (*q == 'e' || *q == 'E')) {
    ++q;
    bool negative = false;
    if (q < end && (*q == '+' || *q == '-')) negative = *q++ == '-';
    if (q >= end || !IsDigit(*q)) return 0;
    while (q < end && IsDigit(*q)) {
      if (exponent < 100000) exponent = exponent * 10 + (*q - '0');
      ++q;
    }
    if (negative) exponent = -exponent;
    *is_float = true;
  }
  *magnitude = digits + exponent;
  return static_cast<size_t>(q - p);
}

inline bool StartsWith(const char* p, const char* end, const char* token, size_t n) {
  return static_cast<size_t>(end - p) >= n && std::memcmp(p, token, n) == 0;
}

// The non-finite tokens NaN, Infinity, -Infinity (as Python's json reads them); their length or 0.
size_t NonFiniteLength(const char* p, const char* end) {
  if (p >= end || (*p != 'N' && *p != 'I' && *p != '-')) return 0;  // most often a digit: no memcmp
  if (StartsWith(p, end, "NaN", 3)) return 3;
  if (StartsWith(p, end, "Infinity", 8)) return 8;
  if (StartsWith(p, end, "-Infinity", 9)) return 9;
  return 0;
}

// A value must end at whitespace, a comma or a closing bracket (else `truex`, `1a` ...).
inline bool AtValueEnd(const char* p, const char* end) {
  return p >= end || IsWs(*p) || *p == ',' || *p == ']' || *p == '}';
}

class Scanner {
 public:
  Scanner(std::string_view body, std::string* skeleton, std::vector<JsonDataSpan>* spans)
      : base_(body.data()), p_(body.data()), end_(body.data() + body.size()), last_(base_),
        skeleton_(skeleton), spans_(spans) {}

  // The length of the data array at `p` as Run lifts it (see ScanRequest), or 0 when Run would not.
  static size_t DataLength(const char* p, const char* end) {
    std::string unused_skeleton;
    std::vector<JsonDataSpan> unused_spans;
    Scanner s(std::string_view(p, static_cast<size_t>(end - p)), &unused_skeleton, &unused_spans);
    if (s.Peek() != '[' || !s.Data(1)) return 0;
    return static_cast<size_t>(s.p_ - p);
  }

  bool Run() {
    SkipWs();
    if (Peek() != '{') return false;
    bool seen_inputs = false;
    bool seen_id = false;
    return Items('}', [&] {
      std::string_view key;
      if (!Key(&key)) return false;
      if (key == "id") {
        if (seen_id) return false;  // orjson keeps the last: leave such bodies to it
        seen_id = true;
        return Id() || SkipValue(1);
      }
      if (key != "inputs") return SkipValue(1);
      if (seen_inputs) return false;
      seen_inputs = true;
      return Peek() == '[' ? Inputs() : SkipValue(1);
    }) && Finish();
  }

 private:
  char Peek() const { return p_ < end_ ? *p_ : '\0'; }
  void SkipWs() {
    while (p_ < end_ && IsWs(*p_)) ++p_;
  }
  bool Expect(char c) {
    if (p_ >= end_ || *p_ != c) return false;
    ++p_;
    return true;
  }
  bool Finish() {
    SkipWs();
    if (p_ != end_) return false;
    skeleton_->append(last_, static_cast<size_t>(end_ - last_));
    if (id_.entry == kIdEntry) spans_->push_back(id_);
    return true;
  }

  // The request's `id` at p_, lifted when it is a string of printable ASCII without escapes (what
  // JSON takes as it is); false leaves p_ where it was, for SkipValue.
  bool Id() {
    if (Peek() != '"') return false;
    const char* begin = p_ + 1;
    const char* q = begin;
    while (q < end_ && *q != '"') {
      if (*q < 0x20 || *q > 0x7e || *q == '\\') return false;
      ++q;
    }
    if (q >= end_) return false;
    skeleton_->append(last_, static_cast<size_t>(p_ - last_));
    skeleton_->append("\"\"");
    p_ = q + 1;
    last_ = p_;
    id_ = {kIdEntry, static_cast<size_t>(begin - base_), static_cast<size_t>(q - base_)};
    return true;
  }

  // A string at p_; `raw` is its text between the quotes; false for an unterminated one.
  bool String(std::string_view* raw, bool* escaped) {
    if (!Expect('"')) return false;
    const char* begin = p_;
    *escaped = false;
    while (p_ < end_) {
      const char c = *p_;
      if (c == '"') {
        *raw = std::string_view(begin, static_cast<size_t>(p_ - begin));
        ++p_;
        return true;
      }
      if (c == '\\') {
        *escaped = true;
        if (++p_ >= end_) return false;
      }
      ++p_;
    }
    return false;
  }

  // An object key and its colon; false for an escaped key (it may spell `inputs` or `data`).
  bool Key(std::string_view* key) {
    bool escaped = false;
    if (!String(key, &escaped) || escaped) return false;
    SkipWs();
    if (!Expect(':')) return false;
    SkipWs();
    return true;
  }

  // The items of the array or object whose opening bracket is at p_, up to `close`: `item()` parses
  // one at p_ (its leading whitespace skipped) and says whether it held.
  template <class Item>
  bool Items(char close, Item item) {
    ++p_;
    SkipWs();
    if (Peek() == close) {
      ++p_;
      return true;
    }
    for (;;) {
      if (!item()) return false;
      SkipWs();
      if (Peek() == ',') {
        ++p_;
        SkipWs();
        continue;
      }
      return Expect(close);
    }
  }

  // Any value, loosely: the skeleton's parser checks what is not lifted.
  bool SkipValue(int depth) {
    if (depth > kMaxScanDepth) return false;
    const char c = Peek();
    if (c == '"') {
      std::string_view raw;
      bool escaped;
      return String(&raw, &escaped);
    }
    if (c == '[') return Items(']', [&] { return SkipValue(depth + 1); });
    if (c == '{') {
      return Items('}', [&] {
        std::string_view raw;
        bool escaped;
        if (!String(&raw, &escaped)) return false;
        SkipWs();
        if (!Expect(':')) return false;
        SkipWs();
        return SkipValue(depth + 1);
      });
    }
    const char* begin = p_;
    while (!AtValueEnd(p_, end_)) ++p_;
    return p_ != begin;
  }

  bool Inputs() {
    int64_t entry = 0;
    return Items(']', [&] { return Peek() == '{' ? Entry(entry++) : (++entry, SkipValue(2)); });
  }

  bool Entry(int64_t entry) {
    bool seen_data = false;
    return Items('}', [&] {
      std::string_view key;
      if (!Key(&key)) return false;
      if (key != "data") return SkipValue(3);
      if (seen_data) return false;
      seen_data = true;
      const char* begin = p_;
      if (Peek() == '[' && Data(1)) {
        skeleton_->append(last_, static_cast<size_t>(begin - last_));
        skeleton_->push_back('0');
        last_ = p_;
        spans_->push_back({entry, static_cast<size_t>(begin - base_), static_cast<size_t>(p_ - base_)});
        return true;
      }
      p_ = begin;  // not lifted: left to the skeleton's parser
      return SkipValue(3);
    });
  }

  // A liftable data array at p_ (see ScanRequest), strictly; false leaves p_ anywhere.
  bool Data(int depth) {
    if (depth > kMaxDataDepth) return false;
    return Items(']', [&] {
      const char c = Peek();
      if (IsDigit(c) || (c == '-' && p_ + 1 < end_ && IsDigit(p_[1]))) {
        // A number, the common leaf: tried first (a negative one is no -Infinity to compare).
        bool is_float;
        long magnitude;
        const size_t n = NumberLength(p_, end_, &is_float, &magnitude);
        if (n == 0) return false;
        if (magnitude > 300 || magnitude < -300) {
          // Maybe beyond a double: orjson refuses an overflow (and std::from_chars says nothing of
          // an underflow's sign): the reference decides.
          double value;
          if (std::from_chars(p_, p_ + n, value).ec != std::errc()) return false;
        }
        p_ += n;
      } else if (c == '[') {
        if (!Data(depth + 1)) return false;
      } else if (c == 't' || c == 'f') {
        const size_t n = c == 't' ? 4 : 5;
        if (!StartsWith(p_, end_, c == 't' ? "true" : "false", n)) return false;
        p_ += n;
      } else if (const size_t token = NonFiniteLength(p_, end_)) {
        p_ += token;
      } else {
        return false;  // not a leaf of a data array
      }
      return AtValueEnd(p_, end_);
    });
  }

  const char* base_;
  const char* p_;
  const char* end_;
  const char* last_;  // the end of what the skeleton holds so far
  std::string* skeleton_;
  std::vector<JsonDataSpan>* spans_;
  JsonDataSpan id_{};  // the lifted id's span (entry kIdEntry), once found
};

// One element of data as parsed.
struct Leaf {
  enum Kind : uint8_t { kBool, kSigned, kUnsigned, kFloat } kind;
  bool boolean;
  int64_t i;
  uint64_t u;
  double d;  // kFloat: a number with a fraction or exponent, or a non-finite token
};

// Powers of ten a double holds exactly.
constexpr double kExactPowersOfTen[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                        1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                        1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

// ±m / 10**k into *out when m <= 2**53 and k <= 22: both are exact doubles, so one IEEE division
// rounds it correctly (Clinger's fast path: W. D. Clinger, "How to Read Floating Point Numbers
// Accurately", PLDI 1990; as in fast_float and Python's own dtoa.c). False otherwise: from_chars'.
inline bool ExactDecimal(uint64_t m, int64_t k, bool negative, double* out) {
  if (k > 22 || m > (uint64_t{1} << 53)) return false;
  const double value = static_cast<double>(m) / kExactPowersOfTen[k];
  *out = negative ? -value : value;
  return true;
}

// A float leaf with a fraction, -?digits.digits[exponent], read once. Without an exponent, with at
// most 19 digits, by ExactDecimal when it can; others (17 digits, as Python writes a double; an
// exponent) by std::from_chars. Either way the double float() gives. False (nothing consumed) for
// an integer, a number beyond a double, or no number: the caller's general path decides.
bool ParseSimpleDecimal(const char*& p, const char* end, double* out) {
  const char* q = p;
  const bool negative = q < end && *q == '-';
  q += negative;
  // At most 19 digits (leading zeros too): m cannot overflow 64 bits.
  const char* limit = end - q > 20 ? q + 20 : end;
  uint64_t m = 0;
  const char* start = q;
  unsigned digit;
  while (q < limit && (digit = static_cast<unsigned>(*q - '0')) < 10) {
    m = m * 10 + digit;
    ++q;
  }
  if (q == start || q >= limit || *q != '.') return false;
  const char* fraction = ++q;
  while (q < limit && (digit = static_cast<unsigned>(*q - '0')) < 10) {
    m = m * 10 + digit;
    ++q;
  }
  const int64_t k = q - fraction;
  if (k == 0) return false;
  // At the limit more digits may follow; an exponent is from_chars' to read.
  if ((q >= end || (q != limit && *q != 'e' && *q != 'E')) && ExactDecimal(m, k, negative, out)) {
    p = q;
    return true;
  }
  const std::from_chars_result r = std::from_chars(p, end, *out);
  if (r.ec != std::errc()) return false;  // beyond a double: the reference decides
  p = r.ptr;
  return true;
}

// Parses the leaf at p (already checked by the scanner); false where the reference must decide.
bool ParseLeaf(const char*& p, const char* end, Leaf* leaf) {
  const char c = *p;
  if ((c == '-' || (c >= '0' && c <= '9')) && ParseSimpleDecimal(p, end, &leaf->d)) {
    leaf->kind = Leaf::kFloat;
    return true;
  }
  // The words are checked again (cheap, and rare): DecodeData never reads past `end`, whatever text.
  if (c == 't' || c == 'f') {
    leaf->kind = Leaf::kBool;
    leaf->boolean = c == 't';
    const size_t n = c == 't' ? 4 : 5;
    if (!StartsWith(p, end, c == 't' ? "true" : "false", n)) return false;
    p += n;
    return true;
  }
  if (c == 'N' || c == 'I' || (c == '-' && p + 1 < end && p[1] == 'I')) {
    const size_t n = NonFiniteLength(p, end);
    if (n == 0) return false;
    leaf->kind = Leaf::kFloat;
    leaf->d = c == 'N'   ? std::numeric_limits<double>::quiet_NaN()
              : c == '-' ? -std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::infinity();
    p += n;
    return true;
  }
  // An integer first: from_chars stops at a fraction or exponent, which makes it a float (the
  // scanner checked the grammar, so no other character follows the digits).
  std::from_chars_result r;
  if (c == '-') {
    leaf->kind = Leaf::kSigned;
    r = std::from_chars(p, end, leaf->i);
  } else {
    leaf->kind = Leaf::kUnsigned;
    r = std::from_chars(p, end, leaf->u);
  }
  if (r.ptr < end && (*r.ptr == '.' || *r.ptr == 'e' || *r.ptr == 'E')) {
    leaf->kind = Leaf::kFloat;
    r = std::from_chars(p, end, leaf->d);
  }
  p = r.ptr;
  // An integer beyond 64 bits is a float to orjson, an underflow may be -0.0: the reference decides.
  return r.ec == std::errc();
}

template <typename T>
bool StoreInteger(const Leaf& leaf, T* out) {
  using L = std::numeric_limits<T>;
  switch (leaf.kind) {
    case Leaf::kSigned:
      if (leaf.i < static_cast<int64_t>(L::min())) return false;
      if (leaf.i > 0 && static_cast<uint64_t>(leaf.i) > static_cast<uint64_t>(L::max())) return false;
      *out = static_cast<T>(leaf.i);
      return true;
    case Leaf::kUnsigned:
      if (leaf.u > static_cast<uint64_t>(L::max())) return false;
      *out = static_cast<T>(leaf.u);
      return true;
    case Leaf::kFloat: {
      // numpy: the list is inferred as float64, then parsed again as integers and compared.
      const double d = leaf.d;
      if (!std::isfinite(d) || std::trunc(d) != d) return false;
      // 2**63 and 2**64 are exact doubles; min() is a power of two or zero.
      const double high = static_cast<double>(L::max()) + 1.0;  // rounds up to a power of two
      if (d < static_cast<double>(L::min()) || d >= high) return false;
      *out = static_cast<T>(d);
      return true;
    }
    case Leaf::kBool:
      break;
  }
  return false;  // booleans mixed with numbers: numpy's rules are subtle, the reference decides
}

class Decoder {
 public:
  Decoder(DataType dtype, int64_t count, void* out) : dtype_(dtype), count_(count), out_(out) {}

  // Walks the whole array: its structure decides first (as numpy.array's shape does for the
  // reference), so a value the reference must judge only stops the storing, not the walk.
  DecodeStatus Run(std::string_view text, int64_t* elements) {
    const char* p = text.data();
    const char* end = p + text.size();
    int depth = 0;
    int ndim = -1;
    int64_t dims[kMaxDataDepth + 2];
    int64_t lengths[kMaxDataDepth + 2];
    for (auto& d : dims) d = -1;
    bool defer = false;  // a value the reference must judge: stored no further
    while (p < end) {
      const char c = *p;
      if (IsWs(c) || c == ',') {
        ++p;
      } else if (c == '[') {
        if (depth > 0) ++lengths[depth];
        ++depth;
        if (depth > kMaxDataDepth) return DecodeStatus::kDefer;
        if (ndim >= 0 && depth > ndim) return DecodeStatus::kRagged;  // a list where a number was
        lengths[depth] = 0;
        ++p;
      } else if (c == ']') {
        if (depth == 0) return DecodeStatus::kDefer;  // not a scanned span: stay inside the arrays
        const int64_t n = lengths[depth];
        if (n == 0) return DecodeStatus::kDefer;  // empty lists: numpy's shapes of them are the reference's
        if (dims[depth] < 0) {
          dims[depth] = n;
        } else if (dims[depth] != n) {
          return DecodeStatus::kRagged;
        }
        --depth;
        ++p;
      } else {
        if (depth == 0) return DecodeStatus::kDefer;  // not a scanned span
        if (ndim < 0) {
          ndim = depth;
        } else if (depth != ndim) {
          return DecodeStatus::kRagged;  // a number where a list was
        }
        ++lengths[depth];
        const char* q = p;
        if (!defer && index_ < count_) {
          Leaf leaf;
          defer = !ParseLeaf(q, end, &leaf) || !Store(leaf);
        }
        // The scanner checked the grammar: a leaf runs up to whitespace, a comma or a bracket.
        p = q > p ? q : p;
        while (p < end && !AtValueEnd(p, end)) ++p;
        ++index_;
        if (!defer && (dtype_ == DataType::kFp32 || dtype_ == DataType::kFp64)) {
          p = PlainDecimalRun(p, end, &lengths[depth], &defer);
        }
      }
    }
    *elements = index_;
    if (depth != 0) return DecodeStatus::kDefer;
    if (index_ != count_) return DecodeStatus::kWrongCount;
    if (defer) return DecodeStatus::kDefer;
    return Finish();
  }

 private:
  // The rest of a row of decimals after a leaf at p (the common body: `, 0.51224, -1.5, ...`),
  // parsed and stored without the walk's dispatch; returns where the walk goes on (at a comma or
  // bracket it did not take). FP32 and FP64 only; a value too large for FP32 sets `defer`.
  const char* PlainDecimalRun(const char* p, const char* end, int64_t* length, bool* defer) {
    while (p < end && *p == ',' && index_ < count_) {
      const char* q = p + 1;
      while (q < end && IsWs(*q)) ++q;
      double d;
      if (!ParseSimpleDecimal(q, end, &d)) break;
      if (dtype_ == DataType::kFp32) {
        const float f = static_cast<float>(d);
        if (std::isinf(f) && std::isfinite(d)) {  // too large: the reference says which
          *defer = true;
          break;
        }
        static_cast<float*>(out_)[index_] = f;
      } else {
        static_cast<double*>(out_)[index_] = d;
      }
      has_float_ = true;
      ++*length;
      ++index_;
      p = q;  // the scanner checked the grammar: whitespace, a comma or a bracket follows
    }
    return p;
  }

  bool Store(const Leaf& leaf) {
    if (dtype_ == DataType::kBool) {
      if (leaf.kind != Leaf::kBool) return false;
      static_cast<uint8_t*>(out_)[index_] = leaf.boolean ? 1 : 0;
      return true;
    }
    if (leaf.kind == Leaf::kBool) return false;
    switch (dtype_) {
      case DataType::kUint8: return StoreInteger(leaf, static_cast<uint8_t*>(out_) + index_);
      case DataType::kUint16: return StoreInteger(leaf, static_cast<uint16_t*>(out_) + index_);
      case DataType::kUint32: return StoreInteger(leaf, static_cast<uint32_t*>(out_) + index_);
      case DataType::kUint64: return StoreInteger(leaf, static_cast<uint64_t*>(out_) + index_);
      case DataType::kInt8: return StoreInteger(leaf, static_cast<int8_t*>(out_) + index_);
      case DataType::kInt16: return StoreInteger(leaf, static_cast<int16_t*>(out_) + index_);
      case DataType::kInt32: return StoreInteger(leaf, static_cast<int32_t*>(out_) + index_);
      case DataType::kInt64: return StoreInteger(leaf, static_cast<int64_t*>(out_) + index_);
      case DataType::kFp16:
      case DataType::kFp32:
      case DataType::kFp64: return StoreFloat(leaf);
      default: return false;
    }
  }

  bool StoreFloat(const Leaf& leaf) {
    double d;
    switch (leaf.kind) {
      case Leaf::kSigned:
        d = static_cast<double>(leaf.i);
        big_integer_ |= leaf.i > kExactInDouble || leaf.i < -kExactInDouble;
        break;
      case Leaf::kUnsigned:
        d = static_cast<double>(leaf.u);
        big_integer_ |= leaf.u > static_cast<uint64_t>(kExactInDouble);
        break;
      default:
        d = leaf.d;
        has_float_ = true;
    }
    if (dtype_ == DataType::kFp64) {
      static_cast<double*>(out_)[index_] = d;
      return true;
    }
    if (dtype_ == DataType::kFp32) {
      // With a fraction anywhere numpy makes float64 first, then float32 (two roundings); without,
      // int64 to float32 (one): the same for integers a double holds exactly (see Finish).
      const float f = static_cast<float>(d);
      if (std::isinf(f) && std::isfinite(d)) return false;  // too large: the reference says which
      static_cast<float*>(out_)[index_] = f;
      return true;
    }
    const uint16_t h = DoubleToHalfBits(d);
    if ((h & 0x7fff) == 0x7c00 && std::isfinite(d)) return false;
    static_cast<uint16_t*>(out_)[index_] = h;
    return true;
  }

  DecodeStatus Finish() const {
    // Integers only, one beyond 2**53: numpy rounds int64 to float32 once, we rounded twice.
    if (dtype_ == DataType::kFp32 && big_integer_ && !has_float_) return DecodeStatus::kDefer;
    return DecodeStatus::kOk;
  }

  static constexpr int64_t kExactInDouble = int64_t{1} << 53;
  const DataType dtype_;
  const int64_t count_;
  void* const out_;
  int64_t index_ = 0;
  bool has_float_ = false;
  bool big_integer_ = false;
};

// Appends the decimal digits at q to m (m * 10**n + their value, wrapping past 19 digits) and
// returns their count n, q past them. Past the first eight, eight at a time while the next eight
// bytes are all digits (a double's 17: which bytes are digits and their value without a branch per
// byte, SWAR as fast_float's parse_eight_digits_unrolled; D. Lemire, "Number Parsing at a Gigabyte
// per Second", 2021).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "AppendDigits reads characters as a word");

inline int64_t AppendDigits(const char*& q, const char* end, uint64_t* m) {
  const char* start = q;
  unsigned digit;
  // The first eight one at a time: most runs end there (`0.51224`), quicker so than with a word.
  const char* first = end - q > 8 ? q + 8 : end;
  while (q < first && (digit = static_cast<unsigned>(*q - '0')) < 10) {
    *m = *m * 10 + digit;
    ++q;
  }
  if (q < first) return q - start;
  while (end - q >= 8) {
    uint64_t v;
    std::memcpy(&v, q, 8);  // the first character is the lowest byte
    // A byte is a digit when its high nibble is 3 and its low nibble at most 9 (no carry leaves a byte).
    const uint64_t high = (v & 0xF0F0F0F0F0F0F0F0ull) ^ 0x3030303030303030ull;
    const uint64_t low = ((v & 0x0F0F0F0F0F0F0F0Full) + 0x0606060606060606ull) & 0xF0F0F0F0F0F0F0F0ull;
    if ((high | low) != 0) break;
    uint64_t x = v - 0x3030303030303030ull;
    x = x * 10 + (x >> 8);
    x = (((x & 0x000000FF000000FFull) * (100 + (1000000ull << 32))) +
         (((x >> 16) & 0x000000FF000000FFull) * (1 + (10000ull << 32)))) >> 32;
    *m = *m * 100000000 + x;
    q += 8;
  }
  while (q < end && (digit = static_cast<unsigned>(*q - '0')) < 10) {
    *m = *m * 10 + digit;
    ++q;
  }
  return q - start;
}

// One leaf of a plain data array at p, a JSON number, stored into *out as DecodeData stores it (T:
// float, double or an integer type); false, with nothing consumed, for any other leaf (a word, a
// fraction or exponent in an integer tensor, more than 18 integer digits, an integer beyond 2**53
// in a float tensor, a value beyond T or a double): the general path decides.
template <typename T>
inline bool ParsePlainLeaf(const char*& p, const char* end, T* out) {
  const char* q = p;
  const bool negative = q < end && *q == '-';
  q += negative;
  if (q >= end) return false;
  const char* digits = q;
  uint64_t m = 0;
  if (*q == '0') {
    ++q;
  } else if (AppendDigits(q, end, &m) == 0) {  // m wraps past 19 digits: such a number is not taken below
    return false;
  }
  const int64_t int_digits = q - digits;
  if constexpr (std::is_floating_point_v<T>) {
    double d;
    int64_t k = -1;  // fraction digits, when there is a fraction
    if (q < end && *q == '.') {
      ++q;
      k = AppendDigits(q, end, &m);
      if (k == 0) return false;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
      // An exponent (Python writes 8e-05): from_chars, correctly rounded as DecodeData's; one
      // beyond a double (or an underflow, whose sign from_chars does not say) is the reference's.
      ++q;
      if (q < end && (*q == '+' || *q == '-')) ++q;
      const char* exponent = q;
      while (q < end && IsDigit(*q)) ++q;
      if (q == exponent) return false;
      const std::from_chars_result r = std::from_chars(p, q, d);
      if (r.ec != std::errc() || r.ptr != q) return false;
    } else if (k < 0) {
      // An integer: exact in a double up to 2**53 (DecodeData rounds it once, as numpy does); -0 is 0.
      if (int_digits > 16 || m > (uint64_t{1} << 53)) return false;
      d = negative && m != 0 ? -static_cast<double>(m) : static_cast<double>(m);
    } else if (int_digits + k <= 19 && ExactDecimal(m, k, negative, &d)) {
      // m did not wrap (19 digits at most): as ParseSimpleDecimal reads it.
    } else {
      // Correctly rounded too (17 digits, as Python writes a double); out of range: the reference.
      const std::from_chars_result r = std::from_chars(p, q, d);
      if (r.ec != std::errc() || r.ptr != q) return false;
    }
    const T value = static_cast<T>(d);
    if (std::isinf(value)) return false;  // too large for FP32: the reference says which
    *out = value;
  } else {
    if (q < end && (*q == '.' || *q == 'e' || *q == 'E')) return false;
    if (int_digits > 18) return false;  // below 10**18: an int64 either way
    const int64_t v = negative ? -static_cast<int64_t>(m) : static_cast<int64_t>(m);
    using L = std::numeric_limits<T>;
    const bool below = v < static_cast<int64_t>(L::min());
    if (below || (v > 0 && static_cast<uint64_t>(v) > static_cast<uint64_t>(L::max()))) return false;
    *out = static_cast<T>(v);
  }
  p = q;
  return true;
}

// A data array at p (its '[') of plain leaves (ParsePlainLeaf), nested in equal lists at most
// kMaxPlainDepth deep, whitespace as JSON allows, exactly `count` leaves: decoded into `out` in a
// single pass (grammar, shape and values at once), returning its end; nullptr for any other array
// (then DataLength and DecodeData decide). What it takes, the scanner lifts and DecodeData decodes
// to the same values (tests/test_json_tensor.py checks this differentially).
constexpr int kMaxPlainDepth = 8;

template <typename T>
const char* DecodePlainArray(const char* p, const char* end, int64_t count, T* out) {
  int64_t dims[kMaxPlainDepth + 1];     // the length of every list at each depth, once one closed
  int64_t lengths[kMaxPlainDepth + 1];  // the length so far of the open list at each depth
  std::fill(std::begin(dims), std::end(dims), -1);
  int depth = 0;
  int ndim = -1;  // the leaves' depth, once one was read
  int64_t index = 0;
  for (;;) {
    // A value is due at p.
    if (p < end && *p == '[') {
      if (depth == kMaxPlainDepth || (ndim >= 0 && depth >= ndim)) return nullptr;
      if (depth > 0) ++lengths[depth];
      lengths[++depth] = 0;
      ++p;
      while (p < end && IsWs(*p)) ++p;
      continue;  // `[]` or `[,`: the leaf below refuses `]` and `,`
    }
    if (depth == 0 || (ndim >= 0 && depth != ndim) || index == count) return nullptr;
    ndim = depth;
    if (!ParsePlainLeaf(p, end, out + index)) return nullptr;
    ++index;
    ++lengths[depth];
    // After a value: `,` and the next value, or `]` closing lists.
    for (;;) {
      while (p < end && IsWs(*p)) ++p;
      if (p >= end) return nullptr;
      if (*p == ',') {
        ++p;
        while (p < end && IsWs(*p)) ++p;
        break;
      }
      if (*p != ']') return nullptr;
      ++p;
      const int64_t n = lengths[depth];
      if (dims[depth] < 0) {
        dims[depth] = n;
      } else if (dims[depth] != n) {
        return nullptr;
      }
      if (--depth == 0) return index == count ? p : nullptr;
    }
  }
}

// DecodePlainArray for the datatypes it takes; nullptr for the others.
const char* DecodePlain(const char* p, const char* end, DataType dtype, int64_t count, void* out) {
  switch (dtype) {
    case DataType::kFp32: return DecodePlainArray(p, end, count, static_cast<float*>(out));
    case DataType::kFp64: return DecodePlainArray(p, end, count, static_cast<double*>(out));
    case DataType::kInt8: return DecodePlainArray(p, end, count, static_cast<int8_t*>(out));
    case DataType::kInt16: return DecodePlainArray(p, end, count, static_cast<int16_t*>(out));
    case DataType::kInt32: return DecodePlainArray(p, end, count, static_cast<int32_t*>(out));
    case DataType::kInt64: return DecodePlainArray(p, end, count, static_cast<int64_t*>(out));
    case DataType::kUint8: return DecodePlainArray(p, end, count, static_cast<uint8_t*>(out));
    case DataType::kUint16: return DecodePlainArray(p, end, count, static_cast<uint16_t*>(out));
    case DataType::kUint32: return DecodePlainArray(p, end, count, static_cast<uint32_t*>(out));
    case DataType::kUint64: return DecodePlainArray(p, end, count, static_cast<uint64_t*>(out));
    default: return nullptr;  // FP16, BOOL, BYTES: the general path
  }
}

}  // namespace

JsonSkeleton::JsonSkeleton(std::string_view body, const std::vector<JsonDataSpan>& spans,
                           std::vector<Tensor> tensors)
    : tensors_(std::move(tensors)) {
  std::vector<JsonDataSpan> ordered = spans;  // the id's span comes last from ScanRequest
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const JsonDataSpan& a, const JsonDataSpan& b) { return a.begin < b.begin; });
  size_t at = 0;
  int64_t data_spans = 0;
  for (const JsonDataSpan& span : ordered) {
    if (span.begin < at || span.end < span.begin || span.end > body.size()) {
      throw std::invalid_argument("JsonSkeleton: spans overlap or lie outside the body");
    }
    if (span.entry == kIdEntry) {
      if (lifts_id_) throw std::invalid_argument("JsonSkeleton: two id spans");
      lifts_id_ = true;
      holes_.push_back(kIdEntry);
    } else {
      if (span.entry != data_spans) {
        throw std::invalid_argument("JsonSkeleton: data spans out of entry order");
      }
      holes_.push_back(data_spans++);
    }
    pieces_.emplace_back(body.substr(at, span.begin - at));
    at = span.end;
  }
  pieces_.emplace_back(body.substr(at));
  for (const std::string& piece : pieces_) fixed_bytes_ += piece.size();
  if (data_spans != static_cast<int64_t>(tensors_.size())) {
    throw std::invalid_argument("JsonSkeleton: " + std::to_string(tensors_.size()) + " tensors for " +
                                std::to_string(data_spans) + " data spans");
  }
  for (const Tensor& t : tensors_) {
    if (t.count <= 0 || t.dtype == DataType::kBytes) {
      throw std::invalid_argument("JsonSkeleton: a tensor needs a numeric datatype and a count above 0");
    }
  }
}

bool JsonSkeleton::Match(std::string_view body, void* const* outs, std::string_view* id) const {
  const char* p = body.data();
  const char* const end = p + body.size();
  *id = {};
  for (size_t i = 0;; ++i) {
    const std::string& piece = pieces_[i];
    if (static_cast<size_t>(end - p) < piece.size() || std::memcmp(p, piece.data(), piece.size()) != 0) {
      return false;
    }
    p += piece.size();
    if (i == holes_.size()) return p == end;
    if (holes_[i] == kIdEntry) {  // as Scanner::Id lifts it: printable ASCII, no escape, up to `"`
      const char* q = p;
      while (q < end && *q != '"') {
        if (*q < 0x20 || *q > 0x7e || *q == '\\') return false;
        ++q;
      }
      *id = std::string_view(p, static_cast<size_t>(q - p));
      p = q;
      continue;
    }
    const Tensor& t = tensors_[static_cast<size_t>(holes_[i])];
    void* out = outs[holes_[i]];
    const char* q = DecodePlain(p, end, t.dtype, t.count, out);
    if (q == nullptr) {
      // Not a plain array: the scanner's grammar and DecodeData's values, as the two-pass path.
      const size_t n = Scanner::DataLength(p, end);
      int64_t elements = 0;
      if (n == 0) return false;
      const DecodeStatus status = DecodeData(std::string_view(p, n), t.dtype, t.count, out, &elements);
      if (status != DecodeStatus::kOk) return false;
      q = p + n;
    }
    p = q;
  }
}

bool ScanRequest(std::string_view body, std::string* skeleton, std::vector<JsonDataSpan>* spans) {
  skeleton->clear();
  spans->clear();
  return Scanner(body, skeleton, spans).Run();
}

DecodeStatus DecodeData(std::string_view text, DataType dtype, int64_t count, void* out,
                        int64_t* elements) {
  *elements = 0;
  if (dtype == DataType::kBytes || count <= 0) return DecodeStatus::kDefer;
  return Decoder(dtype, count, out).Run(text, elements);
}

uint16_t DoubleToHalfBits(double value) {
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  const double a = std::fabs(value);
  if (std::isnan(value)) return static_cast<uint16_t>(sign | 0x7e00);  // numpy keeps the quiet bit
  if (a >= 65520.0) return static_cast<uint16_t>(sign | 0x7c00);      // beyond max + half an ulp: inf
  if (a < 0x1p-14) {
    // Subnormal: units of 2**-24, rounded to nearest even (nearbyint in the default rounding mode);
    // 1024 units is the smallest normal, whose bits are the same.
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(a * 0x1p24)));
  }
  int e;
  const double m = std::frexp(a, &e);  // a = m * 2**e, m in [0.5, 1)
  int exponent = e - 1;                // a = (2m) * 2**exponent, 2m in [1, 2)
  double q = std::nearbyint(m * 2048.0);  // 1024..2048: the 10-bit fraction with its leading 1
  if (q == 2048.0) {
    q = 1024.0;
    ++exponent;
  }
  if (exponent > 15) return static_cast<uint16_t>(sign | 0x7c00);
  return static_cast<uint16_t>(sign | ((exponent + 15) << 10) | (static_cast<uint16_t>(q) - 1024));
}

}  // namespace pyserve
