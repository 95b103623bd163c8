// Owns the LtLayout.* tests: LtGemm's row-major → column-major translation (backend/cuda/lt_layout.h) run through an
// emulation of cuBLASLt's documented column-major product (D(i,j) = Σ_l op(A)(i,l)·op(B)(l,j), a stored rows × cols
// matrix X read as X[r + c·ld], ld ≥ rows) against the row-major product, on the CPU.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "backend/cuda/lt_layout.h"

namespace moe {
namespace {

// Stored column-major element (r, c) of a rows × cols matrix with leading dimension ld, bounds-checked against the
// layout and the buffer.
double at_cm(const std::vector<double>& X, i64 rows, i64 cols, i64 ld, i64 r, i64 c) {
  EXPECT_GE(ld, rows);
  EXPECT_TRUE(r >= 0 && r < rows && c >= 0 && c < cols) << "r " << r << " c " << c;
  const i64 idx = r + c * ld;
  EXPECT_LT(idx, i64(X.size()));
  return idx < i64(X.size()) ? X[size_t(idx)] : 0.0;
}

// What cuBLASLt computes for the translation g: cuBLASLt's A = our B, its B = our A, written into C (m × n, ldc).
void lt_emulate(std::vector<double>& C, const std::vector<double>& A, const std::vector<double>& B,
                const LtColMajor& g) {
  for (i64 i = 0; i < g.m; ++i)
    for (i64 j = 0; j < g.n; ++j) {
      double s = 0;
      for (i64 l = 0; l < g.k; ++l) {
        const double a = g.trans_first ? at_cm(B, g.first_rows, g.first_cols, g.ld_first, l, i)
                                       : at_cm(B, g.first_rows, g.first_cols, g.ld_first, i, l);
        const double b = g.trans_second ? at_cm(A, g.second_rows, g.second_cols, g.ld_second, j, l)
                                        : at_cm(A, g.second_rows, g.second_cols, g.ld_second, l, j);
        s += a * b;
      }
      ASSERT_GE(g.ldc, g.m);
      C[size_t(i + j * g.ldc)] = s;
    }
}

// Row-major C[M,N] (ldc) = op(A)·op(B), A stored [M,K] (or [K,M] when ta) with lda, B [K,N] (or [N,K]) with ldb.
void rm_reference(std::vector<double>& C, const std::vector<double>& A, const std::vector<double>& B, i64 M, i64 N,
                  i64 K, Trans ta, Trans tb, i64 lda, i64 ldb, i64 ldc) {
  for (i64 i = 0; i < M; ++i)
    for (i64 j = 0; j < N; ++j) {
      double s = 0;
      for (i64 l = 0; l < K; ++l) {
        const double a = ta == Trans::Yes ? A[size_t(l * lda + i)] : A[size_t(i * lda + l)];
        const double b = tb == Trans::Yes ? B[size_t(j * ldb + l)] : B[size_t(l * ldb + j)];
        s += a * b;
      }
      C[size_t(i * ldc + j)] = s;
    }
}

std::vector<double> lt_product(const std::vector<double>& A, const std::vector<double>& B, i64 M, i64 N, i64 K,
                               Trans ta, Trans tb, i64 lda, i64 ldb, i64 ldc) {
  std::vector<double> C(size_t(M * ldc), -7.0);
  lt_emulate(C, A, B, lt_colmajor(M, N, K, ta, tb, lda, ldb, ldc));
  return C;
}

// y[2,2] = x[2,3]·W[2,3]ᵀ worked by hand, with the arguments CudaDenseOps::linear_forward passes.
TEST(LtLayout, LinearForwardByHand) {
  const std::vector<double> x = {1, 2, 3, 4, 5, 6}, W = {1, 0, -1, 2, 1, 0};
  const i64 N = 2, in = 3, out = 2;
  const auto y = lt_product(x, W, N, out, in, Trans::No, Trans::Yes, in, in, out);
  EXPECT_EQ(y, (std::vector<double>{-2, 4, -2, 13}));
}

// The three GEMMs of CudaDenseOps (cuda_dense.cpp), with its arguments, against the row-major definitions.
TEST(LtLayout, DenseOpsGemms) {
  std::mt19937_64 gen(7);
  std::uniform_int_distribution<int> u(-3, 3);
  auto rnd = [&](size_t n) {
    std::vector<double> v(n);
    for (auto& e : v) e = u(gen);
    return v;
  };
  const i64 N = 5, in = 3, out = 4;
  const auto x = rnd(N * in), W = rnd(out * in), dy = rnd(N * out);
  // y[N,out] = x·Wᵀ
  const auto y = lt_product(x, W, N, out, in, Trans::No, Trans::Yes, in, in, out);
  for (i64 n = 0; n < N; ++n)
    for (i64 o = 0; o < out; ++o) {
      double s = 0;
      for (i64 i = 0; i < in; ++i) s += x[size_t(n * in + i)] * W[size_t(o * in + i)];
      EXPECT_EQ(y[size_t(n * out + o)], s);
    }
  // dx[N,in] = dy·W
  const auto dx = lt_product(dy, W, N, in, out, Trans::No, Trans::No, out, in, in);
  for (i64 n = 0; n < N; ++n)
    for (i64 i = 0; i < in; ++i) {
      double s = 0;
      for (i64 o = 0; o < out; ++o) s += dy[size_t(n * out + o)] * W[size_t(o * in + i)];
      EXPECT_EQ(dx[size_t(n * in + i)], s);
    }
  // dW[out,in] = dyᵀ·x
  const auto dW = lt_product(dy, x, out, in, N, Trans::Yes, Trans::No, out, in, in);
  for (i64 o = 0; o < out; ++o)
    for (i64 i = 0; i < in; ++i) {
      double s = 0;
      for (i64 n = 0; n < N; ++n) s += dy[size_t(n * out + o)] * x[size_t(n * in + i)];
      EXPECT_EQ(dW[size_t(o * in + i)], s);
    }
}

// Every transpose pair with padded leading dimensions (strided sub-matrices) and non-square shapes.
TEST(LtLayout, AllTransposesStrided) {
  std::mt19937_64 gen(11);
  std::uniform_int_distribution<int> u(-4, 4);
  for (Trans ta : {Trans::No, Trans::Yes})
    for (Trans tb : {Trans::No, Trans::Yes})
      for (i64 M : {1, 2, 5})
        for (i64 N : {1, 3, 7})
          for (i64 K : {1, 4, 6}) {
            const i64 a_rows = ta == Trans::Yes ? K : M, a_cols = ta == Trans::Yes ? M : K;
            const i64 b_rows = tb == Trans::Yes ? N : K, b_cols = tb == Trans::Yes ? K : N;
            const i64 lda = a_cols + 2, ldb = b_cols + 1, ldc = N + 3;
            std::vector<double> A(size_t(a_rows * lda)), B(size_t(b_rows * ldb));
            for (auto& e : A) e = u(gen);
            for (auto& e : B) e = u(gen);
            std::vector<double> ref(size_t(M * ldc), -7.0);
            rm_reference(ref, A, B, M, N, K, ta, tb, lda, ldb, ldc);
            EXPECT_EQ(lt_product(A, B, M, N, K, ta, tb, lda, ldb, ldc), ref)
                << "ta " << int(ta) << " tb " << int(tb) << " M " << M << " N " << N << " K " << K;
          }
}

}  // namespace
}  // namespace moe
