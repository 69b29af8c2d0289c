// A process-wide thread pool for the CPU reference kernels.
//   ParallelFor(n, fn) calls fn(begin, end) on disjoint ranges covering [0, n), on up to
//   NumThreads() threads (the caller is one of them), and returns when all are done.
// Thread count: S0_NUM_THREADS if set, else std::thread::hardware_concurrency(). Nested calls
// run serially in the calling thread. Results must not depend on the thread count: split work
// so that every output element is computed by exactly one range, in a fixed order.
#pragma once

#include <cstddef>
#include <functional>

namespace s0 {

int NumThreads();
void SetNumThreads(int n);
void ParallelFor(size_t n, const std::function<void(size_t begin, size_t end)>& fn,
                 size_t min_grain = 1);

}  // namespace s0
