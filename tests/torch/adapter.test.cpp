// The libtorch adapter: drop-in equality with libtorch's layers in Exact mode, equality with fqt's
// functional ops, Theorem 1 through the adapter, streams, workspaces and errors.
//
// libtorch's c10/util/Logging.h defines a CHECK macro of its own (it aborts and counts nothing):
// libtorch comes first, then its CHECK gives way to Catch's.
#include "fqt/nn/functional.hpp"
#include "fqt/nn/presets.hpp"
#include "fqt/torch.hpp"
#undef CHECK

#include <catch2/catch.hpp>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

namespace ft = fqt::torch;
namespace nn = fqt::nn;
using fqt::Index;

template <class Scalar>
fqt::Matrix<Scalar> to_matrix(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  const Index rows = c.size(0);
  return Eigen::Map<const fqt::Matrix<Scalar>>(c.data_ptr<Scalar>(), rows, c.numel() / rows);
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

nn::QuantPolicy fqt_policy(fqt::QuantizerKind kind, int bits) {
  return nn::presets::paper(kind, bits, fqt::Grid::Auto);
}

}  // namespace

TEST_CASE("torch::Linear in Exact mode is torch::nn::Linear: parameters, output and gradients",
          "[torch]") {
  torch::manual_seed(3);
  torch::nn::Linear reference(torch::nn::LinearOptions(20, 7));
  torch::manual_seed(3);
  ft::Linear layer(torch::nn::LinearOptions(20, 7),
                   ft::Quantization(nn::QuantPolicy::with_mode(nn::Mode::Exact)));
  CHECK(torch::equal(layer->weight, reference->weight));
  CHECK(torch::equal(layer->bias, reference->bias));

  // A batch of shape (3, 5, 20): linear applies to the last dimension.
  const torch::Tensor x = torch::randn({3, 5, 20}, torch::requires_grad());
  const torch::Tensor x2 = x.detach().clone().requires_grad_();
  const torch::Tensor y = layer(x), y_ref = reference(x2);
  CHECK(y.sizes() == y_ref.sizes());
  CHECK(max_abs_diff(y, y_ref) < 1e-5);
  const torch::Tensor w = torch::randn_like(y);
  (y * w).sum().backward();
  (y_ref * w).sum().backward();
  CHECK(max_abs_diff(x.grad(), x2.grad()) < 1e-5);
  CHECK(max_abs_diff(layer->weight.grad(), reference->weight.grad()) < 1e-5);
  CHECK(max_abs_diff(layer->bias.grad(), reference->bias.grad()) < 1e-5);
  // The adapter's own autograd node sits in the graph.
  CHECK(y.grad_fn()->name() == "fqt::torch::LinearBackward");
}

TEST_CASE("torch::Conv2d in Exact mode is torch::nn::Conv2d, in double against finite differences",
          "[torch]") {
  const auto options = torch::nn::Conv2dOptions(3, 4, 3).stride(2).padding(1);
  torch::manual_seed(5);
  torch::nn::Conv2d reference(options);
  torch::manual_seed(5);
  ft::Conv2d layer(options, ft::Quantization(nn::QuantPolicy::with_mode(nn::Mode::Exact)));
  CHECK(torch::equal(layer->weight, reference->weight));
  reference->to(torch::kDouble);
  layer->weight.set_data(layer->weight.to(torch::kDouble));
  layer->bias.set_data(layer->bias.to(torch::kDouble));

  const torch::Tensor x =
      torch::randn({2, 3, 9, 8}, torch::dtype(torch::kDouble).requires_grad(true));
  const torch::Tensor x2 = x.detach().clone().requires_grad_();
  const torch::Tensor y = layer(x), y_ref = reference(x2);
  CHECK(max_abs_diff(y, y_ref) < 1e-12);
  const torch::Tensor w = torch::randn_like(y);
  (y * w).sum().backward();
  (y_ref * w).sum().backward();
  CHECK(max_abs_diff(x.grad(), x2.grad()) < 1e-12);
  CHECK(max_abs_diff(layer->weight.grad(), reference->weight.grad()) < 1e-12);
  CHECK(max_abs_diff(layer->bias.grad(), reference->bias.grad()) < 1e-12);

  // Central differences of L = Σ w·y in one input and one weight element.
  torch::NoGradGuard no_grad;
  const double h = 1e-6;
  const auto loss = [&] { return (layer(x) * w).sum().item<double>(); };
  auto xa = x.accessor<double, 4>();
  const double x0 = xa[1][2][4][3];
  xa[1][2][4][3] = x0 + h;
  const double up = loss();
  xa[1][2][4][3] = x0 - h;
  const double down = loss();
  xa[1][2][4][3] = x0;
  CHECK((up - down) / (2 * h) == Approx(x.grad()[1][2][4][3].item<double>()).epsilon(1e-6));
}

TEST_CASE("torch adapter on Engine::Fqt is bit-identical to fqt's functional ops", "[torch]") {
  const auto policy = fqt_policy(fqt::QuantizerKind::BlockHouseholder, 4);
  torch::manual_seed(11);
  ft::Linear layer(12, 6, ft::Quantization(policy).with_engine(ft::Engine::Fqt).with_seed(9));
  const torch::Tensor x = torch::randn({16, 12}, torch::requires_grad());
  const std::int64_t calls = layer->state().calls();
  const torch::Tensor y = layer(x);
  const torch::Tensor g = torch::randn_like(y);
  y.backward(g);

  const fqt::Matrix<float> xm = to_matrix<float>(x.detach()),
                           wm = to_matrix<float>(layer->weight.detach());
  const fqt::Vector<float> bm =
      Eigen::Map<const fqt::Vector<float>>(layer->bias.data_ptr<float>(), 6);
  nn::LinearCache<float> cache;
  fqt::Matrix<float> out(16, 6), gi(16, 12), gw = fqt::Matrix<float>::Zero(6, 12);
  fqt::Vector<float> gb = fqt::Vector<float>::Zero(6);
  nn::linear_forward<float>(xm, wm, bm, policy, cache, out);
  const auto streams = nn::gradient_streams(fqt::Philox(9), static_cast<std::uint64_t>(calls),
                                            static_cast<std::uint64_t>(layer->state().layer()));
  nn::linear_backward<float>(to_matrix<float>(g), cache, streams, gi, gw, gb);
  CHECK(to_matrix<float>(y.detach()) == out);
  CHECK(to_matrix<float>(x.grad()) == gi);
  CHECK(to_matrix<float>(layer->weight.grad()) == gw);

  SECTION("and Engine::Torch computes the same products on the same quantized operands") {
    ft::Linear torch_engine(12, 6,
                            ft::Quantization(policy)
                                .with_engine(ft::Engine::Torch)
                                .with_seed(9)
                                .with_layer(layer->state().layer()));
    {
      torch::NoGradGuard no_grad;
      torch_engine->weight.copy_(layer->weight);
      torch_engine->bias.copy_(layer->bias);
    }
    torch_engine->state().set_calls(calls);
    const torch::Tensor x2 = x.detach().clone().requires_grad_();
    const torch::Tensor y2 = torch_engine(x2);
    y2.backward(g);
    // Only the summation order of the GEMMs differs.
    CHECK(max_abs_diff(y2, y) < 1e-4);
    CHECK(max_abs_diff(x2.grad(), x.grad()) < 1e-4);
    CHECK(max_abs_diff(torch_engine->weight.grad(), layer->weight.grad()) < 1e-4);
  }
}

TEST_CASE("torch::Conv2d on both engines agrees with fqt::nn::conv2d", "[torch]") {
  const auto policy = fqt_policy(fqt::QuantizerKind::PerSample, 4);
  const auto options = torch::nn::Conv2dOptions(2, 3, 3).padding(1);
  torch::manual_seed(2);
  ft::Conv2d fqt_engine(options,
                        ft::Quantization(policy).with_engine(ft::Engine::Fqt).with_layer(4));
  ft::Conv2d torch_engine(options,
                          ft::Quantization(policy).with_engine(ft::Engine::Torch).with_layer(4));
  {
    torch::NoGradGuard no_grad;
    torch_engine->weight.copy_(fqt_engine->weight);
    torch_engine->bias.copy_(fqt_engine->bias);
  }
  const torch::Tensor x = torch::randn({4, 2, 6, 6}, torch::requires_grad());
  const torch::Tensor x2 = x.detach().clone().requires_grad_();
  const torch::Tensor y = fqt_engine(x), y2 = torch_engine(x2);
  const torch::Tensor g = torch::randn_like(y);
  y.backward(g);
  y2.backward(g);
  CHECK(max_abs_diff(y, y2) < 1e-4);
  CHECK(max_abs_diff(x.grad(), x2.grad()) < 1e-4);
  CHECK(max_abs_diff(fqt_engine->weight.grad(), torch_engine->weight.grad()) < 1e-4);
  CHECK(max_abs_diff(fqt_engine->bias.grad(), torch_engine->bias.grad()) < 1e-5);
}

TEST_CASE("torch::Conv2d on Engine::Fqt that recomputes its columns gives the same bits",
          "[torch]") {
  const auto policy = fqt_policy(fqt::QuantizerKind::BlockHouseholder, 4);
  const auto options = torch::nn::Conv2dOptions(2, 3, 3).padding(1).stride(2);
  torch::manual_seed(3);
  const auto quantization = ft::Quantization(policy).with_engine(ft::Engine::Fqt).with_layer(5);
  ft::Conv2d keep(options, quantization);
  ft::Conv2d recompute(
      options, ft::Quantization(quantization).with_conv_columns(nn::ConvColumns::Recompute));
  {
    torch::NoGradGuard no_grad;
    recompute->weight.copy_(keep->weight);
    recompute->bias.copy_(keep->bias);
  }
  const torch::Tensor x = torch::randn({5, 2, 7, 7}, torch::requires_grad());
  const torch::Tensor x2 = x.detach().clone().requires_grad_();
  const torch::Tensor y = keep(x), y2 = recompute(x2);
  const torch::Tensor g = torch::randn_like(y);
  y.backward(g);
  y2.backward(g);
  CHECK(torch::equal(y, y2));
  CHECK(torch::equal(x.grad(), x2.grad()));
  CHECK(torch::equal(keep->weight.grad(), recompute->weight.grad()));
}

namespace {

// A small CNN of fqt::torch layers, in double.
struct NetImpl : torch::nn::Module {
  ft::Conv2d conv{nullptr};
  ft::Linear fc{nullptr};
  NetImpl(const nn::QuantPolicy& policy, ft::Engine engine) {
    conv = register_module("conv",
                           ft::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).stride(2),
                                      ft::Quantization(policy).with_engine(engine).with_layer(0)));
    fc = register_module(
        "fc", ft::Linear(4 * 3 * 3, 5, ft::Quantization(policy).with_engine(engine).with_layer(1)));
    to(torch::kDouble);
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc(torch::relu(conv(x)).flatten(1)); }
};
TORCH_MODULE(Net);

}  // namespace

TEST_CASE("Theorem 1 through the adapter: the mean FQT gradient is the QAT gradient",
          "[torch][statistical]") {
  const auto kind = GENERATE(fqt::QuantizerKind::PerSample, fqt::QuantizerKind::BlockHouseholder);
  const auto engine = GENERATE(ft::Engine::Torch, ft::Engine::Fqt);
  CAPTURE(fqt::kind_info(kind).name, ft::to_string(engine));
  torch::manual_seed(1);
  Net net(fqt_policy(kind, 3), engine);
  // to(kDouble) converted the fqt_stream buffers too; the layers turn them back into int64.
  const torch::Tensor x = torch::randn({8, 1, 7, 7}, torch::kDouble);
  const torch::Tensor labels = torch::randint(0, 5, {8}, torch::kLong);
  const auto loss = [&](int) { return torch::nn::functional::cross_entropy(net(x), labels); };
  const auto profile = ft::profile_gradients(*net, loss, 400);
  REQUIRE(profile.tensors.size() == 4);
  for (const auto& t : profile.tensors) {
    CAPTURE(t.name, t.max_abs_z, t.bias_in_standard_errors, t.noisy_elements);
    CHECK(t.consistent_with_unbiased(6.0));
    if (t.name.find("bias") == std::string::npos) CHECK(t.quantization_variance > 0);
  }
  // The modes were restored.
  for (auto* s : ft::layer_states(*net)) CHECK(s->quantization().policy.mode == nn::Mode::FQT);

  SECTION("round-to-nearest gradients are biased and the profile detects it") {
    auto nearest = fqt_policy(kind, 3);
    nearest.grad_input.rounding = nearest.grad_weight.rounding = fqt::RoundingMode::Nearest;
    for (auto* s : ft::layer_states(*net)) {
      ft::Quantization q = s->quantization();
      q.policy = nearest;
      s->set_quantization(q);
    }
    CHECK_FALSE(ft::profile_gradients(*net, loss, 8).consistent_with_unbiased());
  }
}

TEST_CASE("torch adapter streams: every pass draws fresh noise and a resumed run repeats it",
          "[torch]") {
  const auto policy = fqt_policy(fqt::QuantizerKind::PerSample, 2);
  const auto make = [&] {
    torch::manual_seed(4);
    return ft::Linear(10, 4, ft::Quantization(policy).with_layer(7).with_seed(21));
  };
  const torch::Tensor x = torch::randn({6, 10});
  const torch::Tensor g = torch::randn({6, 4});
  const auto weight_grad = [&](ft::Linear& layer) {
    layer->weight.mutable_grad() = torch::Tensor();
    layer(x).backward(g);
    return layer->weight.grad().clone();
  };
  ft::Linear a = make();
  CHECK(a->state().quantization().layer == 7);
  CHECK(ft::Linear(10, 4)->state().quantization().layer >= 0);  // the process counter's id
  const torch::Tensor first = weight_grad(a);
  CHECK(a->state().calls() == 1);
  const torch::Tensor second = weight_grad(a);
  CHECK(a->state().calls() == 2);
  CHECK_FALSE(torch::equal(first, second));  // 2-bit noise: the same draw would be identical

  // No recorded pass (no grad) does not advance the counter.
  {
    torch::NoGradGuard no_grad;
    (void)a(x);
  }
  CHECK(a->state().calls() == 2);

  // Save after two passes, load into a fresh layer: its third pass is the original's third.
  std::stringstream archive;
  torch::save(a, archive);
  const torch::Tensor third = weight_grad(a);
  ft::Linear b = make();
  torch::load(b, archive);
  CHECK(b->state().calls() == 2);
  CHECK(torch::equal(weight_grad(b), third));

  // The same layer built twice without a checkpoint repeats the first pass (a pure function of
  // seed, layer id and call count), and another layer id does not.
  ft::Linear c = make();
  CHECK(torch::equal(weight_grad(c), first));
  torch::manual_seed(4);
  ft::Linear d(10, 4, ft::Quantization(policy).with_layer(8).with_seed(21));
  CHECK_FALSE(torch::equal(weight_grad(d), first));
}

TEST_CASE("torch adapter: passes on several threads each take their own call number",
          "[torch][threads]") {
  ft::Linear layer(6, 3, ft::Quantization(fqt_policy(fqt::QuantizerKind::PerSample, 4)));
  const torch::Tensor x = torch::randn({4, 6}, torch::requires_grad());
  constexpr int kPasses = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      for (int k = 0; k < kPasses; ++k) (void)layer(x);
    });
  }
  for (auto& t : threads) t.join();
  CHECK(layer->state().calls() == 2 * kPasses);
}

TEST_CASE("torch adapter workspaces: steady-state steps create none, two live passes two",
          "[torch]") {
  ft::Conv2d layer(torch::nn::Conv2dOptions(2, 3, 3),
                   ft::Quantization(fqt_policy(fqt::QuantizerKind::BlockHouseholder, 4)));
  const torch::Tensor x = torch::randn({4, 2, 8, 8});
  for (int step = 0; step < 5; ++step) layer(x).sum().backward();
  CHECK(layer->state().workspaces_created() == 1);
  // A layer used twice in one graph holds two passes at once.
  (layer(x).sum() + layer(x).sum()).backward();
  CHECK(layer->state().workspaces_created() == 2);
  for (int step = 0; step < 3; ++step) (layer(x).sum() + layer(x).sum()).backward();
  CHECK(layer->state().workspaces_created() == 2);
}

TEST_CASE("torch adapter: gradients only leaves the forward pass in full precision", "[torch]") {
  torch::manual_seed(6);
  ft::Linear exact(8, 3, ft::Quantization(nn::QuantPolicy::with_mode(nn::Mode::Exact)));
  torch::manual_seed(6);
  ft::Linear grads_only(
      8, 3,
      ft::Quantization(nn::presets::gradients_only(fqt_policy(fqt::QuantizerKind::PerSample, 4))));
  torch::manual_seed(6);
  ft::Linear qat(8, 3, ft::Quantization(nn::QuantPolicy::with_mode(nn::Mode::QAT)));
  const torch::Tensor x = torch::randn({5, 8});
  CHECK(torch::equal(grads_only(x), exact(x)));
  CHECK_FALSE(torch::equal(qat(x), exact(x)));
}

TEST_CASE("torch adapter rejects bad tensors with errors naming the argument", "[torch][errors]") {
  ft::Linear layer(4, 2);
  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(layer(torch::randn({3, 5})),
                    Contains("torch::linear") && Contains("5 features"));
  CHECK_THROWS_AS(layer(torch::randint(0, 3, {3, 4}, torch::kInt)), std::invalid_argument);
  CHECK_THROWS_WITH(layer(torch::randint(0, 3, {3, 4}, torch::kInt)), Contains("dtype"));
  CHECK_THROWS_AS(layer(torch::randn({3, 4}, torch::kDouble)),
                  std::invalid_argument);  // weight is float
  CHECK_THROWS_WITH(layer(torch::randn({0, 4})), Contains("empty"));
  torch::Tensor nan = torch::randn({3, 4});
  nan[1][2] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(layer(nan), std::domain_error);
  CHECK_THROWS_WITH(layer(nan), Contains("input"));
  // A non-contiguous input is copied, and gives the contiguous input's result.
  const torch::Tensor t = torch::randn({4, 3});
  CHECK(torch::equal(layer(t.t()), layer(t.t().contiguous())));

  // NaN in the output gradient: std::domain_error from backward, the next pass still works.
  const torch::Tensor x = torch::randn({3, 4}, torch::requires_grad());
  torch::Tensor g = torch::ones({3, 2});
  g[0][0] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(layer(x).backward(g), std::domain_error);
  layer(x).sum().backward();
  CHECK(torch::isfinite(x.grad()).all().item<bool>());

  ft::Conv2d conv(torch::nn::Conv2dOptions(2, 3, 3));
  CHECK_THROWS_WITH(conv(torch::randn({1, 3, 5, 5})), Contains("channels"));
  CHECK_THROWS_WITH(conv(torch::randn({1, 2, 2, 2})), Contains("does not fit"));
  CHECK_THROWS_AS(ft::Conv2d(torch::nn::Conv2dOptions(2, 3, 3).padding_mode(torch::kReflect)),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      ft::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).groups(2),
                 ft::Quantization().with_engine(ft::Engine::Fqt))(torch::randn({1, 2, 5, 5})),
      std::invalid_argument);
  nn::QuantPolicy bad;
  bad.grad_input.bits = 9;
  CHECK_THROWS_WITH(ft::Linear(4, 2, ft::Quantization(bad)), Contains("grad_input.bits"));
}
