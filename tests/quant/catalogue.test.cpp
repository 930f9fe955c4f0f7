// The quantizer catalogue (quant/catalogue.hpp): the table of kinds, specs, and AnyQuantizer.
#include <catch2/catch.hpp>
#include <fqt/quant.hpp>
#include <stdexcept>

#include "support/quant_support.hpp"

using fqt::Contraction;
using fqt::Grid;
using fqt::Index;
using fqt::Matrix;
using fqt::Philox;
using fqt::QuantizerKind;
using fqt::QuantizerSpec;
using fqt::RoundingMode;

TEST_CASE("the table of kinds names every kind once and parses its own names",
          "[quant][catalogue]") {
  for (const auto& k : fqt::kQuantizerKinds) {
    CAPTURE(k.name);
    CHECK(fqt::parse_quantizer_kind(k.name) == k.kind);
    CHECK(&fqt::kind_info(k.kind) == &k);
  }
  CHECK(fqt::parse_quantizer_kind("BHQ") == QuantizerKind::BlockHouseholder);
  CHECK(fqt::parse_quantizer_kind("Hadamard") == QuantizerKind::Hadamard);
  CHECK(fqt::quantizer_kind_names() == "ptq, psq, column, channel, bhq, hadamard, adaptive");
  CHECK(fqt::quantizer_kind_names(Contraction::Columns) == "ptq, psq, bhq, hadamard, adaptive");
  CHECK_THROWS_WITH(fqt::parse_quantizer_kind("walsh"),
                    "fqt::parse_quantizer_kind: unknown quantizer 'walsh' (expected one of "
                    "ptq, psq, column, channel, bhq, hadamard, adaptive)");
  CHECK_THROWS_AS(fqt::kind_info(static_cast<QuantizerKind>(9)), std::invalid_argument);
}

TEST_CASE("a quantizer feeds only the contractions its scales are constant along",
          "[quant][catalogue]") {
  // DESIGN: grad-input takes per row / per tensor / transformed rows; grad-weight of linear per
  // column (or tensor); of conv per output channel (or tensor).
  struct Expected {
    QuantizerKind kind;
    bool columns, rows, rows_and_channels;
  };
  const Expected table[] = {{QuantizerKind::PerTensor, true, true, true},
                            {QuantizerKind::PerSample, true, false, false},
                            {QuantizerKind::PerColumn, false, true, false},
                            {QuantizerKind::PerChannel, false, true, true},
                            {QuantizerKind::BlockHouseholder, true, false, false},
                            {QuantizerKind::Hadamard, true, false, false},
                            {QuantizerKind::Adaptive, true, false, false}};
  for (const auto& e : table) {
    CAPTURE(fqt::kind_info(e.kind).name);
    CHECK(fqt::can_feed(e.kind, Contraction::Columns) == e.columns);
    CHECK(fqt::can_feed(e.kind, Contraction::Rows) == e.rows);
    CHECK(fqt::can_feed(e.kind, Contraction::RowsAndChannels) == e.rows_and_channels);
  }
}

TEMPLATE_TEST_CASE("AnyQuantizer is each quantizer, bit for bit", "[quant][catalogue]", float,
                   double) {
  const Matrix<TestType> x = fqt_test::sparse<TestType>(9, 24, 0.3, 2);
  const Grid grid = GENERATE(Grid::Free, Grid::ZeroAligned, Grid::Paper, Grid::Auto);
  const int bits = 4;
  auto same = [&](const QuantizerSpec& spec, const auto& direct) {
    const fqt::AnyQuantizer<TestType> any(spec);
    INFO(any.name());
    CHECK(std::string(any.name()) == direct.name());
    const auto a = any.quantize(x, Philox(3, 4));
    const auto d = direct.quantize(x, Philox(3, 4));
    CHECK(a.codes == d.codes);
    CHECK(a.scale == d.scale);
    CHECK(any(x, Philox(3, 4)) == direct(x, Philox(3, 4)));
    CHECK(any.expected_variance(x) == direct.expected_variance(x));
    CHECK(any.element_variance(x) == direct.element_variance(x));
    CHECK(any.variance_bound(x) == direct.variance_bound(x));
  };
  using S = fqt::Stochastic;
  using N = fqt::Nearest;
  const auto st = RoundingMode::Stochastic, ne = RoundingMode::Nearest;
  same({QuantizerKind::PerTensor, bits, grid, st},
       fqt::PerTensorQuantizer<TestType, S>(bits, grid));
  same({QuantizerKind::PerSample, bits, grid, st},
       fqt::PerSampleQuantizer<TestType, S>(bits, grid));
  same({QuantizerKind::PerColumn, bits, grid, st},
       fqt::PerColumnQuantizer<TestType, S>(bits, grid));
  same({QuantizerKind::PerChannel, bits, grid, st, 3},
       fqt::PerChannelQuantizer<TestType, S>(bits, grid, 3));
  same({QuantizerKind::BlockHouseholder, bits, grid, st},
       fqt::BlockHouseholderQuantizer<TestType, S>(bits, grid));
  same({QuantizerKind::Hadamard, bits, grid, st}, fqt::HadamardQuantizer<TestType, S>(bits, grid));
  same({QuantizerKind::Adaptive, bits, grid, st}, fqt::AdaptiveQuantizer<TestType, S>(bits, grid));
  same({QuantizerKind::PerTensor, bits, grid, ne},
       fqt::PerTensorQuantizer<TestType, N>(bits, grid));
  same({QuantizerKind::PerSample, bits, grid, ne},
       fqt::PerSampleQuantizer<TestType, N>(bits, grid));
  same({QuantizerKind::BlockHouseholder, bits, grid, ne},
       fqt::BlockHouseholderQuantizer<TestType, N>(bits, grid));
  same({QuantizerKind::Hadamard, bits, grid, ne}, fqt::HadamardQuantizer<TestType, N>(bits, grid));
}

TEST_CASE("AnyQuantizer rejects an invalid spec naming the field", "[quant][catalogue]") {
  using Any = fqt::AnyQuantizer<float>;
  CHECK_THROWS_WITH(Any({QuantizerKind::PerSample, 9}),
                    "PerSampleQuantizer: bits must be in [1, 8], got 9");
  CHECK_THROWS_WITH(Any({static_cast<QuantizerKind>(7), 4}),
                    Catch::Matchers::StartsWith("fqt::AnyQuantizer: kind must be one of ptq"));
  CHECK_THROWS_WITH(Any({QuantizerKind::PerSample, 4, static_cast<Grid>(5)}),
                    "fqt::AnyQuantizer: grid must be Free, ZeroAligned, Paper or Auto, got 5");
  CHECK_THROWS_WITH(Any({QuantizerKind::PerSample, 4, Grid::Free, RoundingMode::Stochastic, 2}),
                    "fqt::AnyQuantizer: channels must be 1 for psq, got 2");
  CHECK_THROWS_WITH(Any({QuantizerKind::PerChannel, 4, Grid::Free, RoundingMode::Stochastic, 0}),
                    "fqt::AnyQuantizer: channels must be >= 1, got 0");
  CHECK_THROWS_WITH(Any({QuantizerKind::Hadamard, 4, Grid::Free, RoundingMode::Stochastic, 4}),
                    "fqt::AnyQuantizer: channels must be 1 for hadamard, got 4");
  CHECK_NOTHROW(fqt::AnyQuantizer<float, std::uint16_t>({QuantizerKind::PerTensor, 16}));
}
