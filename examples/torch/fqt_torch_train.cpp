// fqt inside a libtorch trainer: the Fashion-MNIST CNN of fqt_train, built from libtorch modules,
// trained with libtorch's data loader and SGD, once with libtorch's own layers and then with
// fqt::torch::Conv2d / Linear in Exact mode and in FQT (PSQ and BHQ gradients, 4 bits by
// default). Prints test accuracy, the median epoch time and its ratio to libtorch's.
//
//   fqt_torch_train [--epochs 2] [--bits 4] [--threads 2] [--runs libtorch,exact,psq,bhq,bhq-int8]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "fqt/core/parallel.hpp"
#include "fqt/nn/backends/int8.hpp"
#include "fqt/torch.hpp"
#include "trainer/data.hpp"
#ifdef FQT_TORCH_TRAIN_DNNL
#include "fqt/nn/backends/dnnl.hpp"
#endif

namespace {

namespace ft = fqt::torch;
namespace nn = fqt::nn;

// One run of the comparison: libtorch's layers (quantization empty) or fqt's with a policy.
struct Run {
  std::string name;
  bool libtorch = false;
  ft::Quantization quantization;
};

// conv 5×5 (1 → 8) → ReLU → max-pool 2 → conv 5×5 (8 → 16) → ReLU → max-pool 2 → linear (256 →
// 64) → ReLU → linear (64 → 10): fqt_train's network, from libtorch modules or fqt's drop-ins.
struct CnnImpl : torch::nn::Module {
  torch::nn::AnyModule conv1, conv2, fc1, fc2;

  explicit CnnImpl(const Run& run) {
    std::int64_t layer = 0;
    const auto make = [&](auto libtorch_layer, auto fqt_layer) {
      return run.libtorch ? torch::nn::AnyModule(libtorch_layer) : torch::nn::AnyModule(fqt_layer);
    };
    const auto q = [&] { return ft::Quantization(run.quantization).with_layer(layer++); };
    conv1 = make(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 8, 5)),
                 ft::Conv2d(torch::nn::Conv2dOptions(1, 8, 5), q()));
    conv2 = make(torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 5)),
                 ft::Conv2d(torch::nn::Conv2dOptions(8, 16, 5), q()));
    fc1 = make(torch::nn::Linear(256, 64), ft::Linear(256, 64, q()));
    fc2 = make(torch::nn::Linear(64, 10), ft::Linear(64, 10, q()));
    register_module("conv1", conv1.ptr());
    register_module("conv2", conv2.ptr());
    register_module("fc1", fc1.ptr());
    register_module("fc2", fc2.ptr());
  }

  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1.forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2.forward(x)), 2);
    x = torch::relu(fc1.forward(x.flatten(1)));
    return fc2.forward(x);
  }
};
TORCH_MODULE(Cnn);

// A split of Fashion-MNIST as a libtorch dataset: images 1 × 28 × 28 in [−1, 1], int64 labels,
// served a whole batch at a time (one index_select instead of one tensor per sample).
class FashionMnist
    : public torch::data::datasets::BatchDataset<FashionMnist, torch::data::Example<>> {
 public:
  FashionMnist(const std::string& dir, fqt::data::Split split) {
    const auto d = fqt_train::load_split(dir, split);
    const auto n = static_cast<std::int64_t>(d.size());
    images_ = torch::from_blob(const_cast<float*>(d.images.data()), {n, 1, 28, 28}).clone();
    labels_ = torch::empty({n}, torch::TensorOptions().dtype(torch::kLong));
    auto* label = labels_.data_ptr<std::int64_t>();
    for (std::int64_t i = 0; i < n; ++i) label[i] = d.labels[static_cast<std::size_t>(i)];
  }
  torch::data::Example<> get_batch(c10::ArrayRef<std::size_t> indices) override {
    const torch::Tensor index =
        torch::from_blob(const_cast<std::size_t*>(indices.data()),
                         {static_cast<std::int64_t>(indices.size())}, torch::kLong)
            .clone();
    return {images_.index_select(0, index), labels_.index_select(0, index)};
  }
  torch::optional<std::size_t> size() const override {
    return static_cast<std::size_t>(images_.size(0));
  }
  const torch::Tensor& images() const { return images_; }
  const torch::Tensor& labels() const { return labels_; }

 private:
  torch::Tensor images_, labels_;
};

struct Result {
  double accuracy = 0;       // test accuracy after the last epoch, %
  double epoch_seconds = 0;  // median over epochs
};

Result train(const Run& run, const FashionMnist& train_set, const torch::Tensor& test_images,
             const torch::Tensor& test_labels, int epochs, std::uint64_t seed) {
  torch::manual_seed(seed);
  Cnn model(run);
  torch::optim::SGD sgd(model->parameters(),
                        torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  auto loader = torch::data::make_data_loader<torch::data::samplers::RandomSampler>(
      FashionMnist(train_set),
      torch::data::DataLoaderOptions().batch_size(128).workers(0).enforce_ordering(true));
  std::vector<double> seconds;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    model->train();
    const auto start = std::chrono::steady_clock::now();
    for (auto& batch : *loader) {
      sgd.zero_grad();
      const torch::Tensor loss =
          torch::cross_entropy_loss(model->forward(batch.data), batch.target);
      loss.backward();
      sgd.step();
    }
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  torch::NoGradGuard no_grad;
  model->eval();
  std::int64_t correct = 0;
  for (std::int64_t first = 0; first < test_images.size(0); first += 1000) {
    const auto count = std::min<std::int64_t>(1000, test_images.size(0) - first);
    const torch::Tensor logits = model->forward(test_images.narrow(0, first, count));
    correct += logits.argmax(1).eq(test_labels.narrow(0, first, count)).sum().item<std::int64_t>();
  }
  std::sort(seconds.begin(), seconds.end());
  return {100.0 * static_cast<double>(correct) / static_cast<double>(test_images.size(0)),
          seconds[seconds.size() / 2]};
}

std::shared_ptr<const nn::Backend> int8_backend() {
#ifdef FQT_TORCH_TRAIN_DNNL
  return nn::dnnl_backend();
#else
  return nn::int8_backend();
#endif
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fashion-MNIST with libtorch's loader and optimizer: libtorch's layers vs fqt's"};
  std::string data = fqt_train::default_data_dir();
  int epochs = 2, bits = 4, threads = 2;
  std::uint64_t seed = 1;
  std::vector<std::string> runs{"libtorch", "exact", "psq", "bhq"};
  app.add_option("--data", data, "directory of the Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--epochs", epochs, "epochs per run")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  app.add_option("--bits", bits, "bits of the FQT gradient quantizers")
      ->capture_default_str()
      ->check(CLI::Range(1, 8));
  app.add_option("--threads", threads, "libtorch's and fqt's threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--seed", seed, "libtorch's seed (initialisation and batch order)")
      ->capture_default_str();
  app.add_option("--runs", runs,
                 "runs: libtorch (its own layers), exact (fqt's, Exact mode), psq, bhq (FQT on "
                 "libtorch's float kernels), psq-int8, bhq-int8 (FQT on fqt's int8 GEMMs)")
      ->delimiter(',')
      ->check(CLI::IsMember({"libtorch", "exact", "psq", "bhq", "psq-int8", "bhq-int8"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  torch::set_num_threads(threads);
  fqt::set_num_threads(threads);
  const FashionMnist train_set(data, fqt::data::Split::Train);
  const FashionMnist test_set(data, fqt::data::Split::Test);
  const torch::Tensor& test_images = test_set.images();
  const torch::Tensor& test_labels = test_set.labels();

  std::printf("%-12s %-32s %9s %10s %12s\n", "run", "gradients", "accuracy", "epoch (s)",
              "vs libtorch");
  double libtorch_seconds = 0;
  for (const auto& name : runs) {
    Run run{name, name == "libtorch", {}};
    std::string gradients = "full precision";
    if (name == "exact") {
      run.quantization = ft::Quantization(nn::QuantPolicy::with_mode(nn::Mode::Exact));
    } else if (!run.libtorch) {
      const bool int8 = name.size() > 5 && name.substr(name.size() - 5) == "-int8";
      const auto kind = name.rfind("psq", 0) == 0 ? fqt::QuantizerKind::PerSample
                                                  : fqt::QuantizerKind::BlockHouseholder;
      run.quantization = ft::Quantization(
          nn::presets::paper(kind, bits, fqt::Grid::Auto, int8 ? int8_backend() : nullptr));
      const auto& p = run.quantization.policy;
      gradients = std::string(fqt::kind_info(p.grad_input.kind).name) + "/" +
                  fqt::kind_info(p.grad_weight.kind).name + " " + std::to_string(bits) + " bits, " +
                  (int8 ? "int8 GEMMs" : "libtorch float");
    }
    const Result r = train(run, train_set, test_images, test_labels, epochs, seed);
    if (run.libtorch) libtorch_seconds = r.epoch_seconds;
    char ratio[32] = "-";
    if (libtorch_seconds > 0)
      std::snprintf(ratio, sizeof ratio, "%.2f", r.epoch_seconds / libtorch_seconds);
    std::printf("%-12s %-32s %8.2f%% %10.2f %12s\n", name.c_str(), gradients.c_str(), r.accuracy,
                r.epoch_seconds, ratio);
    std::fflush(stdout);
  }
  return 0;
}
