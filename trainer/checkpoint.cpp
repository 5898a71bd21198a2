// Checkpoint files (HDF5 C API): the layout is described in checkpoint.h.
//
// Every HDF5 handle is owned by an H5Handle (closed on every path); HDF5's own error printing is
// silenced and every failed call becomes a lora::Error (writing) or lora::InputError (reading) that
// names the file and carries HDF5's innermost error description. Files use the HDF5 1.8 object
// format (metadata checksums; readable by any HDF5 >= 1.8, h5py and h5dump). The `checksum`
// attribute hashes every field of the state, so damaged data, scalars or strings are caught even
// where HDF5 keeps no checksum of its own (raw data, the global heap of variable-length strings).
#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <memory>
#include <optional>
#include <sstream>
#include <string_view>
#include <system_error>
#include <unordered_map>

#include "core/crc64.h"
#include "core/error.h"
#include "core/model/base_layout.h"
#include "core/hash.h"
#include "core/rng.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFormatName = "lora-checkpoint";

// ---- hashing (core/hash.h) -------------------------------------------------------------------

// ---- integrity block -------------------------------------------------------------------------
//
// A version-2 file starts with a 512-byte HDF5 user block (HDF5 puts its superblock after it and
// never reads it) holding, as text,
//     lora-checkpoint integrity block\n
//     crc64-xz of bytes 512..end: <16 lowercase hex digits>\n
//     file bytes: <decimal>\n
// and zero bytes up to 512. The CRC-64 (core/crc64.h) covers every byte after the block; the block
// itself must equal this rendering of its two values byte for byte, so a change anywhere in the file
// is caught (any change within 8 consecutive bytes for certain, any other with probability
// 1 - 2^-64) before HDF5 parses anything.

constexpr size_t kIntegrityBlockBytes = 512;  // HDF5 user blocks are 0 or a power of 2 >= 512
constexpr std::string_view kIntegrityMagic = "lora-checkpoint integrity block\n";
constexpr std::string_view kIntegrityCrcKey = "crc64-xz of bytes 512..end: ";
constexpr std::string_view kIntegrityBytesKey = "file bytes: ";
constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

std::string integrity_block(uint64_t file_bytes, uint64_t crc) {
  std::string block;
  block += kIntegrityMagic;
  block += kIntegrityCrcKey;
  block += hex64(crc);
  block += '\n';
  block += kIntegrityBytesKey;
  block += std::to_string(file_bytes);
  block += '\n';
  block.resize(kIntegrityBlockBytes, '\0');
  return block;
}

// Fills the first kIntegrityBlockBytes of a complete file image (which HDF5 left for the user
// block) with the block for the rest of the image.
void seal_image(unsigned char* image, size_t n_bytes) {
  const uint64_t crc = crc64(image + kIntegrityBlockBytes, n_bytes - kIntegrityBlockBytes);
  const std::string block = integrity_block(n_bytes, crc);
  std::memcpy(image, block.data(), kIntegrityBlockBytes);
}

// The two values of an integrity block, or nullopt when `block` (kIntegrityBlockBytes long) is not
// exactly the rendering of some pair of values.
struct IntegrityRecord {
  uint64_t file_bytes = 0;
  uint64_t crc = 0;
};
std::optional<IntegrityRecord> parse_integrity_block(const unsigned char* block) {
  const std::string_view text(reinterpret_cast<const char*>(block), kIntegrityBlockBytes);
  size_t pos = 0;
  auto take = [&](std::string_view expected) {
    if (text.substr(pos, expected.size()) != expected) return false;
    pos += expected.size();
    return true;
  };
  IntegrityRecord r;
  if (!take(kIntegrityMagic) || !take(kIntegrityCrcKey)) return std::nullopt;
  const auto [crc_end, crc_ec] = std::from_chars(text.data() + pos, text.data() + pos + 16, r.crc, 16);
  if (crc_ec != std::errc() || crc_end != text.data() + pos + 16) return std::nullopt;
  pos += 16;
  if (!take("\n") || !take(kIntegrityBytesKey)) return std::nullopt;
  const char* digits = text.data() + pos;
  const auto [bytes_end, bytes_ec] = std::from_chars(digits, text.data() + text.size(), r.file_bytes);
  if (bytes_ec != std::errc() || bytes_end == digits) return std::nullopt;
  // Canonical form only: the same values rendered again give the same 512 bytes (no sign, no
  // leading zeros, upper-case hex or stray bytes in the zero padding).
  if (integrity_block(r.file_bytes, r.crc) != text) return std::nullopt;
  return r;
}

// The checksum stored in the file: covers every field of the state (strings and scalars included,
// so a damaged config or seed is caught like a damaged tensor), with created_utc as written.
std::string state_checksum(const CheckpointState& s, const std::string& created_utc,
                           const std::string* spec_json) {
  std::string fields;
  auto put_string = [&](const std::string& v) {
    const uint64_t n = v.size();
    fields.append(reinterpret_cast<const char*>(&n), sizeof(n));
    fields += v;
  };
  auto put = [&](const auto& v) { fields.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  for (const std::string* str : {&s.base_fingerprint, &s.spec.arch, &s.config_yaml, &created_utc,
                                 &s.metrics_jsonl}) {
    put_string(*str);
  }
  // Version 2 adds the whole spec; a version 1 file's checksum covers what it always did.
  if (spec_json != nullptr) put_string(*spec_json);
  put(static_cast<int64_t>(s.step));
  put(s.tokens_seen);
  put(static_cast<int64_t>(s.world_size));
  for (int d : {s.spec.vocab_size, s.spec.max_seq_len, s.spec.n_layer, s.spec.n_head, s.spec.d_model}) {
    put(static_cast<int64_t>(d));
  }
  put(static_cast<int64_t>(s.mode == TrainMode::kFull ? 1 : 0));
  if (s.mode == TrainMode::kLora) {  // full-mode files store no LoRA spec
    put(static_cast<int64_t>(s.lora.rank));
    put(s.lora.alpha);
    put(s.lora.dropout);
    put(static_cast<int64_t>(s.lora.rslora ? 1 : 0));
    for (LoraTarget t : s.lora.targets) put(static_cast<int64_t>(t));
    put(static_cast<int64_t>(s.lora.init_a));
    put(static_cast<int64_t>(s.lora.init_b));
    // Per-module ranks and alphas (adapters imported from PEFT with rank_pattern/alpha_pattern);
    // absent from every other file, whose checksum is unchanged.
    for (const auto& [name, m] : s.lora.module_settings) {
      put_string(name);
      put(static_cast<int64_t>(m.rank));
      put(m.alpha);
    }
  }
  put(static_cast<int64_t>(s.optimizer_step));
  for (float f : {s.beta1, s.beta2, s.eps, s.weight_decay, s.lr}) put(f);
  put(s.data_seed);
  put(static_cast<int64_t>(s.data_cursor));
  put(s.dropout_seed);
  put(static_cast<int64_t>(s.lr_warmup_steps));
  put(static_cast<int64_t>(s.lr_total_steps));
  const uint64_t hf = hash_bytes(fields.data(), fields.size(), 0);
  const uint64_t hp = hash_bytes(s.params.data(), s.params.size() * sizeof(float), 1);
  const uint64_t hm = hash_bytes(s.adam_m.data(), s.adam_m.size() * sizeof(float), 2);
  const uint64_t hv = hash_bytes(s.adam_v.data(), s.adam_v.size() * sizeof(float), 3);
  const uint64_t hr = hash_bytes(s.rng_states.data(), s.rng_states.size() * sizeof(uint64_t), 4);
  return hex64(hash_u64(hf, hp, hm, hv) ^ mix64(hr));
}

// ---- HDF5 plumbing ---------------------------------------------------------------------------

class H5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Handle() = default;
  H5Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  H5Handle(H5Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = -1; }
  H5Handle& operator=(H5Handle&& o) noexcept {
    if (this != &o) {
      close();
      id_ = o.id_;
      closer_ = o.closer_;
      o.id_ = -1;
    }
    return *this;
  }
  ~H5Handle() { close(); }
  hid_t get() const { return id_; }
  // Closes now; returns HDF5's status. The handle is released whatever the outcome (never closed
  // twice).
  herr_t close() {
    herr_t status = 0;
    if (id_ >= 0 && closer_ != nullptr) status = closer_(id_);
    id_ = -1;
    return status;
  }

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

herr_t walk_innermost(unsigned n, const H5E_error2_t* err, void* data) {
  if (n == 0) {
    auto* out = static_cast<std::string*>(data);
    if (err->desc != nullptr && err->desc[0] != '\0') {
      *out = err->desc;
    } else {
      char msg[256] = {0};
      H5Eget_msg(err->min_num, nullptr, msg, sizeof(msg));
      *out = msg;
    }
  }
  return 0;
}

// The most specific message on HDF5's error stack (then clears the stack). The POSIX driver's
// messages ("file write failed: time = ..., errno = 28, error message = 'No space left on device',
// buf = ...") are shortened to their first clause and the system error.
std::string hdf5_error_text() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_innermost, &text);
  H5Eclear2(H5E_DEFAULT);
  if (text.empty()) return "unknown HDF5 error";
  const std::string key = "error message = '";
  const size_t at = text.find(key);
  if (at != std::string::npos) {
    const size_t end = text.find('\'', at + key.size());
    const std::string sys = text.substr(at + key.size(), end == std::string::npos ? end : end - at - key.size());
    text = text.substr(0, text.find(':')) + ": " + sys;
  }
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

void silence_hdf5_errors() {
  static const bool silenced = [] {
    H5open();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)silenced;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // per-thread in thread-safe builds
}

hid_t make_fapl() {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) return fapl;
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);
#if H5_VERSION_GE(1, 10, 7)
  // Lock when the file system supports it; do not fail on file systems that do not (NFS, Lustre).
  H5Pset_file_locking(fapl, true, true);
#endif
  return fapl;
}

// Where one tensor lives in the state's buffers and in the file.
struct TensorEntry {
  std::string param_path;  // "/adapters/h.0.attn.c_attn/A" or "/base/wte.weight"
  std::string m_path;
  std::string v_path;
  std::vector<hsize_t> dims;
  size_t offset = 0;
  size_t numel = 0;
};

struct FileLayout {
  std::vector<std::string> groups;  // to create, parents first
  std::vector<TensorEntry> tensors;
  size_t n_params = 0;
};

// Throws InputError from BaseLayout / LoraLayout for an invalid spec.
FileLayout file_layout(const CheckpointState& s) {
  FileLayout f;
  BaseLayout base(s.spec);
  if (s.mode == TrainMode::kFull) {
    f.groups = {"/base", "/optimizer", "/optimizer/base"};
    for (const TensorInfo& t : base.tensors()) {
      TensorEntry e;
      e.param_path = "/base/" + t.name;
      const std::string g = "/optimizer/base/" + t.name;
      f.groups.push_back(g);
      e.m_path = g + "/m";
      e.v_path = g + "/v";
      for (int64_t d : t.shape) e.dims.push_back(static_cast<hsize_t>(d));
      e.offset = t.offset;
      e.numel = t.numel;
      f.tensors.push_back(std::move(e));
    }
    f.n_params = base.n_params();
    return f;
  }
  LoraLayout layout(s.spec, s.lora);
  f.groups = {"/adapters", "/optimizer"};
  for (const LoraModule& m : layout.modules()) {
    const std::string ga = "/adapters/" + m.name;
    const std::string go = "/optimizer/" + m.name;
    f.groups.push_back(ga);
    f.groups.push_back(go);
    TensorEntry a;
    a.param_path = ga + "/A";
    a.m_path = go + "/A_m";
    a.v_path = go + "/A_v";
    a.dims = {static_cast<hsize_t>(m.d_in), static_cast<hsize_t>(m.rank)};
    a.offset = m.a_offset;
    a.numel = m.n_a();
    TensorEntry b;
    b.param_path = ga + "/B";
    b.m_path = go + "/B_m";
    b.v_path = go + "/B_v";
    b.dims = {static_cast<hsize_t>(m.rank), static_cast<hsize_t>(m.d_out)};
    b.offset = m.b_offset;
    b.numel = m.n_b();
    f.tensors.push_back(std::move(a));
    f.tensors.push_back(std::move(b));
  }
  f.n_params = layout.n_params();
  return f;
}

std::string mode_name(TrainMode m) { return m == TrainMode::kFull ? "full" : "lora"; }

std::string targets_string(const std::vector<LoraTarget>& targets, const ModelSpec& spec) {
  std::string out;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (i > 0) out += ',';
    out += lora_target_name(targets[i], spec);
  }
  return out;
}

std::string utc_now_iso8601() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// `text` with control characters and bytes that are not valid UTF-8 written as \xNN, so values read
// from a damaged file can be quoted in an error message.
std::string printable(const std::string& text) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  char esc[5];
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= n && !(len == 1 && (c < 0x20 || c == 0x7F));
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (ok) {
      out.append(text, i, len);
      i += len;
    } else {
      std::snprintf(esc, sizeof(esc), "\\x%02X", c);
      out += esc;
      ++i;
    }
  }
  return out;
}

std::string parent_dir(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// ---- writing ---------------------------------------------------------------------------------
//
// The file is built in memory by HDF5's core driver and written to disk with plain POSIX calls.
// HDF5 1.10 leaves its internal state damaged when a flush or close fails on disk (a failed close
// keeps a dangling file id that crashes library shutdown), so no disk I/O happens inside HDF5: a full
// disk or an I/O error surfaces as a clean errno from write(2)/fsync(2). The image callbacks hand the
// core driver's buffer over to us at close instead of freeing it, so the image is never copied.

struct ImageSink {
  void* buffer = nullptr;  // the core driver's memory, owned by us after H5Fclose
  size_t buffer_bytes = 0;
  std::unordered_map<void*, size_t> live;  // every block handed out, and its size
  ~ImageSink() { std::free(buffer); }
};

void* image_malloc(size_t size, H5FD_file_image_op_t, void* udata) {
  void* p = std::malloc(size);
  if (p != nullptr) static_cast<ImageSink*>(udata)->live[p] = size;
  return p;
}
void* image_realloc(void* ptr, size_t size, H5FD_file_image_op_t, void* udata) {
  auto* sink = static_cast<ImageSink*>(udata);
  const auto it = sink->live.find(ptr);
  const size_t old_size = it == sink->live.end() ? 0 : it->second;
  if (it != sink->live.end()) sink->live.erase(it);
  void* p = std::realloc(ptr, size);
  sink->live[p != nullptr ? p : ptr] = p != nullptr ? size : old_size;  // on failure ptr stays valid
  return p;
}
herr_t image_free(void* ptr, H5FD_file_image_op_t op, void* udata) {
  auto* sink = static_cast<ImageSink*>(udata);
  const auto it = sink->live.find(ptr);
  const size_t size = it == sink->live.end() ? 0 : it->second;
  if (it != sink->live.end()) sink->live.erase(it);
  if (op == H5FD_FILE_IMAGE_OP_FILE_CLOSE) {  // the last one closed is the file's image
    std::free(sink->buffer);
    sink->buffer = ptr;
    sink->buffer_bytes = size;
  } else {
    std::free(ptr);
  }
  return 0;
}
void* image_udata_copy(void* udata) { return udata; }  // shared: the sink outlives every copy
herr_t image_udata_free(void*) { return 0; }


class Writer {
 public:
  explicit Writer(const std::string& final_path) : final_path_(final_path) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("cannot write checkpoint '" + final_path_ + "': " + what);
  }
  hid_t check(hid_t id, const std::string& what) const {
    if (id < 0) fail(what + ": " + hdf5_error_text());
    return id;
  }
  void check_status(herr_t status, const std::string& what) const {
    if (status < 0) fail(what + ": " + hdf5_error_text());
  }

  H5Handle string_type() const {
    H5Handle t(check(H5Tcopy(H5T_C_S1), "H5Tcopy"), H5Tclose);
    check_status(H5Tset_size(t.get(), H5T_VARIABLE), "H5Tset_size");
    check_status(H5Tset_cset(t.get(), H5T_CSET_UTF8), "H5Tset_cset");
    return t;
  }

  void attr_raw(hid_t obj, const std::string& name, hid_t file_type, hid_t mem_type,
                const void* value) const {
    H5Handle space(check(H5Screate(H5S_SCALAR), "H5Screate"), H5Sclose);
    H5Handle attr(check(H5Acreate2(obj, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                        "create attribute '" + name + "'"),
                  H5Aclose);
    check_status(H5Awrite(attr.get(), mem_type, value), "write attribute '" + name + "'");
    check_status(attr.close(), "close attribute '" + name + "'");
  }
  void attr_string(hid_t obj, const std::string& name, const std::string& value) const {
    H5Handle t = string_type();
    const char* p = value.c_str();
    attr_raw(obj, name, t.get(), t.get(), &p);
  }
  void attr_i64(hid_t obj, const std::string& name, int64_t v) const {
    attr_raw(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
  }
  void attr_u64(hid_t obj, const std::string& name, uint64_t v) const {
    attr_raw(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
  }
  void attr_i32(hid_t obj, const std::string& name, int32_t v) const {
    attr_raw(obj, name, H5T_STD_I32LE, H5T_NATIVE_INT32, &v);
  }
  void attr_f32(hid_t obj, const std::string& name, float v) const {
    attr_raw(obj, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &v);
  }

  void dataset(hid_t file, const std::string& path, const std::vector<hsize_t>& dims, hid_t file_type,
               hid_t mem_type, const void* data) const {
    H5Handle space(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                         "dataspace of '" + path + "'"),
                   H5Sclose);
    H5Handle ds(check(H5Dcreate2(file, path.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                                 H5P_DEFAULT),
                      "create dataset '" + path + "'"),
                H5Dclose);
    size_t n = 1;
    for (hsize_t d : dims) n *= static_cast<size_t>(d);
    if (n > 0) {
      check_status(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data),
                   "write dataset '" + path + "'");
    }
    check_status(ds.close(), "close dataset '" + path + "'");
  }
  void string_dataset(hid_t file, const std::string& path, const std::string& value) const {
    H5Handle t = string_type();
    H5Handle space(check(H5Screate(H5S_SCALAR), "H5Screate"), H5Sclose);
    H5Handle ds(check(H5Dcreate2(file, path.c_str(), t.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT,
                                 H5P_DEFAULT),
                      "create dataset '" + path + "'"),
                H5Dclose);
    const char* p = value.c_str();
    check_status(H5Dwrite(ds.get(), t.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &p),
                 "write dataset '" + path + "'");
    check_status(ds.close(), "close dataset '" + path + "'");
  }

  H5Handle group(hid_t file, const std::string& path) const {
    return H5Handle(check(H5Gcreate2(file, path.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                          "create group '" + path + "'"),
                    H5Gclose);
  }
  H5Handle open_group(hid_t file, const std::string& path) const {
    return H5Handle(check(H5Gopen2(file, path.c_str(), H5P_DEFAULT), "open group '" + path + "'"),
                    H5Gclose);
  }

  // Builds the whole HDF5 file in memory (the `complete` flag goes in last) and returns its size;
  // the bytes are in sink->buffer.
  size_t build_image(const CheckpointState& s, const FileLayout& layout, ImageSink* sink) const {
    size_t estimate_bytes = 3 * layout.n_params * sizeof(float) + s.config_yaml.size() +
                            s.metrics_jsonl.size() + (1u << 20);
    estimate_bytes = (estimate_bytes + (1u << 20) - 1) & ~static_cast<size_t>((1u << 20) - 1);
    H5Handle fapl(check(make_fapl(), "H5Pcreate"), H5Pclose);
    check_status(H5Pset_fapl_core(fapl.get(), estimate_bytes, false), "H5Pset_fapl_core");
    H5FD_file_image_callbacks_t callbacks = {image_malloc, nullptr,           image_realloc, image_free,
                                             image_udata_copy, image_udata_free, sink};
    check_status(H5Pset_file_image_callbacks(fapl.get(), &callbacks), "H5Pset_file_image_callbacks");
    // The first bytes are left for the integrity block (seal_image fills them once the image is
    // complete).
    H5Handle fcpl(check(H5Pcreate(H5P_FILE_CREATE), "H5Pcreate"), H5Pclose);
    check_status(H5Pset_userblock(fcpl.get(), kIntegrityBlockBytes), "H5Pset_userblock");
    // The core driver loads an existing file of the given name into memory even when creating, so
    // the in-memory file gets a name that can never exist.
    H5Handle file(check(H5Fcreate("/dev/null/lora-checkpoint-image.h5", H5F_ACC_TRUNC, fcpl.get(),
                                  fapl.get()),
                        "create in-memory HDF5 file"),
                  H5Fclose);
    const hid_t f = file.get();
    const std::string created_utc = utc_now_iso8601();
    const std::string spec_json = spec_to_json(s.spec);
    {
      H5Handle root = open_group(f, "/");
      const hid_t r = root.get();
      attr_string(r, "format", kFormatName);
      attr_i64(r, "format_version", kCheckpointFormatVersion);
      attr_i64(r, "step", s.step);
      attr_u64(r, "tokens_seen", s.tokens_seen);
      attr_i64(r, "world_size", s.world_size);
      attr_string(r, "base_fingerprint", s.base_fingerprint);
      attr_string(r, "arch", s.spec.arch);
      attr_string(r, "created_utc", created_utc);
      attr_string(r, "config_yaml", s.config_yaml);
      attr_string(r, "mode", mode_name(s.mode));
      attr_i64(r, "vocab_size", s.spec.vocab_size);
      attr_i64(r, "max_seq_len", s.spec.max_seq_len);
      attr_i64(r, "n_layer", s.spec.n_layer);
      attr_i64(r, "n_head", s.spec.n_head);
      attr_i64(r, "d_model", s.spec.d_model);
      attr_string(r, "model_spec", spec_json);
    }
    for (const std::string& g : layout.groups) group(f, g);
    if (s.mode == TrainMode::kLora) {
      H5Handle adapters = open_group(f, "/adapters");
      const hid_t a = adapters.get();
      attr_i64(a, "rank", s.lora.rank);
      attr_f32(a, "alpha", s.lora.alpha);
      attr_f32(a, "dropout", s.lora.dropout);
      attr_i32(a, "rslora", s.lora.rslora ? 1 : 0);
      attr_string(a, "targets", targets_string(s.lora.targets, s.spec));
      attr_string(a, "init_a", std::string(lora_init_a_name(s.lora.init_a)));
      attr_string(a, "init_b", std::string(lora_init_b_name(s.lora.init_b)));
      for (const std::string& g : layout.groups) {
        if (g.rfind("/adapters/", 0) != 0) continue;
        H5Handle mg = open_group(f, g);
        const std::string module = g.substr(std::string("/adapters/").size());
        attr_i64(mg.get(), "rank", s.lora.rank_of(module));
        attr_f32(mg.get(), "alpha", s.lora.alpha_of(module));
        attr_f32(mg.get(), "scaling", s.lora.scaling_of(module));
      }
    }
    for (const TensorEntry& e : layout.tensors) {
      dataset(f, e.param_path, e.dims, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, s.params.data() + e.offset);
      dataset(f, e.m_path, e.dims, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, s.adam_m.data() + e.offset);
      dataset(f, e.v_path, e.dims, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, s.adam_v.data() + e.offset);
    }
    {
      H5Handle opt = open_group(f, "/optimizer");
      attr_i64(opt.get(), "step", s.optimizer_step);
      attr_f32(opt.get(), "beta1", s.beta1);
      attr_f32(opt.get(), "beta2", s.beta2);
      attr_f32(opt.get(), "eps", s.eps);
      attr_f32(opt.get(), "weight_decay", s.weight_decay);
    }
    {
      H5Handle tr = group(f, "/trainer");
      attr_u64(tr.get(), "data_seed", s.data_seed);
      attr_i64(tr.get(), "data_cursor", s.data_cursor);
      attr_u64(tr.get(), "dropout_seed", s.dropout_seed);
      attr_f32(tr.get(), "lr", s.lr);
      attr_i64(tr.get(), "lr_warmup_steps", s.lr_warmup_steps);
      attr_i64(tr.get(), "lr_total_steps", s.lr_total_steps);
    }
    const std::vector<hsize_t> n_rng = {static_cast<hsize_t>(s.rng_states.size())};
    dataset(f, "/trainer/rng_states", n_rng, H5T_STD_U64LE, H5T_NATIVE_UINT64, s.rng_states.data());
    string_dataset(f, "/trainer/metrics_jsonl", s.metrics_jsonl);
    {
      H5Handle root = open_group(f, "/");
      attr_string(root.get(), "checksum", state_checksum(s, created_utc, &spec_json));
      // Written last: a file without it was not finished.
      attr_i32(root.get(), "complete", 1);
    }
    check_status(H5Fflush(f, H5F_SCOPE_GLOBAL), "flush the in-memory file");
    check_status(file.close(), "close the in-memory file");
    if (sink->buffer == nullptr) fail("the in-memory file image was not handed over at close");
    // The buffer's own size bounds the file (H5Fget_file_image would count without the user block).
    auto* image = static_cast<unsigned char*>(sink->buffer);
    const size_t file_bytes = image_size(image, sink->buffer_bytes);
    seal_image(image, file_bytes);
    return file_bytes;
  }

  // Closing the file releases the free space at its end, so the image can be longer than the file
  // the superblock describes. The superblock (right after the user block; version 2, as the 1.8
  // format bounds guarantee: signature, version, offset and length sizes, flags, base address,
  // extension address, end-of-file address, ...) holds the true end, counted from the start of the
  // file (user block included); a file must end there, or a shorter copy would also open.
  size_t image_size(const unsigned char* image, size_t n_bytes) const {
    const unsigned char* sb = image + kIntegrityBlockBytes;
    if (n_bytes < kIntegrityBlockBytes + 48 || std::memcmp(sb, kHdf5Signature, 8) != 0 || sb[8] != 2 ||
        sb[9] != 8) {
      fail("unexpected superblock in the in-memory file");
    }
    uint64_t eof = 0;
    for (int i = 7; i >= 0; --i) eof = (eof << 8) | sb[28 + i];
    if (eof <= kIntegrityBlockBytes + 48 || eof > n_bytes) {
      fail("superblock end-of-file address " + std::to_string(eof) + " outside the " +
           std::to_string(n_bytes) + "-byte image");
    }
    return static_cast<size_t>(eof);
  }

 private:
  std::string final_path_;
};

// Writes `n_bytes` to a new file at `path` and fsyncs it.
void write_bytes_durably(const std::string& path, const void* data, size_t n_bytes, const Writer& w) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) w.fail("create '" + path + "': " + std::strerror(errno));
  const auto* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < n_bytes) {
    const ssize_t n = ::write(fd, p + done, std::min<size_t>(n_bytes - done, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      w.fail("write '" + path + "': " + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    w.fail("fsync '" + path + "': " + std::strerror(err));
  }
  if (::close(fd) != 0) w.fail("close '" + path + "': " + std::strerror(errno));
}

void fsync_directory(const std::string& dir, const Writer& w) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) w.fail("open directory '" + dir + "' for fsync: " + std::strerror(errno));
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    w.fail("fsync directory '" + dir + "': " + std::strerror(err));
  }
  ::close(fd);
}

// ---- reading ---------------------------------------------------------------------------------
//
// The whole file is read into memory with plain I/O, its integrity block checked, and HDF5 then
// parses that same memory through its core driver: HDF5 never sees bytes that were not verified,
// and the file is read from disk once. Version-1 files (written before the integrity block existed)
// start with the HDF5 signature instead; they are parsed unverified and rely on the `checksum`
// attribute, so a damaged version-1 file can still crash libhdf5 before that check runs.

// A file's bytes, owned by the reader; HDF5's core driver works on them in place (the callbacks
// below hand it this buffer instead of a copy and never free or grow it).
struct FileImage {
  std::unique_ptr<unsigned char[]> bytes;
  size_t n_bytes = 0;
  bool sealed = false;  // starts with an integrity block (format version 2)
};

void* read_image_malloc(size_t size, H5FD_file_image_op_t, void* udata) {
  auto* image = static_cast<FileImage*>(udata);
  return size == image->n_bytes ? image->bytes.get() : nullptr;
}
void* read_image_memcpy(void* dest, const void* src, size_t size, H5FD_file_image_op_t, void*) {
  if (dest != src) std::memcpy(dest, src, size);
  return dest;
}
void* read_image_realloc(void*, size_t, H5FD_file_image_op_t, void*) { return nullptr; }
herr_t read_image_free(void*, H5FD_file_image_op_t, void*) { return 0; }

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw InputError("checkpoint '" + path_ + "': " + printable(what));
  }
  hid_t check(hid_t id, const std::string& what) const {
    if (id < 0) fail(what + ": " + hdf5_error_text());
    return id;
  }
  void check_status(herr_t status, const std::string& what) const {
    if (status < 0) fail(what + ": " + hdf5_error_text());
  }

  static std::string where(hid_t obj) {
    char name[512] = {0};
    H5Iget_name(obj, name, sizeof(name));
    return name[0] ? name : "/";
  }

  H5Handle open_attr(hid_t obj, const std::string& name) const {
    const htri_t exists = H5Aexists(obj, name.c_str());
    if (exists <= 0) fail("missing attribute '" + name + "' on '" + where(obj) + "'");
    return H5Handle(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "open attribute '" + name + "'"),
                    H5Aclose);
  }

  // The attribute's type class, after checking that it holds exactly one value.
  H5T_class_t scalar_class(hid_t attr, const std::string& name, hid_t obj, size_t* type_size,
                           bool* is_variable_string) const {
    H5Handle space(check(H5Aget_space(attr), "dataspace of attribute '" + name + "'"), H5Sclose);
    if (H5Sget_simple_extent_npoints(space.get()) != 1) {
      fail("attribute '" + name + "' on '" + where(obj) + "': expected a single value");
    }
    H5Handle type(check(H5Aget_type(attr), "type of attribute '" + name + "'"), H5Tclose);
    if (type_size != nullptr) *type_size = H5Tget_size(type.get());
    if (is_variable_string != nullptr) *is_variable_string = H5Tis_variable_str(type.get()) > 0;
    return H5Tget_class(type.get());
  }

  std::string attr_string(hid_t obj, const std::string& name) const {
    H5Handle attr = open_attr(obj, name);
    size_t size = 0;
    bool variable = false;
    if (scalar_class(attr.get(), name, obj, &size, &variable) != H5T_STRING) {
      fail("attribute '" + name + "' on '" + where(obj) + "': expected a string");
    }
    H5Handle mem(check(H5Tcopy(H5T_C_S1), "H5Tcopy"), H5Tclose);
    if (variable) {
      check_status(H5Tset_size(mem.get(), H5T_VARIABLE), "H5Tset_size");
      check_status(H5Tset_cset(mem.get(), H5T_CSET_UTF8), "H5Tset_cset");
      char* value = nullptr;
      check_status(H5Aread(attr.get(), mem.get(), &value), "read attribute '" + name + "'");
      std::string out = value != nullptr ? value : "";
      H5free_memory(value);
      return out;
    }
    std::string buf(size + 1, '\0');
    check_status(H5Tset_size(mem.get(), size + 1), "H5Tset_size");
    check_status(H5Aread(attr.get(), mem.get(), buf.data()), "read attribute '" + name + "'");
    return std::string(buf.c_str());
  }

  template <typename T>
  T attr_number(hid_t obj, const std::string& name, hid_t mem_type, H5T_class_t expected) const {
    H5Handle attr = open_attr(obj, name);
    if (scalar_class(attr.get(), name, obj, nullptr, nullptr) != expected) {
      fail("attribute '" + name + "' on '" + where(obj) + "': expected " +
           (expected == H5T_INTEGER ? "an integer" : "a floating-point number"));
    }
    T value{};
    check_status(H5Aread(attr.get(), mem_type, &value), "read attribute '" + name + "'");
    return value;
  }
  int64_t attr_i64(hid_t obj, const std::string& name) const {
    return attr_number<int64_t>(obj, name, H5T_NATIVE_INT64, H5T_INTEGER);
  }
  uint64_t attr_u64(hid_t obj, const std::string& name) const {
    return attr_number<uint64_t>(obj, name, H5T_NATIVE_UINT64, H5T_INTEGER);
  }
  float attr_f32(hid_t obj, const std::string& name) const {
    return attr_number<float>(obj, name, H5T_NATIVE_FLOAT, H5T_FLOAT);
  }
  int attr_int(hid_t obj, const std::string& name, int64_t lo, int64_t hi) const {
    const int64_t v = attr_i64(obj, name);
    if (v < lo || v > hi) {
      fail("attribute '" + name + "' on '" + where(obj) + "' = " + std::to_string(v) +
           ": expected a value in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    return static_cast<int>(v);
  }

  // Opens an object by absolute path, checking every component so the message names what is missing.
  void require_path(hid_t file, const std::string& path, const char* kind) const {
    size_t pos = 0;
    while (pos != std::string::npos) {
      pos = path.find('/', pos + 1);
      const std::string prefix = path.substr(0, pos);
      if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        if (prefix == path) fail(std::string("missing ") + kind + " '" + path + "'");
        fail(std::string("missing group '") + prefix + "' (expected " + kind + " '" + path + "')");
      }
    }
  }
  H5Handle open_group(hid_t file, const std::string& path) const {
    require_path(file, path, "group");
    return H5Handle(check(H5Gopen2(file, path.c_str(), H5P_DEFAULT), "open group '" + path + "'"),
                    H5Gclose);
  }

  // Opens a dataset and checks its element class, element size and (when given) its shape.
  H5Handle open_dataset(hid_t file, const std::string& path, H5T_class_t cls, size_t elem_bytes,
                        const char* dtype_name, std::vector<hsize_t>* dims) const {
    require_path(file, path, "dataset");
    H5Handle ds(check(H5Dopen2(file, path.c_str(), H5P_DEFAULT), "open dataset '" + path + "'"),
                H5Dclose);
    H5Handle type(check(H5Dget_type(ds.get()), "type of '" + path + "'"), H5Tclose);
    if (H5Tget_class(type.get()) != cls || (elem_bytes != 0 && H5Tget_size(type.get()) != elem_bytes)) {
      fail("dataset '" + path + "': expected " + dtype_name);
    }
    if (dims != nullptr) {
      H5Handle space(check(H5Dget_space(ds.get()), "dataspace of '" + path + "'"), H5Sclose);
      const int ndims = H5Sget_simple_extent_ndims(space.get());
      std::vector<hsize_t> actual(ndims > 0 ? ndims : 0);
      if (ndims > 0) H5Sget_simple_extent_dims(space.get(), actual.data(), nullptr);
      if (ndims < 0 || actual != *dims) {
        fail("dataset '" + path + "' has shape " + shape_text(actual) + ", expected " +
             shape_text(*dims));
      }
    }
    return ds;
  }

  void read_floats(hid_t file, const std::string& path, const std::vector<hsize_t>& dims,
                   float* dst) const {
    std::vector<hsize_t> expected = dims;
    H5Handle ds = open_dataset(file, path, H5T_FLOAT, sizeof(float), "float32", &expected);
    check_status(H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst),
                 "read dataset '" + path + "'");
  }

  std::vector<uint64_t> read_u64_vector(hid_t file, const std::string& path) const {
    H5Handle ds = open_dataset(file, path, H5T_INTEGER, sizeof(uint64_t), "a 1-D uint64 array", nullptr);
    H5Handle space(check(H5Dget_space(ds.get()), "dataspace of '" + path + "'"), H5Sclose);
    if (H5Sget_simple_extent_ndims(space.get()) != 1) fail("dataset '" + path + "': expected 1-D");
    hsize_t n = 0;
    H5Sget_simple_extent_dims(space.get(), &n, nullptr);
    std::vector<uint64_t> out(n);
    if (n > 0) {
      check_status(H5Dread(ds.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
                   "read dataset '" + path + "'");
    }
    return out;
  }

  std::string read_string_dataset(hid_t file, const std::string& path) const {
    H5Handle ds = open_dataset(file, path, H5T_STRING, 0, "a string", nullptr);
    H5Handle type(check(H5Dget_type(ds.get()), "type of '" + path + "'"), H5Tclose);
    H5Handle space(check(H5Dget_space(ds.get()), "dataspace of '" + path + "'"), H5Sclose);
    if (H5Sget_simple_extent_npoints(space.get()) != 1) fail("dataset '" + path + "': expected one string");
    H5Handle mem(check(H5Tcopy(H5T_C_S1), "H5Tcopy"), H5Tclose);
    if (H5Tis_variable_str(type.get()) > 0) {
      check_status(H5Tset_size(mem.get(), H5T_VARIABLE), "H5Tset_size");
      check_status(H5Tset_cset(mem.get(), H5T_CSET_UTF8), "H5Tset_cset");
      char* value = nullptr;
      check_status(H5Dread(ds.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &value),
                   "read dataset '" + path + "'");
      std::string out = value != nullptr ? value : "";
      H5free_memory(value);
      return out;
    }
    const size_t size = H5Tget_size(type.get());
    std::string buf(size + 1, '\0');
    check_status(H5Tset_size(mem.get(), size + 1), "H5Tset_size");
    check_status(H5Dread(ds.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()),
                 "read dataset '" + path + "'");
    return std::string(buf.c_str());
  }

  static std::string shape_text(const std::vector<hsize_t>& dims) {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); ++i) {
      if (i > 0) s += ", ";
      s += std::to_string(dims[i]);
    }
    return s + "]";
  }

  // Reads the file with plain I/O and, when it starts with an integrity block, verifies it. No HDF5
  // call is made here.
  void load_image(FileImage* image) const {
    struct stat st{};
    if (::stat(path_.c_str(), &st) != 0) fail(std::string("cannot open: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) fail("is a directory, expected an HDF5 file");
    if (!S_ISREG(st.st_mode)) fail("not a regular file");
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(std::string("cannot open: ") + std::strerror(errno));
    const size_t n = static_cast<size_t>(st.st_size);
    image->bytes = std::make_unique_for_overwrite<unsigned char[]>(std::max<size_t>(n, 1));
    image->n_bytes = n;
    size_t done = 0;
    while (done < n) {
      const ssize_t got = ::pread(fd, image->bytes.get() + done, std::min<size_t>(n - done, size_t{1} << 30),
                                  static_cast<off_t>(done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        const int err = got < 0 ? errno : 0;
        ::close(fd);
        if (err != 0) throw Error("checkpoint '" + path_ + "': read failed: " + std::strerror(err));
        fail("the file shrank while it was read (" + std::to_string(done) + " of " +
             std::to_string(n) + " bytes)");
      }
      done += static_cast<size_t>(got);
    }
    ::close(fd);

    const unsigned char* b = image->bytes.get();
    if (n >= sizeof(kHdf5Signature) && std::memcmp(b, kHdf5Signature, sizeof(kHdf5Signature)) == 0) {
      image->sealed = false;  // version 1: no integrity block
      return;
    }
    if (n >= kIntegrityMagic.size() && std::memcmp(b, kIntegrityMagic.data(), kIntegrityMagic.size()) == 0) {
      verify_integrity(*image);
      image->sealed = true;
      return;
    }
    if (n >= kIntegrityBlockBytes + sizeof(kHdf5Signature) &&
        std::memcmp(b + kIntegrityBlockBytes, kHdf5Signature, sizeof(kHdf5Signature)) == 0) {
      fail("the first " + std::to_string(kIntegrityBlockBytes) +
           " bytes are not a lora-checkpoint integrity block (the file is damaged, or is an HDF5 "
           "file with another program's user block)");
    }
    fail("not an HDF5 file (no HDF5 signature; empty, truncated or another format)");
  }

  void verify_integrity(const FileImage& image) const {
    const size_t n = image.n_bytes;
    if (n < kIntegrityBlockBytes) {
      fail("truncated: " + std::to_string(n) + " bytes, shorter than the " +
           std::to_string(kIntegrityBlockBytes) + "-byte integrity block it starts with");
    }
    const std::optional<IntegrityRecord> record = parse_integrity_block(image.bytes.get());
    if (!record) {
      fail("the integrity block (bytes 0-" + std::to_string(kIntegrityBlockBytes - 1) +
           ") is damaged: the file cannot be verified");
    }
    if (record->file_bytes != n) {
      fail("the file is " + std::to_string(n) + " bytes but its integrity block records " +
           std::to_string(record->file_bytes) + ": it was truncated or extended, or is damaged");
    }
    const uint64_t actual = crc64(image.bytes.get() + kIntegrityBlockBytes, n - kIntegrityBlockBytes);
    if (actual != record->crc) {
      fail("CRC-64 mismatch (integrity block says " + hex64(record->crc) + ", the file's bytes give " +
           hex64(actual) + "): the file is damaged");
    }
  }

  // Opens `image` (which must outlive the returned handle) with HDF5's core driver, in place.
  H5Handle open_image(FileImage* image) const {
    H5Handle fapl(check(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate"), H5Pclose);
    check_status(H5Pset_fapl_core(fapl.get(), 1 << 16, false), "H5Pset_fapl_core");
    H5FD_file_image_callbacks_t callbacks = {read_image_malloc, read_image_memcpy, read_image_realloc,
                                             read_image_free,   image_udata_copy,  image_udata_free,
                                             image};
    check_status(H5Pset_file_image_callbacks(fapl.get(), &callbacks), "H5Pset_file_image_callbacks");
    check_status(H5Pset_file_image(fapl.get(), image->bytes.get(), image->n_bytes), "H5Pset_file_image");
    // The core driver refuses to open an image under the name of a file that exists; each open gets
    // a name of its own that cannot exist, so two open images are never taken for the same file.
    static unsigned long n_opened = 0;
    const std::string name = "/dev/null/lora-checkpoint-read-" + std::to_string(++n_opened) + ".h5";
    return H5Handle(check(H5Fopen(name.c_str(), H5F_ACC_RDONLY, fapl.get()),
                          "cannot open as HDF5 (damaged or truncated)"),
                    H5Fclose);
  }

  CheckpointState read() const {
    silence_hdf5_errors();
    FileImage image;
    load_image(&image);
    H5Handle file = open_image(&image);
    const hid_t f = file.get();
    H5Handle root(check(H5Gopen2(f, "/", H5P_DEFAULT), "open root group"), H5Gclose);
    const hid_t r = root.get();
    if (H5Aexists(r, "format") <= 0) {
      fail("not a lora checkpoint (HDF5 file without the 'format' attribute on '/')");
    }
    const std::string format = attr_string(r, "format");
    if (format != kFormatName) {
      fail("not a lora checkpoint (format is '" + format + "', expected '" + kFormatName + "')");
    }
    const int64_t version = attr_i64(r, "format_version");
    if (version < 1 || version > kCheckpointFormatVersion) {
      fail("format_version " + std::to_string(version) + " is not supported (this build reads "
           "versions 1 to " + std::to_string(kCheckpointFormatVersion) + ")");
    }
    if (image.sealed && version != 2) {
      fail("format_version " + std::to_string(version) +
           " in a file that starts with an integrity block (only version 2 files have one)");
    }
    if (!image.sealed && version != 1) {
      fail("format_version " + std::to_string(version) +
           " without the integrity block a version-2 file starts with (the file is damaged, or was "
           "rewritten by a program that dropped the HDF5 user block)");
    }
    if (H5Aexists(r, "complete") <= 0 || attr_i64(r, "complete") != 1) {
      fail("incomplete file (no 'complete' flag: the write did not finish)");
    }

    CheckpointState s;
    s.format_version = static_cast<int>(version);
    s.step = static_cast<long>(attr_i64(r, "step"));
    if (s.step < 0) fail("attribute 'step' = " + std::to_string(s.step) + ": expected >= 0");
    s.tokens_seen = attr_u64(r, "tokens_seen");
    s.world_size = attr_int(r, "world_size", 1, 1 << 24);
    s.base_fingerprint = attr_string(r, "base_fingerprint");
    const std::string arch = attr_string(r, "arch");
    s.created_utc = attr_string(r, "created_utc");
    s.config_yaml = attr_string(r, "config_yaml");
    const std::string mode = attr_string(r, "mode");
    if (mode == "lora") {
      s.mode = TrainMode::kLora;
    } else if (mode == "full") {
      s.mode = TrainMode::kFull;
    } else {
      fail("attribute 'mode' = '" + mode + "': expected 'lora' or 'full'");
    }
    constexpr int64_t kMaxDim = 1 << 30;
    std::optional<std::string> spec_json;
    if (version >= 2) {
      spec_json = attr_string(r, "model_spec");
      try {
        s.spec = spec_from_json(*spec_json, "attribute 'model_spec'");
      } catch (const InputError& e) {
        fail(e.what());
      }
      if (s.spec.arch != arch) fail("attribute 'arch' = '" + arch + "' disagrees with 'model_spec'");
    } else {
      // Written before the model family: a GPT-2 model.
      if (arch != "gpt2") fail("attribute 'arch' = '" + arch + "': expected gpt2 in a version 1 file");
      s.spec = family_spec("gpt2", ModelSpec{});
    }
    s.spec.vocab_size = attr_int(r, "vocab_size", 1, kMaxDim);
    s.spec.max_seq_len = attr_int(r, "max_seq_len", 1, kMaxDim);
    s.spec.n_layer = attr_int(r, "n_layer", 1, kMaxDim);
    s.spec.n_head = attr_int(r, "n_head", 1, kMaxDim);
    s.spec.d_model = attr_int(r, "d_model", 1, kMaxDim);
    if (version >= 2 && spec_to_json(s.spec) != *spec_json)
      fail("the size attributes on '/' disagree with 'model_spec'");

    if (s.mode == TrainMode::kLora) {
      H5Handle adapters = open_group(f, "/adapters");
      const hid_t a = adapters.get();
      s.lora.rank = attr_int(a, "rank", 1, kMaxDim);
      s.lora.alpha = attr_f32(a, "alpha");
      s.lora.dropout = attr_f32(a, "dropout");
      s.lora.rslora = attr_i64(a, "rslora") != 0;
      s.lora.targets.clear();
      const std::string targets = attr_string(a, "targets");
      std::stringstream ts(targets);
      std::string name;
      while (std::getline(ts, name, ',')) {
        auto t = parse_lora_target(name, s.spec);
        if (!t) fail("attribute 'targets' on '/adapters': unknown target '" + name + "'");
        s.lora.targets.push_back(*t);
      }
      const std::string init_a = attr_string(a, "init_a");
      if (init_a == "gaussian") {
        s.lora.init_a = LoraInitA::kGaussian;
      } else if (init_a == "kaiming") {
        s.lora.init_a = LoraInitA::kKaiming;
      } else if (init_a == "zeros") {
        s.lora.init_a = LoraInitA::kZeros;
      } else {
        fail("attribute 'init_a' on '/adapters' = '" + init_a + "': expected gaussian|kaiming|zeros");
      }
      const std::string init_b = attr_string(a, "init_b");
      if (init_b == "zeros") {
        s.lora.init_b = LoraInitB::kZeros;
      } else if (init_b == "gaussian") {
        s.lora.init_b = LoraInitB::kGaussian;
      } else {
        fail("attribute 'init_b' on '/adapters' = '" + init_b + "': expected zeros|gaussian");
      }
      // Per-module rank and alpha: the attributes of each module's group, where they differ from
      // the spec's (files written before they could differ hold the spec's values, or none).
      std::vector<std::string> module_names;
      try {
        const LoraLayout uniform(s.spec, s.lora);
        for (const LoraModule& m : uniform.modules()) module_names.push_back(m.name);
      } catch (const InputError& e) {
        fail(std::string("inconsistent model or LoRA attributes: ") + e.what());
      }
      for (const std::string& name : module_names) {
        const std::string g = "/adapters/" + name;
        H5Handle mg = open_group(f, g);
        if (H5Aexists(mg.get(), "rank") <= 0 || H5Aexists(mg.get(), "alpha") <= 0) continue;
        const int rank = attr_int(mg.get(), "rank", 1, kMaxDim);
        const float alpha = attr_f32(mg.get(), "alpha");
        if (!(alpha > 0) || !std::isfinite(alpha))
          fail("attribute 'alpha' on '" + g + "': expected a number > 0");
        if (rank != s.lora.rank || alpha != s.lora.alpha)
          s.lora.module_settings[name] = LoraModuleSetting{rank, alpha};
      }
    }

    FileLayout layout;
    try {
      layout = file_layout(s);
    } catch (const InputError& e) {
      fail(std::string("inconsistent model or LoRA attributes: ") + e.what());
    }
    s.params.resize(layout.n_params);
    s.adam_m.resize(layout.n_params);
    s.adam_v.resize(layout.n_params);
    for (const TensorEntry& e : layout.tensors) {
      read_floats(f, e.param_path, e.dims, s.params.data() + e.offset);
      read_floats(f, e.m_path, e.dims, s.adam_m.data() + e.offset);
      read_floats(f, e.v_path, e.dims, s.adam_v.data() + e.offset);
    }
    {
      H5Handle opt = open_group(f, "/optimizer");
      s.optimizer_step = static_cast<long>(attr_i64(opt.get(), "step"));
      s.beta1 = attr_f32(opt.get(), "beta1");
      s.beta2 = attr_f32(opt.get(), "beta2");
      s.eps = attr_f32(opt.get(), "eps");
      s.weight_decay = attr_f32(opt.get(), "weight_decay");
    }
    {
      H5Handle tr = open_group(f, "/trainer");
      s.data_seed = attr_u64(tr.get(), "data_seed");
      s.data_cursor = static_cast<long>(attr_i64(tr.get(), "data_cursor"));
      s.dropout_seed = attr_u64(tr.get(), "dropout_seed");
      s.lr = attr_f32(tr.get(), "lr");
      s.lr_warmup_steps = static_cast<long>(attr_i64(tr.get(), "lr_warmup_steps"));
      s.lr_total_steps = static_cast<long>(attr_i64(tr.get(), "lr_total_steps"));
    }
    s.rng_states = read_u64_vector(f, "/trainer/rng_states");
    s.metrics_jsonl = read_string_dataset(f, "/trainer/metrics_jsonl");

    const std::string stored = attr_string(r, "checksum");
    const std::string actual = state_checksum(s, s.created_utc, spec_json ? &*spec_json : nullptr);
    if (stored != actual) {
      fail("checksum mismatch (stored " + stored + ", computed " + actual +
           "): the file's data is corrupted");
    }
    return s;
  }

 private:
  std::string path_;
};

struct NamedCheckpoint {
  long step;
  std::string path;
};

// ckpt-<step>.h5 files in `dir`, newest first.
std::vector<NamedCheckpoint> list_checkpoints(const std::string& dir) {
  std::vector<NamedCheckpoint> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return out;
  for (const fs::directory_entry& entry : it) {
    std::error_code type_ec;
    if (!entry.is_regular_file(type_ec)) continue;
    auto step = checkpoint_step_from_name(entry.path().string());
    if (step) out.push_back({*step, entry.path().string()});
  }
  std::sort(out.begin(), out.end(), [](const NamedCheckpoint& a, const NamedCheckpoint& b) {
    return a.step != b.step ? a.step > b.step : a.path > b.path;
  });
  return out;
}

// nullopt when the file validates and its step matches its name.
std::optional<std::string> check_named(const NamedCheckpoint& c) {
  try {
    CheckpointState s = read_checkpoint(c.path);
    if (s.step != c.step) {
      return "file name says step " + std::to_string(c.step) + " but the file holds step " +
             std::to_string(s.step);
    }
  } catch (const Error& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

double frobenius_norm(const float* x, size_t n) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return std::sqrt(sum);
}

}  // namespace

// ---- public API ------------------------------------------------------------------------------

size_t checkpoint_param_count(const CheckpointState& state) { return file_layout(state).n_params; }

void write_checkpoint(const std::string& path, const CheckpointState& state) {
  silence_hdf5_errors();
  const Writer w(path);
  FileLayout layout;
  try {
    layout = file_layout(state);
  } catch (const InputError& e) {
    w.fail(std::string("invalid model shape or LoRA spec: ") + e.what());
  }
  if (state.params.size() != layout.n_params || state.adam_m.size() != layout.n_params ||
      state.adam_v.size() != layout.n_params) {
    w.fail("params/adam_m/adam_v hold " + std::to_string(state.params.size()) + "/" +
           std::to_string(state.adam_m.size()) + "/" + std::to_string(state.adam_v.size()) +
           " values, the " + mode_name(state.mode) + "-mode layout needs " +
           std::to_string(layout.n_params) + " each");
  }
  if (state.world_size < 1) w.fail("world_size must be >= 1, got " + std::to_string(state.world_size));
  if (state.step < 0) w.fail("step must be >= 0, got " + std::to_string(state.step));

  const std::string dir = parent_dir(path);
  {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) w.fail("cannot create directory '" + dir + "': " + ec.message());
  }
  const std::string tmp = path + ".tmp";
  try {
    ImageSink image;
    const size_t n_bytes = w.build_image(state, layout, &image);
    write_bytes_durably(tmp, image.buffer, n_bytes, w);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      w.fail("rename '" + tmp + "' -> '" + path + "': " + std::strerror(errno));
    }
    fsync_directory(dir, w);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

CheckpointState read_checkpoint(const std::string& path) { return Reader(path).read(); }

std::optional<std::string> verify_checkpoint(const std::string& path) {
  try {
    read_checkpoint(path);
  } catch (const Error& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

std::string checkpoint_file_name(long step) { return "ckpt-" + std::to_string(step) + ".h5"; }

std::optional<long> checkpoint_step_from_name(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  const std::string prefix = "ckpt-", suffix = ".h5";
  if (name.size() <= prefix.size() + suffix.size()) return std::nullopt;
  if (name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return std::nullopt;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 18) return std::nullopt;
  long step = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    step = step * 10 + (c - '0');
  }
  return step;
}

CheckpointScan find_latest_checkpoint(const std::string& dir) {
  CheckpointScan scan;
  for (const NamedCheckpoint& c : list_checkpoints(dir)) {
    if (auto reason = check_named(c)) {
      scan.skipped.emplace_back(c.path, *reason);
      continue;
    }
    scan.latest_valid = c.path;
    scan.latest_valid_step = c.step;
    break;
  }
  return scan;
}

void prune_checkpoints(const std::string& dir, int keep) {
  keep = std::max(keep, 1);
  const std::vector<NamedCheckpoint> all = list_checkpoints(dir);
  int n_valid = 0;
  size_t cut = all.size();  // files at indices >= cut are deleted
  for (size_t i = 0; i < all.size(); ++i) {
    if (check_named(all[i])) continue;
    if (++n_valid == keep) {
      cut = i + 1;
      break;
    }
  }
  if (n_valid == 0) return;
  for (size_t i = cut; i < all.size(); ++i) {
    if (::unlink(all[i].path.c_str()) != 0 && errno != ENOENT) {
      throw Error("cannot delete old checkpoint '" + all[i].path + "': " + std::strerror(errno));
    }
  }
}

std::string base_fingerprint(const float* base, size_t n) { return fingerprint_floats(base, n); }

std::string describe_checkpoint(const std::string& path) {
  const CheckpointState s = read_checkpoint(path);
  std::ostringstream os;
  os << "checkpoint " << path << "\n";
  os << "  format:       lora-checkpoint version " << s.format_version << ", written "
     << s.created_utc << "\n";
  os << "  integrity:    "
     << (s.format_version >= 2 ? "CRC-64 of the whole file verified"
                               : "per-field checksum only (version-1 file: no whole-file check)")
     << "\n";
  os << "  step:         " << s.step << "\n";
  os << "  tokens_seen:  " << s.tokens_seen << "\n";
  os << "  world_size:   " << s.world_size << "\n";
  os << "  base:         fingerprint " << (s.base_fingerprint.empty() ? "(none)" : s.base_fingerprint)
     << "\n";
  os << "  model:        " << s.spec.arch << " vocab_size=" << s.spec.vocab_size
     << " max_seq_len=" << s.spec.max_seq_len << " n_layer=" << s.spec.n_layer
     << " n_head=" << s.spec.n_head << " d_model=" << s.spec.d_model << "\n";
  os << "                " << describe_spec(s.spec) << "\n";
  os << "  mode:         " << mode_name(s.mode) << "\n";
  const FileLayout layout = file_layout(s);
  os << std::setprecision(6);
  if (s.mode == TrainMode::kLora) {
    os << "  lora:         rank=" << s.lora.rank << " alpha=" << s.lora.alpha
       << " scaling=" << s.lora.scaling() << " rslora=" << (s.lora.rslora ? "true" : "false")
       << " dropout=" << s.lora.dropout << "\n";
    os << "                targets=" << targets_string(s.lora.targets, s.spec)
       << " init_a=" << lora_init_a_name(s.lora.init_a) << " init_b=" << lora_init_b_name(s.lora.init_b)
       << "\n";
    os << "  adapters:     " << layout.tensors.size() / 2 << " modules, " << layout.n_params
       << " parameters\n";
    for (const auto& [name, m] : s.lora.module_settings)
      os << "    " << name << ": rank=" << m.rank << " alpha=" << m.alpha
         << " scaling=" << lora_scaling(m.alpha, m.rank, s.lora.rslora) << "\n";
  } else {
    os << "  base tensors: " << layout.tensors.size() << " tensors, " << layout.n_params
       << " parameters\n";
  }
  for (const TensorEntry& e : layout.tensors) {
    os << "    " << std::left << std::setw(40) << e.param_path << std::right << " "
       << std::setw(14) << Reader::shape_text(e.dims) << "  |x|_F = "
       << frobenius_norm(s.params.data() + e.offset, e.numel) << "\n";
  }
  os << "  optimizer:    AdamW step=" << s.optimizer_step << " beta1=" << s.beta1
     << " beta2=" << s.beta2 << " eps=" << s.eps << " weight_decay=" << s.weight_decay << "\n";
  os << "  schedule:     lr=" << s.lr << " warmup_steps=" << s.lr_warmup_steps
     << " total_steps=" << s.lr_total_steps << "\n";
  os << "  data:         seed=" << s.data_seed << " cursor=" << s.data_cursor
     << " dropout_seed=" << s.dropout_seed << " rng_states=" << s.rng_states.size() << "\n";
  const long n_metrics = std::count(s.metrics_jsonl.begin(), s.metrics_jsonl.end(), '\n');
  os << "  metrics:      " << n_metrics << " lines\n";
  os << "  config:\n";
  std::istringstream cfg(s.config_yaml);
  std::string line;
  while (std::getline(cfg, line)) os << "    " << line << "\n";
  return os.str();
}

}  // namespace lora
