// Training data: JSONL, one example per line, in any of three forms (mixing is allowed):
//   {"prompt": "...", "completion": "..."}        text; ids = encode(prompt + completion),
//                                                 prompt_len = |encode(prompt)|
//   {"messages": [{"role": ..., "content": ...}]} a chat ending in an assistant turn, rendered
//                                                 with the Qwen3.5 template (thinking disabled);
//                                                 the prompt is everything before that turn's
//                                                 answer, plus the generation header
//   {"input_ids": [...], "prompt_len": n}         pre-tokenized
// As the reference library tokenizes with truncation, examples longer than max_length tokens are
// cut to max_length. Every example must keep at least one completion token after truncation.
// Errors name the file and the line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/status.h"
#include "worker/qwen35_model.h"
#include "worker/tokenizer.h"

namespace s0 {

struct DatasetOptions {
  int64_t max_length = 2048;
  int64_t vocab_size = 0;  // when > 0, every id must be below it
  size_t max_line_bytes = 64 << 20;
};

// `tokenizer` may be null when every line is pre-tokenized; a text line then is an error.
Result<std::vector<TokenExample>> LoadJsonlExamples(const std::string& path,
                                                    const Tokenizer* tokenizer,
                                                    const DatasetOptions& options);

}  // namespace s0
