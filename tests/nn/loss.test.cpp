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

TEST_CASE("Softmax cross-entropy gradient matches finite differences, with label smoothing",
          "[nn][loss][gradcheck]") {
  const double smoothing = GENERATE(0.0, 0.1);
  Matrix<double> z = nn_test::random_matrix(5, 4, 7, 3.0);
  const std::vector<int> labels{0, 3, 1, 1, 2};
  Matrix<double> g(5, 4), none;
  const double loss = nn::softmax_cross_entropy(z, labels, g, smoothing);
  CHECK(loss > 0);
  auto f = [&] { return nn::softmax_cross_entropy(z, labels, none, smoothing); };
  CHECK(nn_test::relative_error(g, nn_test::numerical_gradient(f, z)) < 1e-8);
  // Each row of the gradient sums to 0 (softmax minus a probability vector, over N).
  CHECK(g.rowwise().sum().cwiseAbs().maxCoeff() < 1e-15);
}

TEST_CASE("Softmax cross-entropy is stable for large logits and checks its labels", "[nn][loss]") {
  Matrix<float> z(2, 3);
  z << 1000.f, 0.f, -1000.f, 0.f, 0.f, 0.f;
  Matrix<float> g(2, 3);
  const float loss = nn::softmax_cross_entropy(z, std::vector<int>{0, 2}, g);
  CHECK(std::isfinite(loss));
  CHECK(loss == Approx(std::log(3.0f) / 2));
  // (softmax − onehot)/N: softmax is (1, 0, 0) in float for the first row, uniform for the second.
  Matrix<float> expected(2, 3);
  expected << 0.f, 0.f, 0.f, 1.f / 6, 1.f / 6, -1.f / 3;
  CHECK(nn_test::relative_error(g, expected) < 1e-6);
  CHECK_THROWS_WITH(nn::softmax_cross_entropy(z, std::vector<int>{0, 3}, g),
                    Contains("labels[1] = 3") && Contains("[0, 3)"));
  CHECK_THROWS_WITH(nn::softmax_cross_entropy(z, std::vector<int>{0}, g),
                    Contains("labels has size 1"));
  CHECK(nn::count_correct(z, std::vector<int>{0, 1}) == 1);
}

TEST_CASE("Softmax cross-entropy of an empty batch is an error, not a NaN", "[nn][loss][errors]") {
  Matrix<float> z(0, 3), g(0, 3);
  CHECK_THROWS_WITH(nn::softmax_cross_entropy(z, std::vector<int>{}, g),
                    Contains("nn::softmax_cross_entropy") && Contains("empty"));
  Matrix<float> nan_logits = Matrix<float>::Zero(2, 3);
  nan_logits(1, 2) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(nn::count_correct(nan_logits, std::vector<int>{0, 2}),
                    Contains("nn::count_correct") && Contains("(1, 2)"));
}
