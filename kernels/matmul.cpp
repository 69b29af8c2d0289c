#include "kernels/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/parallel.h"

namespace s0 {
namespace {

// Blocking. A task computes an mc x nc block of C; per k block of kKc it packs B into panels of
// NR columns (kKc x nc elements, sized for L2) and sweeps register tiles of MR x NR over it (one
// panel, kKc x NR, sized for L1). mc is a multiple of kMr (a multiple of every MR below) and at
// most kMcMax; nc is kNcMax or a power-of-two fraction of it down to kNcMin, each a multiple of
// every NR. Every element is summed over k in ascending order,
// in k blocks of kKc, whichever task computes it, so results do not depend on the task grid.
constexpr int64_t kKc = 256;
constexpr int64_t kMr = 24;
constexpr int64_t kMcMax = 384;
constexpr int64_t kNcMax = 256;
constexpr int64_t kNcMin = 64;

template <typename T, int kVecBytes>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};

template <typename T>
struct GemmArgs {
  int64_t m, n, k;
  const T* a;
  int64_t lda;
  const T* b;
  int64_t ldb;
  BLayout layout;
  T* c;
  int64_t ldc;
  OutputMode mode;
};

// Packs B[k0:k0+kc, n0:n0+nc] into panels of kNr columns, zero-padded past nc:
// bp[panel * kc * kNr + p * kNr + r] = B(k0 + p, n0 + panel * kNr + r). Inlined into each
// instruction-set variant, so that full rows copy with fixed-size vector moves.
template <typename T, int64_t kNr>
[[gnu::always_inline]] inline void PackB(const GemmArgs<T>& g, int64_t k0, int64_t kc, int64_t n0,
                                         int64_t nc, T* bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    const int64_t nr = std::min(kNr, nc - j0);
    T* panel = bp + (j0 / kNr) * kc * kNr;
    if (g.layout == BLayout::kKN) {
      const T* src = g.b + k0 * g.ldb + n0 + j0;
      if (nr == kNr) {
        for (int64_t p = 0; p < kc; ++p) std::memcpy(panel + p * kNr, src + p * g.ldb, sizeof(T) * kNr);
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          std::copy(src + p * g.ldb, src + p * g.ldb + nr, panel + p * kNr);
          std::fill(panel + p * kNr + nr, panel + (p + 1) * kNr, T(0));
        }
      }
    } else {
      // A transpose, in strips of kStrip k values so that the panel rows written stay in L1.
      constexpr int64_t kStrip = 16;
      const T* src = g.b + (n0 + j0) * g.ldb + k0;
      for (int64_t p0 = 0; p0 < kc; p0 += kStrip) {
        const int64_t pn = std::min(kStrip, kc - p0);
        for (int64_t r = 0; r < nr; ++r) {
          for (int64_t p = p0; p < p0 + pn; ++p) panel[p * kNr + r] = src[r * g.ldb + p];
        }
        for (int64_t r = nr; r < kNr; ++r) {
          for (int64_t p = p0; p < p0 + pn; ++p) panel[p * kNr + r] = T(0);
        }
      }
    }
  }
}

// C[MR rows, nr cols] (+)= A[MR, kc] · panel[kc, NR]. Vector extensions rather than
// auto-vectorisation: -O2 does not vectorise this loop nest reliably, and the accumulators
// must stay in registers.
template <typename T, int kVecBytes, int MR, int NV>
[[gnu::always_inline]] inline void MicroKernel(int64_t kc, const T* a, int64_t lda, const T* panel,
                                               T* c, int64_t ldc, int64_t nr, bool add) {
  using V = typename VecOf<T, kVecBytes>::type;
  constexpr int kVl = kVecBytes / int(sizeof(T));
  constexpr int kNr = kVl * NV;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V{};
  }
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], panel + p * kNr + j * kVl, kVecBytes);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i * lda + p];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
    }
  }
  if (nr == kNr) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        T* dst = c + i * ldc + j * kVl;
        V v = acc[i][j];
        if (add) {
          V old;
          std::memcpy(&old, dst, kVecBytes);
          v += old;
        }
        std::memcpy(dst, &v, kVecBytes);
      }
    }
  } else {
    T tile[MR][kNr];
    std::memcpy(tile, acc, sizeof(tile));
    for (int i = 0; i < MR; ++i) {
      T* dst = c + i * ldc;
      for (int64_t r = 0; r < nr; ++r) dst[r] = add ? dst[r] + tile[i][r] : tile[i][r];
    }
  }
}

// The bottom rows of a block, fewer than a full tile: dispatches mr to a kernel of that height.
template <typename T, int kVecBytes, int R, int NV>
[[gnu::always_inline]] inline void EdgeKernel(int64_t mr, int64_t kc, const T* a, int64_t lda,
                                              const T* panel, T* c, int64_t ldc, int64_t nr,
                                              bool add) {
  if constexpr (R > 0) {
    if (mr == R) {
      MicroKernel<T, kVecBytes, R, NV>(kc, a, lda, panel, c, ldc, nr, add);
    } else {
      EdgeKernel<T, kVecBytes, R - 1, NV>(mr, kc, a, lda, panel, c, ldc, nr, add);
    }
  }
}

// One task: C[m0:m0+mc, n0:n0+nc]. bp holds kKc * kNcMax elements.
template <typename T, int kVecBytes, int MR, int NV>
[[gnu::always_inline]] inline void GemmBlock(const GemmArgs<T>& g, int64_t m0, int64_t mc,
                                             int64_t n0, int64_t nc, T* bp) {
  constexpr int64_t kNr = kVecBytes / int64_t(sizeof(T)) * NV;
  static_assert(kMr % MR == 0 && kNcMin % kNr == 0, "task blocks must hold whole tiles");
  for (int64_t k0 = 0; k0 < g.k; k0 += kKc) {
    const int64_t kc = std::min(kKc, g.k - k0);
    PackB<T, kNr>(g, k0, kc, n0, nc, bp);
    const bool add = k0 > 0 || g.mode == OutputMode::kAccumulate;
    for (int64_t j = 0; j < nc; j += kNr) {
      const int64_t nr = std::min(kNr, nc - j);
      const T* panel = bp + (j / kNr) * kc * kNr;
      for (int64_t i = 0; i < mc; i += MR) {
        const int64_t mr = std::min<int64_t>(MR, mc - i);
        const T* a = g.a + (m0 + i) * g.lda + k0;
        T* c = g.c + (m0 + i) * g.ldc + n0 + j;
        if (mr == MR) {
          MicroKernel<T, kVecBytes, MR, NV>(kc, a, g.lda, panel, c, g.ldc, nr, add);
        } else {
          EdgeKernel<T, kVecBytes, MR - 1, NV>(mr, kc, a, g.lda, panel, c, g.ldc, nr, add);
        }
      }
    }
  }
}

template <typename T>
using BlockFn = void (*)(const GemmArgs<T>&, int64_t, int64_t, int64_t, int64_t, T*);

// Register tiles: 12 accumulators of 16 bytes (SSE2 has 16 registers), 12 of 32 bytes (AVX2
// has 16), 16 of 64 bytes (AVX-512 has 32).
template <typename T>
void GemmBlockGeneric(const GemmArgs<T>& g, int64_t m0, int64_t mc, int64_t n0, int64_t nc, T* bp) {
  GemmBlock<T, 16, 6, 2>(g, m0, mc, n0, nc, bp);
}

enum class Isa { kGeneric, kAvx2, kAvx512 };

#if defined(__x86_64__) && defined(__GNUC__)
template <typename T>
__attribute__((target("avx2,fma"))) void GemmBlockAvx2(const GemmArgs<T>& g, int64_t m0,
                                                       int64_t mc, int64_t n0, int64_t nc, T* bp) {
  GemmBlock<T, 32, 6, 2>(g, m0, mc, n0, nc, bp);
}

template <typename T>
__attribute__((target("avx512f"))) void GemmBlockAvx512(const GemmArgs<T>& g, int64_t m0,
                                                        int64_t mc, int64_t n0, int64_t nc,
                                                        T* bp) {
  GemmBlock<T, 64, 8, 2>(g, m0, mc, n0, nc, bp);
}

Isa DetectIsa() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f");
  // S0_GEMM_ISA pins a lesser path, so that every path can be tested on one machine.
  if (const char* env = std::getenv("S0_GEMM_ISA")) {
    const std::string want = env;
    if (want == "generic") return Isa::kGeneric;
    if (want == "avx2") {
      S0_CHECK_MSG(avx2, "S0_GEMM_ISA=avx2 but this CPU lacks AVX2/FMA");
      return Isa::kAvx2;
    }
    S0_CHECK_MSG(want == "avx512", "S0_GEMM_ISA must be generic, avx2 or avx512, not " + want);
    S0_CHECK_MSG(avx512, "S0_GEMM_ISA=avx512 but this CPU lacks AVX-512F");
    return Isa::kAvx512;
  }
  if (avx512) return Isa::kAvx512;
  if (avx2) return Isa::kAvx2;
  return Isa::kGeneric;
}
#else
Isa DetectIsa() {
  const char* env = std::getenv("S0_GEMM_ISA");
  S0_CHECK_MSG(env == nullptr || std::string(env) == "generic",
               "S0_GEMM_ISA: only generic exists on this architecture");
  return Isa::kGeneric;
}
#endif

Isa ActiveIsa() {
  static const Isa isa = DetectIsa();
  return isa;
}

template <typename T>
BlockFn<T> SelectBlockFn() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (ActiveIsa() == Isa::kAvx512) return &GemmBlockAvx512<T>;
  if (ActiveIsa() == Isa::kAvx2) return &GemmBlockAvx2<T>;
#endif
  return &GemmBlockGeneric<T>;
}

}  // namespace

const char* GemmIsaName() {
  switch (ActiveIsa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2+fma";
    case Isa::kGeneric: break;
  }
  return "generic";
}

template <typename T>
void Gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
          BLayout layout, T* c, int64_t ldc, OutputMode mode) {
  S0_CHECK(m >= 0 && n >= 0 && k >= 0);
  S0_CHECK(lda >= k && ldc >= n && ldb >= (layout == BLayout::kNK ? k : n));
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (mode == OutputMode::kOverwrite) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    }
    return;
  }
  static const BlockFn<T> block_fn = SelectBlockFn<T>();
  const GemmArgs<T> g{m, n, k, a, lda, b, ldb, layout, c, ldc, mode};
  // Aim for two tasks per thread. Narrower N blocks cost nothing extra; shorter M blocks make
  // every block of B be packed once more, so N is split first. The task grid does not change
  // any element's arithmetic.
  const int64_t want = 2 * int64_t(NumThreads());
  int64_t nc = kNcMax, mc = std::min(kMcMax, (m + kMr - 1) / kMr * kMr);
  auto tasks = [&] { return ((n + nc - 1) / nc) * ((m + mc - 1) / mc); };
  while (nc > kNcMin && tasks() < want) nc /= 2;
  while (mc > kMr && tasks() < want) mc = std::max(kMr, mc / 2 / kMr * kMr);
  const int64_t n_blocks = (n + nc - 1) / nc, m_blocks = (m + mc - 1) / mc;
  ParallelFor(size_t(m_blocks * n_blocks), [&](size_t begin, size_t end) {
    thread_local std::vector<T> bp;
    bp.resize(size_t(kKc * kNcMax));
    for (size_t t = begin; t < end; ++t) {
      const int64_t mb = int64_t(t) / n_blocks, nb = int64_t(t) % n_blocks;
      const int64_t m0 = mb * mc, n0 = nb * nc;
      block_fn(g, m0, std::min(mc, m - m0), n0, std::min(nc, n - n0), bp.data());
    }
  });
}

template <typename T>
void MatmulForward(const T* x, const T* w, T* y, int64_t rows, int64_t in, int64_t out,
                   OutputMode mode) {
  Gemm(rows, out, in, x, in, w, in, BLayout::kNK, y, out, mode);
}

template <typename T>
void MatmulBackwardInput(const T* dy, const T* w, T* dx, int64_t rows, int64_t in, int64_t out,
                         OutputMode mode) {
  Gemm(rows, in, out, dy, out, w, in, BLayout::kKN, dx, in, mode);
}

#define S0_INSTANTIATE(T)                                                                    \
  template void Gemm<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t,    \
                        BLayout, T*, int64_t, OutputMode);                                   \
  template void MatmulForward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t,         \
                                 OutputMode);                                                \
  template void MatmulBackwardInput<T>(const T*, const T*, T*, int64_t, int64_t, int64_t,   \
                                       OutputMode);
S0_INSTANTIATE(float)
S0_INSTANTIATE(double)
#undef S0_INSTANTIATE

}  // namespace s0
