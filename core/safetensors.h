// safetensors files: reading (F32, F16, BF16 converted to float32) and writing (float32 data stored
// as F32, F16 or BF16). Binding a model's tensors to our base layout is core/model/hf_model.h.
//
// File format (https://github.com/huggingface/safetensors):
//   [8 bytes]  N, little-endian uint64: the header size in bytes
//   [N bytes]  UTF-8 JSON object: name -> {"dtype": "F32", "shape": [d0, d1, ...],
//              "data_offsets": [begin, end]}, plus an optional "__metadata__" object of
//              string -> string
//   [rest]     the data buffer; a tensor's bytes are [begin, end) relative to the buffer start,
//              little-endian, row-major, contiguous.
//
// SafetensorsFile validates the whole header when it is opened (header size within the file,
// JSON valid, every entry complete, known dtype, end - begin == numel * dtype size, data inside
// the file, no two tensors overlapping), so a malformed file is reported once, up front, as a
// lora::InputError whose message starts with the file path. Reads use pread on an open file
// descriptor, F16/BF16 converted in bounded chunks (the float32 output is the only full copy).
//
// Integrity (files written by write_safetensors): "__metadata__" holds "lora.crc64": 16 lowercase
// hex digits, the CRC-64/XZ (core/crc64.h) of the whole file with those 16 digits replaced by
// sixteen '0' characters. Opening such a file reads it once through and refuses it (InputError
// naming the file) when the CRC does not match, so damage anywhere in it (header, padding, tensor
// bytes) is caught up front. The key is not part of metadata(). Files from elsewhere carry no such
// key and are read unverified: the format has no checksum of its own, so damaged tensor bytes in
// them cannot be detected. A metadata key that differs from "lora.crc64" in 1-3 of its characters
// is taken for a damaged one and refused, so damage to the key does not make a file unverified.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lora {

// Bytes per element of a safetensors dtype name ("F32" -> 4, "BF16" -> 2, "U8" -> 1, ...);
// 0 for a name the format does not define (or a sub-byte type we do not read).
size_t safetensors_dtype_bytes(const std::string& dtype);

struct SafetensorsTensor {
  std::string name;
  std::string dtype;           // "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;  // row-major; [] is a scalar
  size_t begin = 0;            // byte range [begin, end) in the data buffer
  size_t end = 0;

  size_t numel() const;
};

class SafetensorsFile {
 public:
  // Opens and validates `path`; throws lora::InputError naming the file and the problem.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In header order.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // nullptr when the file has no tensor of that name.
  const SafetensorsTensor* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t file_bytes() const { return file_bytes_; }
  size_t data_begin() const { return data_begin_; }  // file offset of the data buffer (8 + N)
  // True when the file carried a "lora.crc64" and it matched (see above).
  bool crc_verified() const { return crc_verified_; }

  // Reads `tensor` (one of tensors()) into out[0, numel), converting F16 and BF16 to float32.
  // Any other dtype is a lora::InputError naming the file, tensor and dtype; an I/O failure is
  // a lora::Error.
  void read_f32(const SafetensorsTensor& tensor, float* out) const;
  // Same, by name; a missing name is a lora::InputError.
  std::vector<float> read_f32(const std::string& name) const;

 private:
  void read_bytes(size_t file_offset, size_t n_bytes, void* out) const;
  void verify_crc(const std::string& header, const std::string& stored);

  std::string path_;
  int fd_ = -1;
  size_t file_bytes_ = 0;
  size_t data_begin_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
  bool crc_verified_ = false;
};

// One float32 tensor to write, stored as `dtype`: "F32" (exact), "F16" or "BF16" (rounded to
// nearest, ties to even; F16 overflows to infinity).
struct SafetensorsWriteTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // numel(shape) contiguous floats
  std::string dtype = "F32";
};

// float32 -> IEEE half / bfloat16 bits, rounded to nearest even (NaN stays NaN).
uint16_t float_to_half_bits(float f);
uint16_t float_to_bfloat16_bits(float f);

// "[2, 3]": a shape for messages.
std::string shape_string(const std::vector<int64_t>& shape);

// Writes the tensors in the given order, each in its dtype (F32, F16 or BF16; any other is a
// lora::Error), with `metadata` plus the "lora.crc64" integrity value (see above; it replaces a
// "lora.crc64" in `metadata`) as "__metadata__". The header is padded with spaces so the data
// buffer starts at a multiple of 8 bytes.
// Atomic: writes path + ".tmp", fsyncs, renames over `path`. Invalid arguments (empty or
// duplicate names, negative dims, null data) are a lora::Error; I/O failures a lora::Error.
void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace lora
