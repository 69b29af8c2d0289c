// Single-thread Encode throughput on HumanEval (prompt + canonical solution) and GSM8K test
// (question + answer), Qwen3 tokenizer.json:
//   s0_tokenizer_bench [--reps N] [--tokenizer FILE|DIR]
// Reports MB/s of UTF-8 input with the pre-token cache disabled, cold (emptied before every pass)
// and warm (filled by an earlier pass), and the tokens per pass.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/common/test_paths.h"
#include "worker/tokenizer.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

bool ReadLines(const std::string& command_or_path, bool via_gzip, std::vector<json>* rows) {
  std::string text;
  if (via_gzip) {
    FILE* pipe = popen(("gzip -dc '" + command_or_path + "'").c_str(), "r");
    if (pipe == nullptr) return false;
    char buf[65536];
    for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) text.append(buf, n);
    if (pclose(pipe) != 0) return false;
  } else {
    std::ifstream in(command_or_path, std::ios::binary);
    if (!in) return false;
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  size_t start = 0;
  for (size_t nl; start < text.size(); start = nl + 1) {
    nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    if (nl > start) rows->push_back(json::parse(text.substr(start, nl - start)));
  }
  return true;
}

struct Pass {
  double seconds = 0;
  size_t tokens = 0;
};

Pass EncodeAll(const s0::Tokenizer& tok, const std::vector<std::string>& docs) {
  Pass p;
  const auto t0 = Clock::now();
  for (const std::string& d : docs) p.tokens += tok.Encode(d).size();
  p.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  std::string tokenizer_path = s0::test::SharedPath("data/tokenizers/qwen3/tokenizer.json");
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
      tokenizer_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--reps N] [--tokenizer FILE|DIR]\n", argv[0]);
      return 2;
    }
  }
  std::vector<json> humaneval, gsm8k;
  const std::string he_path = s0::test::SharedPath("data/humaneval/HumanEval.jsonl.gz");
  const std::string gsm_path = s0::test::SharedPath("data/gsm8k/test.jsonl");
  if (!ReadLines(he_path, true, &humaneval) || !ReadLines(gsm_path, false, &gsm8k)) {
    std::fprintf(stderr, "cannot read %s or %s\n", he_path.c_str(), gsm_path.c_str());
    return 1;
  }
  std::vector<std::string> docs;
  size_t bytes = 0;
  for (const json& r : humaneval)
    docs.push_back(r["prompt"].get<std::string>() + r["canonical_solution"].get<std::string>());
  for (const json& r : gsm8k)
    docs.push_back(r["question"].get<std::string>() + "\n" + r["answer"].get<std::string>());
  for (const std::string& d : docs) bytes += d.size();

  const auto t0 = Clock::now();
  auto cached = s0::Tokenizer::Load(tokenizer_path);
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  s0::TokenizerOptions no_cache_opts;
  no_cache_opts.cache_capacity = 0;
  auto uncached = s0::Tokenizer::Load(tokenizer_path, no_cache_opts);
  if (!cached.ok() || !uncached.ok()) {
    std::fprintf(stderr, "%s\n", (cached.ok() ? uncached.status() : cached.status()).ToString().c_str());
    return 1;
  }
  std::printf("tokenizer %s (load %.2f s)\n", tokenizer_path.c_str(), load_s);
  std::printf("corpus: %zu documents (%zu HumanEval prompt+solution, %zu GSM8K question+answer), %.3f MB\n",
              docs.size(), humaneval.size(), gsm8k.size(), static_cast<double>(bytes) / 1e6);

  auto report = [&](const char* name, const std::vector<Pass>& passes) {
    double best = 1e30, total = 0;
    for (const Pass& p : passes) best = std::min(best, p.seconds), total += p.seconds;
    const double mb = static_cast<double>(bytes) / 1e6;
    std::printf("%-9s %d passes: best %.1f MB/s, mean %.1f MB/s, %zu tokens per pass\n", name,
                static_cast<int>(passes.size()), mb / best, mb * static_cast<double>(passes.size()) / total,
                passes.front().tokens);
  };
  std::vector<Pass> none, cold, warm;
  for (int r = 0; r < reps; ++r) none.push_back(EncodeAll(*uncached, docs));
  for (int r = 0; r < reps; ++r) {
    cached->ClearCache();
    cold.push_back(EncodeAll(*cached, docs));
  }
  for (int r = 0; r < reps; ++r) warm.push_back(EncodeAll(*cached, docs));
  report("no cache", none);
  report("cold", cold);
  report("warm", warm);
  return 0;
}
