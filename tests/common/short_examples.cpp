#include "tests/common/short_examples.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "tests/common/test_paths.h"

namespace s0::test {

std::string WriteShortExamples(const std::string& dir, int copies) {
  std::vector<std::pair<std::vector<int>, int>> base;
  std::ifstream in(SourcePath(std::string(kEmbeddedFixture) + "/data.jsonl"));
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["input_ids"].size() <= 40) base.push_back({j["input_ids"], j["prompt_len"]});
  }
  EXPECT_EQ(base.size(), 2u);
  const std::string path = dir + "/data.jsonl";
  std::ofstream out(path);
  for (int k = 0; k < copies; ++k) {
    for (const auto& [ids, prompt_len] : base) {
      nlohmann::json j;
      std::vector<int> shifted;
      for (int id : ids) shifted.push_back((id + 11 * k) % 384);
      j["input_ids"] = shifted;
      j["prompt_len"] = prompt_len;
      out << j.dump() << "\n";
    }
  }
  return path;
}

}  // namespace s0::test
