#include "kernels/matmul.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kernels/parallel.h"
#include "tests/common/compare.h"
#include "tests/kernels/dense_test_util.h"

namespace s0 {
namespace {

using test::AllClose;
using test::dense::Cast;
using test::dense::GradientMatches;
using test::dense::Normal;
using test::dense::Poisoned;

struct Shape {
  int64_t m, k, n;
};

// Odd sizes, sizes below one register tile, and sizes that cross the k (256), row (24 / 384)
// and column (64 to 256) blocks of the implementation.
const Shape kShapes[] = {{37, 53, 29}, {1, 1, 1},    {5, 300, 7},  {100, 257, 300},
                         {7, 3, 33},   {25, 16, 16}, {2, 513, 17}, {400, 40, 9}};

// y = x w^T by the textbook triple loop, summed in double.
std::vector<double> NaiveForward(const std::vector<double>& x, const std::vector<double>& w,
                                 const Shape& s) {
  std::vector<double> y(size_t(s.m * s.n));
  for (int64_t i = 0; i < s.m; ++i) {
    for (int64_t j = 0; j < s.n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < s.k; ++p) acc += x[size_t(i * s.k + p)] * w[size_t(j * s.k + p)];
      y[size_t(i * s.n + j)] = acc;
    }
  }
  return y;
}

// dx = dy w by the textbook triple loop, summed in double.
std::vector<double> NaiveBackward(const std::vector<double>& dy, const std::vector<double>& w,
                                  const Shape& s) {
  std::vector<double> dx(size_t(s.m * s.k));
  for (int64_t i = 0; i < s.m; ++i) {
    for (int64_t p = 0; p < s.k; ++p) {
      double acc = 0;
      for (int64_t j = 0; j < s.n; ++j) acc += dy[size_t(i * s.n + j)] * w[size_t(j * s.k + p)];
      dx[size_t(i * s.k + p)] = acc;
    }
  }
  return dx;
}

// Products of unit normals summed over K terms are O(sqrt(K)); fp32 rounding grows with K.
template <typename T>
double Tolerance(int64_t k) {
  return (sizeof(T) == 4 ? 2e-6 : 1e-14) * double(k);
}

template <typename T>
class MatmulTyped : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(MatmulTyped, Types);

TYPED_TEST(MatmulTyped, ForwardMatchesNaiveLoop) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "M=" << s.m << " K=" << s.k << " N=" << s.n);
    std::vector<T> x = Normal<T>(size_t(s.m * s.k), 1), w = Normal<T>(size_t(s.n * s.k), 2);
    std::vector<T> y = Poisoned<T>(size_t(s.m * s.n));
    MatmulForward(x.data(), w.data(), y.data(), s.m, s.k, s.n);
    std::vector<T> ref = Cast<T>(NaiveForward(Cast<double>(x), Cast<double>(w), s));
    EXPECT_TRUE(AllClose("y", y, ref, Tolerance<T>(s.k), Tolerance<T>(s.k)));

    // Accumulate adds onto what is there.
    std::vector<T> base = Normal<T>(y.size(), 3);
    std::vector<T> acc = base;
    MatmulForward(x.data(), w.data(), acc.data(), s.m, s.k, s.n, OutputMode::kAccumulate);
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += base[i];
    EXPECT_TRUE(AllClose("y accumulated", acc, ref, Tolerance<T>(s.k), Tolerance<T>(s.k)));
  }
}

TYPED_TEST(MatmulTyped, BackwardInputMatchesNaiveLoop) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "M=" << s.m << " K=" << s.k << " N=" << s.n);
    std::vector<T> dy = Normal<T>(size_t(s.m * s.n), 4), w = Normal<T>(size_t(s.n * s.k), 5);
    std::vector<T> dx = Poisoned<T>(size_t(s.m * s.k));
    MatmulBackwardInput(dy.data(), w.data(), dx.data(), s.m, s.k, s.n);
    std::vector<T> ref = Cast<T>(NaiveBackward(Cast<double>(dy), Cast<double>(w), s));
    EXPECT_TRUE(AllClose("dx", dx, ref, Tolerance<T>(s.n), Tolerance<T>(s.n)));

    std::vector<T> base = Normal<T>(dx.size(), 6);
    std::vector<T> acc = base;
    MatmulBackwardInput(dy.data(), w.data(), acc.data(), s.m, s.k, s.n, OutputMode::kAccumulate);
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += base[i];
    EXPECT_TRUE(AllClose("dx accumulated", acc, ref, Tolerance<T>(s.n), Tolerance<T>(s.n)));
  }
}

// Sub-matrices of larger buffers: leading dimensions above the logical sizes, both B layouts;
// the padding of C must stay untouched.
TYPED_TEST(MatmulTyped, GemmHonoursLeadingDimensions) {
  using T = TypeParam;
  const int64_t m = 19, n = 35, k = 270, lda = k + 3, ldc = n + 5;
  for (BLayout layout : {BLayout::kNK, BLayout::kKN}) {
    const int64_t ldb = layout == BLayout::kNK ? k + 7 : n + 7;
    const int64_t b_rows = layout == BLayout::kNK ? n : k;
    std::vector<T> a = Normal<T>(size_t(m * lda), 7), b = Normal<T>(size_t(b_rows * ldb), 8);
    std::vector<T> c(size_t(m * ldc), T(12345));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) c[size_t(i * ldc + j)] = std::numeric_limits<T>::quiet_NaN();
    }
    Gemm(m, n, k, a.data(), lda, b.data(), ldb, layout, c.data(), ldc, OutputMode::kOverwrite);
    std::vector<T> got, ref;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < ldc; ++j) {
        double acc = 12345;
        if (j < n) {
          acc = 0;
          for (int64_t p = 0; p < k; ++p) {
            const T bv = layout == BLayout::kNK ? b[size_t(j * ldb + p)] : b[size_t(p * ldb + j)];
            acc += double(a[size_t(i * lda + p)]) * double(bv);
          }
        }
        got.push_back(c[size_t(i * ldc + j)]);
        ref.push_back(T(acc));
      }
    }
    EXPECT_TRUE(AllClose(layout == BLayout::kNK ? "c (B as [N,K])" : "c (B as [K,N])", got, ref,
                         Tolerance<T>(k), Tolerance<T>(k)));
  }
}

TEST(Matmul, EmptyInnerDimensionGivesZeros) {
  std::vector<float> y = Poisoned<float>(6);
  MatmulForward<float>(nullptr, nullptr, y.data(), 2, 0, 3);
  EXPECT_TRUE(AllClose("y", y, std::vector<float>(6, 0.0f), 0, 0));
}

// Every element's sum runs in a fixed order: the thread count, the task grid and the rest of the
// batch change no bit of the result.
TEST(Matmul, BitwiseIndependentOfThreadsAndBatch) {
  const Shape s{150, 700, 530};
  std::vector<float> x = Normal<float>(size_t(s.m * s.k), 9), w = Normal<float>(size_t(s.n * s.k), 10);
  const int threads = NumThreads();
  std::vector<std::vector<float>> ys;
  for (int n_threads : {1, 3, 8}) {
    SetNumThreads(n_threads);
    ys.emplace_back(size_t(s.m * s.n));
    MatmulForward(x.data(), w.data(), ys.back().data(), s.m, s.k, s.n);
  }
  SetNumThreads(threads);
  EXPECT_EQ(0, std::memcmp(ys[0].data(), ys[1].data(), ys[0].size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(ys[0].data(), ys[2].data(), ys[0].size() * sizeof(float)));
  // Row 77 alone gives the same row as within the batch of 150.
  std::vector<float> row(size_t(s.n));
  MatmulForward(x.data() + 77 * s.k, w.data(), row.data(), 1, s.k, s.n);
  EXPECT_EQ(0, std::memcmp(row.data(), ys[0].data() + 77 * s.n, row.size() * sizeof(float)));
}

// (x w^T)^T = w x^T computed with the roles of the operands swapped gives the same bits: each
// element is the same chain of multiply-adds over k. The cross-entropy relies on it.
TEST(Matmul, SwappedOperandsGiveTransposeBitwise) {
  const Shape s{29, 600, 300};
  std::vector<float> x = Normal<float>(size_t(s.m * s.k), 16), w = Normal<float>(size_t(s.n * s.k), 17);
  std::vector<float> y(size_t(s.m * s.n)), y_t(size_t(s.n * s.m));
  MatmulForward(x.data(), w.data(), y.data(), s.m, s.k, s.n);
  Gemm(s.n, s.m, s.k, w.data(), s.k, x.data(), s.k, BLayout::kNK, y_t.data(), s.m,
       OutputMode::kOverwrite);
  size_t mismatches = 0;
  for (int64_t i = 0; i < s.m; ++i) {
    for (int64_t j = 0; j < s.n; ++j) {
      mismatches += std::memcmp(&y[size_t(i * s.n + j)], &y_t[size_t(j * s.m + i)], sizeof(float)) != 0;
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST(Matmul, FiniteDifferenceBackward) {
  const Shape s{5, 13, 11};
  std::vector<double> x = Normal<double>(size_t(s.m * s.k), 11);
  const std::vector<double> w = Normal<double>(size_t(s.n * s.k), 12);
  const std::vector<double> cot = Normal<double>(size_t(s.m * s.n), 13);
  std::vector<double> dx = Poisoned<double>(x.size());
  MatmulBackwardInput(cot.data(), w.data(), dx.data(), s.m, s.k, s.n);
  auto loss = [&] {
    std::vector<double> y(cot.size());
    MatmulForward(x.data(), w.data(), y.data(), s.m, s.k, s.n);
    return test::dense::Dot(cot, y);
  };
  EXPECT_TRUE(GradientMatches("dx", x, dx, loss, 80));
}

TEST(Matmul, FloatAgreesWithDouble) {
  const Shape s{33, 300, 70};
  std::vector<float> x = Normal<float>(size_t(s.m * s.k), 14), w = Normal<float>(size_t(s.n * s.k), 15);
  std::vector<float> y = Poisoned<float>(size_t(s.m * s.n));
  std::vector<double> yd = Poisoned<double>(y.size());
  MatmulForward(x.data(), w.data(), y.data(), s.m, s.k, s.n);
  MatmulForward(Cast<double>(x).data(), Cast<double>(w).data(), yd.data(), s.m, s.k, s.n);
  EXPECT_TRUE(AllClose("y fp32 vs fp64", y, Cast<float>(yd), Tolerance<float>(s.k),
                       Tolerance<float>(s.k)));
}

}  // namespace
}  // namespace s0
