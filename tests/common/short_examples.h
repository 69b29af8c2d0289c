// Small training data for the daemon's multi-process tests: quick steps on the embedded model.
#pragma once

#include <string>

namespace s0::test {

// The embedded fixture model (tests/fixtures/qwen35/text_f32_grouped).
inline constexpr const char* kEmbeddedFixture = "tests/fixtures/qwen35/text_f32_grouped";

// Writes DIR/data.jsonl: `copies` copies of the fixture's two short examples (its 40- and
// 20-token ones), copy k with every id shifted by 11 k (mod the 384-token vocabulary) so that
// examples differ and seeded subsamples differ. Returns the path; fails the test if the fixture
// does not have exactly those two.
std::string WriteShortExamples(const std::string& dir, int copies);

}  // namespace s0::test
