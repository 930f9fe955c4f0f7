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

TEST_CASE("Layers reject inputs of the wrong shape naming the layer and the values",
          "[nn][layers][errors]") {
  nn::Tape<float> tape;
  nn::Context ctx;
  nn::Linear<float> linear(4, 2, Philox(1));
  CHECK_THROWS_WITH(linear.forward(tape, nn::Variable<float>(Matrix<float>::Ones(3, 5)), ctx),
                    Contains("nn::Linear::forward") && Contains("input has 5 features") &&
                        Contains("in_features = 4"));
  nn::Conv2d<float> conv(3, 2, 3, 1, 0, Philox(2));
  CHECK_THROWS_WITH(
      conv.forward(tape, nn::Variable<float>(Matrix<float>::Ones(1, 2 * 16), {2, 4, 4}), ctx),
      Contains("nn::Conv2d::forward") && Contains("input has 2 channels") &&
          Contains("in_channels = 3"));
  CHECK_THROWS_WITH(
      conv.forward(tape, nn::Variable<float>(Matrix<float>::Ones(1, 3 * 4), {3, 2, 2}), ctx),
      Contains("kernel 3 x 3 is larger than the padded input 2 x 2"));
  nn::BatchNorm2d<float> bn(4);
  CHECK_THROWS_WITH(
      bn.forward(tape, nn::Variable<float>(Matrix<float>::Ones(2, 3 * 4), {3, 2, 2}), ctx),
      Contains("nn::BatchNorm2d::forward") && Contains("3 channels"));
  CHECK_THROWS_AS(nn::Linear<float>(0, 2, Philox(1)), std::invalid_argument);
  CHECK(tape.size() == 0);
}

TEST_CASE("Kaiming initialisation is seeded, per layer, with variance 2 / fan_in",
          "[nn][layers][init]") {
  nn::Linear<double> a(400, 300, Philox(9)), b(400, 300, Philox(9)), c(400, 300, Philox(10));
  CHECK(a.weight().value() == b.weight().value());
  CHECK(a.weight().value() != c.weight().value());
  const auto& w = a.weight().value();
  const double mean = w.mean();
  const double var = (w.array() - mean).square().mean();
  // 120000 draws: the sample variance is within 1% of 2/400 (its relative s.d. is 0.4%).
  CHECK(std::abs(mean) < 5 * std::sqrt(2.0 / 400 / 120000));
  CHECK(var == Approx(2.0 / 400).epsilon(0.02));
  CHECK(a.bias().value().isZero());
  nn::Conv2d<double> conv(8, 16, 3, 1, 1, Philox(11));
  const double conv_var = conv.weight().value().array().square().mean();
  CHECK(conv_var == Approx(2.0 / 72).epsilon(0.1));

  auto m1 = nn_test::small_model();
  auto m2 = nn_test::small_model();
  m2.reset_parameters(Philox(123));
  m1.reset_parameters(Philox(123));
  const auto p1 = m1.parameters(), p2 = m2.parameters();
  for (std::size_t i = 0; i < p1.size(); ++i)
    CHECK(p1[i].variable.value() == p2[i].variable.value());
}

TEST_CASE("Sequential numbers its layers and names its parameters", "[nn][layers]") {
  auto model = nn_test::small_model();
  CHECK(model.size() == 10);
  for (Index i = 0; i < model.size(); ++i)
    CHECK(model[i].layer_id() == static_cast<std::uint64_t>(i));
  const auto params = model.parameters();
  CHECK(params[0].name == "0.weight");
  CHECK(params[1].name == "0.bias");
  CHECK(params[2].name == "1.weight");
  CHECK(params.back().name == "9.bias");
  CHECK(params[0].weight_decay);
  CHECK_FALSE(params[1].weight_decay);
  CHECK_FALSE(params[2].weight_decay);

  nn::Sequential<double> outer;
  outer.emplace<nn::ReLU<double>>();
  auto inner = std::make_unique<nn::Sequential<double>>();
  inner->emplace<nn::ReLU<double>>();
  inner->emplace<nn::ReLU<double>>();
  outer.add(std::move(inner));
  outer.emplace<nn::ReLU<double>>();
  CHECK(outer[0].layer_id() == 0);
  CHECK(outer[2].layer_id() == 3);
  CHECK_THROWS_WITH(outer[3], Contains("index 3 out of range"));
}

TEST_CASE("A per-layer policy overrides the model policy", "[nn][layers][policy]") {
  // FQT model whose layers are all overridden to QAT gives exactly the QAT gradients.
  auto build = [] {
    nn::Sequential<float> m;
    m.emplace<nn::Linear<float>>(6, 8, Philox(1));
    m.emplace<nn::ReLU<float>>();
    m.emplace<nn::Linear<float>>(8, 3, Philox(2));
    return m;
  };
  const Matrix<float> x = nn_test::random_matrix<float>(10, 6, 70);
  const std::vector<int> labels = nn_test::random_labels(10, 3, 71);
  auto grads = [&](nn::Sequential<float>& m, const nn::QuantPolicy& policy) {
    nn::Context ctx;
    ctx.policy = policy;
    ctx.rng = Philox(4);
    nn::Tape<float> tape;
    for (auto& p : m.parameters()) p.variable.zero_grad();
    tape.backward(
        nn::softmax_cross_entropy(tape, m.forward(tape, nn::Variable<float>(x), ctx), labels));
    std::vector<Matrix<float>> g;
    for (auto& p : m.parameters()) g.push_back(p.variable.grad());
    return g;
  };
  auto fqt_model = build();
  auto qat_model = build();
  nn::QuantPolicy fqt4;
  fqt4.grad_input.bits = 2;
  fqt4.grad_weight.bits = 2;
  const auto qat_grads = grads(qat_model, nn::QuantPolicy::with_mode(nn::Mode::QAT));
  const auto fqt_grads = grads(fqt_model, fqt4);
  CHECK(fqt_grads[0] != qat_grads[0]);
  fqt_model[0].set_policy(nn::QuantPolicy::with_mode(nn::Mode::QAT));
  fqt_model[2].set_policy(nn::QuantPolicy::with_mode(nn::Mode::QAT));
  const auto overridden = grads(fqt_model, fqt4);
  for (std::size_t i = 0; i < overridden.size(); ++i) CHECK(overridden[i] == qat_grads[i]);
  // An override on the Sequential itself applies to layers without their own.
  fqt_model[0].clear_policy();
  fqt_model.set_policy(nn::QuantPolicy::with_mode(nn::Mode::QAT));
  const auto from_sequential = grads(fqt_model, fqt4);
  for (std::size_t i = 0; i < overridden.size(); ++i) CHECK(from_sequential[i] == qat_grads[i]);
  nn::QuantPolicy bad;
  bad.weight_bits = 0;
  CHECK_THROWS_WITH(fqt_model[0].set_policy(bad), Contains("weight_bits") && Contains("0"));
}

TEST_CASE("BatchNorm2d uses running statistics outside training", "[nn][layers][bn]") {
  nn::BatchNorm2d<double> bn(2, 0.5);
  const Matrix<double> x = nn_test::random_matrix(6, 2 * 4, 80, 2.0).array() + 3.0;
  nn::Context ctx;
  nn::Tape<double> tape;
  bn.forward(tape, nn::Variable<double>(x, {2, 2, 2}), ctx);
  const auto mean = bn.running_mean(), var = bn.running_var();
  // From (0, 1) with momentum 0.5: half the batch mean and 0.5 + half the unbiased variance.
  for (Index c = 0; c < 2; ++c) {
    Eigen::ArrayXd values(24);
    for (Index s = 0; s < 6; ++s) values.segment(s * 4, 4) = x.row(s).segment(c * 4, 4).array();
    const double batch_mean = values.mean();
    const double unbiased = (values - batch_mean).square().sum() / 23;
    CHECK_THAT(mean(c), Catch::Matchers::WithinRel(0.5 * batch_mean, 1e-12));
    CHECK_THAT(var(c), Catch::Matchers::WithinRel(0.5 + 0.5 * unbiased, 1e-12));
  }
  ctx.training = false;
  const auto y = bn.forward(tape, nn::Variable<double>(x, {2, 2, 2}), ctx);
  CHECK(bn.running_mean() == mean);  // not updated in evaluation
  CHECK(y.value()(0, 0) == Approx((x(0, 0) - mean(0)) / std::sqrt(var(0) + 1e-5)));
}

TEST_CASE("Layer constructors reject sizes that overflow and bad hyper-parameters",
          "[nn][layers][errors]") {
  // in_channels·k·k = 2^31·2^17·2^17 wraps to 0: an empty weight with an infinite Kaiming scale.
  CHECK_THROWS_WITH(nn::Conv2d<float>(Index{1} << 31, 1, Index{1} << 17, 1, 0, Philox(1)),
                    Contains("nn::Conv2d") && Contains("in_channels * kernel * kernel") &&
                        Contains("overflows Index"));
  CHECK_THROWS_WITH(nn::Linear<float>(Index{1} << 32, Index{1} << 32, Philox(1)),
                    Contains("nn::Linear") && Contains("overflows Index"));
  CHECK_THROWS_WITH(nn::MaxPool2d<float>(2, -1), Contains("nn::MaxPool2d") && Contains("-1"));
  CHECK_THROWS_AS(nn::MaxPool2d<float>(2, 0, 2), std::invalid_argument);
  CHECK_THROWS_WITH(nn::BatchNorm2d<float>(3, 0.1f, std::numeric_limits<float>::infinity()),
                    Contains("nn::BatchNorm2d") && Contains("eps inf"));
  CHECK_THROWS_AS(nn::BatchNorm2d<float>(3, std::nanf("")), std::invalid_argument);
  CHECK_THROWS_AS(nn::BatchNorm2d<float>(3, 1.5f), std::invalid_argument);
}

TEST_CASE("A layer whose forward threw records nothing and works on the next forward",
          "[nn][layers][errors]") {
  // A finite input whose range overflows float makes Q_f throw inside the forward op.
  auto ctx = [] {
    nn::Context c;
    c.rng = Philox(8);
    return c;
  }();
  nn::Conv2d<float> conv(2, 3, 3, 1, 1, Philox(3)), twin(2, 3, 3, 1, 1, Philox(3));
  nn::Linear<float> linear(3 * 4 * 4, 2, Philox(4)), linear_twin(3 * 4 * 4, 2, Philox(4));
  nn::Tape<float> tape;
  {
    nn::Tape<float> first;  // a completed pass on a smaller image
    conv.forward(
        first, nn::Variable<float>(nn_test::random_matrix<float>(1, 2 * 3 * 3, 1), {2, 3, 3}, true),
        ctx);
  }
  Matrix<float> huge = nn_test::random_matrix<float>(3, 2 * 4 * 4, 2);
  huge(0, 0) = 3e38f;
  huge(2, 1) = -3e38f;
  CHECK_THROWS_AS(conv.forward(tape, nn::Variable<float>(huge, {2, 4, 4}, true), ctx),
                  std::domain_error);
  CHECK(tape.size() == 0);
  Matrix<float> huge_features = nn_test::random_matrix<float>(3, 48, 6);
  huge_features(1, 0) = 3e38f;
  huge_features(0, 47) = -3e38f;
  CHECK_THROWS_AS(linear.forward(tape, nn::Variable<float>(huge_features, true), ctx),
                  std::domain_error);
  CHECK(tape.size() == 0);

  const Matrix<float> x = nn_test::random_matrix<float>(3, 2 * 4 * 4, 5);
  const std::vector<int> labels{0, 1, 1};
  auto gradients = [&](nn::Conv2d<float>& c, nn::Linear<float>& l) {
    for (auto& p : c.parameters()) p.variable.zero_grad();
    for (auto& p : l.parameters()) p.variable.zero_grad();
    nn::Tape<float> t;
    const nn::Variable<float> in(x, {2, 4, 4});
    const auto h = nn::flatten(nn::relu(t, c.forward(t, in, ctx)));
    t.backward(nn::softmax_cross_entropy(t, l.forward(t, h, ctx), labels));
    return std::vector<Matrix<float>>{c.weight().grad(), c.bias().grad(), l.weight().grad()};
  };
  const auto after_throw = gradients(conv, linear);
  const auto fresh = gradients(twin, linear_twin);
  for (std::size_t i = 0; i < fresh.size(); ++i) {
    CAPTURE(i);
    CHECK(after_throw[i] == fresh[i]);
  }
}
