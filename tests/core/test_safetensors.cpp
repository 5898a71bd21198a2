// safetensors reading and writing, F16/BF16 conversion, the GPT-2 weight binding (hf_model.h), every kind of
// malformed file (InputError naming the file and the problem), and a cross-check with files
// written and read by an independent Python implementation (struct + json + numpy).
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/model/base_layout.h"
#include "core/model/hf_model.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("lora_safetensors_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file from a header text and a data buffer, exactly as given.
std::string raw_file(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

std::string u16_bytes(const std::vector<uint16_t>& v) {
  std::string s;
  for (uint16_t x : v) {
    s += static_cast<char>(x & 0xFF);
    s += static_cast<char>(x >> 8);
  }
  return s;
}

std::string f32_bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// Opens `path` expecting an InputError whose message contains every part of `parts`.
template <typename F>
void expect_input_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no InputError thrown";
  } catch (const InputError& e) {
    const std::string what = e.what();
    for (const auto& part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << "missing '" << part << "' in: " << what;
  }
}

void expect_open_error(const std::string& path, const std::vector<std::string>& parts) {
  std::vector<std::string> all = parts;
  all.insert(all.begin(), path);  // every message names the file
  expect_input_error([&] { SafetensorsFile f(path); }, all);
}

// ---- writing and reading ----

TEST_F(SafetensorsTest, WriteReadRoundTripIsBitExact) {
  std::vector<float> a(6);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.1f * static_cast<float>(i) - 0.25f;
  const std::vector<float> special = {-0.0f,
                                      std::numeric_limits<float>::infinity(),
                                      -std::numeric_limits<float>::infinity(),
                                      std::numeric_limits<float>::denorm_min(),
                                      std::numeric_limits<float>::max(),
                                      std::bit_cast<float>(0x7FC12345u),  // NaN with a payload
                                      1.0f / 3.0f};
  const float scalar = 42.5f;
  const std::string file = path("w.safetensors");
  write_safetensors(file,
                    {{"a.weight", {2, 3}, a.data()},
                     {"special", {7}, special.data()},
                     {"empty", {0, 4}, nullptr},
                     {"scalar", {}, &scalar}},
                    {{"format", "pt"}, {"note", "quote \" and \\ and\nnewline"}});
  EXPECT_FALSE(fs::exists(file + ".tmp"));

  SafetensorsFile f(file);
  EXPECT_EQ(f.data_begin() % 8, 0u);
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.tensors()[0].name, "a.weight");  // header order is write order
  EXPECT_EQ(f.tensors()[3].name, "scalar");
  const SafetensorsTensor* t = f.find("a.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, "F32");
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t->end - t->begin, 24u);
  EXPECT_EQ(f.find("nope"), nullptr);

  const std::vector<float> a_back = f.read_f32("a.weight");
  ASSERT_EQ(a_back.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(bits(a_back[i]), bits(a[i])) << i;
  const std::vector<float> s_back = f.read_f32("special");
  ASSERT_EQ(s_back.size(), special.size());
  for (size_t i = 0; i < special.size(); ++i) EXPECT_EQ(bits(s_back[i]), bits(special[i])) << i;
  EXPECT_TRUE(f.read_f32("empty").empty());
  EXPECT_EQ(f.find("empty")->shape, (std::vector<int64_t>{0, 4}));
  const std::vector<float> sc = f.read_f32("scalar");
  ASSERT_EQ(sc.size(), 1u);
  EXPECT_EQ(sc[0], 42.5f);
  EXPECT_TRUE(f.find("scalar")->shape.empty());

  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "quote \" and \\ and\nnewline");
  expect_input_error([&] { f.read_f32("nope"); }, {file, "no tensor named 'nope'"});

  // The file layout itself: size field, space padding, data right after the header.
  const std::string bytes = read_all(file);
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(8 + header_bytes, f.data_begin());
  EXPECT_EQ(bytes.size(), f.data_begin() + (6 + 7 + 1) * 4);
  EXPECT_EQ(bytes[8], '{');
}

TEST_F(SafetensorsTest, WriteReplacesAnExistingFile) {
  const std::string file = path("r.safetensors");
  const std::vector<float> one = {1, 2, 3};
  const std::vector<float> two = {4, 5};
  write_safetensors(file, {{"x", {3}, one.data()}});
  write_safetensors(file, {{"y", {2}, two.data()}});
  SafetensorsFile f(file);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.read_f32("y"), two);
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(SafetensorsTest, WriteRejectsInvalidArguments) {
  const std::vector<float> v = {1, 2};
  const std::string file = path("bad_args.safetensors");
  EXPECT_THROW(write_safetensors(file, {{"x", {2}, v.data()}, {"x", {2}, v.data()}}), Error);
  EXPECT_THROW(write_safetensors(file, {{"", {2}, v.data()}}), Error);
  EXPECT_THROW(write_safetensors(file, {{"__metadata__", {2}, v.data()}}), Error);
  EXPECT_THROW(write_safetensors(file, {{"x", {-1}, v.data()}}), Error);
  EXPECT_THROW(write_safetensors(file, {{"x", {2}, nullptr}}), Error);
  EXPECT_THROW(write_safetensors(path("no_such_dir/x.safetensors"), {{"x", {2}, v.data()}}), Error);
  EXPECT_FALSE(fs::exists(file));
}

TEST_F(SafetensorsTest, ConvertsF16ToFloat32) {
  // Half-precision bit patterns and their exact float32 values.
  const std::vector<uint16_t> halves = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400,
                                        0x3555, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x0000};
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> expected = {1.0f,
                                       -2.0f,
                                       65504.0f,
                                       std::ldexp(1.0f, -24),            // smallest subnormal
                                       1023.0f * std::ldexp(1.0f, -24),  // largest subnormal
                                       std::ldexp(1.0f, -14),            // smallest normal
                                       0.333251953125f,
                                       -0.0f,
                                       inf,
                                       -inf,
                                       std::numeric_limits<float>::quiet_NaN(),
                                       0.0f};
  const std::string file = path("f16.safetensors");
  write_bytes(file, raw_file(R"({"h":{"dtype":"F16","shape":[3,4],"data_offsets":[0,24]}})",
                             u16_bytes(halves)));
  const std::vector<float> got = SafetensorsFile(file).read_f32("h");
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    if (std::isnan(expected[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << i;
    } else {
      EXPECT_EQ(bits(got[i]), bits(expected[i])) << i << ": " << got[i] << " vs " << expected[i];
    }
  }
}

TEST_F(SafetensorsTest, ConvertsBF16ToFloat32) {
  const std::vector<uint16_t> bf = {0x3F80, 0xC040, 0x4049, 0x7F80, 0x0001, 0x7F7F, 0x8000, 0xBE00};
  const std::vector<float> expected = {1.0f,
                                       -3.0f,
                                       3.140625f,
                                       std::numeric_limits<float>::infinity(),
                                       std::ldexp(1.0f, -133),  // float32 subnormal
                                       std::bit_cast<float>(0x7F7F0000u),
                                       -0.0f,
                                       -0.125f};
  const std::string file = path("bf16.safetensors");
  // Some padding bytes between the two tensors and after them are allowed.
  const std::string data = u16_bytes({0xAAAA}) + u16_bytes(bf) + "xx";
  write_bytes(file, raw_file(R"({"pad":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                             R"("b":{"dtype":"BF16","shape":[8],"data_offsets":[2,18]}})",
                             data));
  SafetensorsFile f(file);
  const std::vector<float> got = f.read_f32("b");
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(bits(got[i]), bits(expected[i])) << i;
  EXPECT_EQ(f.find("b")->dtype, "BF16");
}

TEST_F(SafetensorsTest, ConvertsLargeHalfTensorsAcrossReadChunks) {
  // More elements than one conversion chunk: every element must land in its own place.
  const size_t n = 150000;
  std::vector<uint16_t> halves(n);
  for (size_t i = 0; i < n; ++i) halves[i] = static_cast<uint16_t>(0x3C00 + (i % 1024));
  const std::string file = path("big.safetensors");
  write_bytes(file, raw_file(R"({"h":{"dtype":"F16","shape":[150000],"data_offsets":[0,300000]}})",
                             u16_bytes(halves)));
  const std::vector<float> got = SafetensorsFile(file).read_f32("h");
  ASSERT_EQ(got.size(), n);
  for (size_t i = 0; i < n; i += 997)
    EXPECT_EQ(got[i], 1.0f + static_cast<float>(i % 1024) / 1024.0f) << i;
  EXPECT_EQ(got[n - 1], 1.0f + static_cast<float>((n - 1) % 1024) / 1024.0f);
}

TEST_F(SafetensorsTest, OtherDtypesCannotBeReadAsFloat) {
  const std::string file = path("i64.safetensors");
  write_bytes(file, raw_file(R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
                             R"("d":{"dtype":"F64","shape":[1],"data_offsets":[16,24]}})",
                             std::string(24, '\0')));
  SafetensorsFile f(file);  // valid file: only reading these as float32 fails
  expect_input_error([&] { f.read_f32("ids"); }, {file, "'ids'", "I64", "F32, F16 or BF16"});
  expect_input_error([&] { f.read_f32("d"); }, {file, "'d'", "F64"});
}

// ---- malformed files ----

TEST_F(SafetensorsTest, MissingFile) {
  expect_open_error(path("absent.safetensors"), {"cannot open", "No such file"});
}

TEST_F(SafetensorsTest, DirectoryIsNotAFile) {
  expect_open_error(dir_.string(), {"not a regular file"});
}

TEST_F(SafetensorsTest, FileShorterThanEightBytes) {
  const std::string file = path("short.safetensors");
  write_bytes(file, "abc");
  expect_open_error(file, {"3 bytes", "too short"});
  write_bytes(file, "");
  expect_open_error(file, {"0 bytes", "too short"});
}

TEST_F(SafetensorsTest, HeaderSizeLargerThanFile) {
  const std::string file = path("hsize.safetensors");
  write_bytes(file, u64_le(1000) + "{}");
  expect_open_error(file, {"header size 1000", "larger than the rest of the file (2 bytes)"});
  // A text file read as safetensors: the first 8 bytes make a huge size.
  write_bytes(file, "hello world, this is not a safetensors file");
  expect_open_error(file, {"header size", "not a safetensors file"});
}

TEST_F(SafetensorsTest, TruncatedData) {
  const std::string file = path("trunc.safetensors");
  write_bytes(file, raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                             std::string(20, '\0')));
  expect_open_error(file, {"truncated", "tensor 'b'", "ends at byte 24", "holds only 20 bytes"});
}

TEST_F(SafetensorsTest, TruncatedWrittenFile) {
  // A real file cut short, as an interrupted copy leaves it.
  const std::string file = path("cut.safetensors");
  std::vector<float> v(100, 1.0f);
  write_safetensors(file, {{"v", {100}, v.data()}});
  fs::resize_file(file, fs::file_size(file) - 1);
  expect_open_error(file, {"truncated", "tensor 'v'", "ends at byte 400"});
}

TEST_F(SafetensorsTest, InvalidJsonReportsOffset) {
  const std::string file = path("json.safetensors");
  write_bytes(file, raw_file(R"({"a":{"dtype":"F32" "shape":[1]}})", std::string(4, '\0')));
  // The second key is at header byte 20: missing ','.
  expect_open_error(file, {"invalid JSON", "at byte 20 (file offset 28)", "expected ',' or '}'"});
  write_bytes(file, raw_file(R"({"a":1,"a":2})", ""));
  expect_open_error(file, {"invalid JSON", "at byte 7", "duplicate object key \"a\""});
  write_bytes(file, raw_file(std::string("{\"\xFF\":1}"), ""));
  expect_open_error(file, {"invalid JSON", "at byte 2", "UTF-8"});
}

TEST_F(SafetensorsTest, HeaderMustBeAnObject) {
  const std::string file = path("arr.safetensors");
  write_bytes(file, raw_file("[1,2]", ""));
  expect_open_error(file, {"must be a JSON object", "array"});
}

TEST_F(SafetensorsTest, TensorEntryMissingKeys) {
  const std::string file = path("keys.safetensors");
  write_bytes(file, raw_file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, 0)));
  expect_open_error(file, {"tensor 'w'", "missing key \"dtype\""});
  write_bytes(file, raw_file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, 0)));
  expect_open_error(file, {"tensor 'w'", "missing key \"shape\""});
  write_bytes(file, raw_file(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(4, 0)));
  expect_open_error(file, {"tensor 'w'", "missing key \"data_offsets\""});
  write_bytes(file, raw_file(R"({"w":[1,2]})", ""));
  expect_open_error(file, {"tensor 'w'", "must be an object"});
}

TEST_F(SafetensorsTest, BadDtype) {
  const std::string file = path("dtype.safetensors");
  write_bytes(file, raw_file(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})",
                             std::string(4, 0)));
  expect_open_error(file, {"tensor 'w'", "unknown dtype \"F33\""});
  write_bytes(file,
              raw_file(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", std::string(4, 0)));
  expect_open_error(file, {"tensor 'w'", "\"dtype\" must be a string"});
}

TEST_F(SafetensorsTest, BadShapeOrOffsets) {
  const std::string file = path("shape.safetensors");
  const std::string data(16, 0);
  write_bytes(file,
              raw_file(R"({"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}})", data));
  expect_open_error(file, {"tensor 'w'", "non-negative integers", "[2,-2]"});
  write_bytes(file, raw_file(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}})", data));
  expect_open_error(file, {"tensor 'w'", "non-negative integers"});
  write_bytes(file, raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", data));
  expect_open_error(file, {"tensor 'w'", "data_offsets", "begin <= end", "[16,0]"});
  write_bytes(file, raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", data));
  expect_open_error(file, {"tensor 'w'", "data_offsets"});
  write_bytes(file, raw_file(R"({"w":{"dtype":"F32","shape":[99999999999,99999999999,99999999999],)"
                             R"("data_offsets":[0,16]}})",
                             data));
  expect_open_error(file, {"tensor 'w'", "too large"});
}

TEST_F(SafetensorsTest, OffsetsInconsistentWithShape) {
  const std::string file = path("incons.safetensors");
  write_bytes(file, raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})",
                             std::string(24, 0)));
  expect_open_error(file, {"tensor 'w'", "span 16 bytes", "shape [2, 3] of F32 needs 24 bytes"});
  write_bytes(file, raw_file(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})",
                             std::string(24, 0)));
  expect_open_error(file, {"tensor 'w'", "span 16 bytes", "needs 8 bytes"});
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  const std::string file = path("overlap.safetensors");
  write_bytes(file, raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                             std::string(16, 0)));
  expect_open_error(file, {"tensors 'a' [0, 12) and 'b' [8, 16) overlap"});
  // Two tensors with the very same range overlap too; an empty tensor overlaps nothing.
  write_bytes(file, raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                             std::string(8, 0)));
  expect_open_error(file, {"overlap"});
  write_bytes(file, raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                             std::string(8, 0)));
  EXPECT_NO_THROW(SafetensorsFile f(file));
}

TEST_F(SafetensorsTest, MetadataMustMapStringsToStrings) {
  const std::string file = path("meta.safetensors");
  write_bytes(file, raw_file(R"({"__metadata__":{"n_head":12}})", ""));
  expect_open_error(file, {"\"__metadata__\" key \"n_head\" must be a string", "number"});
  write_bytes(file, raw_file(R"({"__metadata__":"x"})", ""));
  expect_open_error(file, {"\"__metadata__\" must be an object"});
  // Header padded with trailing spaces (as writers align the data buffer) is valid.
  write_bytes(file, raw_file(R"({"__metadata__":{"k":"v"}}      )", ""));
  SafetensorsFile f(file);
  EXPECT_EQ(f.metadata().at("k"), "v");
  EXPECT_TRUE(f.tensors().empty());
}

TEST_F(SafetensorsTest, EveryTruncationIsAnInputError) {
  const std::string file = path("full.safetensors");
  const std::vector<float> a = {1, 2, 3}, b = {4, 5};
  write_safetensors(file, {{"a", {3}, a.data()}, {"b", {2}, b.data()}}, {{"k", "v"}});
  const std::string bytes = read_all(file);
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A new file per length: rewriting one file in place makes ext4 flush on every close.
    const std::string cut = path("cut" + std::to_string(n) + ".safetensors");
    write_bytes(cut, bytes.substr(0, n));
    EXPECT_THROW(SafetensorsFile f(cut), InputError) << "truncated to " << n << " bytes";
  }
  EXPECT_NO_THROW(SafetensorsFile f(file));
}

TEST_F(SafetensorsTest, CorruptedHeaderBytesGiveInputErrorsOnly) {
  // Each header byte replaced by characters that change the JSON's structure or values: opening
  // (and reading what opens) either works or throws InputError; never another failure.
  const std::string file = path("ok.safetensors");
  const std::vector<float> a = {1, 2, 3}, b = {4, 5};
  write_safetensors(file, {{"a", {3}, a.data()}, {"b", {1, 2}, b.data()}});
  const std::string bytes = read_all(file);
  SafetensorsFile original(file);
  const std::string bad = path("bad.safetensors");
  write_bytes(bad, bytes);
  std::fstream patch(bad, std::ios::binary | std::ios::in | std::ios::out);
  auto put = [&](size_t pos, char c) {
    patch.seekp(static_cast<std::streamoff>(pos));
    patch.put(c);
    patch.flush();
  };
  size_t n_rejected = 0;
  for (size_t pos = 8; pos < original.data_begin(); ++pos) {
    for (const char c : {'"', '}', ']', '9', '0', '-', ',', ' ', '\xFF'}) {
      put(pos, c);  // patched in place (no truncation), restored below
      try {
        SafetensorsFile f(bad);
        for (const auto& t : f.tensors()) {
          std::vector<float> out(t.numel());
          f.read_f32(t, out.data());
        }
      } catch (const InputError& e) {
        ++n_rejected;
        EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
      } catch (const std::exception& e) {
        ADD_FAILURE() << "byte " << pos << " = '" << c << "': " << e.what();
      }
      put(pos, bytes[pos]);
    }
  }
  EXPECT_NO_THROW(SafetensorsFile f(bad));  // fully restored
  EXPECT_GT(n_rejected, 0u);
}

// ---- integrity CRC (files written here) ----

TEST_F(SafetensorsTest, FilesWrittenHereCarryAVerifiedCrc) {
  const std::string file = path("crc.safetensors");
  const std::vector<float> a = {1, 2, 3, 4}, b = {5, 6};
  // A caller's own "lora.crc64" is replaced by the real one.
  write_safetensors(file, {{"a", {2, 2}, a.data()}, {"b", {2}, b.data()}},
                    {{"format", "pt"}, {"lora.crc64", "not a crc"}});
  const std::string bytes = read_all(file);
  {
    SafetensorsFile f(file);
    EXPECT_TRUE(f.crc_verified());
    EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  }
  const size_t key_at = bytes.find("\"lora.crc64\":\"");
  ASSERT_NE(key_at, std::string::npos);
  auto damaged = [&](size_t at, char c) {
    std::string d = bytes;
    d[at] = c;
    write_bytes(file, d);
  };
  // A tensor byte, a padding space, a metadata value: no structural check sees these.
  damaged(bytes.size() - 1, static_cast<char>(bytes.back() ^ 1));
  expect_open_error(file, {"CRC-64 mismatch", "the file is damaged"});
  size_t header_end = 0;
  for (int i = 7; i >= 0; --i) header_end = (header_end << 8) | static_cast<uint8_t>(bytes[i]);
  header_end += 8;
  ASSERT_EQ(bytes[header_end - 1], ' ') << "expected space padding before the data";
  damaged(header_end - 1, '\t');  // still valid JSON whitespace
  expect_open_error(file, {"CRC-64 mismatch"});
  damaged(bytes.find("\"pt\"") + 1, 'q');
  expect_open_error(file, {"CRC-64 mismatch"});
  // The stored value itself, and the key's name: a damaged key is not a missing one.
  damaged(key_at + 14, bytes[key_at + 14] == 'a' ? 'b' : 'a');
  expect_open_error(file, {"CRC-64 mismatch"});
  damaged(key_at + 14, 'G');
  expect_open_error(file, {"must be 16 lowercase hex digits"});
  damaged(key_at + 3, 'X');
  expect_open_error(file, {"\"loXa.crc64\" is not \"lora.crc64\" but resembles it"});
  write_bytes(file, bytes);
  EXPECT_NO_THROW(SafetensorsFile f(file));
}

TEST_F(SafetensorsTest, FilesWithoutACrcAreReadUnverified) {
  const std::string file = path("plain.safetensors");
  write_bytes(file, raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                             f32_bytes({1.5f})));
  SafetensorsFile f(file);
  EXPECT_FALSE(f.crc_verified());
  EXPECT_EQ(f.read_f32("a"), std::vector<float>{1.5f});
}

// ---- GPT-2 binding ----

ModelSpec small_shape() {
  ModelSpec s;
  s.vocab_size = 11;
  s.max_seq_len = 7;
  s.n_layer = 2;
  s.n_head = 2;
  s.d_model = 8;
  return family_spec("gpt2", s);
}

std::vector<float> random_params(const BaseLayout& layout, uint64_t seed) {
  std::vector<float> p(layout.n_params());
  for (size_t i = 0; i < p.size(); ++i) p[i] = normal01(seed, 7, i);
  return p;
}

// The layout's tensors as write_safetensors entries, with `prefix` before every name.
std::vector<SafetensorsWriteTensor> layout_tensors(const BaseLayout& layout, const float* params,
                                                   const std::string& prefix = "") {
  std::vector<SafetensorsWriteTensor> out;
  for (const TensorInfo& t : layout.tensors())
    out.push_back({prefix + t.name, t.shape, params + t.offset});
  return out;
}

TEST_F(SafetensorsTest, Gpt2SaveLoadRoundTrip) {
  const BaseLayout layout(small_shape());
  const std::vector<float> params = random_params(layout, 123);
  const std::string file = path("gpt2.safetensors");
  save_base_weights(file, layout, params.data(), {{"source", "test"}});

  std::vector<float> loaded(layout.n_params(), std::nanf(""));
  load_base_weights({file}, layout, loaded.data());
  for (size_t i = 0; i < params.size(); ++i) ASSERT_EQ(bits(loaded[i]), bits(params[i])) << i;

  SafetensorsFile f(file);
  EXPECT_EQ(f.tensors().size(), layout.tensors().size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("n_head"), "2");
  EXPECT_EQ(f.metadata().at("source"), "test");
  const SafetensorsTensor* fc = f.find("h.1.mlp.c_fc.weight");
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->shape, (std::vector<int64_t>{8, 32}));  // Conv1D orientation [in, out]

  const ModelSpec s = infer_gpt2_spec(file);
  EXPECT_EQ(s.vocab_size, 11);
  EXPECT_EQ(s.max_seq_len, 7);
  EXPECT_EQ(s.n_layer, 2);
  EXPECT_EQ(s.d_model, 8);
  EXPECT_EQ(s.n_head, 2);  // from __metadata__
  EXPECT_NO_THROW(check_gpt2_weights_shape(file, small_shape()));
}

TEST_F(SafetensorsTest, Gpt2AcceptsTransformerPrefixAndIgnoresKnownExtras) {
  const BaseLayout layout(small_shape());
  const std::vector<float> params = random_params(layout, 5);
  // A file shaped like Hugging Face's GPT2LMHeadModel: prefixed names, mask buffers, lm_head,
  // no __metadata__ n_head.
  std::vector<SafetensorsWriteTensor> tensors =
      layout_tensors(layout, params.data(), "transformer.");
  const std::vector<float> mask(7 * 7, 1.0f);
  const float masked_bias = -1e4f;
  for (int l = 0; l < 2; ++l) {
    tensors.push_back(
        {"transformer.h." + std::to_string(l) + ".attn.bias", {1, 1, 7, 7}, mask.data()});
    tensors.push_back(
        {"transformer.h." + std::to_string(l) + ".attn.masked_bias", {}, &masked_bias});
  }
  tensors.push_back({"lm_head.weight", {11, 8}, params.data()});
  const std::string file = path("hf.safetensors");
  write_safetensors(file, tensors, {{"format", "pt"}});

  std::vector<float> loaded(layout.n_params(), 0.0f);
  load_base_weights({file}, layout, loaded.data());
  EXPECT_EQ(loaded, params);

  const ModelSpec s = infer_gpt2_spec(file, 4);
  EXPECT_EQ(s.n_layer, 2);
  EXPECT_EQ(s.d_model, 8);
  EXPECT_EQ(s.n_head, 4);  // not in the file: the caller's value
  EXPECT_EQ(infer_gpt2_spec(file).n_head, 0);
  // n_head unknown to the file: any n_head that divides d_model matches.
  ModelSpec other_heads = small_shape();
  other_heads.n_head = 4;
  EXPECT_NO_THROW(check_gpt2_weights_shape(file, other_heads));
}

TEST_F(SafetensorsTest, Gpt2MissingTensor) {
  const BaseLayout layout(small_shape());
  const std::vector<float> params = random_params(layout, 1);
  std::vector<SafetensorsWriteTensor> tensors = layout_tensors(layout, params.data());
  std::erase_if(tensors, [](const auto& t) { return t.name == "h.1.mlp.c_fc.bias"; });
  const std::string file = path("missing.safetensors");
  write_safetensors(file, tensors);
  std::vector<float> loaded(layout.n_params());
  expect_input_error([&] { load_base_weights({file}, layout, loaded.data()); },
                     {file, "missing tensor 'h.1.mlp.c_fc.bias'", "expected shape [32]"});
}

TEST_F(SafetensorsTest, Gpt2WrongTensorShape) {
  const BaseLayout layout(small_shape());
  const std::vector<float> params = random_params(layout, 2);
  std::vector<SafetensorsWriteTensor> tensors = layout_tensors(layout, params.data());
  for (auto& t : tensors)
    if (t.name == "h.1.mlp.c_fc.weight") t.shape = {8, 16};
  const std::string file = path("shape.safetensors");
  write_safetensors(file, tensors);
  std::vector<float> loaded(layout.n_params());
  expect_input_error([&] { load_base_weights({file}, layout, loaded.data()); },
                     {file, "tensor 'h.1.mlp.c_fc.weight': expected shape [8, 32], got [8, 16]"});
  // A transposed weight (PyTorch nn.Linear orientation) is caught the same way.
  for (auto& t : tensors)
    if (t.name == "h.1.mlp.c_fc.weight") t.shape = {32, 8};
  write_safetensors(file, tensors);
  expect_input_error([&] { load_base_weights({file}, layout, loaded.data()); },
                     {"expected shape [8, 32], got [32, 8]"});
}

TEST_F(SafetensorsTest, Gpt2UnexpectedTensor) {
  const BaseLayout layout(small_shape());
  const std::vector<float> params = random_params(layout, 3);
  std::vector<SafetensorsWriteTensor> tensors = layout_tensors(layout, params.data());
  tensors.push_back({"h.0.attn.rotary.weight", {8}, params.data()});
  const std::string file = path("extra.safetensors");
  write_safetensors(file, tensors);
  std::vector<float> loaded(layout.n_params());
  expect_input_error([&] { load_base_weights({file}, layout, loaded.data()); },
                     {file, "unexpected tensor 'h.0.attn.rotary.weight'"});
}

TEST_F(SafetensorsTest, Gpt2DuplicateAfterPrefix) {
  const BaseLayout layout(small_shape());
  const std::vector<float> params = random_params(layout, 4);
  std::vector<SafetensorsWriteTensor> tensors = layout_tensors(layout, params.data());
  tensors.push_back({"transformer.wte.weight", {11, 8}, params.data()});
  const std::string file = path("dup.safetensors");
  write_safetensors(file, tensors);
  std::vector<float> loaded(layout.n_params());
  expect_input_error([&] { load_base_weights({file}, layout, loaded.data()); },
                     {file, "'wte.weight' appears twice"});
}

TEST_F(SafetensorsTest, Gpt2ModelSpecMismatch) {
  ModelSpec bigger = small_shape();
  bigger.n_layer = 3;
  bigger.d_model = 12;
  const BaseLayout file_layout(bigger);
  const std::vector<float> params = random_params(file_layout, 9);
  const std::string file = path("bigger.safetensors");
  save_base_weights(file, file_layout, params.data());

  const BaseLayout layout(small_shape());
  std::vector<float> loaded(layout.n_params());
  expect_input_error([&] { load_base_weights({file}, layout, loaded.data()); },
                     {file, "model.n_layer: config says 2, weights file has 3",
                      "model.d_model: config says 8, weights file has 12"});
  // n_head recorded in the file's metadata is compared too.
  ModelSpec heads = bigger;
  heads.n_head = 3;
  expect_input_error([&] { check_gpt2_weights_shape(file, heads); },
                     {"model.n_head: config says 3, weights file has 2"});
  EXPECT_NO_THROW(check_gpt2_weights_shape(file, bigger));
}

TEST_F(SafetensorsTest, Gpt2NotAGpt2File) {
  const std::vector<float> v = {1, 2};
  const std::string file = path("other.safetensors");
  write_safetensors(file, {{"model.embed_tokens.weight", {1, 2}, v.data()}});
  expect_input_error([&] { infer_gpt2_spec(file); }, {file, "missing tensor 'wte.weight'"});
  const std::vector<float> wte(11 * 8), wpe(7 * 8);
  write_safetensors(file,
                    {{"wte.weight", {11, 8}, wte.data()}, {"wpe.weight", {7, 8}, wpe.data()}});
  expect_input_error([&] { infer_gpt2_spec(file); }, {file, "no block tensors"});
  write_safetensors(file,
                    {{"wte.weight", {11, 8}, wte.data()},
                     {"wpe.weight", {7, 8}, wpe.data()},
                     {"h.0.ln_1.weight", {8}, wte.data()}},
                    {{"n_head", "two"}});
  expect_input_error([&] { infer_gpt2_spec(file); },
                     {file, "\"n_head\": expected a positive integer, got \"two\""});
}

// ---- cross-check with an independent implementation in Python ----

bool python_with_numpy() {
  const std::string cmd = std::string(LORA_PYTHON) + " -c 'import numpy' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

// Writes safetensors files with struct + json + numpy only (or with the safetensors package when
// installed): F32, F16 and BF16 tensors, plus the float32 values they must read as.
constexpr const char* kPythonWriter = R"PY(
import json, struct, sys
import numpy as np
out, expected_out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)
f32 = rng.standard_normal((3, 5)).astype(np.float32)
f32[0, 0] = -0.0
f16_src = np.concatenate([rng.standard_normal(9) * 100, [65504, 6e-8, -1e-5, np.inf]])
f16 = f16_src.astype(np.float16)
bf_src = (rng.standard_normal(12) * 1000).astype(np.float32)
u = bf_src.view(np.uint32).astype(np.uint64)
bf16 = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
tensors = [("layer.f32", "F32", [3, 5], f32.tobytes()),
           ("layer.f16", "F16", [13], f16.tobytes()),
           ("layer.bf16", "BF16", [3, 4], bf16.tobytes())]
header, data = {"__metadata__": {"origin": "python"}}, b""
for name, dtype, shape, raw in tensors:
    offsets = [len(data), len(data) + len(raw)]
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    data += raw
text = json.dumps(header).encode("utf-8")
text += b" " * ((8 - len(text) % 8) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + data)
expected = np.concatenate([f32.ravel(), f16.astype(np.float32),
                           (bf16.astype(np.uint32) << 16).view(np.float32)])
expected.astype("<f4").tofile(expected_out)
)PY";

// Reads a file this library wrote and checks it against the raw float32 values in a second file.
constexpr const char* kPythonReader = R"PY(
import json, struct, sys
import numpy as np
path, raw_path, n_head = sys.argv[1], sys.argv[2], sys.argv[3]
blob = open(path, "rb").read()
(n,) = struct.unpack("<Q", blob[:8])
assert (8 + n) % 8 == 0, "data buffer not 8-byte aligned"
header = json.loads(blob[8:8 + n].decode("utf-8"))
meta = header.pop("__metadata__")
assert meta["format"] == "pt" and meta["n_head"] == n_head, meta
data = blob[8 + n:]
raw = np.fromfile(raw_path, dtype="<f4")
pos = 0
for name, info in header.items():  # json keeps file order = layout order
    b, e = info["data_offsets"]
    assert info["dtype"] == "F32", (name, info)
    assert b == pos, (name, b, pos)  # contiguous, no gaps
    count = int(np.prod(info["shape"]))
    assert e - b == 4 * count, (name, info)
    got = np.frombuffer(data[b:e], dtype="<f4")
    want = raw[pos // 4: pos // 4 + count]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    pos = e
assert pos == len(data) == 4 * raw.size, (pos, len(data), raw.size)
# The integrity value: CRC-64/XZ of the file with its 16 digits replaced by '0' (safetensors.h).
table = []
for b in range(256):
    r = b
    for _ in range(8):
        r = (r >> 1) ^ 0xC96C5795D7870F42 if r & 1 else r >> 1
    table.append(r)
def crc64(buf):
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in buf:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF
stored = meta["lora.crc64"]
key = b'"lora.crc64":"' + stored.encode() + b'"'
at = blob.index(key) + len(key) - 17
assert blob.count(key) == 1
zeroed = blob[:at] + b"0" * 16 + blob[at + 16:]
assert f"{crc64(zeroed):016x}" == stored, (stored, f"{crc64(zeroed):016x}")
try:
    from safetensors.numpy import load_file
    loaded = load_file(path)
    assert set(loaded) == set(header)
except ImportError:
    pass
print("checked", len(header), "tensors")
)PY";

TEST_F(SafetensorsTest, ReadsFileWrittenByPython) {
  if (!python_with_numpy()) GTEST_SKIP() << LORA_PYTHON << " with numpy is not available";
  const std::string script = path("writer.py");
  write_bytes(script, kPythonWriter);
  const std::string file = path("py.safetensors");
  const std::string expected_file = path("expected.f32");
  const std::string cmd =
      std::string(LORA_PYTHON) + " " + script + " " + file + " " + expected_file;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  const std::string raw = read_all(expected_file);
  ASSERT_EQ(raw.size(), (15 + 13 + 12) * 4u);
  std::vector<float> expected(raw.size() / 4);
  std::memcpy(expected.data(), raw.data(), raw.size());

  SafetensorsFile f(file);
  EXPECT_EQ(f.metadata().at("origin"), "python");
  std::vector<float> got;
  for (const char* name : {"layer.f32", "layer.f16", "layer.bf16"}) {
    const std::vector<float> t = f.read_f32(name);
    got.insert(got.end(), t.begin(), t.end());
  }
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_EQ(bits(got[i]), bits(expected[i])) << i << ": " << got[i] << " vs " << expected[i];
  EXPECT_EQ(f.find("layer.bf16")->shape, (std::vector<int64_t>{3, 4}));
}

TEST_F(SafetensorsTest, PythonReadsGpt2FileWrittenHere) {
  if (!python_with_numpy()) GTEST_SKIP() << LORA_PYTHON << " with numpy is not available";
  const BaseLayout layout(small_shape());
  const std::vector<float> params = random_params(layout, 77);
  const std::string file = path("ours.safetensors");
  save_base_weights(file, layout, params.data());
  const std::string raw_file_path = path("params.f32");
  write_bytes(raw_file_path, f32_bytes(params));
  const std::string script = path("reader.py");
  write_bytes(script, kPythonReader);
  const std::string cmd =
      std::string(LORA_PYTHON) + " " + script + " " + file + " " + raw_file_path + " 2";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace
}  // namespace lora
