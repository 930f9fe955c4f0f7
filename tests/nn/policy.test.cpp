#include "fqt/nn/policy.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <string>

#include "fqt/nn/backends/int8.hpp"
#include "fqt/nn/ops/linear.hpp"
#include "fqt/nn/presets.hpp"

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
  // Per channel: per column of G on a linear layer, per output channel on a conv (the paper's
  // pairing for BHQ as every backend runs it).
  CHECK(p.grad_weight.kind == fqt::QuantizerKind::PerChannel);
  CHECK(p.grad_weight_spec(7).channels == 7);
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

TEST_CASE("Presets: the paper's pairings and gradients only", "[nn][policy]") {
  using K = fqt::QuantizerKind;
  const auto ptq = nn::presets::paper(K::PerTensor, 4);
  CHECK(ptq.grad_input.kind == K::PerTensor);
  CHECK(ptq.grad_weight.kind == K::PerTensor);
  CHECK(ptq.grad_input.bits == 4);
  CHECK(ptq.grad_weight.bits == 4);
  CHECK(ptq.grad_input.grid == fqt::Grid::Paper);
  for (const auto k : {K::PerSample, K::BlockHouseholder, K::Hadamard, K::Adaptive}) {
    CHECK(nn::presets::paper(k, 3, fqt::Grid::Auto).grad_weight.kind == K::PerColumn);
    // On codes the per-column scale of a conv would vary along its grad-weight contraction.
    const auto int8 = nn::presets::paper(k, 3, fqt::Grid::Auto, nn::int8_backend());
    CHECK(int8.grad_weight.kind == K::PerChannel);
    CHECK(int8.grad_weight.grid == fqt::Grid::Auto);
  }
  CHECK_THROWS_WITH(nn::presets::paper(K::PerColumn, 4), Contains("grad_input quantizer 'column'"));
  CHECK_THROWS_WITH(nn::presets::paper(K::PerSample, 9), Contains("grad_input.bits"));

  // Gradients only: FQT quantizes G but not the forward operands, so the output is Exact's.
  const auto g = nn::presets::gradients_only(nn::presets::paper(K::PerSample, 4));
  CHECK(g.mode == nn::Mode::FQT);
  CHECK_FALSE(g.quantizes_forward());
  CHECK(g.quantizes_grad_input());
  CHECK(g.quantizes_grad_weight());
  fqt::Matrix<double> x(3, 5), w(2, 5), y_exact(3, 2), y_grads(3, 2), y_qat(3, 2);
  for (fqt::Index i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.7 * static_cast<double>(i));
  for (fqt::Index i = 0; i < w.size(); ++i) w.data()[i] = std::cos(1.3 * static_cast<double>(i));
  const fqt::Vector<double> no_bias;
  nn::LinearCache<double> cache;
  nn::linear_forward<double>(x, w, no_bias, nn::QuantPolicy::with_mode(nn::Mode::Exact), cache,
                             y_exact);
  nn::linear_forward<double>(x, w, no_bias, g, cache, y_grads);
  nn::linear_forward<double>(x, w, no_bias, nn::QuantPolicy::with_mode(nn::Mode::QAT), cache,
                             y_qat);
  CHECK(y_grads == y_exact);
  CHECK(y_qat != y_exact);
}
