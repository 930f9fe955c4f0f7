#include "fqt/nn/optim.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

using fqt::Matrix;
namespace nn = fqt::nn;
using Catch::Matchers::Contains;

namespace {
nn::Parameter<double> parameter(double value, double grad, bool decay = true) {
  nn::Variable<double> v(Matrix<double>::Constant(1, 1, value), true);
  v.accumulate_grad(Matrix<double>::Constant(1, 1, grad));
  return {"p", v, decay};
}
}  // namespace

TEST_CASE("SGD follows PyTorch's update rule", "[nn][optim]") {
  // Reference values computed by hand from PyTorch's torch.optim.SGD rule (dampening 0).
  SECTION("plain SGD with weight decay") {
    auto p = parameter(2.0, 0.5);
    nn::SGD<double> sgd({p}, {0.1, 0.0, false, 0.01});
    sgd.step();
    CHECK(p.variable.value()(0, 0) == Approx(2.0 - 0.1 * (0.5 + 0.02)));
  }
  SECTION("momentum: v1 = g1, v2 = mu v1 + g2") {
    auto p = parameter(1.0, 1.0);
    nn::SGD<double> sgd({p}, {0.1, 0.9, false, 0.0});
    sgd.step();
    CHECK(p.variable.value()(0, 0) == Approx(0.9));
    p.variable.grad()(0, 0) = 2.0;
    sgd.step();
    CHECK(p.variable.value()(0, 0) == Approx(0.9 - 0.1 * (0.9 * 1.0 + 2.0)));
  }
  SECTION("Nesterov: d = g + mu v") {
    auto p = parameter(1.0, 1.0);
    nn::SGD<double> sgd({p}, {0.1, 0.9, true, 0.0});
    sgd.step();
    CHECK(p.variable.value()(0, 0) == Approx(1.0 - 0.1 * (1.0 + 0.9 * 1.0)));
    p.variable.grad()(0, 0) = 2.0;
    sgd.step();
    const double v2 = 0.9 * 1.0 + 2.0;
    CHECK(p.variable.value()(0, 0) == Approx(0.81 - 0.1 * (2.0 + 0.9 * v2)));
  }
  SECTION("parameters without weight decay or without a gradient") {
    auto p = parameter(2.0, 0.5, false);
    nn::Variable<double> idle(Matrix<double>::Constant(1, 1, 3.0), true);
    nn::SGD<double> sgd({p, {"idle", idle, true}}, {0.1, 0.0, false, 0.5});
    sgd.step();
    CHECK(p.variable.value()(0, 0) == Approx(2.0 - 0.05));
    CHECK(idle.value()(0, 0) == 3.0);
    sgd.zero_grad();
    CHECK(p.variable.grad()(0, 0) == 0.0);
    CHECK(idle.grad().rows() == 1);
  }
}

TEST_CASE("SGD refuses a non-finite gradient and leaves every weight unchanged",
          "[nn][optim][errors]") {
  auto good = parameter(1.0, 1.0);
  nn::Variable<double> bad(Matrix<double>::Constant(2, 2, 5.0), true);
  Matrix<double> g = Matrix<double>::Ones(2, 2);
  g(1, 0) = std::numeric_limits<double>::quiet_NaN();
  bad.accumulate_grad(std::move(g));
  nn::SGD<double> sgd({good, {"layer.weight", bad, true}}, {0.1, 0.9, false, 0.0});
  CHECK_THROWS_AS(sgd.step(), std::domain_error);
  CHECK_THROWS_WITH(sgd.step(), Contains("nn::SGD::step") && Contains("'layer.weight'") &&
                                    Contains("(1, 0)") && Contains("nan"));
  CHECK(good.variable.value()(0, 0) == 1.0);
  CHECK(bad.value() == Matrix<double>::Constant(2, 2, 5.0));
}

TEST_CASE("SGD refuses an update that would overflow a weight", "[nn][optim][errors]") {
  auto small = parameter(1.0, 1.0);
  auto huge = parameter(1.0, 1e308);
  nn::SGD<double> sgd({small, huge}, {1e10, 0.9, false, 0.0});
  CHECK_THROWS_WITH(sgd.step(),
                    Contains("nn::SGD::step") && Contains("parameter 'p'") && Contains("inf"));
  CHECK(small.variable.value()(0, 0) == 1.0);
  CHECK(huge.variable.value()(0, 0) == 1.0);
  // The momentum buffers were not committed either: a sane step afterwards starts them afresh.
  huge.variable.grad()(0, 0) = 1.0;
  sgd.set_learning_rate(0.1);
  sgd.step();
  CHECK(huge.variable.value()(0, 0) == Approx(0.9));
  CHECK(small.variable.value()(0, 0) == Approx(0.9));
}

TEST_CASE("SGD rejects bad hyper-parameters", "[nn][optim][errors]") {
  CHECK_THROWS_WITH(nn::SGD<double>({}, {0.1, 1.0, false, 0.0}), Contains("momentum"));
  CHECK_THROWS_WITH(nn::SGD<double>({}, {0.1, 0.0, true, 0.0}), Contains("nesterov"));
  CHECK_THROWS_WITH(nn::SGD<double>({}, {-1.0, 0.0, false, 0.0}), Contains("learning rate"));
  CHECK_THROWS_WITH(nn::SGD<double>({}, {0.1, 0.0, false, -1.0}), Contains("weight_decay"));
  nn::SGD<double> sgd({}, {});
  CHECK_THROWS_AS(sgd.set_learning_rate(std::nan("")), std::invalid_argument);
}

TEST_CASE("Step and cosine schedules with linear warm-up", "[nn][optim][schedule]") {
  const nn::StepSchedule step(0.1, {30, 10}, 0.1, 5);
  CHECK(step(0) == Approx(0.02));
  CHECK(step(4) == Approx(0.1));
  CHECK(step(9) == Approx(0.1));
  CHECK(step(10) == Approx(0.01));
  CHECK(step(30) == Approx(0.001));

  const nn::CosineSchedule cosine(0.4, 104, 4, 0.0);
  CHECK(cosine(0) == Approx(0.1));
  CHECK(cosine(3) == Approx(0.4));
  CHECK(cosine(4) == Approx(0.4));
  CHECK(cosine(54) == Approx(0.2));
  CHECK(cosine(104) == Approx(0.0).margin(1e-15));
  CHECK(cosine(1000) == Approx(0.0).margin(1e-15));
  const nn::CosineSchedule floor(1.0, 10, 0, 0.1);
  CHECK(floor(10) == Approx(0.1));
  CHECK_THROWS_WITH(nn::CosineSchedule(0.1, 5, 5), Contains("must exceed warmup_steps"));
}

TEST_CASE("SGD refuses a parameter resized under its momentum buffer and changes nothing",
          "[nn][optim][errors]") {
  auto p = parameter(1.0, 1.0);
  auto other = parameter(2.0, 1.0);
  nn::SGD<double> sgd({other, p}, {0.1, 0.9, false, 0.0});
  sgd.step();  // the momentum buffers are 1 x 1 now
  p.variable.value() = Matrix<double>::Ones(2, 2);
  p.variable.grad() = Matrix<double>::Ones(2, 2);
  const double other_before = other.variable.value()(0, 0);
  CHECK_THROWS_WITH(sgd.step(), Contains("nn::SGD::step") && Contains("momentum buffer") &&
                                    Contains("must be 2 x 2, got 1 x 1"));
  CHECK(other.variable.value()(0, 0) == other_before);
  CHECK(p.variable.value() == Matrix<double>::Ones(2, 2));
}

TEST_CASE("SGD and the schedules reject infinite hyper-parameters", "[nn][optim][errors]") {
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(nn::SGD<double>({}, {0.1, 0.0, false, inf}), Contains("weight_decay"));
  CHECK_THROWS_AS(nn::StepSchedule(inf, {10}), std::invalid_argument);
  CHECK_THROWS_AS(nn::StepSchedule(0.1, {10}, inf), std::invalid_argument);
  CHECK_THROWS_AS(nn::CosineSchedule(inf, 10), std::invalid_argument);
  CHECK_THROWS_AS(nn::CosineSchedule(0.1, 10, 0, inf), std::invalid_argument);
  CHECK_THROWS_AS(nn::CosineSchedule(std::nan(""), 10), std::invalid_argument);
}
