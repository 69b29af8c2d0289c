#include "checkpoints/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <utility>

#include "checkpoints/durable_file.h"
#include "kernels/parallel.h"

namespace s0 {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr size_t kConvertGrain = size_t(1) << 16;  // elements per parallel task
constexpr int kMaxJsonDepth = 16;                  // safetensors headers nest 3 deep

struct DTypeEntry {
  const char* name;
  DType dtype;
  size_t size;
  bool is_float;
};
constexpr DTypeEntry kDTypes[] = {
    {"F64", DType::kF64, 8, true},   {"F32", DType::kF32, 4, true},  {"F16", DType::kF16, 2, true},
    {"BF16", DType::kBF16, 2, true}, {"I64", DType::kI64, 8, false}, {"I32", DType::kI32, 4, false},
};
// Valid safetensors dtypes this project does not handle: rejected as unsupported, not as corrupt.
constexpr const char* kUnsupportedDTypes[] = {"BOOL",    "U8",  "I8",      "F8_E5M2", "F8_E4M3",
                                              "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "I16",
                                              "U16",     "U32", "U64",     "C64"};

constexpr bool TableFollowsEnum() {
  for (size_t i = 0; i < std::size(kDTypes); ++i)
    if (size_t(kDTypes[i].dtype) != i) return false;
  return true;
}
static_assert(TableFollowsEnum(), "kDTypes must list every DType in enum order");

const DTypeEntry& Lookup(DType dtype) { return kDTypes[size_t(dtype)]; }

// A name for an error message, cut short so a hostile header cannot flood the log.
std::string Quote(std::string_view s) {
  return "'" + (s.size() <= 200 ? std::string(s) : std::string(s.substr(0, 197)) + "...") + "'";
}

// A JSON value for an error message, cut short likewise.
std::string Brief(const json& v) {
  std::string s = v.dump();
  return s.size() <= 64 ? s : s.substr(0, 61) + "...";
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string ErrnoString(int err) { return std::strerror(err); }

Status OpenError(const std::string& path, int err) {
  std::string m = path + ": cannot open: " + ErrnoString(err);
  return err == ENOENT ? Status::NotFound(m) : Status::IOError(m);
}

// Parses JSON, rejecting duplicate object keys (which nlohmann would silently overwrite) and
// nesting deeper than kMaxJsonDepth. The message says what is wrong, without the file name.
struct JsonRejected {
  std::string why;
};
Result<json> ParseStrictJson(std::string_view text) {
  std::vector<std::set<std::string>> open_objects;
  try {
    return json::parse(
        text.begin(), text.end(), [&](int depth, json::parse_event_t event, json& v) {
          using E = json::parse_event_t;
          if ((event == E::object_start || event == E::array_start) && depth >= kMaxJsonDepth)
            throw JsonRejected{"nested deeper than " + std::to_string(kMaxJsonDepth) + " levels"};
          if (event == E::object_start) open_objects.emplace_back();
          if (event == E::object_end) open_objects.pop_back();
          if (event == E::key && !open_objects.back().insert(v.get<std::string>()).second)
            throw JsonRejected{"duplicate key " + Quote(v.get<std::string>())};
          return true;
        });
  } catch (const JsonRejected& e) {
    return Status::Corruption(e.why);
  } catch (const json::exception& e) {
    return Status::Corruption(std::string("invalid JSON: ") + e.what());
  }
}

// A JSON non-negative integer no larger than `max`, or an explanation.
Result<uint64_t> NonNegativeInt(const json& v, uint64_t max) {
  if (v.is_number_unsigned()) {
    uint64_t x = v.get<uint64_t>();
    if (x <= max) return x;
    return Status::Corruption("value " + Brief(v) + " is too large");
  }
  if (v.is_number_integer()) return Status::Corruption("negative value " + Brief(v));
  return Status::Corruption("expected a non-negative integer, got " + Brief(v));
}

Result<DType> ParseDType(const json& v) {
  if (!v.is_string()) return Status::Corruption("dtype is not a string: " + Brief(v));
  const std::string& s = v.get_ref<const std::string&>();
  for (const DTypeEntry& e : kDTypes)
    if (s == e.name) return e.dtype;
  for (const char* u : kUnsupportedDTypes)
    if (s == u)
      return Status::InvalidArgument(
          "dtype " + Quote(s) + " is not supported (supported: F64, F32, F16, BF16, I64, I32)");
  return Status::Corruption("unknown dtype " + Brief(v));
}

// Byte size of a tensor: DTypeSize x product(shape), or an error on overflow of 64 bits.
Result<uint64_t> ByteSize(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, uint64_t(d), &n))
      return Status::Corruption("shape " + ShapeString(shape) + " overflows 64 bits");
  if (__builtin_mul_overflow(n, uint64_t(DTypeSize(dtype)), &n))
    return Status::Corruption("byte size of shape " + ShapeString(shape) + " overflows 64 bits");
  return n;
}

Status WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::IOError("write: " + ErrnoString(errno));
    }
    p += w;
    n -= size_t(w);
  }
  return Status::Ok();
}

Result<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OpenError(path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::IOError(path + ": not a readable regular file");
  }
  if (uint64_t(st.st_size) > max_bytes) {
    ::close(fd);
    return Status::Corruption(path + ": " + std::to_string(st.st_size) + " bytes, more than the " +
                              std::to_string(max_bytes) + "-byte limit");
  }
  std::string text(size_t(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    ssize_t r = ::read(fd, text.data() + got, text.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int err = r < 0 ? errno : 0;
      ::close(fd);
      return Status::IOError(path + ": read failed" + (err ? ": " + ErrnoString(err) : ""));
    }
    got += size_t(r);
  }
  ::close(fd);
  return text;
}

// dst[i] = convert(element i) for i in [begin, end). memcpy per element: the source is not
// aligned for its element type.
template <typename Bits, typename Out, typename Convert>
void ConvertRange(const std::byte* src, Out* dst, size_t begin, size_t end, Convert convert) {
  for (size_t i = begin; i < end; ++i) {
    Bits b;
    std::memcpy(&b, src + sizeof(Bits) * i, sizeof(Bits));
    dst[i] = Out(convert(b));
  }
}

template <typename Out>
Status ConvertInto(const TensorView& t, std::span<Out> out) {
  if (!IsFloatDType(t.dtype))
    return Status::InvalidArgument(t.file + ": tensor " + Quote(t.name) + " has dtype " +
                                   DTypeName(t.dtype) + ", not a float dtype");
  const size_t n = size_t(t.numel());
  if (out.size() != n || t.bytes.size() != n * DTypeSize(t.dtype))
    return Status::InvalidArgument(t.file + ": tensor " + Quote(t.name) + " has " +
                                   std::to_string(n) + " elements, output holds " +
                                   std::to_string(out.size()));
  const std::byte* src = t.bytes.data();
  Out* dst = out.data();
  const DType dtype = t.dtype;
  ParallelFor(
      n,
      [&](size_t begin, size_t end) {
        switch (dtype) {
          case DType::kBF16:
            ConvertRange<uint16_t>(src, dst, begin, end, [](uint16_t b) { return Bf16ToFloat(b); });
            break;
          case DType::kF16:
            ConvertRange<uint16_t>(src, dst, begin, end, [](uint16_t b) { return F16ToFloat(b); });
            break;
          case DType::kF32:
            ConvertRange<float>(src, dst, begin, end, [](float x) { return x; });
            break;
          case DType::kF64:
            ConvertRange<double>(src, dst, begin, end, [](double x) { return x; });
            break;
          case DType::kI64:
          case DType::kI32:
            break;  // rejected above
        }
      },
      kConvertGrain);
  return Status::Ok();
}

}  // namespace

// ---- dtypes and conversions

const char* DTypeName(DType dtype) { return Lookup(dtype).name; }
size_t DTypeSize(DType dtype) { return Lookup(dtype).size; }
bool IsFloatDType(DType dtype) { return Lookup(dtype).is_float; }

float Bf16ToFloat(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu;
  uint32_t mant = bits & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return std::bit_cast<float>(sign);
  // Subnormal half: normalise into a float32 normal number (always representable).
  uint32_t exp32 = 113;
  while (!(mant & 0x400u)) {
    mant <<= 1;
    --exp32;
  }
  return std::bit_cast<float>(sign | (exp32 << 23) | ((mant & 0x3ffu) << 13));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated at open: cannot overflow
  return n;
}

Status ToFloat32Into(const TensorView& t, std::span<float> out) { return ConvertInto(t, out); }
Status ToFloat64Into(const TensorView& t, std::span<double> out) { return ConvertInto(t, out); }

Result<std::vector<float>> ToFloat32(const TensorView& t) {
  std::vector<float> out(IsFloatDType(t.dtype) ? size_t(t.numel()) : 0);
  S0_RETURN_IF_ERROR(ToFloat32Into(t, out));
  return out;
}

Result<std::vector<double>> ToFloat64(const TensorView& t) {
  std::vector<double> out(IsFloatDType(t.dtype) ? size_t(t.numel()) : 0);
  S0_RETURN_IF_ERROR(ToFloat64Into(t, out));
  return out;
}

// ---- SafetensorsFile

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_size_ = std::exchange(other.map_size_, 0);
    data_start_ = other.data_start_;
    entries_ = std::move(other.entries_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

Result<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  auto corrupt = [&](const std::string& m) { return Status::Corruption(path + ": " + m); };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OpenError(path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Status::IOError(path + ": stat: " + ErrnoString(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::IOError(path + ": not a regular file");
  }
  const uint64_t file_size = uint64_t(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return corrupt("file is " + std::to_string(file_size) +
                   " bytes, shorter than the 8-byte header length");
  }
  void* mapped = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapped == MAP_FAILED) return Status::IOError(path + ": mmap: " + ErrnoString(map_err));
  f.map_ = static_cast<const std::byte*>(mapped);
  f.map_size_ = file_size;

  uint64_t header_len;
  std::memcpy(&header_len, f.map_, 8);
  if (header_len > kMaxHeaderBytes)
    return corrupt("header length " + std::to_string(header_len) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  if (header_len > file_size - 8)
    return corrupt("header length " + std::to_string(header_len) + " runs past the end of the " +
                   std::to_string(file_size) + "-byte file");
  f.data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - f.data_start_;
  std::string_view text(reinterpret_cast<const char*>(f.map_ + 8), size_t(header_len));
  if (text.empty() || text.front() != '{') return corrupt("header does not start with '{'");

  auto parsed = ParseStrictJson(text);
  if (!parsed.ok()) return parsed.status().Context(path + ": header");
  const json& header = parsed.value();  // an object: valid JSON that starts with '{'

  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) return corrupt("__metadata__ is not an object: " + Brief(v));
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string())
          return corrupt("__metadata__ value for " + Quote(k) + " is not a string: " + Brief(mv));
        f.metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& m) { return corrupt("tensor " + Quote(name) + ": " + m); };
    if (!v.is_object()) return bad("entry is not an object: " + Brief(v));
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!v.contains(key)) return bad(std::string("missing ") + key);

    auto dtype = ParseDType(v["dtype"]);
    if (!dtype.ok()) return dtype.status().Context(path + ": tensor " + Quote(name));
    Entry e;
    e.dtype = dtype.value();

    const json& shape = v["shape"];
    if (!shape.is_array()) return bad("shape is not an array: " + Brief(shape));
    for (const json& d : shape) {
      auto dim = NonNegativeInt(d, uint64_t(std::numeric_limits<int64_t>::max()));
      if (!dim.ok()) return bad("shape: " + dim.status().message());
      e.shape.push_back(int64_t(dim.value()));
    }

    const json& offsets = v["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2)
      return bad("data_offsets is not a [begin, end] pair: " + Brief(offsets));
    auto begin = NonNegativeInt(offsets[0], std::numeric_limits<uint64_t>::max());
    auto end = NonNegativeInt(offsets[1], std::numeric_limits<uint64_t>::max());
    if (!begin.ok()) return bad("data_offsets: " + begin.status().message());
    if (!end.ok()) return bad("data_offsets: " + end.status().message());
    e.begin = begin.value();
    e.end = end.value();
    if (e.begin > e.end)
      return bad("data_offsets begin " + std::to_string(e.begin) + " > end " +
                 std::to_string(e.end));
    if (e.end > data_size)
      return bad("data_offsets end " + std::to_string(e.end) + " is beyond the data section (" +
                 std::to_string(data_size) + " bytes)");
    auto nbytes = ByteSize(e.dtype, e.shape);
    if (!nbytes.ok()) return bad(nbytes.status().message());
    if (e.end - e.begin != nbytes.value())
      return bad("data_offsets span " + std::to_string(e.end - e.begin) + " bytes but " +
                 DTypeName(e.dtype) + " " + ShapeString(e.shape) + " needs " +
                 std::to_string(nbytes.value()));
    f.entries_.emplace(name, std::move(e));
  }

  // The ranges must tile the data section exactly, as the reference implementation requires.
  std::vector<std::pair<const std::string*, const Entry*>> order;
  for (const auto& [name, e] : f.entries_) order.emplace_back(&name, &e);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  uint64_t expected = 0;
  const std::string* previous = nullptr;
  for (const auto& [name, e] : order) {
    if (e->begin < expected)
      return corrupt("tensor " + Quote(*name) + ": data_offsets [" + std::to_string(e->begin) +
                     ", " + std::to_string(e->end) + "] overlap tensor " + Quote(*previous));
    if (e->begin > expected)
      return corrupt("tensor " + Quote(*name) + ": data_offsets begin " + std::to_string(e->begin) +
                     " leaves a gap after byte " + std::to_string(expected));
    expected = e->end;
    previous = name;
  }
  if (expected != data_size)
    return corrupt("data section has " + std::to_string(data_size - expected) +
                   " trailing bytes not covered by any tensor");
  return f;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, e] : entries_) names.push_back(name);
  return names;
}

Result<TensorView> SafetensorsFile::Get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) return Status::NotFound(path_ + ": no tensor " + Quote(name));
  const Entry& e = it->second;
  TensorView t;
  t.name = name;
  t.file = path_;
  t.dtype = e.dtype;
  t.shape = e.shape;
  t.bytes = std::span<const std::byte>(map_ + data_start_ + e.begin, size_t(e.end - e.begin));
  return t;
}

// ---- TensorStore

Result<TensorStore> TensorStore::Open(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return Status::NotFound(path + ": no such file or directory");
  if (fs::is_directory(st)) {
    const fs::path single = fs::path(path) / "model.safetensors";
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(single, ec)) return Open(single.string());
    if (fs::exists(index, ec)) return OpenIndex(index.string());
    return Status::NotFound(path + ": neither model.safetensors nor model.safetensors.index.json");
  }
  if (path.ends_with(".json")) return OpenIndex(path);
  S0_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  TensorStore store;
  store.path_ = path;
  for (const std::string& name : file.Names()) store.where_.emplace(name, 0);
  store.files_.push_back(std::move(file));
  return store;
}

Result<TensorStore> TensorStore::OpenIndex(const std::string& index_path) {
  auto corrupt = [&](const std::string& m) { return Status::Corruption(index_path + ": " + m); };
  S0_ASSIGN_OR_RETURN(std::string text,
                      ReadSmallFile(index_path, SafetensorsFile::kMaxHeaderBytes));
  auto parsed = ParseStrictJson(text);
  if (!parsed.ok()) return parsed.status().Context(index_path);
  const json& index = parsed.value();
  if (!index.is_object()) return corrupt("not a JSON object");
  if (!index.contains("weight_map")) return corrupt("missing weight_map");
  const json& weight_map = index["weight_map"];
  if (!weight_map.is_object()) return corrupt("weight_map is not an object");

  TensorStore store;
  store.path_ = index_path;
  const fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, size_t> shard_index;  // shard file name -> index into files_
  std::map<std::string, std::string> shard_of;
  for (const auto& [name, v] : weight_map.items()) {
    if (!v.is_string())
      return corrupt("weight_map entry for " + Quote(name) + " is not a string: " + Brief(v));
    const std::string& shard = v.get_ref<const std::string&>();
    const fs::path rel(shard);
    bool escapes = shard.empty() || rel.is_absolute() ||
                   std::any_of(rel.begin(), rel.end(), [](const fs::path& c) { return c == ".."; });
    if (escapes)
      return corrupt("weight_map entry for " + Quote(name) + " names shard " + Quote(shard) +
                     ", which is not a relative path inside the model directory");
    shard_of.emplace(name, shard);
    if (shard_index.count(shard)) continue;
    auto file = SafetensorsFile::Open((dir / rel).string());
    if (!file.ok())
      return file.status().Context(index_path + ": shard " + Quote(shard) + " (holding tensor " +
                                   Quote(name) + ")");
    shard_index.emplace(shard, store.files_.size());
    store.files_.push_back(std::move(file).value());
  }
  for (const auto& [name, shard] : shard_of) {
    size_t i = shard_index.at(shard);
    if (!store.files_[i].Contains(name))
      return corrupt("weight_map maps tensor " + Quote(name) + " to shard " + Quote(shard) +
                     ", which does not contain it");
    store.where_.emplace(name, i);
  }
  for (const auto& [shard, i] : shard_index) {
    for (const std::string& name : store.files_[i].Names()) {
      auto it = shard_of.find(name);
      if (it == shard_of.end())
        return corrupt("shard " + Quote(shard) + " holds tensor " + Quote(name) +
                       ", which weight_map does not list");
      if (it->second != shard)
        return corrupt("shard " + Quote(shard) + " holds tensor " + Quote(name) +
                       ", which weight_map maps to shard " + Quote(it->second));
    }
  }
  return store;
}

std::vector<std::string> TensorStore::Names() const {
  std::vector<std::string> names;
  names.reserve(where_.size());
  for (const auto& [name, i] : where_) names.push_back(name);
  return names;
}

Result<TensorView> TensorStore::Get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return Status::NotFound(path_ + ": no tensor " + Quote(name));
  return files_[it->second].Get(name);
}

// ---- Writer

Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                        const std::map<std::string, std::string>& metadata) {
  auto invalid = [&](const std::string& m) {
    return Status::InvalidArgument("writing " + path + ": " + m);
  };
  std::vector<size_t> order(tensors.size());
  std::set<std::string> seen;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorToWrite& t = tensors[i];
    order[i] = i;
    if (t.name == "__metadata__") return invalid("'__metadata__' is reserved, not a tensor name");
    if (!seen.insert(t.name).second) return invalid("duplicate tensor name " + Quote(t.name));
    for (int64_t d : t.shape)
      if (d < 0)
        return invalid("tensor " + Quote(t.name) + ": negative dimension in shape " +
                       ShapeString(t.shape));
    auto nbytes = ByteSize(t.dtype, t.shape);
    if (!nbytes.ok()) return invalid("tensor " + Quote(t.name) + ": " + nbytes.status().message());
    if (nbytes.value() != t.bytes.size())
      return invalid("tensor " + Quote(t.name) + ": " + std::to_string(t.bytes.size()) +
                     " bytes given, " + DTypeName(t.dtype) + " " + ShapeString(t.shape) +
                     " needs " + std::to_string(nbytes.value()));
  }
  // Larger elements first keeps every tensor aligned to its element size (the data section
  // starts 8-aligned); ties by name make the layout independent of the input order.
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    size_t sa = DTypeSize(tensors[a].dtype), sb = DTypeSize(tensors[b].dtype);
    return sa != sb ? sa > sb : tensors[a].name < tensors[b].name;
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : order) {
    const TensorToWrite& t = tensors[i];
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  std::string tmp = path + ".tmp.XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0)
    return Status::IOError("writing " + path +
                           ": cannot create a temporary file: " + ErrnoString(errno));
  Status s;
  if (::fchmod(fd, 0644) != 0) s = Status::IOError("fchmod: " + ErrnoString(errno));
  if (s.ok()) s = WriteAll(fd, &header_len, 8);
  if (s.ok()) s = WriteAll(fd, text.data(), text.size());
  for (size_t i : order)
    if (s.ok()) s = WriteAll(fd, tensors[i].bytes.data(), tensors[i].bytes.size());
  if (s.ok() && ::fsync(fd) != 0) s = Status::IOError("fsync: " + ErrnoString(errno));
  if (::close(fd) != 0 && s.ok()) s = Status::IOError("close: " + ErrnoString(errno));
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0)
    s = Status::IOError("rename to " + path + ": " + ErrnoString(errno));
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s.Context("writing " + tmp);
  }
  // The rename is durable only once the directory entry is.
  return FsyncParentDirectory(path);
}

}  // namespace s0
