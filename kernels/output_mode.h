// Whether an op overwrites its output or adds into it. Gradients of residual branches are summed,
// so backward ops that feed a residual stream take OutputMode::kAccumulate.
#pragma once

namespace s0 {

enum class OutputMode { kOverwrite, kAccumulate };

}  // namespace s0
