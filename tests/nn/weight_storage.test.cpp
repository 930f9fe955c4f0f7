// Weights stored as codes only: stochastic-rounding writes are unbiased with the exact mean
// square error they report, codes stay on their grid, QuantizedSGD's step is, in expectation,
// SGD's step, with the memory it saves, and the layers' forward product multiplies 8-bit codes
// themselves.
#include "fqt/nn/weight_storage.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "fqt/nn/backends/int8.hpp"
#include "fqt/nn/layers.hpp"
#include "fqt/nn/loss.hpp"
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
    REQUIRE(opt.last_rounding_by_parameter().size() == 1);
    CHECK(opt.last_rounding_by_parameter()[0].weights == reported);
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
  // The update runs row by row: its workspace is four rows of the weight and the bias's update
  // and momentum, not a float copy of the weight.
  CHECK(m.workspace == std::size_t((4 * 288 + 2 * 64) * 4));
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

namespace {

// A layer of each kind with a weight, its input (N = 4) and a forward pass through it.
struct LayerCase {
  std::shared_ptr<nn::Module<float>> layer;
  nn::Variable<float> input;
};

LayerCase layer_case(bool conv) {
  if (conv) {
    auto layer = std::make_shared<nn::Conv2d<float>>(2, 3, 3, 1, 1, Philox(4));
    return {layer, nn::Variable<float>(nn_test::random_matrix<float>(4, 2 * 5 * 5, 41),
                                       nn::FeatureShape{2, 5, 5})};
  }
  auto layer = std::make_shared<nn::Linear<float>>(12, 5, Philox(3));
  return {layer, nn::Variable<float>(nn_test::random_matrix<float>(4, 12, 42), true)};
}

Matrix<float> forward(nn::Module<float>& layer, const nn::Variable<float>& input,
                      const nn::QuantPolicy& policy) {
  nn::Tape<float> tape;
  nn::Context context;
  context.policy = policy;
  return layer.forward(tape, input, context).value();
}

// The forward pass with Q_f(W) replaced by `weight` itself: Mode::Exact on Q_f(X) and `weight`.
Matrix<float> forward_on(nn::Module<float>& layer, const nn::Variable<float>& input,
                         const nn::QuantPolicy& policy, const Matrix<float>& weight) {
  nn::OperandStore<float> x;
  nn::store_forward_operand<float>(policy, policy.activation_spec(), input.value(), x, "test",
                                   "input");
  auto params = layer.parameters();
  const Matrix<float> saved = params[0].variable.value();
  params[0].variable.value() = weight;
  const auto slot = params[0].stored->codes;
  params[0].stored->codes = nullptr;
  nn::QuantPolicy exact = policy;
  exact.mode = nn::Mode::Exact;
  exact.backend = nullptr;
  const Matrix<float> y = forward(layer, nn::Variable<float>(x.values(), input.shape()), exact);
  params[0].variable.value() = saved;
  params[0].stored->codes = slot;
  return y;
}

double max_abs(const Matrix<float>& m) { return double(m.cwiseAbs().maxCoeff()); }

}  // namespace

TEST_CASE("With 8-bit stored weights the forward product multiplies the codes, on every backend",
          "[nn][weights][forward]") {
  const bool conv = GENERATE(false, true);
  CAPTURE(conv);
  LayerCase c = layer_case(conv);
  const nn::Parameter<float> weight = c.layer->parameters()[0];
  REQUIRE(weight.stored != nullptr);
  CHECK(c.layer->parameters()[1].stored == nullptr);  // biases stay in float
  const nn::QuantPolicy qat = nn::QuantPolicy::with_mode(nn::Mode::QAT);
  // Re-quantizing the float view (what the layer does without stored codes).
  nn::WeightStorageOptions storage;
  storage.weight_bits = 8;
  storage.rng = Philox(9);
  nn::QuantizedSGD<float> opt(c.layer->parameters(), {0.05, 0.9, false, 1e-4}, storage);
  const auto* codes = std::get_if<nn::QuantizedTensor<std::int8_t>>(&opt.stored_weight(0));
  REQUIRE(codes != nullptr);
  CHECK(weight.stored->codes == codes);
  const Matrix<float> view = weight.variable.value();
  const Matrix<float> on_codes = forward_on(*c.layer, c.input, qat, view);
  const Matrix<float> y = forward(*c.layer, c.input, qat);
  const double tolerance = 1e-5 * max_abs(on_codes);
  CHECK(max_abs(y - on_codes) <= tolerance);
  // Q_f of the view lands on another (per-tensor) grid than the codes' per-row one.
  weight.stored->codes = nullptr;
  CHECK(max_abs(forward(*c.layer, c.input, qat) - on_codes) > 100 * tolerance);
  weight.stored->codes = codes;
  // Below 8 forward bits the view is quantized again.
  nn::QuantPolicy four = qat;
  four.weight_bits = 4;
  CHECK(max_abs(forward(*c.layer, c.input, four) - on_codes) > 100 * tolerance);

  // An integer backend multiplies the same codes, stored with one step per tensor.
  nn::QuantPolicy int8 = qat;
  int8.backend = nn::int8_backend();
  CHECK_THROWS_WITH(forward(*c.layer, c.input, int8),
                    Contains("one step per row") && Contains("per_row = false"));
  storage.per_row = false;
  nn::QuantizedSGD<float> per_tensor(c.layer->parameters(), {0.05, 0.9, false, 1e-4}, storage);
  const Matrix<float> per_tensor_view = weight.variable.value();
  const Matrix<float> simulated = forward(*c.layer, c.input, qat);
  CHECK(max_abs(simulated - forward_on(*c.layer, c.input, qat, per_tensor_view)) <= tolerance);
  CHECK(max_abs(forward(*c.layer, c.input, int8) - simulated) <= tolerance);
}

TEST_CASE(
    "QuantizedSGD's codes are the weights: the view is output only, and the layers' slots "
    "are cleared with the optimizer",
    "[nn][weights][forward]") {
  nn::Linear<float> layer(6, 3, Philox(5));
  const nn::Parameter<float> weight = layer.parameters()[0];
  {
    nn::WeightStorageOptions storage;
    storage.weight_bits = 8;
    // Two optimizers from the same weights and noise; one view is overwritten before the step.
    nn::Linear<float> twin(6, 3, Philox(5));
    nn::QuantizedSGD<float> opt(layer.parameters(), {0.1, 0.9, false, 1e-2}, storage);
    nn::QuantizedSGD<float> reference(twin.parameters(), {0.1, 0.9, false, 1e-2}, storage);
    weight.variable.value().setConstant(3.0f);
    for (auto* p : {&layer, &twin}) {
      p->parameters()[0].variable.accumulate_grad(nn_test::random_matrix<float>(3, 6, 51));
    }
    opt.step();
    reference.step();
    CHECK(weight.variable.value() == twin.weight().value());
    CHECK(std::get<nn::QuantizedTensor<std::int8_t>>(opt.stored_weight(0)).codes() ==
          std::get<nn::QuantizedTensor<std::int8_t>>(reference.stored_weight(0)).codes());
    REQUIRE(weight.stored->codes != nullptr);
    // Moving the optimizer keeps the slot on the same codes.
    nn::QuantizedSGD<float> moved(std::move(opt));
    CHECK(weight.stored->codes ==
          std::get_if<nn::QuantizedTensor<std::int8_t>>(&moved.stored_weight(0)));
  }
  CHECK(weight.stored->codes == nullptr);
  // 16-bit codes are read through the view: the slot stays empty.
  nn::WeightStorageOptions storage;
  storage.weight_bits = 16;
  nn::QuantizedSGD<float> opt(layer.parameters(), {0.1, 0.0, false, 0.0}, storage);
  CHECK(weight.stored->codes == nullptr);
}

TEST_CASE("A tensor from its parts is checked, and QuantizedSGD::load_weight replaces the codes",
          "[nn][weights][errors]") {
  using T8 = nn::QuantizedTensor<std::int8_t>;
  CHECK_THROWS_WITH(T8(2, 3, true, std::vector<std::int8_t>(5), {1.0f, 1.0f}),
                    Contains("has 6 codes, got 5"));
  CHECK_THROWS_WITH(T8(2, 3, true, std::vector<std::int8_t>(6), {1.0f}),
                    Contains("has 2 steps, got 1"));
  CHECK_THROWS_WITH(T8(1, 2, false, {0, -128}, {1.0f}), Contains("code 1 is -128"));
  CHECK_THROWS_AS(T8(1, 2, false, {0, 1}, {std::numeric_limits<float>::quiet_NaN()}),
                  std::domain_error);
  CHECK_THROWS_WITH(T8(1, 2, false, {0, 1}, {-1.0f}), Contains("step 0 is -1"));
  const T8 t(1, 2, false, {-127, 5}, {0.5f});
  CHECK(t.value(0, 0) == -63.5);
  CHECK(t.value(0, 1) == 2.5);

  nn::Linear<float> layer(2, 1, Philox(6));
  nn::WeightStorageOptions storage;
  storage.weight_bits = 8;
  storage.per_row = false;
  nn::QuantizedSGD<float> opt(layer.parameters(), {0.1, 0.9, false, 0.0}, storage);
  CHECK_THROWS_WITH(opt.load_weight(1, t), Contains("'bias' is not stored"));
  CHECK_THROWS_WITH(opt.load_weight(0, nn::QuantizedTensor<std::int16_t>(1, 2, false)),
                    Contains("stored in 8 bits, got 16-bit codes"));
  CHECK_THROWS_WITH(opt.load_weight(0, T8(2, 1, false)), Contains("is 1 x 2, the codes 2 x 1"));
  CHECK_THROWS_WITH(opt.load_weight(0, T8(1, 2, true)), Contains("one step, the codes a step"));
  CHECK_THROWS_WITH(opt.load_weight(7, t), Contains("parameter 7 of 2"));
  opt.load_weight(0, t);
  CHECK(layer.weight().value()(0, 0) == -63.5f);
  CHECK(layer.weight().value()(0, 1) == 2.5f);
  const auto& stored = std::get<T8>(opt.stored_weight(0));
  CHECK(stored.codes() == t.codes());
  CHECK(layer.parameters()[0].stored->codes == &stored);
}

TEST_CASE("QuantizedSGD with keep_views = false trains as with views, on the codes' bytes alone",
          "[nn][weights][forward][memory]") {
  const bool conv = GENERATE(false, true);
  CAPTURE(conv);
  // Two copies of a layer, one keeping its float view, one not: the same steps give the same
  // codes, the same outputs and the same gradients.
  LayerCase kept = layer_case(conv), freed = layer_case(conv);
  const nn::QuantPolicy fqt = nn::QuantPolicy::with_mode(nn::Mode::FQT);
  nn::WeightStorageOptions storage;
  storage.weight_bits = 8;
  storage.momentum_bits = 8;
  storage.rng = Philox(12);
  const nn::SgdOptions sgd{0.05, 0.9, false, 1e-3};
  {
    nn::QuantizedSGD<float> with_views(kept.layer->parameters(), sgd, storage);
    storage.keep_views = false;
    nn::QuantizedSGD<float> without(freed.layer->parameters(), sgd, storage);
    const nn::Parameter<float> weight = freed.layer->parameters()[0];
    CHECK(weight.variable.value().size() == 0);
    CHECK(without.memory().views == 0);
    CHECK(with_views.memory().views > 0);
    CHECK(without.memory().weights == with_views.memory().weights);
    for (int step = 0; step < 3; ++step) {
      Matrix<float> outputs[2];
      int k = 0;
      for (auto* run : {&kept, &freed}) {
        auto* opt = run == &kept ? &with_views : &without;
        opt->zero_grad();
        nn::Tape<float> tape;
        nn::Context context;
        context.policy = fqt;
        context.step = static_cast<std::uint64_t>(step);
        const auto y = run->layer->forward(tape, run->input, context);
        outputs[k++] = y.value();
        tape.backward(nn::softmax_cross_entropy(tape, y, std::vector<int>{0, 1, 2, 3}));
        opt->step();
      }
      CHECK(outputs[0] == outputs[1]);
      CHECK(weight.variable.grad() == kept.layer->parameters()[0].variable.grad());
      CHECK(std::get<nn::QuantizedTensor<std::int8_t>>(without.stored_weight(0)).codes() ==
            std::get<nn::QuantizedTensor<std::int8_t>>(with_views.stored_weight(0)).codes());
    }
    CHECK(weight.variable.value().size() == 0);
    CHECK(without.memory().views == 0);
    // A pass that reads float weights says why it cannot.
    nn::Tape<float> tape;
    nn::Context context;
    context.policy = nn::QuantPolicy::with_mode(nn::Mode::Exact);
    CHECK_THROWS_WITH(freed.layer->forward(tape, freed.input, context),
                      Contains("float view is released") && Contains("keep_views"));
  }
  // The destroyed optimizer gave the values back: those of the codes the other one kept.
  CHECK(freed.layer->parameters()[0].variable.value() ==
        kept.layer->parameters()[0].variable.value());
  CHECK(freed.layer->parameters()[0].stored->codes == nullptr);

  storage.weight_bits = 16;
  CHECK_THROWS_WITH(nn::QuantizedSGD<float>(freed.layer->parameters(), sgd, storage),
                    Contains("keep_views = false needs weight_bits 8"));
  storage.weight_bits = 8;
  nn::Variable<float> loose(nn_test::random_matrix<float>(2, 3, 61), true);
  CHECK_THROWS_WITH(nn::QuantizedSGD<float>({{"loose", loose, true}}, sgd, storage),
                    Contains("'loose' has no slot for its codes"));
  CHECK(loose.value().size() == 6);
}
