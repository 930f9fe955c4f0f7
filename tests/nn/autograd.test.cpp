#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "fqt/nn.hpp"
#include "support/nn_gradcheck.hpp"
#include "support/nn_models.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;
namespace nn = fqt::nn;
using Catch::Matchers::Contains;

namespace {

nn::Context exact_context() {
  nn::Context c;
  c.policy = nn::QuantPolicy::with_mode(nn::Mode::Exact);
  c.rng = Philox(3);
  return c;
}

}  // namespace

TEST_CASE("A Variable is a shared handle to a value and an accumulated gradient",
          "[nn][autograd]") {
  nn::Variable<double> v(Matrix<double>::Ones(2, 6), nn::FeatureShape{2, 1, 3}, true);
  nn::Variable<double> alias = v;
  CHECK(v.requires_grad());
  CHECK_FALSE(v.has_grad());
  alias.accumulate_grad(Matrix<double>::Constant(2, 6, 1.5));
  v.accumulate_grad(Matrix<double>::Constant(2, 6, 0.5));
  CHECK(v.grad() == Matrix<double>::Constant(2, 6, 2.0));
  const auto flat = nn::flatten(v);
  CHECK(flat.shape() == nn::FeatureShape{6, 1, 1});
  CHECK(&flat.value() == &v.value());
  v.zero_grad();
  CHECK(alias.grad().isZero());
  CHECK_THROWS_WITH((nn::Variable<double>(Matrix<double>::Ones(2, 6), nn::FeatureShape{4, 1, 1})),
                    Contains("does not match 6 columns"));
  CHECK_THROWS_AS(nn::Variable<double>().value(), std::invalid_argument);
}

TEST_CASE("Tape::backward runs the recorded steps in reverse and empties the tape",
          "[nn][autograd]") {
  nn::Tape<double> tape;
  std::vector<int> order;
  nn::Variable<double> loss(Matrix<double>::Ones(1, 1), true);
  tape.record([&] { order.push_back(1); });
  tape.record([&] { order.push_back(2); });
  CHECK(tape.size() == 2);
  tape.backward(loss);
  CHECK(order == std::vector<int>{2, 1});
  CHECK(tape.size() == 0);
  CHECK(loss.grad()(0, 0) == 1.0);
  CHECK_THROWS_WITH(tape.backward(nn::Variable<double>(Matrix<double>::Ones(2, 1), true)),
                    Contains("1 x 1"));
  CHECK_THROWS_WITH(tape.backward(nn::Variable<double>(Matrix<double>::Ones(1, 1), false)),
                    Contains("does not depend"));
}

TEST_CASE("Every parameter and input gradient of a Sequential model matches finite differences",
          "[nn][autograd][gradcheck]") {
  auto model = nn_test::small_model();
  const auto params = model.parameters();
  REQUIRE(params.size() == 10);
  Matrix<double> x = nn_test::random_matrix(5, 2 * 8 * 8, 40);
  const std::vector<int> labels = nn_test::random_labels(5, 3, 41);
  auto ctx = exact_context();
  ctx.update_running_statistics = false;

  nn::Tape<double> tape;
  nn::Variable<double> input(x, nn::FeatureShape{2, 8, 8}, true);
  for (const auto& p : params) p.variable.zero_grad();
  auto loss = nn::softmax_cross_entropy(tape, model.forward(tape, input, ctx), labels, 0.1);
  tape.backward(loss);

  auto evaluate = [&] {
    nn::Tape<double> t;
    const nn::Variable<double> in(x, nn::FeatureShape{2, 8, 8});
    return nn::softmax_cross_entropy(t, model.forward(t, in, ctx), labels, 0.1).value()(0, 0);
  };
  CHECK(nn_test::relative_error(input.grad(), nn_test::numerical_gradient(evaluate, x)) < 1e-6);
  for (const auto& p : params) {
    CAPTURE(p.name);
    const Matrix<double> numerical = nn_test::numerical_gradient(evaluate, p.variable.value());
    if (p.name == "0.bias") {
      // BatchNorm right after the conv removes its bias: the true gradient is exactly 0.
      CHECK(p.variable.grad().norm() < 1e-14);
      CHECK(numerical.norm() < 1e-8);
    } else {
      CHECK(nn_test::relative_error(p.variable.grad(), numerical) < 1e-6);
    }
  }
}

TEST_CASE("A layer applied twice in one tape gets correct gradients", "[nn][autograd]") {
  nn::Linear<double> shared(4, 4, Philox(5));
  Matrix<double> x = nn_test::random_matrix(3, 4, 50);
  const std::vector<int> labels{1, 2, 3};
  auto ctx = exact_context();
  auto evaluate = [&](nn::Tape<double>& tape) {
    const nn::Variable<double> in(x);
    auto h = nn::relu(tape, shared.forward(tape, in, ctx));
    return nn::softmax_cross_entropy(tape, shared.forward(tape, h, ctx), labels);
  };
  shared.weight().zero_grad();
  shared.bias().zero_grad();
  nn::Tape<double> tape;
  tape.backward(evaluate(tape));
  auto f = [&] {
    nn::Tape<double> t;
    return evaluate(t).value()(0, 0);
  };
  CHECK(nn_test::relative_error(shared.weight().grad(),
                                nn_test::numerical_gradient(f, shared.weight().value())) < 1e-7);
  CHECK(nn_test::relative_error(shared.bias().grad(),
                                nn_test::numerical_gradient(f, shared.bias().value())) < 1e-7);
}

TEST_CASE("Gradients accumulate across backward passes until zeroed", "[nn][autograd]") {
  nn::Linear<double> layer(3, 2, Philox(6));
  const Matrix<double> x = nn_test::random_matrix(4, 3, 60);
  const std::vector<int> labels{0, 1, 1, 0};
  auto ctx = exact_context();
  auto pass = [&] {
    nn::Tape<double> tape;
    tape.backward(
        nn::softmax_cross_entropy(tape, layer.forward(tape, nn::Variable<double>(x), ctx), labels));
  };
  layer.weight().zero_grad();
  pass();
  const Matrix<double> once = layer.weight().grad();
  pass();
  CHECK(nn_test::relative_error(layer.weight().grad(), 2 * once) < 1e-15);
}

TEST_CASE("A Variable rejects a shape with a negative dimension or a size that overflows",
          "[nn][autograd][errors]") {
  // (−1)·(−1)·1 = 1 matches one column, and 1·2^32·2^32 wraps to 0 columns.
  CHECK_THROWS_WITH((nn::Variable<float>(Matrix<float>::Ones(2, 1), nn::FeatureShape{-1, -1, 1})),
                    Contains("nn::Variable") && Contains("-1 x -1 x 1"));
  constexpr Index k32 = Index{1} << 32;
  CHECK_THROWS_WITH((nn::Variable<float>(Matrix<float>(2, 0), nn::FeatureShape{1, k32, k32})),
                    Contains("channels * height * width = 1 * 4294967296 * 4294967296 overflows"));
  const nn::Variable<float> v(Matrix<float>::Ones(2, 4), nn::FeatureShape{1, 2, 2});
  CHECK_THROWS_AS(v.reshaped(nn::FeatureShape{-2, -2, 1}), std::invalid_argument);
  CHECK(v.reshaped(nn::FeatureShape{4, 1, 1}).shape() == nn::FeatureShape{4, 1, 1});
}
