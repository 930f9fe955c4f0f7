// Extreme inputs: every finite input gives finite codes, values and variances or a clear
// std::domain_error, and BHQ stays unbiased whatever the offsets of its rows.
#include <catch2/catch.hpp>
#include <cmath>
#include <fqt/quant.hpp>
#include <limits>
#include <stdexcept>

#include "support/quant_support.hpp"

using fqt::Grid;
using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

namespace {

using fqt_test::for_each_quantizer;

// The message of a domain error names the quantizer (or, for Quantized::dequantize, the transform).
template <class Q>
void require_named(const Q& q, const std::domain_error& e) {
  const std::string what = e.what();
  INFO(what);
  REQUIRE((what.find(q.name()) == 0 || what.find("BlockHouseholderTransform::") == 0));
}

// Either every output of q at x is finite and well formed, or q throws std::domain_error.
template <class Q, class Scalar>
void finite_or_domain_error(const Q& q, const Matrix<Scalar>& x) {
  try {
    const auto r = q.quantize(x, Philox(5, 1));
    REQUIRE(r.codes.template cast<int>().maxCoeff() <= (1 << q.bits()) - 1);
    const Matrix<Scalar> values = r.dequantize();
    REQUIRE(values.allFinite());
    const Matrix<Scalar> fake = q(x, Philox(5, 1));
    REQUIRE(fake == values);
  } catch (const std::domain_error& e) {
    require_named(q, e);
  }
  try {
    const auto v = q.expected_variance(x);
    REQUIRE(std::isfinite(v));
    REQUIRE(v >= 0);
  } catch (const std::domain_error& e) {
    require_named(q, e);
  }
}

// The largest step of BHQ's noise in the original domain: Δ_r / s_r over the transformed rows.
template <class Scalar>
double original_step(const fqt::BlockHouseholderQuantizer<Scalar>& q, const Matrix<Scalar>& x) {
  const auto r = q.quantize(x, Philox(0));
  if (!r.transform) return static_cast<double>(r.scale.maxCoeff());
  return (r.scale.template cast<double>().array() /
          r.transform->block_householder()->row_scale().template cast<double>().array())
      .maxCoeff();
}

}  // namespace

TEMPLATE_TEST_CASE("values at the ends of the floating-point range never come back infinite",
                   "[quant][robustness]", float, double) {
  using Limits = std::numeric_limits<TestType>;
  const TestType big = Limits::max();
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned);
  for (int bits = 1; bits <= 8; ++bits) {
    CAPTURE(bits, grid == Grid::Free);
    for (const TestType lo : {TestType(0), -big, -big / 2, big / 4}) {
      for (const TestType hi : {big, big / 2, TestType(1), -big / 8}) {
        if (hi < lo || !std::isfinite(hi - lo)) continue;
        Matrix<TestType> x(4, 3);
        x << lo, hi, lo, hi, lo, hi, lo, lo, hi, hi, hi, lo;
        CAPTURE(lo, hi);
        for_each_quantizer<TestType>(bits, grid, [&](const auto& q) {
          INFO(q.name());
          finite_or_domain_error(q, x);
        });
      }
    }
  }
}

TEST_CASE("a range next to FLT_MAX throws a domain_error naming it instead of dequantizing to inf",
          "[quant][robustness]") {
  Matrix<float> x(1, 3);
  x << 0, 1, std::numeric_limits<float>::max();
  for (const int bits : {5, 7}) {
    const fqt::PerTensorQuantizer<float> q(bits, Grid::Free);
    REQUIRE_THROWS_AS(q.quantize(x, Philox(1)), std::domain_error);
    REQUIRE_THROWS_WITH(q.quantize(x, Philox(1)),
                        Catch::Matchers::StartsWith("PerTensorQuantizer: the range [0, ") &&
                            Catch::Matchers::Contains("grid overflow"));
  }
}

TEST_CASE("expected_variance in double is exact at huge steps: 0 on the grid, an error above",
          "[quant][robustness]") {
  // Δ = 2e300/15: Δ² overflows a double, but both values are on the grid (probability 0).
  Matrix<double> x(1, 2);
  x << -1e300, 1e300;
  const fqt::PerSampleQuantizer<double> q(4, Grid::Free);
  CHECK(q.expected_variance(x) == 0);
  CHECK(q.element_variance(x).sum() == 0);
  Matrix<double> y(1, 3);
  y << -1e300, 0.3e300, 1e300;
  CHECK_THROWS_AS(q.expected_variance(y), std::domain_error);
  CHECK_THROWS_WITH(q.expected_variance(y),
                    Catch::Matchers::StartsWith("PerSampleQuantizer: the variance (inf) exceeds"));
  CHECK_THROWS_AS(q.element_variance(y), std::domain_error);
  CHECK_THROWS_AS(q.variance_bound(y), std::domain_error);
  // In float the variance is accumulated in double but returned as a float.
  Matrix<float> z(1, 3);
  z << -1e38f, 0.3e38f, 1e38f;
  CHECK_THROWS_AS(fqt::PerTensorQuantizer<float>(4).expected_variance(z), std::domain_error);
}

TEMPLATE_TEST_CASE("the zero-aligned grid keeps 0 exact at extreme ratios of min and max",
                   "[quant][robustness]", float, double) {
  using Limits = std::numeric_limits<TestType>;
  // [−0.7, 0, 7e-10] and [−0.7, 0, 0.7·ε/8]: the positive part far below one bin, so that B·k*
  // rounds to B; B·(−min) overflowing; both.
  const TestType eps = Limits::epsilon();
  const TestType cases[][3] = {{TestType(-0.7), 0, TestType(7e-10)},
                               {TestType(-0.7), 0, TestType(0.7) * eps / 8},
                               {-Limits::max() / 2, 0, 1},
                               {-1, 0, Limits::max() / 4},
                               {-Limits::max() / 4, 0, TestType(1e-30)},
                               // Ranges so narrow that the step underflows.
                               {-Limits::denorm_min(), 0, 0},
                               {-Limits::denorm_min(), 0, Limits::denorm_min()},
                               {-Limits::min() / 2, 0, Limits::denorm_min()}};
  for (int bits = 2; bits <= 8; ++bits) {
    for (const auto& c : cases) {
      Matrix<TestType> x(2, 3);
      x << c[0], c[1], c[2], c[2], c[1], c[0];
      CAPTURE(bits, c[0], c[2]);
      auto each = [&](const auto& q) {
        INFO(q.name());
        const Matrix<TestType> values = q.quantize(x, Philox(2)).dequantize();
        REQUIRE(values.allFinite());
        CHECK(values(0, 1) == 0);
        CHECK(values(1, 1) == 0);
      };
      each(fqt::PerTensorQuantizer<TestType>(bits, Grid::ZeroAligned));
      each(fqt::PerSampleQuantizer<TestType>(bits, Grid::ZeroAligned));
      each(fqt::PerColumnQuantizer<TestType>(bits, Grid::ZeroAligned));
    }
  }
}

TEST_CASE("BHQ in double handles row ranges whose sum or scaled values pass DBL_MAX",
          "[quant][robustness][bhq]") {
  const double big = std::numeric_limits<double>::max();
  SECTION("ranges summing past DBL_MAX") {
    Matrix<double> x(6, 5);
    for (Index i = 0; i < 6; ++i)
      for (Index j = 0; j < 5; ++j) x(i, j) = (j % 2 ? 1 : -1) * big / (4 + i);
    const fqt::BlockHouseholderQuantizer<double> q(4);
    REQUIRE(q.transform_for(x));
    const Matrix<double> values = q(x, Philox(3));
    REQUIRE(values.allFinite());
  }
  SECTION("one range above DBL_MAX / N beside small rows") {
    Matrix<double> x = fqt_test::scaled_rows<double>(8, 6, {1}, 4);
    x.row(3) << -big / 3, big / 3, 0, 1, -1, big / 5;
    const fqt::BlockHouseholderQuantizer<double> q(4);
    const auto t = q.transform_for(x);
    REQUIRE(t);
    REQUIRE(t->member(0, 0) == 3);
    const auto r = q.quantize(x, Philox(3));
    REQUIRE(r.dequantize().allFinite());
    REQUIRE(r.dequantize() == q(x, Philox(3)));
  }
}

TEMPLATE_TEST_CASE("BHQ takes every finite input that PSQ takes", "[quant][robustness][bhq]", float,
                   double) {
  using Limits = std::numeric_limits<TestType>;
  // Rows near the top of the range: PSQ quantizes them; BHQ's scaled, mixed rows must not
  // overflow — neither rows of comparable ranges mixed in pairs, nor nearly constant small rows
  // that BHQ scales up by a large factor.
  Matrix<TestType> x = fqt_test::scaled_rows<TestType>(12, 40, {1, 0.9, 0.8, 0.3}, 8);
  x *= (Limits::max() / TestType(2.2)) / x.cwiseAbs().maxCoeff();
  x.row(5).setConstant(Limits::max() / 100);
  x.row(6).setConstant(-Limits::max() / 50);
  const fqt::PerSampleQuantizer<TestType> psq(4);
  const fqt::BlockHouseholderQuantizer<TestType> bhq(4);
  REQUIRE(psq(x, Philox(1)).allFinite());
  const auto r = bhq.quantize(x, Philox(1));
  REQUIRE(r.transform);
  const Matrix<TestType> values = r.dequantize();
  REQUIRE(values.allFinite());
  REQUIRE(bhq(x, Philox(1)) == values);
  // The noise is the one of the same input at unit scale, scaled (the transform is scale-free).
  REQUIRE(std::isfinite(bhq.expected_variance(x / (Limits::max() / 4))));
}

TEST_CASE("BHQ in float is unbiased when rows with large offsets share a group with a head",
          "[quant][robustness][bhq][statistical]") {
  // A head row ~N(0, 1) and eight constant rows at C: the transformed rows must not carry C's
  // float rounding into the head row (which biased it by 0.02 at C = 100 and 13 at C = 1e5).
  const double offset = GENERATE(1e2, 1e3, 1e5);
  CAPTURE(offset);
  Matrix<float> x(9, 64);
  x.row(0) = fqt_test::scaled_rows<float>(1, 64, {1}, 2);
  x.bottomRows(8).setConstant(static_cast<float>(offset));
  const fqt::BlockHouseholderQuantizer<float> q(8, Grid::Free);
  const auto t = q.transform_for(x);
  REQUIRE(t);
  REQUIRE(t->group_size(0) == 9);
  const auto m = fqt_test::moments(q, x, 2000, 17);
  const Matrix<double> variance = q.element_variance(x);
  REQUIRE_THAT(variance.sum(),
               Catch::Matchers::WithinRel(static_cast<double>(q.expected_variance(x)), 1e-6));
  fqt_test::require_unbiased(m, variance, x, original_step(q, x));
  // And the exact variance is the Monte-Carlo one.
  REQUIRE(std::abs(m.mse - variance.sum()) <= 6 * m.mse_se);
}

TEMPLATE_TEST_CASE("the variances of a deterministic quantizer reject NaN and Inf too",
                   "[quant][robustness]", float, double) {
  for (const TestType bad :
       {std::numeric_limits<TestType>::quiet_NaN(), std::numeric_limits<TestType>::infinity()}) {
    Matrix<TestType> x = Matrix<TestType>::Ones(3, 4);
    x(1, 2) = bad;
    auto each = [&](const auto& q) {
      INFO(q.name());
      CHECK_THROWS_AS(q.expected_variance(x), std::domain_error);
      CHECK_THROWS_AS(q.element_variance(x), std::domain_error);
      CHECK_THROWS_AS(q.variance_bound(x), std::domain_error);
    };
    each(fqt::PerTensorQuantizer<TestType, fqt::Nearest>(4));
    each(fqt::PerSampleQuantizer<TestType, fqt::Nearest>(4));
    each(fqt::PerColumnQuantizer<TestType, fqt::Nearest>(4));
    each(fqt::BlockHouseholderQuantizer<TestType, fqt::Nearest>(4));
  }
}
