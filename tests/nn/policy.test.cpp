#include "fqt/nn/policy.hpp"

#include <catch2/catch.hpp>
#include <string>

namespace nn = fqt::nn;
using Catch::Matchers::Contains;

TEST_CASE("The default policy is the paper's recipe with automatic gradient grids",
          "[nn][policy]") {
  const nn::QuantPolicy p;
  CHECK(p.mode == nn::Mode::FQT);
  CHECK(p.activation_bits == 8);
  CHECK(p.weight_bits == 8);
  for (const fqt::QuantizerSpec& spec : {p.grad_input, p.grad_weight}) {
    CHECK(spec.bits == 8);
    CHECK(spec.grid == fqt::Grid::Auto);
    CHECK(spec.rounding == fqt::RoundingMode::Stochastic);
    CHECK(spec.channels == 1);
  }
  CHECK(p.grad_input.kind == fqt::QuantizerKind::BlockHouseholder);
  CHECK(p.grad_weight.kind == fqt::QuantizerKind::PerTensor);
  CHECK(p.backend == nullptr);
  CHECK(std::string(p.product_backend().name()) == "simulated");
  CHECK_FALSE(p.product_backend().multiplies_codes());
  CHECK(p.activation_spec().kind == fqt::QuantizerKind::PerTensor);
  CHECK(p.activation_spec().grid == fqt::Grid::Free);
  CHECK(p.activation_spec().rounding == fqt::RoundingMode::Nearest);
  CHECK(p.weight_spec().grid == fqt::Grid::ZeroAligned);
  CHECK(p.weight_spec().rounding == fqt::RoundingMode::Nearest);
  CHECK(p.quantizes_forward());
  CHECK(p.quantizes_backward());
  CHECK_FALSE(nn::QuantPolicy::with_mode(nn::Mode::QAT).quantizes_backward());
  CHECK(nn::QuantPolicy::with_mode(nn::Mode::QAT).quantizes_forward());
  CHECK_FALSE(nn::QuantPolicy::with_mode(nn::Mode::Exact).quantizes_forward());
  CHECK_NOTHROW(p.validate("test"));
}

TEST_CASE("Mode and grid names parse in any case and round-trip", "[nn][policy]") {
  CHECK(nn::parse_mode("exact") == nn::Mode::Exact);
  CHECK(nn::parse_mode("QAT") == nn::Mode::QAT);
  CHECK(nn::parse_mode("fqt") == nn::Mode::FQT);
  CHECK(nn::parse_grid("free") == fqt::Grid::Free);
  CHECK(nn::parse_grid("zero") == fqt::Grid::ZeroAligned);
  for (auto m : {nn::Mode::Exact, nn::Mode::QAT, nn::Mode::FQT}) {
    CHECK(nn::parse_mode(nn::to_string(m)) == m);
  }
}

TEST_CASE("Unknown names are an invalid_argument naming the text", "[nn][policy][errors]") {
  CHECK_THROWS_WITH(nn::parse_mode("int8"), Contains("parse_mode") && Contains("'int8'"));
  CHECK_THROWS_WITH(nn::parse_grid(""), Contains("parse_grid") && Contains("''"));
}

TEST_CASE("validate takes each gradient quantizer whose scales factor out of its GEMM",
          "[nn][policy][errors]") {
  // Every kind of the table is accepted exactly where its scales are constant along the
  // contraction: the columns of G for grad-input, the samples for grad-weight.
  for (const auto& info : fqt::kQuantizerKinds) {
    CAPTURE(info.name);
    nn::QuantPolicy p;
    p.grad_input.kind = info.kind;
    if (fqt::can_feed(info.kind, fqt::Contraction::Columns)) {
      CHECK_NOTHROW(p.validate("where"));
    } else {
      CHECK_THROWS_WITH(p.validate("where"),
                        Contains("where") &&
                            Contains(std::string("grad_input quantizer '") + info.name + "'") &&
                            Contains("ptq, psq, bhq, hadamard"));
    }
    p = nn::QuantPolicy{};
    p.grad_weight.kind = info.kind;
    if (fqt::can_feed(info.kind, fqt::Contraction::Rows)) {
      CHECK_NOTHROW(p.validate("where"));
    } else {
      CHECK_THROWS_WITH(p.validate("where"),
                        Contains(std::string("grad_weight quantizer '") + info.name + "'") &&
                            Contains("ptq, column, channel"));
    }
  }
  // The paper's pairings are all accepted.
  for (const char* name : {"ptq", "psq", "bhq"}) {
    nn::QuantPolicy p;
    p.grad_input.kind = fqt::parse_quantizer_kind(name);
    CHECK_NOTHROW(p.validate("where"));
  }
  nn::QuantPolicy p;
  p.grad_weight.kind = fqt::QuantizerKind::PerChannel;
  CHECK_NOTHROW(p.validate("where"));
  CHECK(p.grad_weight_spec(7).channels == 7);
  CHECK(p.grad_weight_spec(7).kind == fqt::QuantizerKind::PerChannel);
  p.grad_weight.channels = 4;
  CHECK_THROWS_WITH(p.validate("where"),
                    Contains("grad_weight.channels must be 1") && Contains("got 4"));
  // The simulated backend runs the per-column grad-weight quantizer on conv too.
  p = nn::QuantPolicy{};
  p.grad_weight.kind = fqt::QuantizerKind::PerColumn;
  CHECK_NOTHROW(p.validate("where", fqt::Contraction::RowsAndChannels));
}

TEST_CASE("validate rejects bit widths outside [1, 8] naming the knob", "[nn][policy][errors]") {
  nn::QuantPolicy p;
  p.activation_bits = 0;
  CHECK_THROWS_WITH(p.validate("where"),
                    Contains("where") && Contains("activation_bits") && Contains("got 0"));
  p = nn::QuantPolicy{};
  p.grad_weight.bits = 12;
  CHECK_THROWS_WITH(p.validate("where"), Contains("grad_weight.bits") && Contains("got 12"));
  p = nn::QuantPolicy{};
  p.grad_input.bits = 0;
  CHECK_THROWS_WITH(p.validate("where"), Contains("bits") && Contains("got 0"));
}

TEST_CASE("Gradient streams are a pure function of (seed, step, layer, role)", "[nn][policy]") {
  const fqt::Philox root(2024);
  const auto a = nn::gradient_streams(root, 10, 3);
  const auto b = nn::gradient_streams(root, 10, 3);
  CHECK(a.grad_input.stream() == b.grad_input.stream());
  CHECK(a.grad_weight.stream() == b.grad_weight.stream());
  CHECK(a.grad_input.seed() == 2024);
  CHECK(a.grad_input.stream() != a.grad_weight.stream());
  CHECK(a.grad_input.stream() != nn::gradient_streams(root, 11, 3).grad_input.stream());
  CHECK(a.grad_input.stream() != nn::gradient_streams(root, 10, 4).grad_input.stream());
  CHECK(a.grad_input.stream() !=
        nn::gradient_streams(fqt::Philox(2024, 1), 10, 3).grad_input.stream());
}

TEST_CASE("validate rejects every enum field outside its enum naming the field and the value",
          "[nn][policy][errors]") {
  nn::QuantPolicy p;
  p.mode = static_cast<nn::Mode>(7);
  CHECK_THROWS_WITH(p.validate("where"),
                    Contains("where") && Contains("mode must be") && Contains("got 7"));
  p = nn::QuantPolicy{};
  p.grad_input.kind = static_cast<fqt::QuantizerKind>(7);
  CHECK_THROWS_WITH(p.validate("where"), Contains("kind must be one of") && Contains("got 7"));
  p = nn::QuantPolicy{};
  p.grad_weight.kind = static_cast<fqt::QuantizerKind>(-1);
  CHECK_THROWS_WITH(p.validate("where"), Contains("kind must be one of") && Contains("got -1"));
  p = nn::QuantPolicy{};
  p.grad_input.grid = static_cast<fqt::Grid>(9);
  CHECK_THROWS_WITH(p.validate("where"), Contains("grid must be") && Contains("got 9"));
  p = nn::QuantPolicy{};
  p.grad_weight.rounding = static_cast<fqt::RoundingMode>(3);
  CHECK_THROWS_WITH(p.validate("where"), Contains("rounding must be") && Contains("got 3"));
  CHECK_THROWS_AS(p.validate("where"), std::invalid_argument);
}
