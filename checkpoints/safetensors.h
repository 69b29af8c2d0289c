// The safetensors format (https://github.com/huggingface/safetensors), read and written.
//
// File layout: u64 little-endian N | N bytes of UTF-8 JSON header | data section. The header maps
// tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
// section) and may hold "__metadata__", a string -> string map. Writers pad the header with spaces
// so that the data section starts at a multiple of 8.
//
// Reading maps the file read-only and validates the whole header before anything is used, as the
// reference implementation does: header length <= 100 MB and within the file; a JSON object with
// no duplicate keys; every entry has a known dtype, a shape of non-negative integers and
// data_offsets [begin, end] with begin <= end; end - begin == dtype size x product(shape) (with
// overflow checks); the ranges tile the data section exactly (no overlap, no gap, no trailing
// bytes). Errors name the file and the tensor. Codes: NotFound (file or tensor absent), IOError
// (open/map failures), Corruption (malformed file), InvalidArgument (a valid dtype this project
// does not handle, or a caller asking for a conversion the dtype does not allow).
//
// Supported dtypes: F64, F32, F16, BF16, I64, I32. All data is little-endian (the host is too).
// Tensor bytes point into the mapping and are NOT aligned to the element size in general: copy or
// convert them, never reinterpret_cast them. If another process truncates a mapped file the
// kernel raises SIGBUS on access; checkpoints are treated as immutable while open.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "kernels/status.h"

namespace s0 {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32 };

const char* DTypeName(DType dtype);  // the safetensors spelling: "F32", "BF16", ...
size_t DTypeSize(DType dtype);       // bytes per element
bool IsFloatDType(DType dtype);      // F64, F32, F16, BF16

// Exact widening conversions of 16-bit floats (every bf16 and f16 value, subnormals, infinities
// and NaN payloads included, is representable in float32).
float Bf16ToFloat(uint16_t bits);
float F16ToFloat(uint16_t bits);

// One tensor of an open file. `bytes` stays valid while the SafetensorsFile (or TensorStore) that
// produced it is alive.
struct TensorView {
  std::string name;
  std::string file;  // path of the file holding it, for error messages
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;  // numel() * DTypeSize(dtype) bytes, unaligned

  int64_t numel() const;
};

// A float tensor's values as float32 / float64. BF16, F16 and F32 convert exactly; F64 -> float32
// rounds to nearest. Integer dtypes give InvalidArgument. The *Into forms need out.size() ==
// numel().
Result<std::vector<float>> ToFloat32(const TensorView& t);
Result<std::vector<double>> ToFloat64(const TensorView& t);
Status ToFloat32Into(const TensorView& t, std::span<float> out);
Status ToFloat64Into(const TensorView& t, std::span<double> out);

// One safetensors file, memory-mapped read-only. Movable, not copyable; views into it stay valid
// across moves.
class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as the reference implementation

  static Result<SafetensorsFile> Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> Names() const;  // sorted
  size_t size() const { return entries_.size(); }
  bool Contains(const std::string& name) const { return entries_.count(name) != 0; }
  // NotFound naming the file and the tensor when absent.
  Result<TensorView> Get(const std::string& name) const;

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;  // within the data section
  };
  SafetensorsFile() = default;
  void Unmap();

  std::string path_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  uint64_t data_start_ = 0;  // 8 + header length
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a model: one safetensors file, or shards listed by a
// model.safetensors.index.json ({"weight_map": {tensor: shard file}, "metadata": {...}}), behind
// one lookup. Each shard is opened once. The index must agree with the shards exactly: every
// mapped tensor is in its shard and every shard tensor is mapped to that shard.
class TensorStore {
 public:
  // `path` is a directory (model.safetensors if present, as Hugging Face prefers, else
  // model.safetensors.index.json), an index file ending in ".json", or a .safetensors file.
  static Result<TensorStore> Open(const std::string& path);

  std::vector<std::string> Names() const;  // sorted
  size_t size() const { return where_.size(); }
  bool Contains(const std::string& name) const { return where_.count(name) != 0; }
  // NotFound naming the store's path and the tensor when absent.
  Result<TensorView> Get(const std::string& name) const;
  const std::string& path() const { return path_; }
  size_t num_files() const { return files_.size(); }

 private:
  static Result<TensorStore> OpenIndex(const std::string& index_path);

  std::string path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// A tensor to write: `bytes` must hold exactly DTypeSize(dtype) x product(shape) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// Writes a safetensors file atomically: a temporary file in the same directory, fsync, rename over
// `path`, fsync of the directory. A crash leaves either the old file or the new one. Tensors are
// laid out by decreasing element size, then name, so every tensor is aligned to its element size.
// InvalidArgument for duplicate or reserved names, negative dimensions or a byte-size mismatch.
Status WriteSafetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace s0
