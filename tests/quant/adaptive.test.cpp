// The adaptive quantizer (quant/adaptive.hpp): the least-variance candidate, unbiased with the
// exact variance of its choice, and its place in the catalogue.
#include <catch2/catch.hpp>
#include <fqt/quant.hpp>

#include "support/quant_support.hpp"

using fqt::Grid;
using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

namespace {
using Adaptive = fqt::AdaptiveQuantizer<double>;
}  // namespace

TEST_CASE("the adaptive quantizer takes the candidate of least exact variance, bit for bit",
          "[quant][adaptive]") {
  const int bits = GENERATE(2, 4, 8);
  const Matrix<double> heavy = fqt_test::heavy_tailed<double>(32, 48, 5);
  const Matrix<double> sparse = fqt_test::sparse<double>(32, 48, 0.5, 6);
  const Matrix<double> dense = fqt_test::scaled_rows<double>(32, 48, {1.0}, 7);
  const Adaptive q(bits);
  REQUIRE(q.candidates() == 3);
  for (const Matrix<double>* x : {&heavy, &sparse, &dense}) {
    for (const std::uint64_t stream : {1u, 2u}) {
      const Philox rng(3, stream);
      const Index c = q.choose(*x, rng);
      const double psq = fqt::PerSampleQuantizer<double>(bits).expected_variance(*x);
      const double bhq =
          fqt::BlockHouseholderQuantizer<double>(bits, Grid::Auto, fqt::BhqMixing::WhereItHelps)
              .expected_variance(*x);
      const double had = fqt::HadamardQuantizer<double>(bits).expected_variance(*x, rng);
      const double least = std::min({psq, bhq, had});
      INFO("bits " << bits << " psq " << psq << " bhq " << bhq << " hadamard " << had);
      REQUIRE(q.expected_variance(*x, rng) == least);
      REQUIRE(q.candidate_variance(c, *x, rng) == least);
      // Its codes are those of the chosen candidate.
      const auto a = q.quantize(*x, rng);
      fqt::Quantized<double, std::uint8_t> b;
      q.quantize_with(c, *x, rng, b);
      REQUIRE(a.codes == b.codes);
      REQUIRE(a.scale == b.scale);
      REQUIRE(a.transform.has_value() == b.transform.has_value());
    }
  }
  // Heavy-tailed rows are where the mixing quantizers win.
  REQUIRE(q.choose(heavy, Philox(3, 1)) != 0);
}

TEST_CASE("the adaptive quantizer is unbiased, with the exact variance of each call's choice",
          "[quant][adaptive][statistical]") {
  const int bits = GENERATE(2, 4);
  const Matrix<double> x = fqt_test::sparse<double>(12, 40, 0.3, 21);
  const Adaptive q(bits);
  const int draws = 2000;
  const std::uint64_t seed = 90 + static_cast<std::uint64_t>(bits);
  const auto m = fqt_test::moments(q, x, draws, seed);
  // The choice (through the Hadamard signs) may change from draw to draw: the per-element
  // variance of the mean error is the average of each draw's exact variance.
  Matrix<double> variance = Matrix<double>::Zero(x.rows(), x.cols());
  double expected = 0;
  double step = 0;
  for (int k = 0; k < draws; ++k) {
    const Philox rng(seed, static_cast<std::uint64_t>(k));
    variance += q.element_variance(x, rng);
    expected += q.expected_variance(x, rng);
    step = std::max(step, q.quantize(x, rng).scale.maxCoeff());
  }
  variance /= draws;
  expected /= draws;
  fqt_test::require_unbiased(m, variance, x, step);
  INFO("exact " << expected << " Monte-Carlo " << m.mse << " ± " << m.mse_se);
  REQUIRE(std::abs(m.mse - expected) <= 6 * m.mse_se + 1e-9 * expected);
  REQUIRE_THAT(variance.sum(), Catch::Matchers::WithinRel(expected, 1e-9));
}

TEST_CASE("the adaptive quantizer's candidates, and bad ones", "[quant][adaptive][errors]") {
  using Kind = Adaptive::Kind;
  const Matrix<double> x = fqt_test::heavy_tailed<double>(16, 32, 9);
  // A single candidate is that quantizer.
  const Adaptive only_psq(4, Grid::Auto, {Kind::PerSample});
  REQUIRE(only_psq.expected_variance(x) == fqt::PerSampleQuantizer<double>(4).expected_variance(x));
  // Ties go to the first candidate: one row makes BHQ and Hadamard fall back to PSQ.
  const Matrix<double> row = x.topRows(1);
  REQUIRE(Adaptive(4).choose(row, Philox(1)) == 0);
  REQUIRE(Adaptive(4, Grid::Auto, {Kind::Hadamard, Kind::PerSample}).choose(row, Philox(1)) == 0);
  REQUIRE_THROWS_WITH(Adaptive(4, Grid::Auto, {}),
                      Catch::Matchers::Contains("AdaptiveQuantizer") &&
                          Catch::Matchers::Contains("at least one candidate"));
  REQUIRE_THROWS_WITH(Adaptive(4, Grid::Auto, {Kind::PerSample, Kind::PerSample}),
                      Catch::Matchers::Contains("repeats"));
  REQUIRE_THROWS_WITH(Adaptive(4, Grid::Auto, {static_cast<Kind>(7)}),
                      Catch::Matchers::Contains("is no kind"));
  REQUIRE_THROWS_WITH(Adaptive(9), Catch::Matchers::Contains("AdaptiveQuantizer") &&
                                       Catch::Matchers::Contains("bits must be in [1, 8]"));
  REQUIRE_THROWS_WITH(Adaptive(4).candidate_variance(3, x, Philox(1)),
                      Catch::Matchers::Contains("candidate index 3"));
  Matrix<double> bad = x;
  bad(2, 3) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_AS(Adaptive(4).quantize(bad, Philox(1)), std::domain_error);
}

TEST_CASE("the catalogue's adaptive kind is the class, and its spec fields are checked",
          "[quant][adaptive][catalogue]") {
  const Matrix<float> x = fqt_test::sparse<float>(24, 40, 0.4, 12);
  fqt::QuantizerSpec spec{fqt::QuantizerKind::Adaptive, 4};
  const fqt::AnyQuantizer<float> any(spec);
  const fqt::AdaptiveQuantizer<float> direct(4);
  const Philox rng(8, 1);
  REQUIRE(any.quantize(x, rng).codes == direct.quantize(x, rng).codes);
  REQUIRE(any.expected_variance(x) == direct.expected_variance(x));
  REQUIRE(fqt::can_feed(fqt::QuantizerKind::Adaptive, fqt::Contraction::Columns));
  REQUIRE_FALSE(fqt::can_feed(fqt::QuantizerKind::Adaptive, fqt::Contraction::Rows));
  REQUIRE(fqt::parse_quantizer_kind("adaptive") == fqt::QuantizerKind::Adaptive);
  spec.block_size = 32;
  REQUIRE(fqt::AnyQuantizer<float>(spec).quantize(x, rng).codes ==
          fqt::AdaptiveQuantizer<float>(4, Grid::Auto,
                                        {fqt::AdaptiveQuantizer<float>::Kind::PerSample,
                                         fqt::AdaptiveQuantizer<float>::Kind::BlockHouseholder,
                                         fqt::AdaptiveQuantizer<float>::Kind::Hadamard},
                                        32)
              .quantize(x, rng)
              .codes);
  spec.block_size = 12;
  REQUIRE_THROWS_WITH(fqt::AnyQuantizer<float>(spec),
                      Catch::Matchers::Contains("block_size must be 0 (the default) or a power"));
  spec.block_size = 0;
  spec.every = -1;
  REQUIRE_THROWS_WITH(fqt::AnyQuantizer<float>(spec), Catch::Matchers::Contains("every must be"));
  fqt::QuantizerSpec psq{fqt::QuantizerKind::PerSample, 4};
  psq.every = 2;
  REQUIRE_THROWS_WITH(fqt::AnyQuantizer<float>(psq),
                      Catch::Matchers::Contains("every must be 0 for psq"));
  psq.every = 0;
  psq.block_size = 16;
  REQUIRE_THROWS_WITH(fqt::AnyQuantizer<float>(psq),
                      Catch::Matchers::Contains("block_size must be 0 for psq"));
  fqt::QuantizerSpec had{fqt::QuantizerKind::Hadamard, 4};
  had.block_size = 64;
  REQUIRE(fqt::AnyQuantizer<float>(had).visit([](const auto& q) {
    if constexpr (std::is_same_v<std::decay_t<decltype(q)>, fqt::HadamardQuantizer<float>>)
      return q.block_size();
    else
      return Index{-1};
  }) == 64);
}
