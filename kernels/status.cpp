#include "kernels/status.h"

namespace s0 {

std::string Status::ToString() const {
  const char* kind = "OK";
  switch (code_) {
    case Code::kOk: return "OK";
    case Code::kInvalidArgument: kind = "Invalid argument"; break;
    case Code::kNotFound: kind = "Not found"; break;
    case Code::kCorruption: kind = "Corruption"; break;
    case Code::kIOError: kind = "IO error"; break;
    case Code::kUnavailable: kind = "Unavailable"; break;
    case Code::kInternal: kind = "Internal"; break;
  }
  return std::string(kind) + ": " + msg_;
}

}  // namespace s0
