#include "checkpoints/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "tests/common/test_paths.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

template <typename T>
std::span<const std::byte> Bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file from a header text and a data section, with an explicit length prefix.
std::string RawFile(uint64_t header_len, const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &header_len, 8);
  return out + header + data;
}
std::string RawFile(const std::string& header, const std::string& data) {
  return RawFile(header.size(), header, data);
}

std::string Entry(const std::string& dtype, const std::string& shape, uint64_t begin,
                  uint64_t end) {
  return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":[)" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// Bits of a float that is exactly representable in bf16.
uint16_t Bf16Bits(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  EXPECT_EQ(u & 0xffffu, 0u) << f << " is not exactly a bf16 value";
  return uint16_t(u >> 16);
}

// Independent reference for binary16: value = (-1)^s * 2^(e-15) * (1 + m/1024), subnormals
// 2^-14 * m/1024.
double F16Reference(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v;
  if (e == 0x1f)
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0)
    v = std::ldexp(double(m), -24);
  else
    v = std::ldexp(1.0 + m / 1024.0, e - 15);
  return s ? -v : v;
}

TEST(DTypeConversion, F16AllBitPatternsExact) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float got = F16ToFloat(uint16_t(h));
    double ref = F16Reference(uint16_t(h));
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(double(got), ref) << h;
      ASSERT_EQ(std::signbit(got), bool(h & 0x8000)) << h;
    }
  }
}

TEST(DTypeConversion, Bf16AllBitPatternsExact) {
  for (uint32_t b = 0; b < 65536; ++b) {
    float got = Bf16ToFloat(uint16_t(b));
    // bf16 is the top half of a float32: compare the bits, NaN payloads included.
    ASSERT_EQ(std::bit_cast<uint32_t>(got), b << 16) << b;
  }
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::TempDir(std::string("safetensors_") +
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

TEST_F(SafetensorsTest, RoundTripEveryDtype) {
  const std::vector<double> f64 = {1.0 / 3.0, -2.5, 1e300, 0.0, -0.0, 7.0};
  const std::vector<float> f32 = {1.5f, -0.1f, 3.4e38f, 1e-45f};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x0001, 0x7bff,
                                     0xfc00};  // 1 -2 2^-24 65504 -inf
  const std::vector<uint16_t> bf16 = {Bf16Bits(1.0f), Bf16Bits(-0.5f), Bf16Bits(3.0f),
                                      Bf16Bits(1.0f / 128)};
  const std::vector<int64_t> i64 = {std::numeric_limits<int64_t>::min(), -1, 0, 1LL << 40};
  const std::vector<int32_t> i32 = {-7, 0, 2147483647};
  const std::vector<float> scalar = {42.0f};
  const std::vector<TensorToWrite> tensors = {
      {"f64", DType::kF64, {2, 3}, Bytes(f64)},   {"f32", DType::kF32, {4}, Bytes(f32)},
      {"f16", DType::kF16, {5}, Bytes(f16)},      {"bf16", DType::kBF16, {2, 2}, Bytes(bf16)},
      {"i64", DType::kI64, {4}, Bytes(i64)},      {"i32", DType::kI32, {3, 1}, Bytes(i32)},
      {"scalar", DType::kF32, {}, Bytes(scalar)}, {"empty", DType::kBF16, {0, 5}, {}},
  };
  const std::string path = Path("all.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"note", "x"}}).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->Names(), (std::vector<std::string>{"bf16", "empty", "f16", "f32", "f64", "i32",
                                                     "i64", "scalar"}));
  EXPECT_EQ(file->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}}));
  for (const TensorToWrite& w : tensors) {
    auto t = file->Get(w.name);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->name, w.name);
    EXPECT_EQ(t->file, path);
    EXPECT_EQ(t->dtype, w.dtype) << w.name;
    EXPECT_EQ(t->shape, w.shape) << w.name;
    ASSERT_EQ(t->bytes.size(), w.bytes.size()) << w.name;
    EXPECT_TRUE(std::equal(t->bytes.begin(), t->bytes.end(), w.bytes.begin())) << w.name;
  }

  // Float conversions.
  auto f64_as32 = ToFloat32(*file->Get("f64"));
  ASSERT_TRUE(f64_as32.ok());
  for (size_t i = 0; i < f64.size(); ++i) EXPECT_EQ((*f64_as32)[i], float(f64[i]));
  auto f64_as64 = ToFloat64(*file->Get("f64"));
  ASSERT_TRUE(f64_as64.ok());
  EXPECT_EQ(*f64_as64, f64);
  auto f32_as32 = ToFloat32(*file->Get("f32"));
  ASSERT_TRUE(f32_as32.ok());
  EXPECT_EQ(*f32_as32, f32);
  auto f16_as32 = ToFloat32(*file->Get("f16"));
  ASSERT_TRUE(f16_as32.ok());
  EXPECT_EQ(*f16_as32, (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f,
                                           -std::numeric_limits<float>::infinity()}));
  auto bf16_as64 = ToFloat64(*file->Get("bf16"));
  ASSERT_TRUE(bf16_as64.ok());
  EXPECT_EQ(*bf16_as64, (std::vector<double>{1.0, -0.5, 3.0, 1.0 / 128}));
  auto scalar_t = file->Get("scalar");
  EXPECT_EQ(scalar_t->numel(), 1);
  EXPECT_EQ(*ToFloat32(*scalar_t), scalar);
  auto empty_t = file->Get("empty");
  EXPECT_EQ(empty_t->numel(), 0);
  EXPECT_TRUE(ToFloat32(*empty_t)->empty());

  // Integer tensors are not floats; wrong output sizes are refused.
  auto as_float = ToFloat32(*file->Get("i32"));
  ASSERT_FALSE(as_float.ok());
  EXPECT_EQ(as_float.status().code(), Code::kInvalidArgument);
  EXPECT_NE(as_float.status().message().find("'i32' has dtype I32"), std::string::npos);
  std::vector<float> too_small(3);
  EXPECT_EQ(ToFloat32Into(*file->Get("f32"), too_small).code(), Code::kInvalidArgument);

  // Layout as upstream: header length a multiple of 8, padded with spaces; every tensor aligned
  // to its element size within the file.
  const std::string raw = test::ReadFile(path);
  uint64_t header_len;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  std::string header = raw.substr(8, header_len);
  ASSERT_FALSE(header.empty());
  EXPECT_EQ(header[header.find_last_not_of(' ')], '}');
  json h = json::parse(header);
  EXPECT_EQ(h["__metadata__"]["format"], "pt");
  for (const TensorToWrite& w : tensors) {
    uint64_t begin = h[w.name]["data_offsets"][0];
    EXPECT_EQ((8 + header_len + begin) % DTypeSize(w.dtype), 0u) << w.name;
  }
  EXPECT_EQ(fs::directory_iterator(dir_)->path().filename().string(), "all.safetensors");
}

TEST_F(SafetensorsTest, WriterReplacesAtomicallyAndRejectsBadInput) {
  const std::string path = Path("w.safetensors");
  const std::vector<float> a = {1, 2, 3, 4};
  const std::vector<float> b = {5, 6};
  ASSERT_TRUE(
      WriteSafetensors(path, std::vector<TensorToWrite>{{"a", DType::kF32, {4}, Bytes(a)}}).ok());
  ASSERT_TRUE(
      WriteSafetensors(path, std::vector<TensorToWrite>{{"b", DType::kF32, {2}, Bytes(b)}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->Names(), std::vector<std::string>{"b"});
  EXPECT_TRUE(file->metadata().empty());

  struct Bad {
    std::vector<TensorToWrite> tensors;
    std::string substring;
  };
  const std::vector<Bad> bad = {
      {{{"a", DType::kF32, {4}, Bytes(a)}, {"a", DType::kF32, {4}, Bytes(a)}},
       "duplicate tensor name 'a'"},
      {{{"__metadata__", DType::kF32, {4}, Bytes(a)}}, "reserved"},
      {{{"a", DType::kF32, {-4}, Bytes(a)}}, "negative dimension"},
      {{{"a", DType::kF32, {3}, Bytes(a)}}, "16 bytes given, F32 [3] needs 12"},
      {{{"a", DType::kF32, {1LL << 62, 8}, Bytes(a)}}, "overflows 64 bits"},
  };
  for (const Bad& c : bad) {
    Status s = WriteSafetensors(path, c.tensors);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << c.substring;
    EXPECT_NE(s.message().find(c.substring), std::string::npos) << s.message();
  }
  EXPECT_EQ(SafetensorsFile::Open(path)->Names(), std::vector<std::string>{"b"});  // untouched
  size_t entries = 0;
  for (auto it = fs::directory_iterator(dir_); it != fs::directory_iterator(); ++it) ++entries;
  EXPECT_EQ(entries, 1u);
  EXPECT_EQ(WriteSafetensors(Path("no/such/dir/x.safetensors"), {}).code(), Code::kIOError);
}

TEST_F(SafetensorsTest, MissingFileAndTensor) {
  auto missing = SafetensorsFile::Open(Path("nope.safetensors"));
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.safetensors"), std::string::npos);
  EXPECT_EQ(SafetensorsFile::Open(dir_).status().code(), Code::kIOError);  // a directory

  const std::vector<float> a = {1};
  ASSERT_TRUE(WriteSafetensors(Path("one.safetensors"),
                               std::vector<TensorToWrite>{{"a", DType::kF32, {1}, Bytes(a)}})
                  .ok());
  auto file = SafetensorsFile::Open(Path("one.safetensors"));
  ASSERT_TRUE(file.ok());
  auto t = file->Get("b");
  EXPECT_EQ(t.status().code(), Code::kNotFound);
  EXPECT_NE(t.status().message().find("one.safetensors: no tensor 'b'"), std::string::npos);
}

// Every malformed file is rejected with its code and a message naming what is wrong; none may
// crash or read out of bounds (this suite runs under ASan + UBSan).
TEST_F(SafetensorsTest, MalformedFilesAreRejected) {
  const std::vector<float> ab = {1, 2, 3, 4};
  const std::string good_path = Path("good.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(good_path,
                       std::vector<TensorToWrite>{{"a", DType::kF32, {2}, Bytes(ab).subspan(0, 8)},
                                                  {"b", DType::kF32, {2}, Bytes(ab).subspan(8, 8)}})
          .ok());
  const std::string good = test::ReadFile(good_path);
  uint64_t good_header_len;
  std::memcpy(&good_header_len, good.data(), 8);
  ASSERT_EQ(good.size(), 8 + good_header_len + 16);

  const std::string f32x2 = std::string(8, '\x01');
  auto one = [](const std::string& entry) { return R"({"t":)" + entry + "}"; };
  std::string deep = "1";
  for (int i = 0; i < 20; ++i) deep = R"({"k":)" + deep + "}";

  struct Case {
    std::string name;
    std::string bytes;
    Code code;
    std::string substring;
  };
  const std::vector<Case> cases = {
      {"empty file", "", Code::kCorruption,
       "file is 0 bytes, shorter than the 8-byte header length"},
      {"truncated in length", good.substr(0, 5), Code::kCorruption, "file is 5 bytes"},
      {"truncated after length", good.substr(0, 8), Code::kCorruption, "runs past the end"},
      {"truncated in header", good.substr(0, 8 + good_header_len / 2), Code::kCorruption,
       "runs past the end"},
      {"truncated in data", good.substr(0, good.size() - 3), Code::kCorruption,
       "tensor 'b': data_offsets end 16 is beyond the data section (13 bytes)"},
      {"truncated before data", good.substr(0, 8 + good_header_len), Code::kCorruption,
       "is beyond the data section (0 bytes)"},
      {"huge header length", RawFile(uint64_t(1) << 62, "{}", ""), Code::kCorruption,
       "header length 4611686018427387904 exceeds the limit of 100000000 bytes"},
      {"header length past file", RawFile(1000, "{}", ""), Code::kCorruption,
       "header length 1000 runs past the end of the 10-byte file"},
      {"empty header", RawFile("", ""), Code::kCorruption, "does not start with '{'"},
      {"header not an object", RawFile("[1, 2]", ""), Code::kCorruption, "does not start with '{'"},
      {"bad json", RawFile("{\"t\": ", ""), Code::kCorruption, "header: invalid JSON"},
      {"garbage after json", RawFile("{} x", ""), Code::kCorruption, "header: invalid JSON"},
      {"invalid utf-8", RawFile("{\"\xff\": 1}", ""), Code::kCorruption, "invalid JSON"},
      {"too deep", RawFile(R"({"__metadata__":)" + deep + "}", ""), Code::kCorruption,
       "nested deeper than 16 levels"},
      {"duplicate names",
       RawFile(
           R"({"t":)" + Entry("F32", "[2]", 0, 8) + R"(,"t":)" + Entry("F32", "[2]", 0, 8) + "}",
           f32x2),
       Code::kCorruption, "duplicate key 't'"},
      {"duplicate field",
       RawFile(R"({"t":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f32x2),
       Code::kCorruption, "duplicate key 'dtype'"},
      {"entry not object", RawFile(one("[1]"), ""), Code::kCorruption,
       "tensor 't': entry is not an object"},
      {"missing dtype", RawFile(one(R"({"shape":[2],"data_offsets":[0,8]})"), f32x2),
       Code::kCorruption, "tensor 't': missing dtype"},
      {"missing shape", RawFile(one(R"({"dtype":"F32","data_offsets":[0,8]})"), f32x2),
       Code::kCorruption, "tensor 't': missing shape"},
      {"missing offsets", RawFile(one(R"({"dtype":"F32","shape":[2]})"), f32x2), Code::kCorruption,
       "tensor 't': missing data_offsets"},
      {"dtype not string", RawFile(one(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"), f32x2),
       Code::kCorruption, "tensor 't': dtype is not a string"},
      {"unknown dtype", RawFile(one(Entry("F99", "[2]", 0, 8)), f32x2), Code::kCorruption,
       "tensor 't': unknown dtype \"F99\""},
      {"unsupported dtype", RawFile(one(Entry("U8", "[8]", 0, 8)), f32x2), Code::kInvalidArgument,
       "tensor 't': dtype 'U8' is not supported"},
      {"shape not array", RawFile(one(Entry("F32", "2", 0, 8)), f32x2), Code::kCorruption,
       "shape is not an array"},
      {"negative dim", RawFile(one(Entry("F32", "[-2]", 0, 8)), f32x2), Code::kCorruption,
       "shape: negative value -2"},
      {"fractional dim", RawFile(one(Entry("F32", "[1.5]", 0, 8)), f32x2), Code::kCorruption,
       "shape: expected a non-negative integer, got 1.5"},
      {"dim beyond int64", RawFile(one(Entry("F32", "[18446744073709551615]", 0, 8)), f32x2),
       Code::kCorruption, "shape: value 18446744073709551615 is too large"},
      {"shape overflow", RawFile(one(Entry("F32", "[4294967296,4294967296,16]", 0, 0)), ""),
       Code::kCorruption, "tensor 't': shape [4294967296, 4294967296, 16] overflows 64 bits"},
      {"byte size overflow", RawFile(one(Entry("F64", "[4611686018427387904]", 0, 0)), ""),
       Code::kCorruption, "byte size of shape [4611686018427387904] overflows 64 bits"},
      {"offsets not pair", RawFile(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), f32x2),
       Code::kCorruption, "data_offsets is not a [begin, end] pair"},
      {"negative offset",
       RawFile(one(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), f32x2),
       Code::kCorruption, "data_offsets: negative value -8"},
      {"begin after end", RawFile(one(Entry("F32", "[2]", 8, 0)), f32x2), Code::kCorruption,
       "data_offsets begin 8 > end 0"},
      {"end out of range", RawFile(one(Entry("F32", "[2]", 0, 8)), "1234"), Code::kCorruption,
       "data_offsets end 8 is beyond the data section (4 bytes)"},
      {"offset far out of range",
       RawFile(one(Entry("F32", "[2]", 18446744073709551607ULL, 18446744073709551615ULL)), f32x2),
       Code::kCorruption, "is beyond the data section"},
      {"wrong byte size", RawFile(one(Entry("F32", "[3]", 0, 8)), f32x2), Code::kCorruption,
       "data_offsets span 8 bytes but F32 [3] needs 12"},
      {"overlap",
       RawFile(
           R"({"a":)" + Entry("F32", "[2]", 0, 8) + R"(,"b":)" + Entry("F32", "[2]", 4, 12) + "}",
           std::string(12, 'x')),
       Code::kCorruption, "tensor 'b': data_offsets [4, 12] overlap tensor 'a'"},
      {"overlap by empty tensor",
       RawFile(
           R"({"a":)" + Entry("F32", "[2]", 0, 8) + R"(,"b":)" + Entry("F32", "[0]", 4, 4) + "}",
           f32x2),
       Code::kCorruption, "tensor 'b': data_offsets [4, 4] overlap tensor 'a'"},
      {"gap",
       RawFile(
           R"({"a":)" + Entry("F32", "[1]", 0, 4) + R"(,"b":)" + Entry("F32", "[1]", 8, 12) + "}",
           std::string(12, 'x')),
       Code::kCorruption, "tensor 'b': data_offsets begin 8 leaves a gap after byte 4"},
      {"trailing bytes", RawFile(one(Entry("F32", "[1]", 0, 4)), f32x2), Code::kCorruption,
       "data section has 4 trailing bytes"},
      {"metadata not object", RawFile(R"({"__metadata__":[1]})", ""), Code::kCorruption,
       "__metadata__ is not an object"},
      {"metadata value not string", RawFile(R"({"__metadata__":{"k":1}})", ""), Code::kCorruption,
       "__metadata__ value for 'k' is not a string"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = Path("bad.safetensors");
    WriteFile(path, c.bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), c.code) << file.status().ToString();
    EXPECT_NE(file.status().message().find(c.substring), std::string::npos)
        << file.status().ToString();
    EXPECT_EQ(file.status().message().rfind(path + ": ", 0), 0u) << file.status().ToString();
  }

  // The same bytes, made valid, open: the table tests what it means to.
  WriteFile(Path("ok.safetensors"),
            RawFile(R"({"a":)" + Entry("F32", "[1]", 0, 4) + R"(,"b":)" +
                        Entry("F32", "[1]", 4, 8) + R"(,"e":)" + Entry("F32", "[0]", 8, 8) + "}  ",
                    f32x2));
  auto ok = SafetensorsFile::Open(Path("ok.safetensors"));
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
}

// Every truncation of a valid file is rejected, and no single-bit flip anywhere makes the reader
// crash or read out of bounds: what still opens is read in full.
TEST_F(SafetensorsTest, EveryTruncationAndBitFlipIsHandled) {
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x0001};
  const std::vector<float> f32 = {1.0f, -2.0f};
  const std::vector<int64_t> i64 = {5};
  const std::string good_path = Path("good.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(good_path,
                       std::vector<TensorToWrite>{{"w.bf16", DType::kBF16, {3}, Bytes(bf16)},
                                                  {"w.f32", DType::kF32, {2, 1}, Bytes(f32)},
                                                  {"w.i64", DType::kI64, {1}, Bytes(i64)}},
                       {{"format", "pt"}})
          .ok());
  const std::string good = test::ReadFile(good_path);
  const std::string path = Path("mutated.safetensors");
  for (size_t len = 0; len < good.size(); ++len) {
    WriteFile(path, good.substr(0, len));
    EXPECT_FALSE(SafetensorsFile::Open(path).ok()) << "truncated to " << len << " bytes";
  }
  size_t opened = 0, rejected = 0;
  for (size_t pos = 0; pos < good.size(); ++pos) {
    for (int bit : {0, 7}) {
      std::string bytes = good;
      bytes[pos] = char(bytes[pos] ^ (1 << bit));
      WriteFile(path, bytes);
      auto file = SafetensorsFile::Open(path);
      if (!file.ok()) {
        ++rejected;
        continue;
      }
      ++opened;
      for (const std::string& name : file->Names()) {
        auto t = file->Get(name);
        ASSERT_TRUE(t.ok());
        ASSERT_EQ(t->bytes.size(), size_t(t->numel()) * DTypeSize(t->dtype));
        if (IsFloatDType(t->dtype)) {
          ASSERT_TRUE(ToFloat64(*t).ok());
        }
      }
    }
  }
  // Flips in the data section keep the file valid; most flips in the header do not.
  EXPECT_GE(opened, 2 * (3 * 2 + 2 * 4 + 8u));
  EXPECT_GT(rejected, good.size());
}

// Writes a sharded checkpoint: {tensor -> shard} with one F32 value per tensor.
void WriteShards(const std::string& dir,
                 const std::map<std::string, std::vector<std::string>>& shards,
                 const std::vector<float>& values) {
  for (const auto& [shard, names] : shards) {
    std::vector<TensorToWrite> t;
    for (size_t i = 0; i < names.size(); ++i)
      t.push_back({names[i], DType::kF32, {1}, Bytes(values).subspan(4 * i, 4)});
    ASSERT_TRUE(WriteSafetensors(dir + "/" + shard, t).ok());
  }
}

TEST_F(SafetensorsTest, ShardedStoreThroughIndex) {
  const std::vector<float> values = {10, 20, 30};
  WriteShards(dir_,
              {{"model-00001-of-00002.safetensors", {"x", "y"}},
               {"model-00002-of-00002.safetensors", {"z"}}},
              values);
  json index = {{"metadata", {{"total_size", 12}}},
                {"weight_map",
                 {{"x", "model-00001-of-00002.safetensors"},
                  {"y", "model-00001-of-00002.safetensors"},
                  {"z", "model-00002-of-00002.safetensors"}}}};
  WriteFile(Path("model.safetensors.index.json"), index.dump(2));

  for (const std::string& open_path : {dir_, Path("model.safetensors.index.json")}) {
    auto store = TensorStore::Open(open_path);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    EXPECT_EQ(store->num_files(), 2u);
    EXPECT_EQ(store->Names(), (std::vector<std::string>{"x", "y", "z"}));
    EXPECT_TRUE(store->Contains("z"));
    EXPECT_FALSE(store->Contains("w"));
    EXPECT_EQ(*ToFloat32(*store->Get("y")), std::vector<float>{20});
    auto z = store->Get("z");
    EXPECT_EQ(*ToFloat32(*z), std::vector<float>{10});
    EXPECT_EQ(z->file, Path("model-00002-of-00002.safetensors"));
    auto w = store->Get("w");
    EXPECT_EQ(w.status().code(), Code::kNotFound);
    EXPECT_NE(w.status().message().find("no tensor 'w'"), std::string::npos);
  }

  // A single model.safetensors wins over the index, as Hugging Face loads it.
  const std::vector<float> single = {7};
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"),
                               std::vector<TensorToWrite>{{"s", DType::kF32, {1}, Bytes(single)}})
                  .ok());
  auto store = TensorStore::Open(dir_);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(store->Names(), std::vector<std::string>{"s"});
  EXPECT_EQ(store->num_files(), 1u);
  auto direct = TensorStore::Open(Path("model-00002-of-00002.safetensors"));
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(direct->Names(), std::vector<std::string>{"z"});
}

TEST_F(SafetensorsTest, BadIndexesAreRejected) {
  const std::vector<float> values = {1, 2, 3};
  WriteShards(dir_, {{"a.safetensors", {"x", "y"}}, {"b.safetensors", {"z"}}}, values);
  struct Case {
    std::string name;
    std::string index;
    Code code;
    std::string substring;
  };
  const std::vector<Case> cases = {
      {"missing shard",
       R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"c.safetensors"}})",
       Code::kNotFound, "shard 'c.safetensors' (holding tensor 'z')"},
      {"tensor not in its shard",
       R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors","w":"b.safetensors"}})",
       Code::kCorruption,
       "weight_map maps tensor 'w' to shard 'b.safetensors', which does not contain it"},
      {"tensor in the wrong shard",
       R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors","z":"b.safetensors"}})",
       Code::kCorruption,
       "weight_map maps tensor 'y' to shard 'b.safetensors', which does not contain it"},
      {"shard tensor not listed", R"({"weight_map":{"x":"a.safetensors","z":"b.safetensors"}})",
       Code::kCorruption, "shard 'a.safetensors' holds tensor 'y', which weight_map does not list"},
      {"no weight_map", R"({"metadata":{}})", Code::kCorruption, "missing weight_map"},
      {"weight_map not object", R"({"weight_map":[]})", Code::kCorruption,
       "weight_map is not an object"},
      {"shard not a string", R"({"weight_map":{"x":1}})", Code::kCorruption,
       "weight_map entry for 'x' is not a string"},
      {"shard escapes the directory", R"({"weight_map":{"x":"../a.safetensors"}})",
       Code::kCorruption, "not a relative path inside the model directory"},
      {"absolute shard path", R"({"weight_map":{"x":"/etc/passwd"}})", Code::kCorruption,
       "not a relative path inside the model directory"},
      {"duplicate tensor", R"({"weight_map":{"x":"a.safetensors","x":"a.safetensors"}})",
       Code::kCorruption, "duplicate key 'x'"},
      {"bad json", R"({"weight_map":)", Code::kCorruption, "invalid JSON"},
      {"not an object", R"([])", Code::kCorruption, "not a JSON object"},
  };
  const std::string index_path = Path("model.safetensors.index.json");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    WriteFile(index_path, c.index);
    auto store = TensorStore::Open(dir_);
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), c.code) << store.status().ToString();
    EXPECT_NE(store.status().message().find(c.substring), std::string::npos)
        << store.status().ToString();
    EXPECT_NE(store.status().message().find("model.safetensors.index.json"), std::string::npos)
        << store.status().ToString();
  }

  // A corrupt shard is reported with the index and the shard.
  WriteFile(Path("b.safetensors"), "1234");
  WriteFile(index_path,
            R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})");
  auto store = TensorStore::Open(dir_);
  EXPECT_EQ(store.status().code(), Code::kCorruption);
  EXPECT_NE(store.status().message().find("shard 'b.safetensors'"), std::string::npos);
  EXPECT_NE(store.status().message().find("shorter than the 8-byte header length"),
            std::string::npos);

  fs::remove(index_path);
  auto empty_dir = TensorStore::Open(dir_);
  EXPECT_EQ(empty_dir.status().code(), Code::kNotFound);
  EXPECT_NE(empty_dir.status().message().find("neither model.safetensors nor"), std::string::npos);
  EXPECT_EQ(TensorStore::Open(Path("absent")).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace s0
