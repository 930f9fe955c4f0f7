// The Hadamard quantizer (quant/hadamard.hpp) and its transform (quant/transform.hpp).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <fqt/quant.hpp>
#include <fqt/stats/variance.hpp>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/quant_support.hpp"

using fqt::Grid;
using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

namespace {

// The Sylvester–Hadamard matrix H_m (entries ±1), built by its recursion, for the dense reference.
Matrix<double> sylvester(Index m) {
  Matrix<double> h = Matrix<double>::Ones(1, 1);
  while (h.rows() < m) {
    const Index k = h.rows();
    Matrix<double> next(2 * k, 2 * k);
    next << h, h, h, -h;
    h = next;
  }
  return h;
}

// The block sizes the transform should pick for N rows and block size b: full blocks, then the
// largest powers of two that fit.
std::vector<Index> expected_blocks(Index n, Index b) {
  std::vector<Index> sizes;
  for (; n >= b; n -= b) sizes.push_back(b);
  for (Index m = b / 2; m >= 1; m /= 2) {
    if (n >= m) sizes.push_back(m), n -= m;
  }
  return sizes;
}

// A Hadamard quantizer whose signs are held fixed: each draw's only randomness is its rounding
// noise, as for the other quantizers, so the Monte-Carlo helpers measure the conditional moments.
template <class Q>
struct FixedSigns {
  const Q& q;
  typename Q::Transform t;
  void fake_quantize(const fqt::MatrixCRef<typename Q::scalar_type>& x, const Philox& rng,
                     fqt::MatrixRef<typename Q::scalar_type> out) const {
    q.fake_quantize(x, t, rng, out);
  }
};

// The largest step of the noise in the original domain: a transformed row's step Δ_r reaches an
// element through m entries of size 1/√m, so at most √m·max Δ_r.
template <class Q, class Scalar>
double largest_noise_step(const Q& q, const Matrix<Scalar>& x, const typename Q::Transform& t) {
  fqt::Quantized<Scalar, std::uint8_t> r;
  q.quantize(x, t, Philox(0), r);
  return std::sqrt(static_cast<double>(q.block_size())) * static_cast<double>(r.scale.maxCoeff());
}

// Rows with one spike of ±10 each, in a column that differs between rows (outliers that are not
// aligned across samples), on a small dense background.
template <class Scalar>
Matrix<Scalar> spiky(Index rows, Index cols, std::uint64_t seed) {
  Matrix<Scalar> x = fqt_test::scaled_rows<Scalar>(rows, cols, {0.05}, seed);
  const Philox rng(seed, 31);
  for (Index i = 0; i < rows; ++i) {
    const auto k = static_cast<std::uint64_t>(i);
    const Index j = static_cast<Index>(rng.uniform(k) * static_cast<double>(cols)) % cols;
    x(i, j) = static_cast<Scalar>(rng.uniform(k + 1000) < 0.5 ? -10 : 10);
  }
  return x;
}

}  // namespace

TEST_CASE("the Hadamard transform is blockdiag(H_m diag(signs))/sqrt(m) and orthogonal",
          "[quant][hadamard]") {
  const Index b = GENERATE(1, 2, 4, 8, 16, 32);
  const Index n = GENERATE(1, 2, 3, 5, 16, 17, 31, 40, 64, 100);
  CAPTURE(b, n);
  const fqt::HadamardQuantizer<double> q(4, Grid::ZeroAligned, b);
  const auto t = q.transform_for(n, Philox(3, 9));
  REQUIRE(t.rows() == n);
  REQUIRE(t.block_size() == b);
  const std::vector<Index> sizes = expected_blocks(n, b);
  REQUIRE(t.blocks() == static_cast<Index>(sizes.size()));
  Matrix<double> reference = Matrix<double>::Zero(n, n);
  Index start = 0;
  for (Index g = 0; g < t.blocks(); ++g) {
    const Index m = sizes[static_cast<std::size_t>(g)];
    REQUIRE(t.block_start(g) == start);
    REQUIRE(t.block_rows(g) == m);
    Eigen::VectorXd signs = t.signs().segment(start, m);
    if (m == 1) signs.setOnes();  // a block of one row is the identity
    reference.block(start, start, m, m) =
        sylvester(m) * signs.asDiagonal() / std::sqrt(static_cast<double>(m));
    start += m;
  }
  Matrix<double> dense = Matrix<double>::Identity(n, n);
  t.apply(dense);  // T·I
  REQUIRE((dense - reference).cwiseAbs().maxCoeff() < 1e-15);
  REQUIRE((dense * dense.transpose() - Matrix<double>::Identity(n, n)).cwiseAbs().maxCoeff() <
          1e-14);
  // T⁻¹ is Tᵀ, applied implicitly.
  Matrix<double> inverse = Matrix<double>::Identity(n, n);
  t.apply_inverse(inverse);
  REQUIRE((inverse - reference.transpose()).cwiseAbs().maxCoeff() < 1e-15);
  REQUIRE(t.row_offset() == Eigen::VectorXd::Zero(n));
  REQUIRE(t.inverse_column_norms() == Eigen::VectorXd::Ones(n));
  // And on a wide matrix (several strips of columns): T·x is the dense product, T⁻¹T·x = x.
  const Matrix<double> x = fqt_test::heavy_tailed<double>(n, 1000, 4);
  Matrix<double> tx = x;
  t.apply(tx);
  REQUIRE((tx - reference * x).cwiseAbs().maxCoeff() <= 1e-13 * x.cwiseAbs().maxCoeff());
  t.apply_inverse(tx);
  REQUIRE((tx - x).cwiseAbs().maxCoeff() <= 1e-13 * x.cwiseAbs().maxCoeff());
}

TEST_CASE("the signs are a pure function of seed and stream", "[quant][hadamard]") {
  const fqt::HadamardQuantizer<float> q(4);
  const Index n = 300;  // three blocks of 128 signs
  const auto a = q.transform_for(n, Philox(5, 1));
  CHECK(a.signs() == q.transform_for(n, Philox(5, 1)).signs());
  CHECK(a.signs() != q.transform_for(n, Philox(5, 2)).signs());
  CHECK(a.signs() != q.transform_for(n, Philox(6, 1)).signs());
  // A prefix of rows gets the same signs (row i's sign depends on i only).
  CHECK(q.transform_for(100, Philox(5, 1)).signs() == a.signs().head(100));
  // Both signs occur about equally often.
  const double plus = (a.signs().array() > 0).cast<double>().sum();
  CHECK(std::abs(plus - n / 2.0) < 6 * std::sqrt(n / 4.0));
}

TEMPLATE_TEST_CASE("Hadamard codes are PSQ codes of the transformed matrix, bit for bit",
                   "[quant][hadamard]", float, double) {
  const Index n = GENERATE(16, 23, 64);
  const Index b = GENERATE(4, 16);
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned);
  CAPTURE(n, b);
  const Matrix<TestType> x = fqt_test::sparse<TestType>(n, 200, 0.3, 21);
  const fqt::HadamardQuantizer<TestType> q(4, grid, b);
  const Philox rng(3, 1);
  const auto r = q.quantize(x, rng);
  REQUIRE(r.transform);
  REQUIRE(r.transform->hadamard());
  REQUIRE_FALSE(r.transform->block_householder());
  REQUIRE(r.granularity == fqt::Granularity::PerRow);
  Matrix<TestType> tx = x;
  r.transform->apply(tx);
  const auto p = fqt::PerSampleQuantizer<TestType>(4, grid).quantize(tx, rng);
  REQUIRE(r.codes == p.codes);
  REQUIRE(r.scale == p.scale);
  REQUIRE(r.zero_point == p.zero_point);
  REQUIRE(r.transform->hadamard()->signs() == q.transform_for(n, rng).signs());
  // The fused fake quantization is the dequantized codes, bit for bit.
  REQUIRE(q(x, rng) == r.dequantize());
  // Quantizing into a used Quantized (another shape, another transform) gives the same result.
  auto reused = fqt::BlockHouseholderQuantizer<TestType>(4).quantize(x.topRows(7), rng);
  q.quantize(x, rng, reused);
  REQUIRE(reused.codes == r.codes);
  REQUIRE(reused.transform->hadamard());
  REQUIRE(reused.dequantize() == r.dequantize());
}

TEST_CASE("Hadamard codes do not depend on the thread count", "[quant][hadamard]") {
  const Matrix<float> x = fqt_test::sparse<float>(100, 300, 0.4, 5);
  const fqt::HadamardQuantizer<float> q(4);
  const int before = fqt::num_threads();
  fqt::set_num_threads(1);
  const auto one = q.quantize(x, Philox(8, 2));
  const Matrix<float> fake_one = q(x, Philox(8, 2));
  fqt::set_num_threads(2);
  const auto two = q.quantize(x, Philox(8, 2));
  const Matrix<float> fake_two = q(x, Philox(8, 2));
  fqt::set_num_threads(before);
  CHECK(one.codes == two.codes);
  CHECK(one.scale == two.scale);
  CHECK(fake_one == fake_two);
  // Another stream gives other signs, so other codes.
  CHECK(q.quantize(x, Philox(8, 3)).codes != one.codes);
}

TEMPLATE_TEST_CASE("given its signs, the Hadamard quantizer is unbiased with the exact variance",
                   "[quant][hadamard][statistical]", float, double) {
  const int bits = GENERATE(1, 2, 4, 8);
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned, Grid::Auto);
  CAPTURE(bits, grid == Grid::Free);
  // 23 rows: blocks of 8, 8, 4, 2 and a single row.
  const Matrix<TestType> x = fqt_test::sparse<TestType>(23, 40, 0.25, 17);
  const fqt::HadamardQuantizer<TestType> q(bits, grid, 8);
  const FixedSigns<fqt::HadamardQuantizer<TestType>> fixed{q, q.transform_for(x.rows(), Philox(4))};
  const Matrix<double> variance = q.element_variance(x, fixed.t);
  const double exact = static_cast<double>(q.expected_variance(x, fixed.t));
  REQUIRE_THAT(variance.sum(), Catch::Matchers::WithinRel(exact, 1e-6));
  REQUIRE(exact <= static_cast<double>(q.variance_bound(x, fixed.t)) * (1 + 1e-6));
  const auto m = fqt_test::moments(fixed, x, 2000, 100 + static_cast<std::uint64_t>(bits));
  fqt_test::require_unbiased(m, variance, x, largest_noise_step(q, x, fixed.t));
  INFO("exact " << exact << " Monte-Carlo " << m.mse << " +- " << m.mse_se);
  REQUIRE(std::abs(m.mse - exact) <= 6 * m.mse_se + 1e-9 * exact);
}

TEST_CASE(
    "over streams (signs and noise) the Hadamard quantizer is unbiased, and its variance is "
    "the mean of the exact variances of the streams' signs",
    "[quant][hadamard][statistical]") {
  const Matrix<double> x = fqt_test::heavy_tailed<double>(20, 48, 3);
  const fqt::HadamardQuantizer<double> q(3, Grid::Free, 8);
  constexpr int kDraws = 2000;
  Matrix<double> mean = Matrix<double>::Zero(x.rows(), x.cols());
  Matrix<double> element = Matrix<double>::Zero(x.rows(), x.cols());
  double s1 = 0, s2 = 0, spread_lo = std::numeric_limits<double>::infinity(), spread_hi = 0;
  Matrix<double> out(x.rows(), x.cols());
  for (int k = 0; k < kDraws; ++k) {
    const Philox rng(77, static_cast<std::uint64_t>(k));
    q.fake_quantize(x, rng, out);
    const Matrix<double> e = out - x;
    mean += e;
    element += q.element_variance(x, rng);
    // ‖e‖² − V(signs of this stream) has mean 0 exactly: E[‖e‖² | signs] = V(signs).
    const double v = q.expected_variance(x, rng);
    const double d = e.squaredNorm() - v;
    s1 += d;
    s2 += d * d;
    spread_lo = std::min(spread_lo, v);
    spread_hi = std::max(spread_hi, v);
  }
  mean /= kDraws;
  element /= kDraws;  // E over the signs of the per-element variance: the variance of each draw
  fqt_test::Moments m;
  m.mean = mean;
  m.draws = kDraws;
  double step = 0;
  for (int k = 0; k < 10; ++k) {
    const Philox rng(77, static_cast<std::uint64_t>(k));
    step = std::max(step, largest_noise_step(q, x, q.transform_for(x.rows(), rng)));
  }
  fqt_test::require_unbiased(m, element, x, 2 * step);
  const double d_mean = s1 / kDraws;
  const double d_se = std::sqrt((s2 / kDraws - d_mean * d_mean) / (kDraws - 1.0));
  CAPTURE(d_mean, d_se, spread_lo, spread_hi);
  CHECK(std::abs(d_mean) <= 6 * d_se);
  // The signs do change the variance (the test above would not see a quantizer that ignored
  // them), but not by much on this input.
  CHECK(spread_hi > spread_lo);
  CHECK(spread_hi < 2 * spread_lo);
}

TEST_CASE("the one-argument variances are those of the default stream's signs",
          "[quant][hadamard]") {
  const Matrix<float> x = fqt_test::sparse<float>(30, 50, 0.2, 6);
  const fqt::HadamardQuantizer<float> q(4);
  const auto t = q.transform_for(x.rows(), Philox());
  CHECK(q.expected_variance(x) == q.expected_variance(x, t));
  CHECK(q.expected_variance(x, Philox()) == q.expected_variance(x, t));
  CHECK(q.element_variance(x) == q.element_variance(x, t));
  CHECK(q.variance_bound(x) == q.variance_bound(x, t));
  CHECK(q.expected_variance(x, Philox(1)) != q.expected_variance(x));
  // Exactly PSQ's variance (and bound) of the transformed matrix: T is orthogonal.
  Matrix<float> tx = x;
  t.apply(tx);
  const fqt::PerSampleQuantizer<float> psq(4);
  CHECK(q.expected_variance(x) == psq.expected_variance(tx));
  CHECK_THAT(static_cast<double>(q.variance_bound(x)),
             Catch::Matchers::WithinRel(static_cast<double>(psq.variance_bound(tx)), 1e-6));
  // On the paper's grid, it is the general-transform bound of the digest (§2.3) with T.
  const fqt::HadamardQuantizer<float> free(4, Grid::Free);
  CHECK_THAT(static_cast<double>(free.variance_bound(x)),
             Catch::Matchers::WithinRel(fqt::stats::transform_bound(x, 4, t), 1e-5));
}

TEST_CASE("block size 1, and a single row, are PSQ", "[quant][hadamard]") {
  const Matrix<float> x = fqt_test::sparse<float>(9, 70, 0.3, 2);
  const fqt::PerSampleQuantizer<float> psq(4);
  const fqt::HadamardQuantizer<float> one(4, Grid::ZeroAligned, 1);
  CHECK(one.quantize(x, Philox(2)).codes == psq.quantize(x, Philox(2)).codes);
  CHECK(one(x, Philox(2)) == psq(x, Philox(2)));
  CHECK(one.expected_variance(x) == psq.expected_variance(x));
  const fqt::HadamardQuantizer<float> q(4);
  const Matrix<float> row = x.topRows(1);
  CHECK(q(row, Philox(2)) == psq(row, Philox(2)));
}

TEST_CASE("Hadamard mixing lowers the variance when outliers are not aligned across samples",
          "[quant][hadamard]") {
  // Every row's range is set by its own spike (about 10); mixed over 16 rows, each transformed row
  // has 16 spikes of ±10/4, so its range is about 5: a quarter of the squared step. The variance
  // falls less (about half here): PSQ's background sits close to one grid point, where stochastic
  // rounding costs little.
  const Matrix<double> x = spiky<double>(64, 256, 8);
  for (Grid grid : {Grid::Free, Grid::ZeroAligned}) {
    const double psq = fqt::PerSampleQuantizer<double>(4, grid).expected_variance(x);
    const double had = fqt::HadamardQuantizer<double>(4, grid, 16).expected_variance(x);
    INFO("PSQ " << psq << " Hadamard " << had);
    CHECK(had < 0.7 * psq);
  }
}

TEST_CASE("Hadamard: the nearest quantizer has no variance, exact zeros of T.x stay exact",
          "[quant][hadamard]") {
  const Matrix<float> x = fqt_test::sparse<float>(12, 30, 0.2, 3);
  const fqt::HadamardQuantizer<float, fqt::Nearest> nearest(4);
  CHECK(nearest.expected_variance(x) == 0);
  CHECK(nearest.element_variance(x) == Matrix<double>::Zero(12, 30));
  // Deterministic: the signs are the default stream's whatever the call's stream.
  CHECK(nearest(x, Philox(1)) == nearest(x, Philox(2)));
  CHECK(nearest.transform_for(12, Philox(5)).signs() ==
        fqt::HadamardQuantizer<float>(4).transform_for(12, Philox()).signs());
  // A zero matrix quantizes to exactly zero; so does a constant one (constant transformed rows).
  const Matrix<float> zero = Matrix<float>::Zero(12, 30);
  CHECK(fqt::HadamardQuantizer<float>(3)(zero, Philox(1)) == zero);
  CHECK(fqt::HadamardQuantizer<float>(3).expected_variance(zero) == 0);
}

TEST_CASE("Hadamard: bad input throws clear exceptions", "[quant][hadamard][errors]") {
  using Q = fqt::HadamardQuantizer<float>;
  SECTION("bits and block sizes") {
    CHECK_THROWS_WITH(Q(0), "HadamardQuantizer: bits must be in [1, 8], got 0");
    CHECK_THROWS_AS(Q(9), std::invalid_argument);
    CHECK_NOTHROW(fqt::HadamardQuantizer<float, fqt::Stochastic, std::uint16_t>(16));
    for (Index bad : {Index{0}, Index{-4}, Index{3}, Index{12}, Index{1} << 17}) {
      CAPTURE(bad);
      CHECK_THROWS_WITH(Q(4, Grid::Free, bad),
                        "HadamardQuantizer: block_size must be a power of two in [1, 65536], got " +
                            std::to_string(bad));
    }
    CHECK(Q(4, Grid::Free, 65536).block_size() == 65536);
    CHECK(Q(4).block_size() == Q::kDefaultBlockSize);
    CHECK_THROWS_AS(fqt::HadamardTransform<float>(6, Eigen::VectorXf::Ones(4)),
                    std::invalid_argument);
    CHECK_THROWS_AS(fqt::HadamardTransform<float>(4, Eigen::VectorXf::Constant(4, 0.5f)),
                    std::invalid_argument);
  }
  SECTION("NaN and infinities name the quantizer and the position") {
    Matrix<float> x = Matrix<float>::Ones(20, 6);
    for (const float bad :
         {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
      x(13, 4) = bad;
      const Q q(4);
      const auto message = Catch::Contains("HadamardQuantizer: input element (13, 4) is");
      CHECK_THROWS_WITH(q.quantize(x, Philox(1)), message);
      CHECK_THROWS_WITH(q(x, Philox(1)), message);
      CHECK_THROWS_WITH(q.expected_variance(x), message);
      CHECK_THROWS_WITH(q.element_variance(x), message);
      CHECK_THROWS_WITH(q.variance_bound(x), message);
      CHECK_THROWS_AS(q.quantize(x, Philox(1)), std::domain_error);
      const fqt::HadamardQuantizer<float, fqt::Nearest> nearest(4);
      CHECK_THROWS_WITH(nearest.expected_variance(x), message);
    }
  }
  SECTION("values whose transform overflows") {
    // With every sign +1, the first transformed row is (Σ x_i)/2 = 2·FLT_MAX/1.5.
    Matrix<float> x = Matrix<float>::Zero(4, 3);
    x.col(0).setConstant(std::numeric_limits<float>::max() / 1.5f);
    const Q q(4);
    const fqt::HadamardTransform<float> plus(16, Eigen::VectorXf::Ones(4));
    fqt::Quantized<float, std::uint8_t> r;
    CHECK_THROWS_WITH(q.quantize(x, plus, Philox(1), r),
                      Catch::StartsWith("HadamardQuantizer: the transformed rows [0, 4) overflow"));
    CHECK_THROWS_AS(q.expected_variance(x, plus), std::domain_error);
    Matrix<float> out(4, 3);
    CHECK_THROWS_AS(q.fake_quantize(x, plus, Philox(1), out), std::domain_error);
  }
  SECTION("shapes") {
    const Matrix<float> x = Matrix<float>::Ones(8, 6);
    const Q q(4);
    Matrix<float> out(8, 5);
    CHECK_THROWS_WITH(q.fake_quantize(x, Philox(1), out),
                      Catch::Contains("8x5") && Catch::Contains("8x6"));
    CHECK_THROWS_WITH(q.expected_variance(x, q.transform_for(7, Philox(1))),
                      "HadamardQuantizer: ::expected_variance: the transform acts on 7 rows, the "
                      "input has 8");
    fqt::Quantized<float, std::uint8_t> r;
    CHECK_THROWS_AS(q.quantize(x, q.transform_for(9, Philox(1)), Philox(1), r),
                    std::invalid_argument);
    CHECK_THROWS_AS(q.transform_for(-1, Philox(1)), std::invalid_argument);
  }
  SECTION("an empty matrix gives an empty result") {
    const Q q(4);
    CHECK(q.quantize(Matrix<float>(0, 5), Philox(1)).codes.size() == 0);
    CHECK(q(Matrix<float>(0, 5), Philox(1)).size() == 0);
    CHECK(q(Matrix<float>(3, 0), Philox(1)).rows() == 3);
    CHECK(q.expected_variance(Matrix<float>(0, 5)) == 0);
    CHECK(q.expected_variance(Matrix<float>(5, 0)) == 0);
    CHECK(q.element_variance(Matrix<float>(5, 0)).size() == 0);
  }
}
