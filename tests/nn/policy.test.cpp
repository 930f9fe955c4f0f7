#include "fqt/nn/policy.hpp"

#include <catch2/catch.hpp>

namespace nn = fqt::nn;
using Catch::Matchers::Contains;

TEST_CASE("The default policy is the paper's recipe with zero-aligned gradient grids",
          "[nn][policy]") {
  const nn::QuantPolicy p;
  CHECK(p.mode == nn::Mode::FQT);
  CHECK(p.activation_bits == 8);
  CHECK(p.weight_bits == 8);
  CHECK(p.grad_input_quantizer == nn::GradInputQuantizer::BlockHouseholder);
  CHECK(p.grad_input_bits == 8);
  CHECK(p.grad_weight_quantizer == nn::GradWeightQuantizer::PerTensor);
  CHECK(p.grad_weight_bits == 8);
  CHECK(p.gradient_grid == fqt::Grid::ZeroAligned);
  CHECK(p.gradient_rounding == nn::GradientRounding::Stochastic);
  CHECK(p.quantizes_forward());
  CHECK(p.quantizes_backward());
  CHECK_FALSE(nn::QuantPolicy::with_mode(nn::Mode::QAT).quantizes_backward());
  CHECK(nn::QuantPolicy::with_mode(nn::Mode::QAT).quantizes_forward());
  CHECK_FALSE(nn::QuantPolicy::with_mode(nn::Mode::Exact).quantizes_forward());
  CHECK_NOTHROW(p.validate("test"));
}

TEST_CASE("Quantizer, mode and grid names parse in any case and round-trip", "[nn][policy]") {
  CHECK(nn::parse_grad_input_quantizer("ptq") == nn::GradInputQuantizer::PerTensor);
  CHECK(nn::parse_grad_input_quantizer("PSQ") == nn::GradInputQuantizer::PerSample);
  CHECK(nn::parse_grad_input_quantizer("Bhq") == nn::GradInputQuantizer::BlockHouseholder);
  CHECK(nn::parse_grad_weight_quantizer("ptq") == nn::GradWeightQuantizer::PerTensor);
  CHECK(nn::parse_grad_weight_quantizer("column") == nn::GradWeightQuantizer::PerColumn);
  CHECK(nn::parse_mode("exact") == nn::Mode::Exact);
  CHECK(nn::parse_mode("QAT") == nn::Mode::QAT);
  CHECK(nn::parse_mode("fqt") == nn::Mode::FQT);
  CHECK(nn::parse_grid("free") == fqt::Grid::Free);
  CHECK(nn::parse_grid("zero") == fqt::Grid::ZeroAligned);
  for (auto q : {nn::GradInputQuantizer::PerTensor, nn::GradInputQuantizer::PerSample,
                 nn::GradInputQuantizer::BlockHouseholder}) {
    CHECK(nn::parse_grad_input_quantizer(nn::to_string(q)) == q);
  }
  for (auto q : {nn::GradWeightQuantizer::PerTensor, nn::GradWeightQuantizer::PerColumn}) {
    CHECK(nn::parse_grad_weight_quantizer(nn::to_string(q)) == q);
  }
  for (auto m : {nn::Mode::Exact, nn::Mode::QAT, nn::Mode::FQT}) {
    CHECK(nn::parse_mode(nn::to_string(m)) == m);
  }
}

TEST_CASE("Unknown names are an invalid_argument naming the text", "[nn][policy][errors]") {
  CHECK_THROWS_AS(nn::parse_grad_input_quantizer("hadamard"), std::invalid_argument);
  CHECK_THROWS_WITH(nn::parse_grad_input_quantizer("hadamard"),
                    Contains("parse_grad_input_quantizer") && Contains("'hadamard'") &&
                        Contains("ptq, psq or bhq"));
  CHECK_THROWS_WITH(nn::parse_grad_weight_quantizer("bhq"),
                    Contains("parse_grad_weight_quantizer") && Contains("'bhq'"));
  CHECK_THROWS_WITH(nn::parse_grad_input_quantizer("column"), Contains("'column'"));
  CHECK_THROWS_WITH(nn::parse_mode("int8"), Contains("parse_mode") && Contains("'int8'"));
  CHECK_THROWS_WITH(nn::parse_grid(""), Contains("parse_grid") && Contains("''"));
}

TEST_CASE("validate rejects bit widths outside [1, 8] naming the knob", "[nn][policy][errors]") {
  nn::QuantPolicy p;
  p.activation_bits = 0;
  CHECK_THROWS_WITH(p.validate("where"),
                    Contains("where") && Contains("activation_bits") && Contains("got 0"));
  p = nn::QuantPolicy{};
  p.grad_weight_bits = 12;
  CHECK_THROWS_WITH(p.validate("where"), Contains("grad_weight_bits") && Contains("got 12"));
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
  p.grad_input_quantizer = static_cast<nn::GradInputQuantizer>(7);
  CHECK_THROWS_WITH(p.validate("where"), Contains("grad_input_quantizer") && Contains("got 7"));
  p = nn::QuantPolicy{};
  p.grad_weight_quantizer = static_cast<nn::GradWeightQuantizer>(-1);
  CHECK_THROWS_WITH(p.validate("where"), Contains("grad_weight_quantizer") && Contains("got -1"));
  p = nn::QuantPolicy{};
  p.gradient_grid = static_cast<fqt::Grid>(9);
  CHECK_THROWS_WITH(p.validate("where"), Contains("gradient_grid") && Contains("got 9"));
  p = nn::QuantPolicy{};
  p.gradient_rounding = static_cast<nn::GradientRounding>(3);
  CHECK_THROWS_WITH(p.validate("where"), Contains("gradient_rounding") && Contains("got 3"));
  CHECK_THROWS_AS(p.validate("where"), std::invalid_argument);
  CHECK(std::string(nn::to_string(static_cast<nn::GradWeightQuantizer>(4))) == "?");
}
