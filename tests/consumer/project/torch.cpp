// A libtorch user's program: one fqt::torch::Linear trained a few steps with libtorch's SGD on a
// regression whose answer is known, with 4-bit per-sample gradients.
#include <fqt/torch.hpp>
#include <iostream>

int main() {
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({64, 8});
  const torch::Tensor target = x.matmul(torch::linspace(-1, 1, 8).unsqueeze(1));
  fqt::torch::Linear layer(
      8, 1, fqt::nn::presets::paper(fqt::QuantizerKind::PerSample, 4, fqt::Grid::Auto));
  torch::optim::SGD sgd(layer->parameters(), 0.1);
  double first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    sgd.zero_grad();
    const torch::Tensor loss = torch::mse_loss(layer(x), target);
    loss.backward();
    sgd.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  std::cout << "loss " << first << " -> " << last << " after " << layer->state().calls()
            << " passes\n";
  std::cout << "torch adapter: " << (last < 0.05 * first ? "yes" : "no") << "\n";
  return 0;
}
