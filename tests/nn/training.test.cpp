#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "fqt/core/parallel.hpp"
#include "fqt/nn.hpp"
#include "support/kinds.hpp"
#include "support/nn_gradcheck.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;
namespace nn = fqt::nn;

namespace {

// Four Gaussian blobs in 16 dimensions (centres 3 apart on the axes, unit noise).
void blobs(Index n, std::uint64_t seed, Matrix<float>& x, std::vector<int>& labels) {
  x = nn_test::random_matrix<float>(n, 16, seed);
  labels = nn_test::random_labels(n, 4, seed);
  for (Index i = 0; i < n; ++i) x(i, 2 * labels[static_cast<std::size_t>(i)]) += 3.0f;
}

// Two classes of 8×8 images: bright top half or bright bottom half, plus noise.
void stripes(Index n, Matrix<float>& images, std::vector<int>& labels) {
  images = nn_test::random_matrix<float>(n, 64, 77, 0.5);
  labels = nn_test::random_labels(n, 2, 78);
  for (Index i = 0; i < n; ++i) {
    const Index top = labels[static_cast<std::size_t>(i)] == 0 ? 0 : 32;
    images.row(i).segment(top, 32).array() += 1.0f;
  }
}

}  // namespace

TEST_CASE("A two-layer network trains to low loss in FQT mode at 8 bits", "[nn][training]") {
  const auto quantizer = GENERATE(from_range(fqt_test::grad_input_kinds()));
  CAPTURE(fqt::kind_info(quantizer).name);
  Matrix<float> x;
  std::vector<int> labels;
  blobs(256, 1, x, labels);

  nn::Sequential<float> model;
  model.emplace<nn::Linear<float>>(16, 32, Philox(3).substream(0));
  model.emplace<nn::ReLU<float>>();
  model.emplace<nn::Linear<float>>(32, 4, Philox(3).substream(1));
  nn::Context context;
  context.policy.grad_input.kind = quantizer;  // 8-bit everything
  context.rng = Philox(10);
  nn::SGD<float> sgd(model.parameters(), {0.1, 0.9, false, 0.0});

  auto full_loss = [&] {
    nn::Context eval = context;
    nn::Tape<float> tape;
    const auto logits = model.forward(tape, nn::Variable<float>(x), eval);
    Matrix<float> none;
    return std::make_pair(nn::softmax_cross_entropy(logits.value(), labels, none),
                          nn::count_correct(logits.value(), labels));
  };
  const float initial = full_loss().first;
  for (std::uint64_t step = 0; step < 160; ++step) {
    const Index start = static_cast<Index>((step * 64) % 256);
    const Matrix<float> xb = x.middleRows(start, 64);
    const std::vector<int> yb(labels.begin() + start, labels.begin() + start + 64);
    context.step = step;
    nn::Tape<float> tape;
    auto loss =
        nn::softmax_cross_entropy(tape, model.forward(tape, nn::Variable<float>(xb), context), yb);
    sgd.zero_grad();
    tape.backward(loss);
    sgd.step();
  }
  const auto [final_loss, correct] = full_loss();
  CAPTURE(initial, final_loss, correct);
  CHECK(initial > 1.0f);
  CHECK(final_loss < 0.05f);
  CHECK(correct >= 254);
}

TEST_CASE("The same seed gives bit-identical weights with 1 and 2 threads",
          "[nn][training][threads]") {
  const int saved_threads = fqt::num_threads();
  const Matrix<float> x = nn_test::random_matrix<float>(32, 8 * 16 * 16, 5);
  const std::vector<int> labels = nn_test::random_labels(32, 10, 6);
  auto train = [&](int threads, std::uint64_t seed) {
    fqt::set_num_threads(threads);
    nn::Sequential<float> model;
    const Philox init(seed);
    model.emplace<nn::Conv2d<float>>(8, 16, 3, 1, 1, init.substream(0));
    model.emplace<nn::BatchNorm2d<float>>(16);
    model.emplace<nn::ReLU<float>>();
    model.emplace<nn::MaxPool2d<float>>(2);
    model.emplace<nn::Conv2d<float>>(16, 16, 3, 1, 1, init.substream(1));
    model.emplace<nn::ReLU<float>>();
    model.emplace<nn::Flatten<float>>();
    model.emplace<nn::Linear<float>>(16 * 8 * 8, 128, init.substream(2));
    model.emplace<nn::ReLU<float>>();
    model.emplace<nn::Linear<float>>(128, 10, init.substream(3));
    nn::Context context;
    context.policy.grad_input.bits = 4;
    context.policy.grad_weight.kind = fqt::QuantizerKind::PerColumn;
    context.rng = Philox(seed);
    nn::SGD<float> sgd(model.parameters(), {0.05, 0.9, true, 1e-4});
    for (std::uint64_t step = 0; step < 4; ++step) {
      context.step = step;
      nn::Tape<float> tape;
      auto loss = nn::softmax_cross_entropy(
          tape, model.forward(tape, nn::Variable<float>(x, {8, 16, 16}), context), labels, 0.1);
      sgd.zero_grad();
      tape.backward(loss);
      sgd.step();
    }
    std::vector<Matrix<float>> weights;
    for (const auto& p : model.parameters()) weights.push_back(p.variable.value());
    return weights;
  };
  const auto one = train(1, 42);
  const auto two = train(2, 42);
  const auto other_seed = train(2, 43);
  fqt::set_num_threads(saved_threads);
  for (std::size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    CHECK(one[i] == two[i]);
  }
  CHECK(one[0] != other_seed[0]);
}

TEST_CASE("A NaN gradient stops training with a clear error and no NaN in the weights",
          "[nn][training][errors]") {
  nn::Sequential<float> model;
  model.emplace<nn::Linear<float>>(4, 3, Philox(1));
  const auto mode = GENERATE(nn::Mode::Exact, nn::Mode::FQT);
  nn::Context context;
  context.policy.mode = mode;
  nn::SGD<float> sgd(model.parameters(), {0.1, 0.0, false, 0.0});
  const Matrix<float> before = model.parameters()[0].variable.value();
  nn::Tape<float> tape;
  auto logits = model.forward(tape, nn::Variable<float>(Matrix<float>::Ones(2, 4)), context);
  // A hand-made loss whose gradient is NaN: the tape reports where it entered.
  nn::Variable<float> loss(Matrix<float>::Zero(1, 1), true);
  tape.record([logits] {
    Matrix<float> g = Matrix<float>::Ones(2, 3);
    g(1, 2) = std::numeric_limits<float>::quiet_NaN();
    logits.accumulate_grad(std::move(g));
  });
  sgd.zero_grad();
  CHECK_THROWS_WITH(tape.backward(loss), Catch::Matchers::Contains("nn::linear_backward") &&
                                             Catch::Matchers::Contains("grad_output"));
  CHECK(tape.size() == 0);
  CHECK(model.parameters()[0].variable.value() == before);
  CHECK(model.parameters()[0].variable.grad().allFinite());
}

TEST_CASE("The autograd training loop of the README compiles and learns", "[nn][training][docs]") {
  Matrix<float> images;
  std::vector<int> labels;
  stripes(32, images, labels);
  // ---- begin README example ----
  nn::Sequential<float> model;
  const fqt::Philox init(7);
  model.emplace<nn::Conv2d<float>>(1, 8, 3, 1, 1, init.substream(0));  // in, out, k, stride, pad
  model.emplace<nn::ReLU<float>>();
  model.emplace<nn::MaxPool2d<float>>(2);
  model.emplace<nn::Flatten<float>>();
  model.emplace<nn::Linear<float>>(8 * 4 * 4, 2, init.substream(1));

  nn::Context context;  // policy: FQT, BHQ 8-bit (context.policy)
  context.policy.grad_input.bits = 5;
  model[4].set_policy(nn::QuantPolicy{});  // keep the last layer at 8 bits
  context.rng = fqt::Philox(2024);
  nn::SGD<float> sgd(model.parameters(), {0.05, 0.9, /*nesterov=*/true, /*weight_decay=*/5e-4});
  const nn::CosineSchedule schedule(0.05, /*total_steps=*/60, /*warmup_steps=*/5);
  for (std::uint64_t step = 0; step < 60; ++step) {
    context.step = step;  // fresh gradient noise every step, a pure function of the seed
    nn::Tape<float> tape;
    const nn::Variable<float> input(images, nn::FeatureShape{1, 8, 8});  // images: N × 64
    auto loss = nn::softmax_cross_entropy(tape, model.forward(tape, input, context), labels);
    sgd.zero_grad();
    tape.backward(loss);
    sgd.set_learning_rate(schedule(step));
    sgd.step();  // throws std::domain_error (and changes nothing) on a NaN/Inf gradient
  }
  // ---- end README example ----
  nn::Tape<float> tape;
  const auto logits = model.forward(tape, nn::Variable<float>(images, {1, 8, 8}), context);
  Matrix<float> none;
  CHECK(nn::softmax_cross_entropy(logits.value(), labels, none) < 0.1f);
  CHECK(nn::count_correct(logits.value(), labels) == 32);
}
