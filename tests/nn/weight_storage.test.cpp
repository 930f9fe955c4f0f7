// Weights stored as codes only: stochastic-rounding writes are unbiased with the exact mean
// square error they report, codes stay on their grid, and QuantizedSGD's step is, in expectation,
// SGD's step, with the memory it saves.
#include "fqt/nn/weight_storage.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "fqt/nn/optim_quantized.hpp"
#include "support/nn_gradcheck.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;
namespace nn = fqt::nn;
using Catch::Matchers::Contains;

namespace {

// The exact mean and variance of one element's stochastic rounding onto step s.
struct Moments {
  double mean, variance;
};
Moments rounding_moments(double x, double s) {
  if (s == 0) return {x, 0};
  const double y = x / s, fl = std::floor(y), f = y - fl;
  const double p = nn::QuantizedTensor<std::int8_t>::round_up_probability(f);
  return {s * (fl + p), s * s * p * (1 - p)};
}

// The step a write fits to a group whose largest magnitude is `largest`.
template <class Code>
double fitted_step(double largest) {
  const double exact = largest / nn::QuantizedTensor<Code>::kMaxCode;
  float s = static_cast<float>(exact);
  if (double(s) < exact) s = std::nextafter(s, std::numeric_limits<float>::infinity());
  return s;
}

template <class Code>
void check_unbiased_with_exact_mse() {
  using T = nn::QuantizedTensor<Code>;
  // Rows of very different ranges (one step each), an exact zero and an all-zero row.
  Matrix<double> x = nn_test::random_matrix(4, 9, 11);
  x.row(1) *= 1e-3;
  x(2, 4) = 0;
  x.row(3).setZero();
  T t(4, 9, true);
  const int draws = 4000;
  Matrix<double> sum = Matrix<double>::Zero(4, 9);
  double mse_sum = 0, reported = -1;
  Matrix<double> q(4, 9);
  for (int d = 0; d < draws; ++d) {
    const double mse = t.write(x, Philox(5).substream(static_cast<std::uint64_t>(d)));
    if (d == 0) reported = mse;
    CHECK(mse == reported);  // the grid depends on x only, so the error's expectation does too
    t.read(q);
    sum += q;
    mse_sum += (q - x).squaredNorm();
    bool on_grid = true;
    for (const Code c : t.codes()) on_grid = on_grid && std::abs(int(c)) <= T::kMaxCode;
    REQUIRE(on_grid);
  }
  // Each row's step is fitted to its largest magnitude, which lands on ±kMaxCode exactly.
  double exact_mse = 0, mse_variance = 0;
  for (Index r = 0; r < 4; ++r) {
    const double s = fitted_step<Code>(x.row(r).cwiseAbs().maxCoeff());
    CHECK(double(t.step(r)) == s);
    for (Index c = 0; c < 9; ++c) {
      const Moments m = rounding_moments(x(r, c), s);
      const double mean = sum(r, c) / draws;
      // 6 standard errors of the mean of `draws` roundings, plus the 2⁻³³-of-a-step resolution.
      CHECK(std::abs(mean - x(r, c)) <= 6 * std::sqrt(m.variance / draws) + s * 0x1.0p-32);
      CHECK(std::abs(mean - m.mean) <= 6 * std::sqrt(m.variance / draws) + 1e-15);
      // The squared error (B − f)²·s² of one element: its mean and variance.
      const double y = s > 0 ? x(r, c) / s : 0, f = y - std::floor(y);
      const double p = nn::QuantizedTensor<Code>::round_up_probability(f);
      const double up = (1 - f) * (1 - f) * s * s, down = f * f * s * s;
      const double e = p * up + (1 - p) * down;
      exact_mse += e;
      mse_variance += p * up * up + (1 - p) * down * down - e * e;
    }
  }
  CHECK(reported == Approx(exact_mse).epsilon(1e-12));
  CHECK(std::abs(mse_sum / draws - reported) <= 6 * std::sqrt(mse_variance / draws) + 1e-18);
  // The all-zero row stays exact.
  for (Index c = 0; c < 9; ++c) CHECK(t.value(3, c) == 0);
}

}  // namespace

TEST_CASE("QuantizedTensor: stochastic writes are unbiased and report their exact error",
          "[nn][weights]") {
  SECTION("8-bit codes") { check_unbiased_with_exact_mse<std::int8_t>(); }
  SECTION("16-bit codes") { check_unbiased_with_exact_mse<std::int16_t>(); }
}

TEST_CASE("QuantizedTensor: an update far below one step moves the mean by the update",
          "[nn][weights]") {
  // The stall of plain rounding: w − δ with δ = 1% of a step rounds back to w every time under
  // round-to-nearest; stochastic rounding moves it by δ on average.
  nn::QuantizedTensor<std::int8_t> t(1, 64, false);
  Matrix<double> w = Matrix<double>::Zero(1, 64);
  for (Index c = 0; c < 64; ++c) w(0, c) = double(c - 32) / 32.0;
  t.write(w, Philox(1));
  Matrix<double> on_grid(1, 64);
  t.read(on_grid);
  const double s = t.step(0);
  Matrix<double> moved = on_grid;
  moved(0, 10) -= 1e-2 * s;  // not the largest element: the step stays the same
  const int draws = 20000;
  double sum = 0;
  Matrix<double> q(1, 64);
  for (int d = 0; d < draws; ++d) {
    t.write(moved, Philox(2).substream(static_cast<std::uint64_t>(d)));
    t.read(q);
    sum += q(0, 10);
    CHECK(t.step(0) == s);
  }
  const Moments m = rounding_moments(moved(0, 10), s);
  CHECK(std::abs(sum / draws - moved(0, 10)) <= 6 * std::sqrt(m.variance / draws) + s * 0x1.0p-32);
  CHECK(sum / draws < on_grid(0, 10));  // it did move
}

TEST_CASE("QuantizedTensor rejects bad input and is unchanged after it", "[nn][weights][errors]") {
  nn::QuantizedTensor<std::int16_t> t(2, 3, true);
  const Matrix<double> x = nn_test::random_matrix(2, 3, 3);
  t.write(x, Philox(1));
  const auto codes = t.codes();
  const auto steps = t.steps();
  Matrix<double> bad = x;
  bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(t.write(bad, Philox(2)), std::domain_error);
  CHECK_THROWS_WITH(t.write(bad, Philox(2)), Contains("value (1, 2)"));
  bad(1, 2) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(t.write(bad, Philox(2)), std::domain_error);
  bad(1, 2) = 1e300;  // its step would pass the largest float
  CHECK_THROWS_WITH(t.write(bad, Philox(2)), Contains("largest float"));
  CHECK_THROWS_AS(t.write(Matrix<double>::Zero(3, 2), Philox(2)), std::invalid_argument);
  CHECK(t.codes() == codes);
  CHECK(t.steps() == steps);
  CHECK_THROWS_AS(nn::QuantizedTensor<std::int8_t>(-1, 2, true), std::invalid_argument);
}

namespace {

// A parameter on the exact grid of b-bit codes: multiples of 2^−(b−1) with the largest of each row
// (2^(b−1) − 1)·2^−(b−1), so that the optimizer's first write keeps it exactly and every trial
// starts from the same weights.
nn::Parameter<double> grid_parameter(Index rows, Index cols, int bits) {
  Matrix<double> w(rows, cols);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) w(r, c) = double((r * 37 + c * 11) % 255 - 127) / 128.0;
  const double top = double(1 << (bits - 1));
  for (Index r = 0; r < rows; ++r) w(r, 0) = (top - 1) / top;
  nn::Variable<double> v(w, true);
  return {"w", v, true};
}

}  // namespace

TEST_CASE("QuantizedSGD: one step is SGD's step in expectation, with the exact variance",
          "[nn][weights][optim]") {
  const int bits = GENERATE(8, 16);
  CAPTURE(bits);
  const Index rows = 3, cols = 8;
  const Matrix<double> grad = nn_test::random_matrix(rows, cols, 21, 0.5);
  const nn::SgdOptions sgd{0.1, 0.9, false, 1e-2};
  // SGD's step from the same weights.
  auto reference = grid_parameter(rows, cols, bits);
  reference.variable.accumulate_grad(Matrix<double>(grad));
  const Matrix<double> w0 = reference.variable.value();
  nn::SGD<double>({reference}, sgd).step();
  const Matrix<double> expected = reference.variable.value();

  const int draws = 3000;
  Matrix<double> sum = Matrix<double>::Zero(rows, cols);
  double reported = -1;
  for (int d = 0; d < draws; ++d) {
    auto p = grid_parameter(rows, cols, bits);
    nn::WeightStorageOptions storage;
    storage.weight_bits = bits;
    storage.momentum_bits = bits;
    storage.rng = Philox(7).substream(static_cast<std::uint64_t>(d));
    nn::QuantizedSGD<double> opt({p}, sgd, storage);
    REQUIRE(p.variable.value() == w0);  // on the grid: the first write is exact
    CHECK(opt.initial_rounding().weights == 0);
    p.variable.accumulate_grad(Matrix<double>(grad));
    opt.step();
    sum += p.variable.value();
    if (d == 0) reported = opt.last_rounding().weights;
    CHECK(opt.last_rounding().weights == reported);
  }
  double exact = 0;
  for (Index r = 0; r < rows; ++r) {
    const double largest = expected.row(r).cwiseAbs().maxCoeff();
    const double s =
        bits == 8 ? fitted_step<std::int8_t>(largest) : fitted_step<std::int16_t>(largest);
    for (Index c = 0; c < cols; ++c) {
      const Moments m = rounding_moments(expected(r, c), s);
      exact += m.variance;
      CHECK(std::abs(sum(r, c) / draws - expected(r, c)) <=
            6 * std::sqrt(m.variance / draws) + s * 0x1.0p-32 + 1e-15);
    }
  }
  // The reported error is the variance plus the (2⁻³³-step) bias terms.
  CHECK(reported == Approx(exact).epsilon(1e-6).margin(1e-30));
}

TEST_CASE("QuantizedSGD: int8 weights and 8-bit momentum take under 0.3x fp32's bytes",
          "[nn][weights][memory]") {
  nn::Variable<float> w(nn_test::random_matrix<float>(64, 288, 31), true);
  nn::Variable<float> b(Matrix<float>::Zero(64, 1), true);
  std::vector<nn::Parameter<float>> params{{"w", w, true}, {"b", b, false}};
  nn::WeightStorageOptions storage;
  storage.weight_bits = 8;
  storage.momentum_bits = 8;
  nn::QuantizedSGD<float> opt(params, {0.05, 0.9, false, 1e-4}, storage);
  w.accumulate_grad(nn_test::random_matrix<float>(64, 288, 32));
  b.accumulate_grad(nn_test::random_matrix<float>(64, 1, 33));
  opt.step();
  const nn::OptimizerMemory m = opt.memory();
  CHECK(m.parameters == 64 * 288 + 64);
  // fp32 master weights and fp32 momentum: 8 bytes per parameter.
  const double fp32 = 8.0 * double(m.parameters);
  CHECK(double(m.weights + m.state) <= 0.3 * fp32);
  // The codes: one byte per weight plus a float step per row; the biases stay in float.
  CHECK(m.weights == std::size_t(64 * 288 + 64 * 4 * 2 + 64 * 4));
  CHECK(m.views == std::size_t(64 * 288 * 4));
}

TEST_CASE("QuantizedSGD rejects bad options and bad steps, and changes nothing then",
          "[nn][weights][errors]") {
  auto p = grid_parameter(2, 4, 8);
  nn::WeightStorageOptions storage;
  storage.weight_bits = 7;
  CHECK_THROWS_WITH(nn::QuantizedSGD<double>({p}, {}, storage), Contains("weight_bits"));
  storage.weight_bits = 8;
  storage.momentum_bits = 4;
  CHECK_THROWS_WITH(nn::QuantizedSGD<double>({p}, {}, storage), Contains("momentum_bits"));
  storage.momentum_bits = 16;
  nn::QuantizedSGD<double> opt({p}, {0.1, 0.9, false, 0.0}, storage);
  const Matrix<double> before = p.variable.value();
  Matrix<double> g = Matrix<double>::Ones(2, 4);
  g(1, 3) = std::numeric_limits<double>::quiet_NaN();
  p.variable.accumulate_grad(std::move(g));
  CHECK_THROWS_AS(opt.step(), std::domain_error);
  CHECK(p.variable.value() == before);
  CHECK(opt.steps() == 0);
  p.variable.grad().setConstant(1e306);  // an update past what float steps can hold
  CHECK_THROWS_WITH(opt.step(), Contains("exceeds what its codes can hold"));
  CHECK(p.variable.value() == before);
  p.variable.grad().setConstant(0.5);
  opt.step();
  CHECK(opt.steps() == 1);
  CHECK(p.variable.value() != before);
}
