// Durable small-file writes, shared by every on-disk format that is not HDF5:
// a temporary file in the same directory, write, fsync, rename over the target, fsync of the
// directory. A crash at any instant leaves either the old file or the new one, never a mix.
#pragma once

#include <string>
#include <string_view>

#include "kernels/status.h"

namespace s0 {

// Replaces `path` with `bytes` atomically and durably. IOError names the failing step; the
// temporary file is removed on failure and `path` is untouched.
Status WriteFileAtomic(const std::string& path, std::string_view bytes);

// fsync of the directory holding `path`, which makes a rename into it durable.
Status FsyncParentDirectory(const std::string& path);

}  // namespace s0
