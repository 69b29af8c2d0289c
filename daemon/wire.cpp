#include "daemon/wire.h"

#include <fcntl.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "kernels/check.h"

namespace s0 {
namespace {

namespace pb = google::protobuf;

// The message's `version` (field 1 of every message of proto/ that is read or written whole).
int64_t VersionOf(const pb::Message& m) {
  const pb::FieldDescriptor* f = m.GetDescriptor()->FindFieldByNumber(1);
  S0_CHECK_MSG(f != nullptr && f->name() == "version" &&
                   f->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32,
               m.GetTypeName() + " has no `uint32 version = 1`");
  return m.GetReflection()->GetUInt32(m, f);
}

Status CheckVersion(const pb::Message& m, const std::string& what) {
  const int64_t v = VersionOf(m);
  if (v == int64_t(kProtocolVersion)) return Status::Ok();
  if (v == 0) {
    return Status::InvalidArgument(what + ": no version (this s0d reads version " +
                                   std::to_string(kProtocolVersion) + "; add `version: " +
                                   std::to_string(kProtocolVersion) + "`)");
  }
  return Status::InvalidArgument(what + ": version " + std::to_string(v) + ", but this s0d reads " +
                                 "version " + std::to_string(kProtocolVersion));
}

class CollectErrors : public pb::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (!first_.empty()) return;
    first_ = "line " + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message;
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

}  // namespace

std::string EncodeMessage(const pb::Message& m) { return m.SerializeAsString(); }

Status DecodeMessage(std::string_view bytes, pb::Message* out, const std::string& what,
                     size_t limit) {
  out->Clear();
  if (bytes.size() > limit) {
    return Status::InvalidArgument(what + ": " + std::to_string(bytes.size()) +
                                   " bytes, over the limit of " + std::to_string(limit));
  }
  if (!out->ParseFromArray(bytes.data(), int(bytes.size()))) {
    return Status::Corruption(what + ": not a valid " + out->GetTypeName() + " (" +
                              std::to_string(bytes.size()) + " bytes: truncated or garbled)");
  }
  return CheckVersion(*out, what);
}

Status ParseTextMessage(std::string_view text, bool json, pb::Message* out, const std::string& what,
                        size_t limit) {
  out->Clear();
  if (text.size() > limit) {
    return Status::InvalidArgument(what + ": " + std::to_string(text.size()) +
                                   " bytes, over the limit of " + std::to_string(limit));
  }
  if (json) {
    pb::util::JsonParseOptions opt;
    opt.ignore_unknown_fields = false;
    pb::util::Status st = pb::util::JsonStringToMessage(pb::StringPiece(text.data(), text.size()),
                                                        out, opt);
    if (!st.ok()) {
      return Status::InvalidArgument(what + ": not a valid " + out->GetTypeName() + " in JSON: " +
                                     std::string(st.message()));
    }
  } else {
    pb::TextFormat::Parser parser;
    CollectErrors errors;
    parser.RecordErrorsTo(&errors);
    if (!parser.ParseFromString(std::string(text), out)) {
      return Status::InvalidArgument(what + ": not a valid " + out->GetTypeName() +
                                     " in protobuf text format: " + errors.first());
    }
  }
  return CheckVersion(*out, what);
}

std::string ToJson(const pb::Message& m) {
  pb::util::JsonPrintOptions opt;
  opt.add_whitespace = true;
  opt.always_print_primitive_fields = true;
  opt.preserve_proto_field_names = true;
  std::string out;
  // Printing a well-formed message cannot fail; an empty result would show in every caller's
  // output (and its parse) at once.
  (void)pb::util::MessageToJsonString(m, &out, opt);
  return out;
}

Result<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  // O_NONBLOCK: opening a named pipe would otherwise wait for a writer (forever, with the
  // caller's locks held); the check below then refuses it. Reads of regular files ignore it.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(path + ": no such file");
    return Status::IOError(path + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument(path + ": not a regular file");
  }
  if (size_t(st.st_size) > limit) {
    ::close(fd);
    return Status::InvalidArgument(path + ": " + std::to_string(st.st_size) +
                                   " bytes, over the limit of " + std::to_string(limit));
  }
  std::string text(size_t(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::read(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return Status::IOError(path + ": read: " + (n == 0 ? "file shrank" : std::strerror(errno)));
    }
    done += size_t(n);
  }
  ::close(fd);
  return text;
}


}  // namespace s0
