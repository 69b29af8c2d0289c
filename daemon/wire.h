// Checked (de)serialization of the protobuf messages of proto/: everything that crosses MPI or
// comes off disk goes through here before use. A message is accepted only when it is at most
// its limit (kMaxMessageBytes unless it carries a whole job), parses completely, and carries
// version == kProtocolVersion; errors name what was being read (`what`) and the reason.
#pragma once

#include <google/protobuf/message.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "checkpoints/durable_file.h"  // WriteFileAtomic, for the daemon's files
#include "kernels/status.h"

namespace s0 {

inline constexpr uint32_t kProtocolVersion = 1;
// Limit for one control message and for a file read by ReadSmallFile (job specs, done markers,
// job.json): far above any real message, far below anything that could exhaust memory.
inline constexpr size_t kMaxMessageBytes = size_t(1) << 20;
// An expanded job (its spec and every run, encoded): ExpandJob refuses a job above it, so the
// messages that carry one (decoded with kMaxJobMessageBytes: the job plus its wrapper) always
// fit. 100,000 runs (10 learning rates x 10,000 random seeds) take 13.8 MB
// (tests/daemon/job_spec_test.cpp).
inline constexpr size_t kMaxJobBytes = size_t(16) << 20;
inline constexpr size_t kMaxJobMessageBytes = kMaxJobBytes + kMaxMessageBytes;
// A file that lists a whole job's runs as JSON (job.json, a queue record, summary.json): a few
// hundred bytes per run, up to job_spec.h's 100,000 runs.
inline constexpr size_t kMaxJobFileBytes = size_t(64) << 20;
// A reply to a client describes at most one job in full: its runs, and for each a result or its
// progress (a few hundred bytes each, job_spec.h's 100,000 runs at most).
inline constexpr size_t kMaxReplyBytes = size_t(128) << 20;

// Binary wire form. Every message of proto/ has `uint32 version` as field 1.
std::string EncodeMessage(const google::protobuf::Message& m);
// Parses `bytes` into `out` (cleared first) and checks the size limit and the version.
Status DecodeMessage(std::string_view bytes, google::protobuf::Message* out,
                     const std::string& what, size_t limit = kMaxMessageBytes);

// Text forms (job specs, job.json, done markers, summaries). `json` selects JSON, else the
// protobuf text format. Unknown fields are errors; parse errors carry line:column.
Status ParseTextMessage(std::string_view text, bool json, google::protobuf::Message* out,
                        const std::string& what, size_t limit = kMaxMessageBytes);
// JSON with every field printed (defaults included), two-space indented.
std::string ToJson(const google::protobuf::Message& m);

// Reads a whole file of at most `limit` bytes. NotFound, IOError, or InvalidArgument when larger.
Result<std::string> ReadSmallFile(const std::string& path, size_t limit = kMaxMessageBytes);

}  // namespace s0
