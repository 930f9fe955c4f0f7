// PTQ, PSQ and the per-column quantizer (quant/affine.hpp, per_tensor.hpp, per_sample.hpp), and
// the properties every fqt quantizer shares, BHQ included.
#include <catch2/catch.hpp>
#include <fqt/quant.hpp>
#include <limits>

#include "support/quant_support.hpp"

using fqt::Grid;
using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

namespace {

template <class Scalar>
using Quantizers =
    std::tuple<fqt::PerTensorQuantizer<Scalar>, fqt::PerSampleQuantizer<Scalar>,
               fqt::PerColumnQuantizer<Scalar>, fqt::BlockHouseholderQuantizer<Scalar>>;

using fqt_test::for_each_quantizer;

template <class Q, class Scalar>
double largest_step(const Q& q, const Matrix<Scalar>& x) {
  return static_cast<double>(q.quantize(x, Philox(0)).scale.maxCoeff());
}

}  // namespace

TEMPLATE_TEST_CASE("codes lie in [0, B] and dequantize within one step", "[quant]", float, double) {
  const int bits = GENERATE(1, 2, 4, 8);
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned);
  const Matrix<TestType> x = fqt_test::sparse<TestType>(9, 37, 0.3, 5);
  for_each_quantizer<TestType>(bits, grid, [&](const auto& q) {
    INFO(q.name() << " bits " << bits);
    const auto r = q.quantize(x, Philox(11, 3));
    REQUIRE(r.codes.rows() == x.rows());
    REQUIRE(r.codes.cols() == x.cols());
    REQUIRE(static_cast<int>(r.codes.maxCoeff()) <= (1 << bits) - 1);
    REQUIRE(r.bits == bits);
    const Matrix<TestType> v = r.dequantize();
    // Without a transform every element is within one step of its value.
    if (!r.transform) {
      for (Index i = 0; i < x.rows(); ++i)
        for (Index j = 0; j < x.cols(); ++j) {
          const TestType step =
              r.granularity == fqt::Granularity::PerTensor
                  ? r.scale(0)
                  : (r.granularity == fqt::Granularity::PerRow ? r.scale(i) : r.scale(j));
          REQUIRE(std::abs(v(i, j) - x(i, j)) <= step * TestType(1.0001));
        }
    }
    // The fake-quantized matrix is the dequantized codes.
    const Matrix<TestType> fake = q(x, Philox(11, 3));
    REQUIRE((fake - v).cwiseAbs().maxCoeff() <= 1e-5 * x.cwiseAbs().maxCoeff());
  });
}

TEMPLATE_TEST_CASE("stochastic rounding is unbiased for every quantizer and bit width",
                   "[quant][statistical]", float, double) {
  const int bits = GENERATE(range(1, 9));
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned, Grid::Paper, Grid::Auto);
  const Matrix<TestType> x = fqt_test::sparse<TestType>(7, 24, 0.25, 17);
  for_each_quantizer<TestType>(bits, grid, [&](const auto& q) {
    INFO(q.name() << " bits " << bits << " grid " << static_cast<int>(grid));
    const auto m = fqt_test::moments(q, x, 1500, 1000 + bits);
    fqt_test::require_unbiased(m, q.element_variance(x), x, largest_step(q, x));
    REQUIRE_THAT(q.element_variance(x).sum(),
                 Catch::Matchers::WithinRel(static_cast<double>(q.expected_variance(x)), 1e-6));
  });
}

TEMPLATE_TEST_CASE("Monte-Carlo variance matches the exact variance, under the bound",
                   "[quant][statistical]", float, double) {
  const int bits = GENERATE(2, 4, 8);
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned, Grid::Paper, Grid::Auto);
  const Matrix<TestType> x = fqt_test::sparse<TestType>(12, 40, 0.2, 23);
  for_each_quantizer<TestType>(bits, grid, [&](const auto& q) {
    INFO(q.name() << " bits " << bits);
    const double exact = static_cast<double>(q.expected_variance(x));
    const auto m = fqt_test::moments(q, x, 3000, 77);
    INFO("exact " << exact << " Monte-Carlo " << m.mse << " ± " << m.mse_se);
    REQUIRE(std::abs(m.mse - exact) <= 6 * m.mse_se + 1e-9 * exact);
    REQUIRE(exact <= static_cast<double>(q.variance_bound(x)) * (1 + 1e-6));
  });
}

TEST_CASE("variance falls about 4x per extra bit", "[quant]") {
  // Dense rows of similar scale: fractional positions spread over the bins at every width.
  const Matrix<double> x = fqt_test::scaled_rows<double>(32, 256, {1.0, 2.0, 0.5}, 3);
  for_each_quantizer<double>(2, Grid::Free, [&](const auto& q2) {
    using Q = std::decay_t<decltype(q2)>;
    for (int bits = 3; bits <= 8; ++bits) {
      const double hi = Q(bits - 1, Grid::Free).expected_variance(x);
      const double lo = Q(bits, Grid::Free).expected_variance(x);
      // Steps shrink by (2^b − 1)/(2^(b−1) − 1) ∈ (2, 3]: the ratio is that squared, ≈ 4 for
      // large b; the fractional parts are spread, so f(1 − f) averages alike at both widths.
      const double step_ratio = ((1 << bits) - 1.0) / ((1 << (bits - 1)) - 1.0);
      INFO(q2.name() << " bits " << bits << " ratio " << hi / lo);
      REQUIRE(hi / lo > 0.8 * step_ratio * step_ratio);
      REQUIRE(hi / lo < 1.25 * step_ratio * step_ratio);
    }
  });
}

TEST_CASE("on heavy-tailed rows BHQ < PSQ < PTQ, as in the paper", "[quant]") {
  // The digest's numerical check: N = 16, D = 32, 4 bits, row scales 100, 30, 10, then 1.
  const Matrix<double> x = fqt_test::heavy_tailed<double>(16, 32, 2020);
  for (Grid grid : {Grid::Free, Grid::ZeroAligned}) {
    const double ptq = fqt::PerTensorQuantizer<double>(4, grid).expected_variance(x);
    const double psq = fqt::PerSampleQuantizer<double>(4, grid).expected_variance(x);
    const double bhq = fqt::BlockHouseholderQuantizer<double>(4, grid).expected_variance(x);
    INFO("PTQ " << ptq << " PSQ " << psq << " BHQ " << bhq);
    REQUIRE(bhq < psq);
    REQUIRE(psq < ptq);
    // BHQ saves more than two bits of PTQ here (the paper's example: about three).
    REQUIRE(ptq / bhq > 16);
  }
}

TEST_CASE("the zero-aligned grid keeps exact zeros and lowers variance on sparse gradients",
          "[quant]") {
  const Matrix<float> x = fqt_test::sparse<float>(16, 64, 0.6, 8);
  for (int bits : {2, 4, 8}) {
    const fqt::PerSampleQuantizer<float> aligned(bits, Grid::ZeroAligned);
    const fqt::PerSampleQuantizer<float> free(bits, Grid::Free);
    const Matrix<float> q = aligned(x, Philox(4));
    for (Index k = 0; k < x.size(); ++k)
      if (x.data()[k] == 0) REQUIRE(q.data()[k] == 0);
    INFO("bits " << bits);
    REQUIRE(aligned.expected_variance(x) < free.expected_variance(x));
    const fqt::BlockHouseholderQuantizer<float> bhq_aligned(bits, Grid::ZeroAligned);
    const fqt::PerTensorQuantizer<float> ptq_aligned(bits, Grid::ZeroAligned);
    const Matrix<float> p = ptq_aligned(x, Philox(4));
    for (Index k = 0; k < x.size(); ++k)
      if (x.data()[k] == 0) REQUIRE(p.data()[k] == 0);
    REQUIRE(ptq_aligned.expected_variance(x) <
            fqt::PerTensorQuantizer<float>(bits, Grid::Free).expected_variance(x));
  }
}

TEST_CASE("values on the grid are returned exactly", "[quant]") {
  // Integers 0..255 with range [0, 255] at 8 bits: step 1, every value a grid point.
  Matrix<float> x(4, 64);
  for (Index k = 0; k < x.size(); ++k) x.data()[k] = static_cast<float>((k * 37) % 256);
  x(0, 0) = 0;
  x(0, 1) = 255;
  const fqt::PerTensorQuantizer<float> q(8, Grid::Free);
  for (std::uint64_t s = 0; s < 20; ++s) REQUIRE(q(x, Philox(s)) == x);
  REQUIRE(q.expected_variance(x) == 0);
}

TEMPLATE_TEST_CASE("constant rows and tensors quantize exactly", "[quant]", float, double) {
  Matrix<TestType> x(5, 33);
  for (Index i = 0; i < 5; ++i) x.row(i).setConstant(static_cast<TestType>(i * 1.5 - 3.25));
  const TestType big = std::numeric_limits<TestType>::max() / 4;
  x.row(4).setConstant(big);
  for (Grid grid : {Grid::Free, Grid::ZeroAligned}) {
    const fqt::PerSampleQuantizer<TestType> psq(3, grid);
    REQUIRE(psq(x, Philox(1)) == x);
    REQUIRE(psq.expected_variance(x) == 0);
    const fqt::BlockHouseholderQuantizer<TestType> bhq(3, grid);
    REQUIRE(bhq(x, Philox(1)) == x);
    const Matrix<TestType> c = Matrix<TestType>::Constant(3, 7, TestType(-0.0));
    REQUIRE(fqt::PerTensorQuantizer<TestType>(1, grid)(c, Philox(2)) == c);
    const Matrix<TestType> xt = x.transpose();  // constant columns
    REQUIRE(fqt::PerColumnQuantizer<TestType>(2, grid)(xt, Philox(2)) == xt);
  }
}

TEST_CASE("subnormal ranges and a 1x1 matrix are handled", "[quant]") {
  Matrix<float> x(2, 3);
  x << 0, std::numeric_limits<float>::denorm_min(), 0, 1e-40f, -1e-40f, 0;
  const fqt::PerSampleQuantizer<float> q(8);
  const Matrix<float> y = q(x, Philox(3));
  REQUIRE(y.allFinite());
  REQUIRE((y - x).cwiseAbs().maxCoeff() <= 1e-39f);
  Matrix<float> one(1, 1);
  one << 2.5f;
  REQUIRE(fqt::BlockHouseholderQuantizer<float>(4)(one, Philox(1)) == one);
  REQUIRE(fqt::PerTensorQuantizer<float>(4)(one, Philox(1)) == one);
}

TEST_CASE("an empty matrix gives an empty result", "[quant]") {
  const Matrix<float> empty(0, 5);
  for_each_quantizer<float>(4, Grid::ZeroAligned, [&](const auto& q) {
    REQUIRE(q.quantize(empty, Philox(1)).codes.size() == 0);
    REQUIRE(q(empty, Philox(1)).size() == 0);
    REQUIRE(q.expected_variance(empty) == 0);
    REQUIRE(q(Matrix<float>(3, 0), Philox(1)).rows() == 3);
  });
}

TEST_CASE("bad input throws clear exceptions", "[quant][errors]") {
  SECTION("bit widths out of range") {
    REQUIRE_THROWS_WITH(fqt::PerSampleQuantizer<float>(0),
                        Catch::Contains("PerSampleQuantizer") && Catch::Contains("got 0"));
    REQUIRE_THROWS_AS(fqt::PerTensorQuantizer<float>(9), std::invalid_argument);
    REQUIRE_THROWS_WITH((fqt::PerTensorQuantizer<float, fqt::Stochastic, std::uint16_t>(17)),
                        Catch::Contains("[1, 16]") && Catch::Contains("17"));
    REQUIRE_NOTHROW(fqt::PerTensorQuantizer<float, fqt::Stochastic, std::uint16_t>(16));
    REQUIRE_THROWS_AS(fqt::BlockHouseholderQuantizer<float>(-3), std::invalid_argument);
    REQUIRE_THROWS_AS(fqt::PerColumnQuantizer<double>(100), std::invalid_argument);
  }
  SECTION("NaN and infinities name the position") {
    Matrix<float> x = Matrix<float>::Ones(4, 6);
    x(2, 3) = std::numeric_limits<float>::quiet_NaN();
    for_each_quantizer<float>(4, Grid::ZeroAligned, [&](const auto& q) {
      REQUIRE_THROWS_AS(q(x, Philox(1)), std::domain_error);
      REQUIRE_THROWS_WITH(q.quantize(x, Philox(1)), Catch::Contains("(2, 3)") &&
                                                        Catch::Contains("nan") &&
                                                        Catch::Contains(q.name()));
      REQUIRE_THROWS_AS(q.expected_variance(x), std::domain_error);
    });
    x(2, 3) = -std::numeric_limits<float>::infinity();
    for_each_quantizer<float>(4, Grid::Free, [&](const auto& q) {
      REQUIRE_THROWS_WITH(q(x, Philox(1)), Catch::Contains("(2, 3)") && Catch::Contains("inf"));
    });
    Matrix<float> huge(1, 2);
    huge << -3e38f, 3e38f;
    REQUIRE_THROWS_AS(fqt::PerTensorQuantizer<float>(4)(huge, Philox(1)), std::domain_error);
  }
  SECTION("mismatched output shapes") {
    const Matrix<float> x = Matrix<float>::Ones(4, 6);
    Matrix<float> out(4, 5);
    for_each_quantizer<float>(4, Grid::ZeroAligned, [&](const auto& q) {
      REQUIRE_THROWS_WITH(q.fake_quantize(x, Philox(1), out),
                          Catch::Contains("4x5") && Catch::Contains("4x6"));
    });
    const auto r = fqt::PerSampleQuantizer<float>(4).quantize(x, Philox(1));
    REQUIRE_THROWS_AS(r.dequantize(out), std::invalid_argument);
  }
}

TEST_CASE("16-bit codes work up to 16 bits", "[quant]") {
  const Matrix<double> x = fqt_test::heavy_tailed<double>(6, 50, 4);
  const fqt::PerSampleQuantizer<double, fqt::Stochastic, std::uint16_t> q(16);
  const auto r = q.quantize(x, Philox(2));
  REQUIRE(r.codes.maxCoeff() <= 65535);
  REQUIRE((r.dequantize() - x).cwiseAbs().maxCoeff() <= r.scale.maxCoeff());
  REQUIRE(q.expected_variance(x) < fqt::PerSampleQuantizer<double>(8).expected_variance(x) / 1e4);
}

TEST_CASE("the nearest quantizer is deterministic, half to even, and has no variance", "[quant]") {
  Matrix<float> x(1, 5);
  x << 0, 0.5f, 1.5f, 2.5f, 3;  // step 1 at 2 bits: 0.5 → 0, 1.5 → 2, 2.5 → 2
  const fqt::PerTensorQuantizer<float, fqt::Nearest> q(2, Grid::Free);
  Matrix<float> expected(1, 5);
  expected << 0, 0, 2, 2, 3;
  REQUIRE(q(x) == expected);
  REQUIRE(q(x, Philox(1)) == q(x, Philox(2)));
  REQUIRE(q.expected_variance(x) == 0);
}

TEST_CASE("inputs bind without a copy to maps, blocks and strided views", "[quant]") {
  std::vector<float> buffer(6 * 10);
  for (std::size_t k = 0; k < buffer.size(); ++k) buffer[k] = std::sin(static_cast<float>(k));
  const Eigen::Map<const Matrix<float>> map(buffer.data(), 6, 10);
  const fqt::PerSampleQuantizer<float> q(4);
  const Matrix<float> copy = map;
  REQUIRE(q(map, Philox(5)) == q(copy, Philox(5)));
  // A block of a wider matrix: same codes as the same values in a compact matrix (the noise is
  // keyed by the position in the quantized matrix, not in its parent).
  Matrix<float> wide = Matrix<float>::Zero(6, 14);
  wide.block(0, 2, 6, 10) = copy;
  REQUIRE(q(wide.block(0, 2, 6, 10), Philox(5)) == q(copy, Philox(5)));
  Matrix<float> out_wide = Matrix<float>::Zero(6, 14);
  q.fake_quantize(copy, Philox(5), out_wide.block(0, 2, 6, 10));
  REQUIRE(out_wide.block(0, 2, 6, 10) == q(copy, Philox(5)));
}

TEMPLATE_TEST_CASE("the per-channel quantizer shares one grid per block of columns",
                   "[quant][per_channel]", float, double) {
  const Index channels = 5, width = 12;
  const Matrix<TestType> x = fqt_test::sparse<TestType>(7, channels * width, 0.3, 4);
  const int bits = GENERATE(2, 4, 8);
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned);
  const fqt::PerChannelQuantizer<TestType> q(bits, grid, channels);
  CAPTURE(bits, grid == Grid::Free);
  const auto r = q.quantize(x, Philox(6, 2));
  REQUIRE(r.granularity == fqt::Granularity::PerChannel);
  REQUIRE(r.scale.size() == channels);
  for (Index k = 0; k < channels; ++k) {
    // Channel k's grid is the per-tensor grid of its block of columns.
    const Matrix<TestType> block = x.middleCols(k * width, width);
    const auto m = fqt::PerTensorQuantizer<TestType>(bits, grid).maps(block);
    CHECK(r.scale(k) == m.scale(0));
    CHECK(r.zero_point(k) == m.zero_point(0));
  }
  // The codes' values are the fake quantization, and a value on the grid (an exact zero on the
  // zero-aligned grid) comes back exactly.
  const Matrix<TestType> values = r.dequantize();
  REQUIRE(values == q(x, Philox(6, 2)));
  if (grid == Grid::ZeroAligned) {
    for (Index k = 0; k < x.size(); ++k)
      if (x.data()[k] == 0) REQUIRE(values.data()[k] == 0);
  }
  // Unbiased, with the exact variance.
  const auto m = fqt_test::moments(q, x, 400, 9);
  fqt_test::require_unbiased(m, q.element_variance(x), x, largest_step(q, x));
  REQUIRE_THAT(q.element_variance(x).sum(),
               Catch::Matchers::WithinRel(static_cast<double>(q.expected_variance(x)), 1e-6));
  REQUIRE(std::abs(m.mse - static_cast<double>(q.expected_variance(x))) <= 6 * m.mse_se);
  REQUIRE(q.variance_bound(x) >= q.expected_variance(x));
}

TEST_CASE("one channel is the per-tensor quantizer, bit for bit; bad channel counts throw",
          "[quant][per_channel]") {
  const Matrix<float> x = fqt_test::sparse<float>(6, 40, 0.2, 3);
  const fqt::PerChannelQuantizer<float> one(4, Grid::ZeroAligned, 1);
  const fqt::PerTensorQuantizer<float> ptq(4, Grid::ZeroAligned);
  CHECK(one.quantize(x, Philox(2)).codes == ptq.quantize(x, Philox(2)).codes);
  CHECK(one(x, Philox(2)) == ptq(x, Philox(2)));
  CHECK_THROWS_AS(fqt::PerChannelQuantizer<float>(4, Grid::Free, 0), std::invalid_argument);
  CHECK_THROWS_AS(fqt::PerSampleQuantizer<float>(4, Grid::Free, 3), std::invalid_argument);
  CHECK_THROWS_WITH(fqt::PerChannelQuantizer<float>(4, Grid::Free, 3).quantize(x, Philox(1)),
                    "PerChannelQuantizer: the input has 40 columns, not a multiple of the 3 "
                    "channels");
}
