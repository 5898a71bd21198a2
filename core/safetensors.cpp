// safetensors reader/writer (see safetensors.h for the format and the integrity key).
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/crc64.h"
#include "core/error.h"
#include "core/json.h"

namespace lora {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; reading and writing assume a little-endian host");

namespace {

// The metadata key of the integrity CRC (safetensors.h), and its value while the CRC is computed.
constexpr std::string_view kCrcKey = "lora.crc64";
constexpr std::string_view kCrcPlaceholder = "0000000000000000";

// A key that differs from kCrcKey in at most 3 of its characters: the CRC key with damaged bytes,
// which must not turn a file of ours into an unverified one.
bool is_crc_key(const std::string& key) {
  if (key.size() != kCrcKey.size()) return false;
  int n_diff = 0;
  for (size_t i = 0; i < key.size(); ++i) n_diff += key[i] != kCrcKey[i];
  return n_diff <= 3;
}

bool is_lower_hex16(const std::string& s) {
  return s.size() == 16 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string crc_hex(uint64_t crc) {
  static const char* kHex = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, crc >>= 4) s[static_cast<size_t>(i)] = kHex[crc & 0xF];
  return s;
}

// The reference implementation refuses headers above 100 MB; a GPT-2 XL header is ~60 KB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr size_t kConvertChunk = 1 << 16;  // elements per read when converting F16/BF16

std::string errno_string(int err) { return std::strerror(err); }

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float bfloat16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// Multiplies with overflow detection; returns false on overflow.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// A JSON value that is a non-negative integer.
bool as_uint(const json::Value& v, uint64_t* out) {
  if (!v.is_integer()) return false;
  const int64_t i = v.as_int64();
  if (i < 0) return false;
  *out = static_cast<uint64_t>(i);
  return true;
}

}  // namespace

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

size_t safetensors_dtype_bytes(const std::string& dtype) {
  static const std::unordered_map<std::string, size_t> kBytes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8},     {"C64", 8}};
  const auto it = kBytes.find(dtype);
  return it == kBytes.end() ? 0 : it->second;
}

size_t SafetensorsTensor::numel() const {
  size_t n = 1;
  for (const int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

// ---- SafetensorsFile ----

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LORA_INPUT_CHECK(fd_ >= 0, path, ": cannot open safetensors file: ", errno_string(errno));
  try {
    struct stat st {};
    LORA_INPUT_CHECK(::fstat(fd_, &st) == 0, path, ": cannot stat: ", errno_string(errno));
    LORA_INPUT_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
    file_bytes_ = static_cast<size_t>(st.st_size);
    LORA_INPUT_CHECK(file_bytes_ >= 8, path, ": file is ", file_bytes_,
                     " bytes, too short for a safetensors file (it starts with an 8-byte header "
                     "size)");

    unsigned char size_le[8];
    read_bytes(0, 8, size_le);
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | size_le[i];
    LORA_INPUT_CHECK(header_bytes <= file_bytes_ - 8, path, ": header size ", header_bytes,
                     " bytes is larger than the rest of the file (", file_bytes_ - 8,
                     " bytes): not a safetensors file, or truncated");
    LORA_INPUT_CHECK(header_bytes <= kMaxHeaderBytes, path, ": header size ", header_bytes,
                     " bytes exceeds the ", kMaxHeaderBytes, "-byte limit");
    data_begin_ = 8 + static_cast<size_t>(header_bytes);
    const size_t data_bytes = file_bytes_ - data_begin_;

    std::string header(static_cast<size_t>(header_bytes), '\0');
    read_bytes(8, header.size(), header.data());
    json::Value root;
    try {
      root = json::parse(header);
    } catch (const json::ParseError& e) {
      throw InputError(detail::concat(path, ": invalid JSON in the safetensors header at byte ",
                                      e.offset(), " (file offset ", 8 + e.offset(),
                                      "): ", e.reason()));
    }
    LORA_INPUT_CHECK(root.is_object(), path, ": safetensors header must be a JSON object, got ",
                     json::type_name(root.type()));

    std::optional<std::string> stored_crc;  // files we wrote carry one
    for (const auto& [name, entry] : root.as_object()) {
      if (name == "__metadata__") {
        LORA_INPUT_CHECK(entry.is_object(), path,
                         ": \"__metadata__\" must be an object of "
                         "string values, got ",
                         json::type_name(entry.type()));
        for (const auto& [key, value] : entry.as_object()) {
          LORA_INPUT_CHECK(value.is_string(), path, ": \"__metadata__\" key \"", key,
                           "\" must be a string, got ", json::type_name(value.type()));
          if (is_crc_key(key)) {
            LORA_INPUT_CHECK(key == kCrcKey && !stored_crc, path, ": \"__metadata__\" key \"", key,
                             "\" is not \"", kCrcKey, "\" but resembles it: the file is damaged");
            stored_crc = value.as_string();
          } else {
            metadata_[key] = value.as_string();
          }
        }
        continue;
      }
      const std::string where = detail::concat(path, ": tensor '", name, "': ");
      LORA_INPUT_CHECK(entry.is_object(), where,
                       "entry must be an object with dtype, shape and "
                       "data_offsets, got ",
                       json::type_name(entry.type()));
      SafetensorsTensor t;
      t.name = name;

      const json::Value* dtype = entry.find("dtype");
      const json::Value* shape = entry.find("shape");
      const json::Value* offsets = entry.find("data_offsets");
      LORA_INPUT_CHECK(dtype, where, "missing key \"dtype\"");
      LORA_INPUT_CHECK(shape, where, "missing key \"shape\"");
      LORA_INPUT_CHECK(offsets, where, "missing key \"data_offsets\"");

      LORA_INPUT_CHECK(dtype->is_string(), where, "\"dtype\" must be a string, got ",
                       json::type_name(dtype->type()));
      t.dtype = dtype->as_string();
      const size_t element_bytes = safetensors_dtype_bytes(t.dtype);
      LORA_INPUT_CHECK(element_bytes > 0, where, "unknown dtype \"", t.dtype,
                       "\" (expected one of F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, "
                       "...)");

      LORA_INPUT_CHECK(shape->is_array(), where,
                       "\"shape\" must be an array of non-negative "
                       "integers, got ",
                       json::dump(*shape));
      uint64_t n_bytes = element_bytes;
      for (const json::Value& d : shape->as_array()) {
        uint64_t dim = 0;
        LORA_INPUT_CHECK(as_uint(d, &dim) && dim <= static_cast<uint64_t>(INT64_MAX), where,
                         "\"shape\" must be an array of non-negative integers, got ",
                         json::dump(*shape));
        LORA_INPUT_CHECK(checked_mul(n_bytes, dim, &n_bytes), where, "shape ", json::dump(*shape),
                         " is too large");
        t.shape.push_back(static_cast<int64_t>(dim));
      }

      uint64_t begin = 0, end = 0;
      LORA_INPUT_CHECK(offsets->is_array() && offsets->size() == 2 &&
                           as_uint(offsets->as_array()[0], &begin) &&
                           as_uint(offsets->as_array()[1], &end) && begin <= end,
                       where, "\"data_offsets\" must be [begin, end] with 0 <= begin <= end, got ",
                       json::dump(*offsets));
      LORA_INPUT_CHECK(end - begin == n_bytes, where, "data_offsets [", begin, ", ", end, "] span ",
                       end - begin, " bytes, but shape ", shape_string(t.shape), " of ", t.dtype,
                       " needs ", n_bytes, " bytes");
      t.begin = static_cast<size_t>(begin);
      t.end = static_cast<size_t>(end);
      tensors_.push_back(std::move(t));
    }

    // Data inside the file: report the tensor reaching furthest, as that is the one truncation
    // cut (or the header that lies most).
    const SafetensorsTensor* last = nullptr;
    for (const auto& t : tensors_)
      if (!last || t.end > last->end) last = &t;
    LORA_INPUT_CHECK(!last || last->end <= data_bytes, path, ": file is truncated: tensor '",
                     last->name, "' ends at byte ", last->end,
                     " of the data buffer, which holds "
                     "only ",
                     data_bytes, " bytes (file is ", file_bytes_,
                     " bytes, the header needs at least ", data_begin_ + last->end, ")");

    // No overlaps: sorted by begin, each non-empty tensor starts at or after the previous end.
    std::vector<const SafetensorsTensor*> by_begin;
    for (const auto& t : tensors_)
      if (t.end > t.begin) by_begin.push_back(&t);
    std::sort(by_begin.begin(), by_begin.end(),
              [](const auto* a, const auto* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_begin.size(); ++i) {
      const SafetensorsTensor* a = by_begin[i - 1];
      const SafetensorsTensor* b = by_begin[i];
      LORA_INPUT_CHECK(b->begin >= a->end, path, ": tensors '", a->name, "' [", a->begin, ", ",
                       a->end, ") and '", b->name, "' [", b->begin, ", ", b->end,
                       ") overlap in the data buffer");
    }
    // Last, so that a truncated or malformed file is reported as such: the CRC catches what the
    // structure does not show (changed values, names, metadata, padding).
    if (stored_crc) verify_crc(header, *stored_crc);
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

// Checks the "lora.crc64" value `stored` against the file (see safetensors.h). `header` is the
// header text as read.
void SafetensorsFile::verify_crc(const std::string& header, const std::string& stored) {
  LORA_INPUT_CHECK(is_lower_hex16(stored), path_, ": \"__metadata__\" \"", kCrcKey,
                   "\" must be 16 lowercase hex digits, got \"", stored.substr(0, 40),
                   "\": the file is damaged");
  const std::string pattern = detail::concat("\"", kCrcKey, "\":\"", stored, "\"");
  const size_t at = header.find(pattern);
  LORA_INPUT_CHECK(at != std::string::npos && header.find(pattern, at + 1) == std::string::npos,
                   path_, ": cannot find \"", kCrcKey,
                   "\" written as write_safetensors writes it in the header: the file is damaged");
  const size_t digits = at + pattern.size() - 17;
  unsigned char size_le[8];
  for (int i = 0; i < 8; ++i) size_le[i] = static_cast<unsigned char>(header.size() >> (8 * i));
  uint64_t crc = crc64(size_le, 8);
  crc = crc64(header.data(), digits, crc);
  crc = crc64(kCrcPlaceholder.data(), kCrcPlaceholder.size(), crc);
  crc = crc64(header.data() + digits + 16, header.size() - digits - 16, crc);
  std::vector<unsigned char> chunk(std::min<size_t>(file_bytes_ - data_begin_, size_t{1} << 20));
  for (size_t offset = data_begin_; offset < file_bytes_;) {
    const size_t n = std::min(chunk.size(), file_bytes_ - offset);
    read_bytes(offset, n, chunk.data());
    crc = crc64(chunk.data(), n, crc);
    offset += n;
  }
  LORA_INPUT_CHECK(crc == std::stoull(stored, nullptr, 16), path_, ": CRC-64 mismatch (",
                   kCrcKey, " says ", stored, ", the file's bytes give ", crc_hex(crc),
                   "): the file is damaged");
  crc_verified_ = true;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      file_bytes_(other.file_bytes_),
      data_begin_(other.data_begin_),
      tensors_(std::move(other.tensors_)),
      metadata_(std::move(other.metadata_)),
      crc_verified_(other.crc_verified_) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    file_bytes_ = other.file_bytes_;
    data_begin_ = other.data_begin_;
    tensors_ = std::move(other.tensors_);
    metadata_ = std::move(other.metadata_);
    crc_verified_ = other.crc_verified_;
  }
  return *this;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void SafetensorsFile::read_bytes(size_t file_offset, size_t n_bytes, void* out) const {
  auto* dst = static_cast<char*>(out);
  while (n_bytes > 0) {
    const ssize_t got = ::pread(fd_, dst, n_bytes, static_cast<off_t>(file_offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw Error(detail::concat(path_, ": read failed: ", errno_string(errno)));
    if (got == 0)
      throw Error(detail::concat(path_, ": unexpected end of file at byte ", file_offset,
                                 " (was the file changed while open?)"));
    dst += got;
    file_offset += static_cast<size_t>(got);
    n_bytes -= static_cast<size_t>(got);
  }
}

void SafetensorsFile::read_f32(const SafetensorsTensor& tensor, float* out) const {
  const size_t n = tensor.numel();
  const size_t offset = data_begin_ + tensor.begin;
  LORA_CHECK(tensor.end >= tensor.begin && data_begin_ + tensor.end <= file_bytes_, "tensor '",
             tensor.name, "' is not a tensor of ", path_);
  if (tensor.dtype == "F32") {
    read_bytes(offset, n * sizeof(float), out);
    return;
  }
  const bool is_f16 = tensor.dtype == "F16";
  LORA_INPUT_CHECK(is_f16 || tensor.dtype == "BF16", path_, ": tensor '", tensor.name,
                   "' has dtype ", tensor.dtype,
                   ", which cannot be read as float32 (expected "
                   "F32, F16 or BF16)");
  std::vector<uint16_t> chunk(std::min(n, kConvertChunk));
  for (size_t done = 0; done < n;) {
    const size_t count = std::min(n - done, kConvertChunk);
    read_bytes(offset + done * 2, count * 2, chunk.data());
    if (is_f16) {
      for (size_t i = 0; i < count; ++i) out[done + i] = half_to_float(chunk[i]);
    } else {
      for (size_t i = 0; i < count; ++i) out[done + i] = bfloat16_to_float(chunk[i]);
    }
    done += count;
  }
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  LORA_INPUT_CHECK(t, path_, ": no tensor named '", name, "'");
  std::vector<float> out(t->numel());
  read_f32(*t, out.data());
  return out;
}

// ---- writing ----

uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

uint16_t float_to_half_bits(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return sign | 0x7E00u;        // NaN
  if (abs >= 0x477FF000u) return sign | 0x7C00u;       // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {                             // below 2^-14: subnormal half (or zero)
    if (abs < 0x33000000u) return sign;                // below 2^-25: rounds to zero
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - exponent;             // 14 - (exponent - 127) + 13 - 1 + 1
    const uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t midpoint = 1u << (shift - 1);
    const uint32_t rounded = half + ((rest > midpoint || (rest == midpoint && (half & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | rounded);
  }
  // Normal: rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10 bits.
  const uint32_t rebased = abs - (112u << 23);
  const uint32_t rounded = rebased + 0xFFFu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

namespace {

// Writes all of `data` to `fd`; false with errno set on failure.
bool write_all(int fd, const void* data, size_t n_bytes) {
  const auto* src = static_cast<const char*>(data);
  while (n_bytes > 0) {
    const ssize_t put = ::write(fd, src, n_bytes);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    src += put;
    n_bytes -= static_cast<size_t>(put);
  }
  return true;
}

}  // namespace

namespace {

// Calls fn(bytes, n) with the tensor's bytes as stored in its dtype, in order (F32 in one piece,
// F16/BF16 converted in bounded chunks); stops and returns false when fn does.
template <typename Fn>
bool for_each_stored_chunk(const SafetensorsWriteTensor& t, Fn&& fn) {
  size_t numel = 1;
  for (const int64_t d : t.shape) numel *= static_cast<size_t>(d);
  if (t.dtype == "F32") return numel == 0 || fn(t.data, numel * sizeof(float));
  const bool half = t.dtype == "F16";
  std::vector<uint16_t> chunk(std::min(numel, kConvertChunk));
  for (size_t done = 0; done < numel;) {
    const size_t count = std::min(numel - done, kConvertChunk);
    for (size_t k = 0; k < count; ++k)
      chunk[k] = half ? float_to_half_bits(t.data[done + k]) : float_to_bfloat16_bits(t.data[done + k]);
    if (!fn(chunk.data(), count * sizeof(uint16_t))) return false;
    done += count;
  }
  return true;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json::Value header = json::Value::object();
  {
    json::Value meta = json::Value::object();
    for (const auto& [k, v] : metadata)
      if (k != kCrcKey) meta.set(k, v);
    meta.set(kCrcKey, kCrcPlaceholder);  // filled in once the CRC is known
    header.set("__metadata__", std::move(meta));
  }
  std::set<std::string> names;
  size_t offset = 0;
  for (const auto& t : tensors) {
    LORA_CHECK(!t.name.empty() && t.name != "__metadata__", "invalid tensor name '", t.name, "'");
    LORA_CHECK(names.insert(t.name).second, "duplicate tensor name '", t.name, "'");
    size_t numel = 1;
    json::Value shape = json::Value::array();
    for (const int64_t d : t.shape) {
      LORA_CHECK(d >= 0, "tensor '", t.name, "': negative dimension in shape ",
                 shape_string(t.shape));
      numel *= static_cast<size_t>(d);
      shape.push_back(d);
    }
    LORA_CHECK(t.data || numel == 0, "tensor '", t.name, "': null data");
    LORA_CHECK(t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16", "tensor '", t.name,
               "': cannot write dtype ", t.dtype, " (expected F32, F16 or BF16)");
    const size_t n_bytes = numel * safetensors_dtype_bytes(t.dtype);
    json::Value entry = json::Value::object();
    entry.set("dtype", t.dtype);
    entry.set("shape", std::move(shape));
    json::Value offsets = json::Value::array();
    offsets.push_back(offset);
    offsets.push_back(offset + n_bytes);
    entry.set("data_offsets", std::move(offsets));
    header.set(t.name, std::move(entry));
    offset += n_bytes;
  }
  std::string text = json::dump(header);
  text.append((8 - text.size() % 8) % 8, ' ');  // data buffer starts 8-byte aligned
  unsigned char size_le[8];
  for (int i = 0; i < 8; ++i) size_le[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  {
    // The placeholder is the only `"lora.crc64":"` in the text: keys are unique, and quotes inside
    // strings are escaped.
    const std::string pattern = detail::concat("\"", kCrcKey, "\":\"", kCrcPlaceholder, "\"");
    const size_t at = text.find(pattern);
    LORA_CHECK(at != std::string::npos, "no ", kCrcKey, " placeholder in the header");
    uint64_t crc = crc64(size_le, 8);
    crc = crc64(text.data(), text.size(), crc);
    for (const auto& t : tensors)
      for_each_stored_chunk(t, [&](const void* bytes, size_t n) {
        crc = crc64(bytes, n, crc);
        return true;
      });
    text.replace(at + pattern.size() - 17, 16, crc_hex(crc));
  }

  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error(detail::concat(tmp, ": cannot create safetensors file: ", errno_string(errno)));
  bool ok = write_all(fd, size_le, 8) && write_all(fd, text.data(), text.size());
  for (size_t i = 0; ok && i < tensors.size(); ++i)
    ok = for_each_stored_chunk(tensors[i], [&](const void* bytes, size_t n) { return write_all(fd, bytes, n); });
  ok = ok && ::fsync(fd) == 0;
  const int err = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok) {
    ::unlink(tmp.c_str());
    throw Error(detail::concat(tmp, ": cannot write safetensors file: ", errno_string(err)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_err = errno;
    ::unlink(tmp.c_str());
    throw Error(
        detail::concat(path, ": cannot rename ", tmp, " into place: ", errno_string(rename_err)));
  }
  // Make the rename durable: fsync the directory (best effort; some filesystems refuse).
  const size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace lora
