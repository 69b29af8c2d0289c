#include "checkpoints/run_file.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <type_traits>
#include <utility>

#include "checkpoints/crc32c.h"
#include "kernels/check.h"

namespace s0 {
namespace {

static_assert(std::endian::native == std::endian::little,
              "checksums cover the little-endian bytes the file stores; a big-endian host would "
              "have to byte-swap before checksumming");
static_assert(std::is_same_v<int, int32_t>, "state_layers are stored as int32");

constexpr char kCrcAttr[] = "crc32c";
// Float mantissas barely compress; after the shuffle filter groups the exponent bytes, level 1
// gets nearly all there is to get, at the lowest cost.
constexpr unsigned kDeflateLevel = 1;
constexpr hsize_t kRowsPerChunk = 256;  // metrics and states_steps: small rows
constexpr hsize_t kAnyRows = std::numeric_limits<hsize_t>::max();
// No dataset of a sane run file comes near this; a larger one is damaged metadata.
constexpr uint64_t kMaxDatasetBytes = uint64_t{1} << 40;
// The top-level objects Commit copies from the working copy; the root attributes are written
// directly.
constexpr const char* kTopLevel[] = {"states", "states_steps", "optimizer", "metrics", "eval",
                                     "hyperparameters"};
constexpr const char* kMomentGroups[] = {"s0", "exp_avg", "exp_avg_sq"};

// HDF5 prints its error stack to stderr by default. Within a public entry point we silence it
// and report the innermost message in the returned Status; the caller's handler is restored.
class QuietHdf5 {
 public:
  QuietHdf5() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  QuietHdf5(const QuietHdf5&) = delete;
  QuietHdf5& operator=(const QuietHdf5&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost message on HDF5's error stack (where the error was detected); clears the stack.
std::string Hdf5Error() {
  std::string msg;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* out) -> herr_t {
        if (n == 0 && err->desc != nullptr) *static_cast<std::string*>(out) = err->desc;
        return 0;
      },
      &msg);
  H5Eclear2(H5E_DEFAULT);
  return " (HDF5: " + (msg.empty() ? std::string("no message") : msg) + ")";
}

Status WriteError(const std::string& what) {
  return Status::IOError("writing " + what + Hdf5Error());
}
Status ReadError(const std::string& what) { return Status::Corruption(what + Hdf5Error()); }

// Owns one HDF5 identifier (file, group, dataset, attribute, space, type or property list).
class Hid {
 public:
  Hid() = default;
  explicit Hid(hid_t id) : id_(id) {}
  Hid(Hid&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  Hid& operator=(Hid&& other) noexcept {
    if (this != &other) {
      Reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  ~Hid() { Reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  hid_t release() { return std::exchange(id_, H5I_INVALID_HID); }

 private:
  void Reset() {
    if (id_ >= 0) H5Idec_ref(id_);
    id_ = H5I_INVALID_HID;
  }
  hid_t id_ = H5I_INVALID_HID;
};

// File (little-endian, fixed) and memory types of each element type the file uses.
template <class T>
struct H5Type;
#define S0_H5_TYPE(T, FILE_TYPE, MEM_TYPE)          \
  template <>                                       \
  struct H5Type<T> {                                \
    static hid_t File() { return FILE_TYPE; }       \
    static hid_t Mem() { return MEM_TYPE; }         \
  }
S0_H5_TYPE(float, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT);
S0_H5_TYPE(double, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE);
S0_H5_TYPE(int8_t, H5T_STD_I8LE, H5T_NATIVE_INT8);
S0_H5_TYPE(int32_t, H5T_STD_I32LE, H5T_NATIVE_INT32);
S0_H5_TYPE(int64_t, H5T_STD_I64LE, H5T_NATIVE_INT64);
S0_H5_TYPE(uint32_t, H5T_STD_U32LE, H5T_NATIVE_UINT32);
S0_H5_TYPE(uint64_t, H5T_STD_U64LE, H5T_NATIVE_UINT64);
#undef S0_H5_TYPE

// Strings are fixed-length UTF-8, NUL-padded (a zero-length type does not exist: "" is one NUL).
// Fixed-length keeps them inside checksummed HDF5 metadata, unlike the global heap.
Hid StringType(size_t len) {
  Hid type(H5Tcopy(H5T_C_S1));
  if (type.valid() && (H5Tset_size(type.get(), len == 0 ? 1 : len) < 0 ||
                       H5Tset_strpad(type.get(), H5T_STR_NULLPAD) < 0 ||
                       H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0)) {
    return Hid();
  }
  return type;
}

Hid Space(const std::vector<hsize_t>& dims, const std::vector<hsize_t>* max_dims = nullptr) {
  if (dims.empty()) return Hid(H5Screate(H5S_SCALAR));
  return Hid(H5Screate_simple(static_cast<int>(dims.size()), dims.data(),
                              max_dims != nullptr ? max_dims->data() : nullptr));
}

// ---- writing

Status WriteAttrRaw(hid_t obj, const std::string& name, hid_t file_type, hid_t mem_type,
                    const void* data, const std::vector<hsize_t>& dims) {
  const std::string what = "attribute " + name;
  const htri_t exists = H5Aexists(obj, name.c_str());
  if (exists < 0 || (exists > 0 && H5Adelete(obj, name.c_str()) < 0)) return WriteError(what);
  Hid space = Space(dims);
  Hid attr(H5Acreate2(obj, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attr.valid() || H5Awrite(attr.get(), mem_type, data) < 0) return WriteError(what);
  return Status::Ok();
}

template <class T>
Status WriteAttr(hid_t obj, const std::string& name, T value) {
  return WriteAttrRaw(obj, name, H5Type<T>::File(), H5Type<T>::Mem(), &value, {});
}

template <class T>
Status WriteArrayAttr(hid_t obj, const std::string& name, const std::vector<T>& values) {
  return WriteAttrRaw(obj, name, H5Type<T>::File(), H5Type<T>::Mem(), values.data(),
                      {values.size()});
}

Status WriteStringAttr(hid_t obj, const std::string& name, const std::string& value) {
  Hid type = StringType(value.size());
  if (!type.valid()) return WriteError("attribute " + name);
  return WriteAttrRaw(obj, name, type.get(), type.get(), value.c_str(), {});
}

Status MakeGroup(hid_t loc, const std::string& name) {
  Hid group(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  return group.valid() ? Status::Ok() : WriteError("group " + name);
}

struct Compression {
  bool shuffle = false;
  bool deflate = false;
  std::string description;
};

bool FilterCanEncode(H5Z_filter_t filter) {
  unsigned config = 0;
  return H5Zfilter_avail(filter) > 0 && H5Zget_filter_info(filter, &config) >= 0 &&
         (config & H5Z_FILTER_CONFIG_ENCODE_ENABLED) != 0;
}

Compression DetectCompression() {
  Compression c;
  c.deflate = FilterCanEncode(H5Z_FILTER_DEFLATE);
  if (!c.deflate) {
    c.description = "none: this HDF5 build cannot encode deflate";
    return c;
  }
  c.shuffle = FilterCanEncode(H5Z_FILTER_SHUFFLE);
  c.description = std::string(c.shuffle ? "shuffle+" : "") + "deflate(" +
                  std::to_string(kDeflateLevel) + ")";
  return c;
}

// An empty dataset [0, tail...] that grows along dim 0, chunked by `chunk_rows` rows, with
// the checksum of its (no) bytes.
Status CreateExtendable(hid_t loc, const std::string& name, hid_t file_type,
                        const std::vector<hsize_t>& tail, hsize_t chunk_rows,
                        const Compression* compression) {
  std::vector<hsize_t> dims{0}, max_dims{H5S_UNLIMITED}, chunk{chunk_rows};
  dims.insert(dims.end(), tail.begin(), tail.end());
  max_dims.insert(max_dims.end(), tail.begin(), tail.end());
  chunk.insert(chunk.end(), tail.begin(), tail.end());
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE));
  if (!dcpl.valid() || H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) < 0)
    return WriteError("dataset " + name);
  if (compression != nullptr) {
    if ((compression->shuffle && H5Pset_shuffle(dcpl.get()) < 0) ||
        (compression->deflate && H5Pset_deflate(dcpl.get(), kDeflateLevel) < 0))
      return WriteError("dataset " + name);
  }
  Hid space = Space(dims, &max_dims);
  Hid ds(H5Dcreate2(loc, name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(),
                    H5P_DEFAULT));
  if (!ds.valid()) return WriteError("dataset " + name);
  return WriteAttr<uint32_t>(ds.get(), kCrcAttr, Crc32c(nullptr, 0));
}

// Appends `rows` rows to an extendable dataset and extends its checksum over them.
template <class T>
Status AppendRows(hid_t loc, const std::string& name, const T* data, hsize_t rows) {
  const std::string what = "dataset " + name;
  Hid ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT));
  Hid space(ds.valid() ? H5Dget_space(ds.get()) : H5I_INVALID_HID);
  const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (rank < 1) return WriteError(what);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0) return WriteError(what);
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = dims[0];
  count[0] = rows;
  dims[0] += rows;
  if (H5Dset_extent(ds.get(), dims.data()) < 0) return WriteError(what);
  Hid file_space(H5Dget_space(ds.get()));
  Hid mem_space = Space(count);
  if (!file_space.valid() || !mem_space.valid() ||
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                          nullptr) < 0 ||
      H5Dwrite(ds.get(), H5Type<T>::Mem(), mem_space.get(), file_space.get(), H5P_DEFAULT, data) <
          0)
    return WriteError(what);
  size_t elems = 1;
  for (hsize_t c : count) elems *= static_cast<size_t>(c);
  uint32_t crc = 0;
  Hid attr(H5Aopen(ds.get(), kCrcAttr, H5P_DEFAULT));
  if (!attr.valid() || H5Aread(attr.get(), H5T_NATIVE_UINT32, &crc) < 0) return WriteError(what);
  crc = Crc32cExtend(crc, data, elems * sizeof(T));
  return H5Awrite(attr.get(), H5T_NATIVE_UINT32, &crc) < 0 ? WriteError(what) : Status::Ok();
}

// Writes a whole fixed-shape (contiguous) dataset, creating it the first time, and its checksum.
template <class T>
Status WriteWhole(hid_t loc, const std::string& name, std::span<const T> data,
                  const std::vector<hsize_t>& dims) {
  const std::string what = "dataset " + name;
  const htri_t exists = H5Lexists(loc, name.c_str(), H5P_DEFAULT);
  if (exists < 0) return WriteError(what);
  Hid ds;
  if (exists > 0) {
    ds = Hid(H5Dopen2(loc, name.c_str(), H5P_DEFAULT));
  } else {
    Hid space = Space(dims);
    ds = Hid(H5Dcreate2(loc, name.c_str(), H5Type<T>::File(), space.get(), H5P_DEFAULT,
                        H5P_DEFAULT, H5P_DEFAULT));
  }
  if (!ds.valid() || H5Dwrite(ds.get(), H5Type<T>::Mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                              data.data()) < 0)
    return WriteError(what);
  return WriteAttr<uint32_t>(ds.get(), kCrcAttr, Crc32c(data.data(), data.size_bytes()));
}

// A scalar fixed-length string dataset (replacing one of that name), checksummed over its bytes.
Status WriteStringDataset(hid_t loc, const std::string& name, const std::string& text) {
  const std::string what = "dataset " + name;
  const htri_t exists = H5Lexists(loc, name.c_str(), H5P_DEFAULT);
  if (exists < 0 || (exists > 0 && H5Ldelete(loc, name.c_str(), H5P_DEFAULT) < 0))
    return WriteError(what);
  Hid type = StringType(text.size());
  Hid space = Space({});
  Hid ds(H5Dcreate2(loc, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT,
                    H5P_DEFAULT));
  if (!ds.valid() || H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                              text.c_str()) < 0)
    return WriteError(what);
  return WriteAttr<uint32_t>(ds.get(), kCrcAttr, Crc32c(text.data(), text.size()));
}

// ---- reading (everything off disk is checked before use; failures are Corruption)

Result<Hid> OpenAttr(hid_t obj, const std::string& name) {
  const htri_t exists = H5Aexists(obj, name.c_str());
  if (exists == 0) return Status::Corruption("attribute " + name + " is missing");
  Hid attr(exists > 0 ? H5Aopen(obj, name.c_str(), H5P_DEFAULT) : H5I_INVALID_HID);
  if (!attr.valid()) return ReadError("attribute " + name + " is unreadable");
  return attr;
}

template <class T>
Result<std::vector<T>> ReadArrayAttr(hid_t obj, const std::string& name) {
  S0_ASSIGN_OR_RETURN(Hid attr, OpenAttr(obj, name));
  Hid type(H5Aget_type(attr.get()));
  Hid space(H5Aget_space(attr.get()));
  if (!type.valid() || H5Tequal(type.get(), H5Type<T>::File()) <= 0)
    return Status::Corruption("attribute " + name + " has the wrong type");
  const hssize_t n = space.valid() ? H5Sget_simple_extent_npoints(space.get()) : -1;
  if (n < 0 || n > (hssize_t{1} << 20)) return ReadError("attribute " + name + " has a bad size");
  std::vector<T> values(static_cast<size_t>(n));
  if (n > 0 && H5Aread(attr.get(), H5Type<T>::Mem(), values.data()) < 0)
    return ReadError("attribute " + name + " is unreadable");
  return values;
}

template <class T>
Result<T> ReadAttr(hid_t obj, const std::string& name) {
  S0_ASSIGN_OR_RETURN(std::vector<T> values, ReadArrayAttr<T>(obj, name));
  if (values.size() != 1) return Status::Corruption("attribute " + name + " is not a scalar");
  return values[0];
}

// The bytes of a fixed-length string held by an attribute or dataset of type `type`.
Result<std::string> ReadFixedString(hid_t type, const std::string& what,
                                    const std::function<herr_t(void*)>& read) {
  if (H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) != 0)
    return Status::Corruption(what + " is not a fixed-length string");
  const size_t size = H5Tget_size(type);
  if (size == 0 || size > kMaxDatasetBytes) return Status::Corruption(what + " has a bad size");
  std::string text(size, '\0');
  if (read(text.data()) < 0) return ReadError(what + " is unreadable");
  while (!text.empty() && text.back() == '\0') text.pop_back();
  return text;
}

Result<std::string> ReadStringAttr(hid_t obj, const std::string& name) {
  S0_ASSIGN_OR_RETURN(Hid attr, OpenAttr(obj, name));
  Hid type(H5Aget_type(attr.get()));
  if (!type.valid()) return ReadError("attribute " + name + " is unreadable");
  return ReadFixedString(type.get(), "attribute " + name,
                         [&](void* buf) { return H5Aread(attr.get(), type.get(), buf); });
}

std::string DimsString(const std::vector<hsize_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += dims[i] == kAnyRows ? std::string("n") : std::to_string(dims[i]);
  }
  return s + "]";
}

Status CheckFilters(hid_t ds, const std::string& path) {
  Hid dcpl(H5Dget_create_plist(ds));
  const int n = dcpl.valid() ? H5Pget_nfilters(dcpl.get()) : -1;
  if (n < 0) return ReadError(path + ": filter pipeline unreadable");
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, config = 0;
    size_t n_values = 0;
    const H5Z_filter_t filter = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags,
                                               &n_values, nullptr, 0, nullptr, &config);
    if (filter < 0) return ReadError(path + ": filter pipeline unreadable");
    if (H5Zfilter_avail(filter) <= 0)
      return Status::Unavailable(path + ": needs HDF5 filter " + std::to_string(filter) +
                                 ", which this HDF5 build lacks");
  }
  return Status::Ok();
}

Result<uint32_t> ReadStoredCrc(hid_t ds, const std::string& path) {
  Result<uint32_t> crc = ReadAttr<uint32_t>(ds, kCrcAttr);
  if (!crc.ok()) return crc.status().Context(path);
  return crc;
}

Status CheckCrc(hid_t ds, const std::string& path, const void* data, size_t bytes) {
  S0_ASSIGN_OR_RETURN(uint32_t stored, ReadStoredCrc(ds, path));
  const uint32_t computed = Crc32c(data, bytes);
  if (stored == computed) return Status::Ok();
  char msg[96];
  std::snprintf(msg, sizeof msg, ": crc32c mismatch (stored 0x%08x, computed 0x%08x)", stored,
                computed);
  return Status::Corruption(path + msg);
}

// Reads a whole dataset whose type must be T's file type and whose dims must be `expect`
// (kAnyRows matches any first dim); verifies its checksum. Errors name the dataset.
template <class T>
Result<std::vector<T>> ReadVerified(hid_t file, const std::string& path,
                                    const std::vector<hsize_t>& expect, hsize_t* rows = nullptr) {
  Hid ds(H5Dopen2(file, path.c_str(), H5P_DEFAULT));
  if (!ds.valid()) return ReadError(path + ": missing or unreadable");
  Hid type(H5Dget_type(ds.get()));
  if (!type.valid() || H5Tequal(type.get(), H5Type<T>::File()) <= 0)
    return Status::Corruption(path + ": wrong element type");
  Hid space(H5Dget_space(ds.get()));
  const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (rank != static_cast<int>(expect.size()))
    return Status::Corruption(path + ": rank " + std::to_string(rank) + ", expected " +
                              DimsString(expect));
  std::vector<hsize_t> dims(expect.size());
  if (H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0)
    return ReadError(path + ": dataspace unreadable");
  uint64_t elems = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (expect[i] != kAnyRows && dims[i] != expect[i])
      return Status::Corruption(path + ": shape " + DimsString(dims) + ", expected " +
                                DimsString(expect));
    if (dims[i] != 0 && elems > kMaxDatasetBytes / sizeof(T) / dims[i])
      return Status::Corruption(path + ": implausible shape " + DimsString(dims));
    elems *= dims[i];
  }
  S0_RETURN_IF_ERROR(CheckFilters(ds.get(), path));
  std::vector<T> values(static_cast<size_t>(elems));
  if (elems > 0 && H5Dread(ds.get(), H5Type<T>::Mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                           values.data()) < 0)
    return ReadError(path + ": data unreadable");
  S0_RETURN_IF_ERROR(CheckCrc(ds.get(), path, values.data(), values.size() * sizeof(T)));
  if (rows != nullptr) *rows = dims.empty() ? 0 : dims[0];
  return values;
}

Result<std::string> ReadVerifiedString(hid_t file, const std::string& path) {
  Hid ds(H5Dopen2(file, path.c_str(), H5P_DEFAULT));
  if (!ds.valid()) return ReadError(path + ": missing or unreadable");
  Hid type(H5Dget_type(ds.get()));
  Hid space(H5Dget_space(ds.get()));
  if (!type.valid() || !space.valid() || H5Sget_simple_extent_npoints(space.get()) != 1)
    return Status::Corruption(path + ": not a scalar string");
  S0_ASSIGN_OR_RETURN(std::string text, ReadFixedString(type.get(), path, [&](void* buf) {
                        return H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
                      }));
  S0_RETURN_IF_ERROR(CheckCrc(ds.get(), path, text.data(), text.size()));
  return text;
}

// ---- header

Status ValidateHeader(const RunHeader& h) {
  const nlohmann::json config = nlohmann::json::parse(h.config_json, nullptr, false);
  if (config.is_discarded() || !config.is_object())
    return Status::InvalidArgument("config_json is not a JSON object");
  if (h.model_fingerprint.empty()) return Status::InvalidArgument("model_fingerprint is empty");
  if (h.state_layers.empty()) return Status::InvalidArgument("state_layers is empty");
  for (size_t i = 0; i < h.state_layers.size(); ++i) {
    if (h.state_layers[i] < 0)
      return Status::InvalidArgument("state layer " + std::to_string(h.state_layers[i]) + " < 0");
    for (size_t j = 0; j < i; ++j)
      if (h.state_layers[j] == h.state_layers[i])
        return Status::InvalidArgument("state layer " + std::to_string(h.state_layers[i]) +
                                       " listed twice");
  }
  if (h.state_shape.empty()) return Status::InvalidArgument("state_shape is empty");
  // One snapshot of one layer is one HDF5 chunk, and chunks are limited to 4 GiB.
  uint64_t bytes = sizeof(float);
  for (int64_t d : h.state_shape) {
    if (d < 1) return Status::InvalidArgument("state_shape has a dim < 1");
    if (static_cast<uint64_t>(d) > (uint64_t{1} << 32) / bytes)
      return Status::InvalidArgument("state too large for one HDF5 chunk (4 GiB)");
    bytes *= static_cast<uint64_t>(d);
  }
  if (bytes >= (uint64_t{1} << 32))
    return Status::InvalidArgument("state too large for one HDF5 chunk (4 GiB)");
  return Status::Ok();
}

// Checksum of the root attributes: each field little-endian, strings and arrays length-prefixed.
uint32_t HeaderCrc(int32_t format_version, const RunHeader& h, const std::string& compression,
                   int64_t committed_step) {
  std::string bytes;
  auto put = [&bytes](const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); };
  auto put_i64 = [&put](int64_t v) { put(&v, sizeof v); };
  auto put_str = [&](const std::string& s) {
    put_i64(static_cast<int64_t>(s.size()));
    put(s.data(), s.size());
  };
  put(&format_version, sizeof format_version);
  put_str(h.created_by);
  put_str(h.config_json);
  put_str(h.model_fingerprint);
  put_i64(static_cast<int64_t>(h.state_layers.size()));
  put(h.state_layers.data(), h.state_layers.size() * sizeof(int32_t));
  put_i64(static_cast<int64_t>(h.state_shape.size()));
  put(h.state_shape.data(), h.state_shape.size() * sizeof(int64_t));
  put_str(compression);
  put_i64(committed_step);
  return Crc32c(bytes.data(), bytes.size());
}

std::string LayerPath(const std::string& group, int layer) {
  return group + "/" + std::to_string(layer);
}

std::vector<hsize_t> StateDims(const RunHeader& h) {
  return std::vector<hsize_t>(h.state_shape.begin(), h.state_shape.end());
}

std::string ErrnoMessage(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

Status FsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return Status::IOError(ErrnoMessage("open " + path + " for fsync"));
  const bool synced = ::fsync(fd) == 0;
  const Status s = synced ? Status::Ok() : Status::IOError(ErrnoMessage("fsync " + path));
  ::close(fd);
  return s;
}

// The leftovers of commits that crashed: with one writer per path, every <name>.tmp.* is one.
Status RemoveStaleTemps(const std::string& dir, const std::string& prefix) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().rfind(prefix, 0) == 0) {
      fs::remove(it->path(), ec);
      if (ec) break;
    }
  }
  if (ec) return Status::IOError("removing stale temp files in " + dir + ": " + ec.message());
  return Status::Ok();
}

enum class FileRole { kWorkingCopy, kCommitTemp, kLoad };

Hid FileAccess(FileRole role) {
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS));
  // The 1.10 format checksums all of its metadata (superblock, object headers, chunk indexes),
  // so damage there is reported by HDF5 rather than misread.
  bool ok = fapl.valid() &&
            H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110) >= 0;
  if (role == FileRole::kWorkingCopy) {
    return ok && H5Pset_fapl_core(fapl.get(), size_t{16} << 20, /*backing_store=*/0) >= 0
               ? std::move(fapl)
               : Hid();
  }
  // SEMI: closing fails instead of lingering while an object is open, so the fsync that
  // follows the close covers everything.
  if (role == FileRole::kCommitTemp)
    ok = ok && H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_SEMI) >= 0;
#if H5_VERSION_GE(1, 10, 7)
  // Committed files are never written in place, so locks buy nothing, and flock fails on some
  // cluster file systems.
  ok = ok && H5Pset_file_locking(fapl.get(), false, true) >= 0;
#endif
  return ok ? std::move(fapl) : Hid();
}

}  // namespace

// ---- RunHeader, views, names

size_t RunHeader::StateNumel() const {
  size_t n = 1;
  for (int64_t d : state_shape) n *= static_cast<size_t>(d);
  return n;
}

LayerStatesView ViewOf(const LayerStates& states) {
  return LayerStatesView(states.begin(), states.end());
}

const char* CommitStepName(CommitStep step) {
  switch (step) {
    case CommitStep::kTempCreated: return "temp created";
    case CommitStep::kTempFilled: return "temp filled";
    case CommitStep::kTempClosed: return "temp closed";
    case CommitStep::kTempSynced: return "temp synced";
    case CommitStep::kTempVerified: return "temp verified";
    case CommitStep::kCurrentMovedToPrev: return "current moved to prev";
    case CommitStep::kPrevRenameSynced: return "prev rename synced";
    case CommitStep::kNewMovedIn: return "new moved in";
    case CommitStep::kDirSynced: return "directory synced";
  }
  return "unknown commit step";
}

std::string PrevRunFilePath(const std::string& path) { return path + ".prev"; }

// ---- RunFile

struct RunFile::Impl {
  RunHeader header;
  size_t numel = 0;
  Compression compression;
  Hid file;  // the working copy: HDF5 on the core driver, nothing on disk
  int64_t optimizer_step = 0;
  std::optional<int64_t> last_snapshot_step, last_metrics_step;
  // Set by Restore(LoadedRunFile) when the contents came from <path>.prev: that path. Until a
  // Commit to <path> renames its file in, <path> is the damaged file LoadLatestGood passed over.
  std::string resumed_from_prev;
  // A write that failed half-way leaves the working copy inconsistent: every later call
  // returns this instead of touching (or committing) it.
  Status broken;

  Status Guard(Status s) {
    if (!s.ok()) broken = s;
    return s;
  }
  Status CheckLayers(const LayerStatesView& states, const char* what) const {
    if (states.size() != header.state_layers.size())
      return Status::InvalidArgument(std::string(what) + ": " + std::to_string(states.size()) +
                                     " layers, the run has " +
                                     std::to_string(header.state_layers.size()));
    for (size_t i = 0; i < states.size(); ++i)
      if (states[i].size() != numel)
        return Status::InvalidArgument(
            std::string(what) + ": layer " + std::to_string(header.state_layers[i]) + " has " +
            std::to_string(states[i].size()) + " elements, the state shape has " +
            std::to_string(numel));
    return Status::Ok();
  }
  Status BuildLayout();
  Status FillCommitFile(hid_t out) const;
};

Status RunFile::Impl::BuildLayout() {
  const hid_t f = file.get();
  for (const char* g : {"states", "optimizer", "metrics", "eval", "hyperparameters"})
    S0_RETURN_IF_ERROR(MakeGroup(f, g));
  for (const char* g : kMomentGroups)
    S0_RETURN_IF_ERROR(MakeGroup(f, std::string("optimizer/") + g));
  for (int layer : header.state_layers)
    S0_RETURN_IF_ERROR(CreateExtendable(f, LayerPath("states", layer), H5Type<float>::File(),
                                        StateDims(header), 1, &compression));
  S0_RETURN_IF_ERROR(
      CreateExtendable(f, "states_steps", H5Type<int64_t>::File(), {}, kRowsPerChunk, nullptr));
  S0_RETURN_IF_ERROR(CreateExtendable(f, "metrics/step", H5Type<int64_t>::File(), {},
                                      kRowsPerChunk, nullptr));
  for (const char* m : {"loss", "grad_norm", "wall_time_s"})
    S0_RETURN_IF_ERROR(CreateExtendable(f, std::string("metrics/") + m, H5Type<double>::File(), {},
                                        kRowsPerChunk, nullptr));
  S0_RETURN_IF_ERROR(CreateExtendable(f, "metrics/state_norm", H5Type<double>::File(),
                                      {header.state_layers.size()}, kRowsPerChunk, nullptr));
  // Top-level scalars of the config, for h5py users; derived from config_json, never read back.
  Hid hp(H5Gopen2(f, "hyperparameters", H5P_DEFAULT));
  if (!hp.valid()) return WriteError("group hyperparameters");
  const nlohmann::json config = nlohmann::json::parse(header.config_json);
  for (const auto& [key, value] : config.items()) {
    if (key.empty() || key.find('/') != std::string::npos) continue;
    if (value.is_boolean()) {
      S0_RETURN_IF_ERROR(WriteAttr<int8_t>(hp.get(), key, value.get<bool>() ? 1 : 0));
    } else if (value.is_number_unsigned() &&
               value.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}) {
      S0_RETURN_IF_ERROR(WriteAttr<uint64_t>(hp.get(), key, value.get<uint64_t>()));
    } else if (value.is_number_integer()) {
      S0_RETURN_IF_ERROR(WriteAttr<int64_t>(hp.get(), key, value.get<int64_t>()));
    } else if (value.is_number_float()) {
      S0_RETURN_IF_ERROR(WriteAttr<double>(hp.get(), key, value.get<double>()));
    } else if (value.is_string()) {
      S0_RETURN_IF_ERROR(WriteStringAttr(hp.get(), key, value.get<std::string>()));
    }
  }
  return Status::Ok();
}

Status RunFile::Impl::FillCommitFile(hid_t out) const {
  const RunHeader& h = header;
  S0_RETURN_IF_ERROR(WriteAttr<int32_t>(out, "format_version", kRunFileFormatVersion));
  S0_RETURN_IF_ERROR(WriteStringAttr(out, "created_by", h.created_by));
  S0_RETURN_IF_ERROR(WriteStringAttr(out, "config_json", h.config_json));
  S0_RETURN_IF_ERROR(WriteStringAttr(out, "model_fingerprint", h.model_fingerprint));
  S0_RETURN_IF_ERROR(WriteArrayAttr<int32_t>(out, "state_layers", h.state_layers));
  S0_RETURN_IF_ERROR(WriteArrayAttr<int64_t>(out, "state_shape", h.state_shape));
  S0_RETURN_IF_ERROR(WriteStringAttr(out, "compression", compression.description));
  S0_RETURN_IF_ERROR(WriteAttr<int64_t>(out, "committed_step", optimizer_step));
  S0_RETURN_IF_ERROR(WriteAttr<uint32_t>(
      out, "header_crc32c",
      HeaderCrc(kRunFileFormatVersion, h, compression.description, optimizer_step)));
  // H5Ocopy moves chunks as stored: compressed snapshots are not recompressed.
  for (const char* name : kTopLevel)
    if (H5Ocopy(file.get(), name, out, name, H5P_DEFAULT, H5P_DEFAULT) < 0)
      return WriteError(std::string("/") + name);
  return Status::Ok();
}

RunFile::RunFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RunFile::RunFile(RunFile&&) noexcept = default;
RunFile& RunFile::operator=(RunFile&&) noexcept = default;
RunFile::~RunFile() = default;

const RunHeader& RunFile::header() const {
  S0_CHECK_MSG(impl_, "use of a moved-from RunFile");
  return impl_->header;
}

Result<RunFile> RunFile::Create(RunHeader header) {
  QuietHdf5 quiet;
  S0_RETURN_IF_ERROR(ValidateHeader(header).Context("run file header"));
  auto impl = std::make_unique<Impl>();
  impl->numel = header.StateNumel();
  impl->header = std::move(header);
  impl->compression = DetectCompression();
  // The core driver needs a name that no other open file has.
  static std::atomic<uint64_t> counter{0};
  const std::string name =
      "s0-run-file-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  Hid fapl = FileAccess(FileRole::kWorkingCopy);
  impl->file = Hid(fapl.valid() ? H5Fcreate(name.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get())
                                : H5I_INVALID_HID);
  if (!impl->file.valid()) return WriteError("in-memory run file");
  S0_RETURN_IF_ERROR(impl->BuildLayout());
  RunFile run(std::move(impl));
  const std::vector<float> zeros(run.impl_->numel, 0.0f);
  const LayerStatesView zero(run.impl_->header.state_layers.size(), zeros);
  S0_RETURN_IF_ERROR(run.SetOptimizer(0, zero, zero, zero));
  return run;
}

Result<RunFile> RunFile::Restore(const RunFileContents& c) {
  S0_ASSIGN_OR_RETURN(RunFile run, Create(c.header));
  const size_t numel = c.header.StateNumel();
  const size_t n = c.history_steps.size();
  if (c.history.size() != c.header.state_layers.size())
    return Status::InvalidArgument("Restore: history has " + std::to_string(c.history.size()) +
                                   " layers");
  for (const std::vector<float>& layer : c.history)
    if (layer.size() != n * numel)
      return Status::InvalidArgument("Restore: history size does not match history_steps");
  LayerStatesView snapshot(c.history.size());
  for (size_t s = 0; s < n; ++s) {
    for (size_t l = 0; l < c.history.size(); ++l)
      snapshot[l] = std::span<const float>(c.history[l]).subspan(s * numel, numel);
    S0_RETURN_IF_ERROR(run.AppendSnapshot(c.history_steps[s], snapshot));
  }
  for (const StepMetrics& m : c.metrics) S0_RETURN_IF_ERROR(run.AppendMetrics(m));
  S0_RETURN_IF_ERROR(run.SetOptimizer(c.optimizer));
  for (const auto& [name, json] : c.eval) S0_RETURN_IF_ERROR(run.WriteEval(name, json));
  return run;
}

Result<RunFile> RunFile::Restore(const LoadedRunFile& loaded) {
  S0_ASSIGN_OR_RETURN(RunFile run, Restore(loaded.contents));
  if (loaded.from_prev) run.impl_->resumed_from_prev = loaded.path;
  return run;
}

Status RunFile::AppendSnapshot(int64_t step, const LayerStatesView& states) {
  QuietHdf5 quiet;
  Impl& im = *impl_;
  S0_RETURN_IF_ERROR(im.broken);
  S0_RETURN_IF_ERROR(im.CheckLayers(states, "AppendSnapshot"));
  if (step < 0 || (im.last_snapshot_step && step <= *im.last_snapshot_step))
    return Status::InvalidArgument("AppendSnapshot: step " + std::to_string(step) +
                                   " does not follow the last snapshot's");
  for (size_t i = 0; i < states.size(); ++i)
    S0_RETURN_IF_ERROR(im.Guard(AppendRows<float>(
        im.file.get(), LayerPath("states", im.header.state_layers[i]), states[i].data(), 1)));
  S0_RETURN_IF_ERROR(im.Guard(AppendRows<int64_t>(im.file.get(), "states_steps", &step, 1)));
  im.last_snapshot_step = step;
  return Status::Ok();
}

Status RunFile::AppendMetrics(const StepMetrics& m) {
  QuietHdf5 quiet;
  Impl& im = *impl_;
  S0_RETURN_IF_ERROR(im.broken);
  if (m.state_norm.size() != im.header.state_layers.size())
    return Status::InvalidArgument("AppendMetrics: state_norm has " +
                                   std::to_string(m.state_norm.size()) + " layers");
  if (m.step < 0 || (im.last_metrics_step && m.step <= *im.last_metrics_step))
    return Status::InvalidArgument("AppendMetrics: step " + std::to_string(m.step) +
                                   " does not follow the last row's");
  const hid_t f = im.file.get();
  S0_RETURN_IF_ERROR(im.Guard(AppendRows<int64_t>(f, "metrics/step", &m.step, 1)));
  S0_RETURN_IF_ERROR(im.Guard(AppendRows<double>(f, "metrics/loss", &m.loss, 1)));
  S0_RETURN_IF_ERROR(im.Guard(AppendRows<double>(f, "metrics/grad_norm", &m.grad_norm, 1)));
  S0_RETURN_IF_ERROR(
      im.Guard(AppendRows<double>(f, "metrics/state_norm", m.state_norm.data(), 1)));
  S0_RETURN_IF_ERROR(im.Guard(AppendRows<double>(f, "metrics/wall_time_s", &m.wall_time_s, 1)));
  im.last_metrics_step = m.step;
  return Status::Ok();
}

Status RunFile::SetOptimizer(int64_t step, const LayerStatesView& s0,
                             const LayerStatesView& exp_avg, const LayerStatesView& exp_avg_sq) {
  QuietHdf5 quiet;
  Impl& im = *impl_;
  S0_RETURN_IF_ERROR(im.broken);
  if (step < 0) return Status::InvalidArgument("SetOptimizer: step < 0");
  const LayerStatesView* tensors[] = {&s0, &exp_avg, &exp_avg_sq};
  for (int t = 0; t < 3; ++t) S0_RETURN_IF_ERROR(im.CheckLayers(*tensors[t], "SetOptimizer"));
  const std::vector<hsize_t> dims = StateDims(im.header);
  for (int t = 0; t < 3; ++t) {
    const std::string group = std::string("optimizer/") + kMomentGroups[t];
    for (size_t i = 0; i < im.header.state_layers.size(); ++i)
      S0_RETURN_IF_ERROR(im.Guard(WriteWhole<float>(
          im.file.get(), LayerPath(group, im.header.state_layers[i]), (*tensors[t])[i], dims)));
  }
  Hid group(H5Gopen2(im.file.get(), "optimizer", H5P_DEFAULT));
  if (!group.valid()) return im.Guard(WriteError("group optimizer"));
  S0_RETURN_IF_ERROR(im.Guard(WriteAttr<int64_t>(group.get(), "step", step)));
  im.optimizer_step = step;
  return Status::Ok();
}

Status RunFile::SetOptimizer(const OptimizerState& o) {
  return SetOptimizer(o.step, ViewOf(o.s0), ViewOf(o.exp_avg), ViewOf(o.exp_avg_sq));
}

Status RunFile::WriteEval(const std::string& name, const std::string& json) {
  QuietHdf5 quiet;
  Impl& im = *impl_;
  S0_RETURN_IF_ERROR(im.broken);
  if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos)
    return Status::InvalidArgument("WriteEval: bad name '" + name + "'");
  if (nlohmann::json::parse(json, nullptr, false).is_discarded())
    return Status::InvalidArgument("WriteEval: " + name + ": not JSON");
  return im.Guard(WriteStringDataset(im.file.get(), "eval/" + name, json));
}

Status RunFile::Commit(const std::string& path, const CommitOptions& options) {
  namespace fs = std::filesystem;
  QuietHdf5 quiet;
  Impl& im = *impl_;
  S0_RETURN_IF_ERROR(im.broken);
  if (path.empty()) return Status::InvalidArgument("Commit: empty path");
  const fs::path target(path);
  const std::string dir = target.has_parent_path() ? target.parent_path().string() : ".";
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const std::string prev = PrevRunFilePath(path);
  S0_RETURN_IF_ERROR(RemoveStaleTemps(dir, target.filename().string() + ".tmp."));

  auto proceed = [&options](CommitStep step) {
    return !options.after_step || options.after_step(step);
  };
  auto stopped = [](CommitStep step) {
    return Status::Internal(std::string("commit stopped by the after_step hook after ") +
                            CommitStepName(step));
  };
  auto fail = [&tmp](const Status& s) {
    std::error_code ec;
    fs::remove(tmp, ec);
    return s;
  };

  if (H5Fflush(im.file.get(), H5F_SCOPE_GLOBAL) < 0) return WriteError("in-memory run file");
  {
    Hid fapl = FileAccess(FileRole::kCommitTemp);
    Hid out(fapl.valid() ? H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get())
                         : H5I_INVALID_HID);
    if (!out.valid()) return fail(WriteError(tmp));
    if (!proceed(CommitStep::kTempCreated)) return stopped(CommitStep::kTempCreated);
    if (Status s = im.FillCommitFile(out.get()); !s.ok()) {
      out = Hid();
      return fail(s.Context(tmp));
    }
    if (!proceed(CommitStep::kTempFilled)) return stopped(CommitStep::kTempFilled);
    if (H5Fclose(out.release()) < 0) return fail(WriteError(tmp + " (close)"));
  }
  if (!proceed(CommitStep::kTempClosed)) return stopped(CommitStep::kTempClosed);
  if (Status s = FsyncPath(tmp, false); !s.ok()) return fail(s);
  if (!proceed(CommitStep::kTempSynced)) return stopped(CommitStep::kTempSynced);
  if (options.verify) {
    Result<RunFileContents> check = LoadRunFile(tmp);
    if (!check.ok())
      return fail(check.status().Context("commit: the file just written fails verification"));
    if (check->committed_step != im.optimizer_step)
      return fail(Status::Internal("commit: the file just written has the wrong step"));
    if (!proceed(CommitStep::kTempVerified)) return stopped(CommitStep::kTempVerified);
  }
  // After a resume from <path>.prev, <path> is the damaged file LoadLatestGood passed over (or
  // missing). Rotating it would replace the good <path>.prev with it, leaving nothing loadable
  // between the renames and no fallback after them, so the new file replaces it directly and
  // <path>.prev stays the last good commit throughout.
  const bool replaces_damaged = !im.resumed_from_prev.empty() && im.resumed_from_prev == prev;
  bool rotate = false;
  if (!replaces_damaged) {
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
      rotate = true;
    } else if (errno != ENOENT) {
      return fail(Status::IOError(ErrnoMessage("stat " + path)));
    }
  }
  // Between these two renames only <path>.prev exists; it is the last committed file.
  if (rotate) {
    if (::rename(path.c_str(), prev.c_str()) != 0)
      return fail(Status::IOError(ErrnoMessage("rename " + path + " -> " + prev)));
    if (!proceed(CommitStep::kCurrentMovedToPrev)) return stopped(CommitStep::kCurrentMovedToPrev);
    if (Status s = FsyncPath(dir, true); !s.ok()) return fail(s);
    if (!proceed(CommitStep::kPrevRenameSynced)) return stopped(CommitStep::kPrevRenameSynced);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return fail(Status::IOError(ErrnoMessage("rename " + tmp + " -> " + path)));
  // <path> is now a file this commit wrote: later commits rotate it as usual.
  if (replaces_damaged) im.resumed_from_prev.clear();
  if (!proceed(CommitStep::kNewMovedIn)) return stopped(CommitStep::kNewMovedIn);
  S0_RETURN_IF_ERROR(FsyncPath(dir, true));
  if (!proceed(CommitStep::kDirSynced)) return stopped(CommitStep::kDirSynced);
  return Status::Ok();
}

// ---- loading

namespace {

Status LoadHeader(hid_t f, RunFileContents* c) {
  S0_ASSIGN_OR_RETURN(int32_t version, ReadAttr<int32_t>(f, "format_version"));
  if (version != kRunFileFormatVersion)
    return Status::InvalidArgument("unsupported format_version " + std::to_string(version) +
                                   " (this build reads " +
                                   std::to_string(kRunFileFormatVersion) + ")");
  RunHeader& h = c->header;
  S0_ASSIGN_OR_RETURN(h.created_by, ReadStringAttr(f, "created_by"));
  S0_ASSIGN_OR_RETURN(h.config_json, ReadStringAttr(f, "config_json"));
  S0_ASSIGN_OR_RETURN(h.model_fingerprint, ReadStringAttr(f, "model_fingerprint"));
  S0_ASSIGN_OR_RETURN(h.state_layers, ReadArrayAttr<int32_t>(f, "state_layers"));
  S0_ASSIGN_OR_RETURN(h.state_shape, ReadArrayAttr<int64_t>(f, "state_shape"));
  S0_ASSIGN_OR_RETURN(c->compression, ReadStringAttr(f, "compression"));
  S0_ASSIGN_OR_RETURN(c->committed_step, ReadAttr<int64_t>(f, "committed_step"));
  S0_ASSIGN_OR_RETURN(uint32_t stored, ReadAttr<uint32_t>(f, "header_crc32c"));
  if (stored != HeaderCrc(version, h, c->compression, c->committed_step))
    return Status::Corruption("root attributes: header_crc32c mismatch");
  if (Status s = ValidateHeader(h); !s.ok()) return Status::Corruption("header: " + s.message());
  return Status::Ok();
}

Status CheckIncreasing(const std::vector<int64_t>& steps, const std::string& path) {
  for (size_t i = 0; i < steps.size(); ++i)
    if (steps[i] < 0 || (i > 0 && steps[i] <= steps[i - 1]))
      return Status::Corruption(path + ": steps not strictly increasing");
  return Status::Ok();
}

Status CheckGroupSize(hid_t f, const std::string& path, size_t expected) {
  Hid group(H5Gopen2(f, path.c_str(), H5P_DEFAULT));
  H5G_info_t info;
  if (!group.valid() || H5Gget_info(group.get(), &info) < 0)
    return ReadError(path + ": missing or unreadable");
  if (info.nlinks != expected)
    return Status::Corruption(path + ": " + std::to_string(info.nlinks) + " members, expected " +
                              std::to_string(expected));
  return Status::Ok();
}

Status LoadStatesAndOptimizer(hid_t f, RunFileContents* c) {
  const RunHeader& h = c->header;
  const size_t n_layers = h.state_layers.size();
  const std::vector<hsize_t> dims = StateDims(h);
  hsize_t n = 0;
  S0_ASSIGN_OR_RETURN(c->history_steps, ReadVerified<int64_t>(f, "/states_steps", {kAnyRows}, &n));
  S0_RETURN_IF_ERROR(CheckIncreasing(c->history_steps, "/states_steps"));
  S0_RETURN_IF_ERROR(CheckGroupSize(f, "/states", n_layers));
  std::vector<hsize_t> history_dims{n};
  history_dims.insert(history_dims.end(), dims.begin(), dims.end());
  c->history.resize(n_layers);
  for (size_t i = 0; i < n_layers; ++i) {
    S0_ASSIGN_OR_RETURN(c->history[i],
                        ReadVerified<float>(f, LayerPath("/states", h.state_layers[i]),
                                            history_dims));
  }

  Hid group(H5Gopen2(f, "/optimizer", H5P_DEFAULT));
  if (!group.valid()) return ReadError("/optimizer: missing or unreadable");
  Result<int64_t> step = ReadAttr<int64_t>(group.get(), "step");
  if (!step.ok()) return step.status().Context("/optimizer");
  if (*step != c->committed_step)
    return Status::Corruption("/optimizer: step " + std::to_string(*step) +
                              " differs from committed_step " +
                              std::to_string(c->committed_step));
  c->optimizer.step = *step;
  LayerStates* tensors[] = {&c->optimizer.s0, &c->optimizer.exp_avg, &c->optimizer.exp_avg_sq};
  for (int t = 0; t < 3; ++t) {
    const std::string path = std::string("/optimizer/") + kMomentGroups[t];
    S0_RETURN_IF_ERROR(CheckGroupSize(f, path, n_layers));
    tensors[t]->resize(n_layers);
    for (size_t i = 0; i < n_layers; ++i) {
      S0_ASSIGN_OR_RETURN((*tensors[t])[i],
                          ReadVerified<float>(f, LayerPath(path, h.state_layers[i]), dims));
    }
  }
  return Status::Ok();
}

Status LoadMetrics(hid_t f, RunFileContents* c) {
  hsize_t n = 0;
  S0_ASSIGN_OR_RETURN(std::vector<int64_t> step,
                      ReadVerified<int64_t>(f, "/metrics/step", {kAnyRows}, &n));
  S0_RETURN_IF_ERROR(CheckIncreasing(step, "/metrics/step"));
  S0_ASSIGN_OR_RETURN(std::vector<double> loss, ReadVerified<double>(f, "/metrics/loss", {n}));
  S0_ASSIGN_OR_RETURN(std::vector<double> grad_norm,
                      ReadVerified<double>(f, "/metrics/grad_norm", {n}));
  const size_t n_layers = c->header.state_layers.size();
  S0_ASSIGN_OR_RETURN(std::vector<double> state_norm,
                      ReadVerified<double>(f, "/metrics/state_norm", {n, n_layers}));
  S0_ASSIGN_OR_RETURN(std::vector<double> wall_time_s,
                      ReadVerified<double>(f, "/metrics/wall_time_s", {n}));
  c->metrics.resize(n);
  for (size_t r = 0; r < n; ++r) {
    StepMetrics& m = c->metrics[r];
    m.step = step[r];
    m.loss = loss[r];
    m.grad_norm = grad_norm[r];
    m.state_norm.assign(state_norm.begin() + static_cast<ptrdiff_t>(r * n_layers),
                        state_norm.begin() + static_cast<ptrdiff_t>((r + 1) * n_layers));
    m.wall_time_s = wall_time_s[r];
  }
  return Status::Ok();
}

Status LoadEval(hid_t f, RunFileContents* c) {
  Hid group(H5Gopen2(f, "/eval", H5P_DEFAULT));
  H5G_info_t info;
  if (!group.valid() || H5Gget_info(group.get(), &info) < 0)
    return ReadError("/eval: missing or unreadable");
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i,
                                           nullptr, 0, H5P_DEFAULT);
    if (len <= 0) return ReadError("/eval: member names unreadable");
    std::string name(static_cast<size_t>(len) + 1, '\0');
    if (H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(),
                           name.size(), H5P_DEFAULT) != len)
      return ReadError("/eval: member names unreadable");
    name.resize(static_cast<size_t>(len));
    S0_ASSIGN_OR_RETURN(c->eval[name], ReadVerifiedString(f, "/eval/" + name));
  }
  return Status::Ok();
}

}  // namespace

Result<RunFileContents> LoadRunFile(const std::string& path) {
  QuietHdf5 quiet;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(path + ": no such file");
    return Status::IOError(ErrnoMessage("open " + path));
  }
  ::close(fd);
  Hid fapl = FileAccess(FileRole::kLoad);
  Hid file(fapl.valid() ? H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()) : H5I_INVALID_HID);
  if (!file.valid()) return ReadError(path + ": not an HDF5 file, truncated or damaged");
  RunFileContents c;
  const hid_t f = file.get();
  S0_RETURN_IF_ERROR(LoadHeader(f, &c).Context(path));
  S0_RETURN_IF_ERROR(LoadStatesAndOptimizer(f, &c).Context(path));
  S0_RETURN_IF_ERROR(LoadMetrics(f, &c).Context(path));
  S0_RETURN_IF_ERROR(LoadEval(f, &c).Context(path));
  return c;
}

Result<LoadedRunFile> LoadLatestGood(const std::string& path) {
  auto falls_back = [](const Status& s) {
    return s.code() == Code::kNotFound || s.code() == Code::kCorruption;
  };
  Result<RunFileContents> current = LoadRunFile(path);
  if (current.ok()) return LoadedRunFile{std::move(current).value(), path, false, ""};
  if (!falls_back(current.status())) return current.status();
  const std::string prev = PrevRunFilePath(path);
  Result<RunFileContents> older = LoadRunFile(prev);
  if (older.ok())
    return LoadedRunFile{std::move(older).value(), prev, true, current.status().ToString()};
  const std::string both = current.status().ToString() + "; " + older.status().ToString();
  if (current.status().code() == Code::kNotFound && older.status().code() == Code::kNotFound)
    return Status::NotFound("no run file: " + both);
  return Status::Corruption("no loadable run file: " + both);
}

Status CheckFingerprint(const RunFileContents& contents, const std::string& expected) {
  if (contents.header.model_fingerprint == expected) return Status::Ok();
  return Status::InvalidArgument("run file was written for model " +
                                 contents.header.model_fingerprint + ", this model is " +
                                 expected + "; refusing to resume");
}

}  // namespace s0
